"""SNLI-VE and NLVR2 JSON Lines -> text stores, against independent computations."""

import json

import numpy as np
import pytest
from stores import image_store

from uniter_jax.data.convert.nlvr2 import convert_nlvr2
from uniter_jax.data.convert.snli_ve import LABELS, convert_snli_ve
from uniter_jax.data.errors import DataError
from uniter_jax.data.text_store import TextStore

SENTENCES = [
    "Two women are embracing while holding to go packages.",
    "The sisters are hugging goodbye after lunch.",
    "A man is sleeping on the couch.",
    "The left image shows exactly two dogs on grass.",
    "One image contains a single bottle, the other three bottles.",
]
VOCAB_TEXTS = SENTENCES  # the `vocab` fixture's corpus (conftest.py)


def write_jsonl(path, lines):
    """Objects as JSON lines; strings are written as they are (blank or broken lines)."""
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def hypothesis(n, label="entailment", image="2248275918", sentence=None, **extra):
    """A line in the public SNLI-VE layout (the premise keys are not read)."""
    return {
        "annotator_labels": [label],
        "captionID": f"{image}.jpg#2",
        "gold_label": label,
        "pairID": f"{image}.jpg#2r{n}",
        "sentence1": "Two women are embracing.",
        "sentence2": SENTENCES[n % 3] if sentence is None else sentence,
        "Flikr30kID": f"{image}.jpg",
        "Flickr30K_ID": image,
        **extra,
    }


def test_snli_ve_round_trip(tmp_path, vocab, reference):
    lines = [
        hypothesis(0, "entailment"),
        hypothesis(1, "neutral", image="3416050480"),
        "",
        hypothesis(2, "contradiction"),
        {k: v for k, v in hypothesis(3, "neutral").items() if k != "Flickr30K_ID"},
        {k: v for k, v in hypothesis(4, "contradiction", image="77").items() if k != "Flikr30kID"},
        "   ",
    ]
    src = write_jsonl(tmp_path / "snli_ve_dev.jsonl", lines)
    summary = convert_snli_ve(
        src, tmp_path / "out", vocab=vocab, image_id_format="flickr_{id}", progress=False
    )
    records = [x for x in lines if isinstance(x, dict)]
    assert summary.texts == len(records) and not summary.skipped
    store = TextStore(str(tmp_path / "out"))
    assert store.manifest["task"] == "snli_ve" and store.fields == ["label"]
    assert store.manifest["source"]["format"] == "snli-ve"
    want_labels = {"entailment": 0, "neutral": 1, "contradiction": 2}
    assert dict(zip(LABELS, range(3), strict=True)) == want_labels
    assert store.arrays["label"].dtype == np.int64
    for i, x in enumerate(records):
        image = x.get("Flickr30K_ID") or x["Flikr30kID"][: -len(".jpg")]
        assert store.text_ids[i] == x["pairID"]
        assert store.image_ids[i] == f"flickr_{image}"
        assert store.field("label", i) == want_labels[x["gold_label"]]
        want = reference.encode(x["sentence2"], add_special_tokens=False)
        np.testing.assert_array_equal(store.input_ids(i), want)


def without(record, key):
    return {k: v for k, v in record.items() if k != key}


@pytest.mark.parametrize(
    "line, field, message",
    [
        ('{"pairID": "x", ', None, "not valid JSON"),
        ("[1, 2]", None, "expected a JSON object"),
        (hypothesis(1, "-"), "gold_label", "gold label '-'"),
        (without(hypothesis(1), "gold_label"), "gold_label", "gold label missing"),
        (hypothesis(1, "Entailment"), "gold_label", "expected one of"),
        (without(hypothesis(1), "sentence2"), "sentence2", "missing key"),
        (hypothesis(1, sentence=7), "sentence2", "expected a string"),
        (hypothesis(1, sentence="  "), "text", "empty text"),
        (without(hypothesis(1), "pairID"), "pairID", "missing key"),
        (without(without(hypothesis(1), "Flikr30kID"), "Flickr30K_ID"), "Flikr30kID", "missing"),
        (hypothesis(1, Flickr30K_ID="123"), "Flickr30K_ID", "disagrees"),
        (hypothesis(1, Flikr30kID=["1.jpg"]), "Flikr30kID", "expected a string"),
        (hypothesis(1, image="404"), "image_id", "not in the image store"),
    ],
)
def test_snli_ve_bad_lines(tmp_path, vocab, line, field, message):
    # The bad line is line 4: blank lines count in the numbering.
    src = write_jsonl(tmp_path / "ve.jsonl", [hypothesis(0), "", hypothesis(2), line])
    images = image_store(tmp_path / "img", ["2248275918"])
    with pytest.raises(DataError, match=message) as err:
        convert_snli_ve(src, tmp_path / "out", vocab=vocab, images=images, progress=False)
    assert "ve.jsonl" in str(err.value) and "line 4" in str(err.value)
    assert err.value.field == field
    assert not (tmp_path / "out").exists()
    summary = convert_snli_ve(
        src, tmp_path / "out", vocab=vocab, images=images, skip_bad=True, progress=False
    )
    assert summary.texts == 2 and len(summary.skipped) == 1
    assert summary.skipped[0].record == "line 4" and summary.skipped[0].field == field
    assert len(TextStore(str(tmp_path / "out"))) == 2


def test_snli_ve_bad_files(tmp_path, vocab):
    with pytest.raises(DataError, match="cannot read"):
        convert_snli_ve(str(tmp_path / "missing.jsonl"), tmp_path / "o", vocab=vocab)
    with pytest.raises(DataError, match="no good texts"):
        convert_snli_ve(write_jsonl(tmp_path / "e.jsonl", [""]), tmp_path / "o", vocab=vocab)
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe{}")
    with pytest.raises(DataError, match="not UTF-8"):
        convert_snli_ve(str(tmp_path / "bin.jsonl"), tmp_path / "o", vocab=vocab)
    dup = write_jsonl(tmp_path / "d.jsonl", [hypothesis(0), hypothesis(0)])
    with pytest.raises(DataError, match="duplicate text id") as err:
        convert_snli_ve(dup, tmp_path / "o", vocab=vocab, progress=False)
    assert "line 2" in str(err.value)
    assert not (tmp_path / "o").exists()


def statement(identifier, label="True", sentence=None):
    """A line in the public NLVR2 layout (only identifier, sentence and label are read)."""
    n = int(identifier.split("-")[1])
    return {
        "validation": {"1": "True"},
        "sentence": SENTENCES[3 + n % 2] if sentence is None else sentence,
        "left_url": "https://example.org/left.jpg",
        "writer": "103",
        "label": label,
        "right_url": "https://example.org/right.jpg",
        "synset": "n02087046",
        "query": "dogs on grass",
        "identifier": identifier,
        "extra_validations": {},
    }


def image_pair(identifier):
    stem = identifier.rsplit("-", 1)[0]
    return f"{stem}-img0", f"{stem}-img1"


def test_nlvr2_round_trip(tmp_path, vocab, reference):
    lines = [
        statement("train-10171-0-0", "True"),
        statement("train-10171-0-1", "False"),
        "",
        statement("train-2-1-3", "False"),
    ]
    src = write_jsonl(tmp_path / "train.json", lines)
    summary = convert_nlvr2(
        src, tmp_path / "out", vocab=vocab, image_id_format="nlvr2_{id}", progress=False
    )
    records = [x for x in lines if isinstance(x, dict)]
    assert summary.texts == 2 * len(records)
    store = TextStore(str(tmp_path / "out"))
    assert store.manifest["task"] == "nlvr2"
    assert store.manifest["source"]["format"] == "nlvr2"
    assert store.manifest["source"]["group_size"] == 2
    assert sorted(store.fields) == ["group", "label", "slot"]
    for name in ("group", "label", "slot"):
        assert store.arrays[name].dtype == np.int64 and store.arrays[name].shape == (6,)
    np.testing.assert_array_equal(store.arrays["group"], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(store.arrays["slot"], [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(store.arrays["label"], [1, 1, 0, 0, 0, 0])
    for g, x in enumerate(records):
        want = reference.encode(x["sentence"], add_special_tokens=False)
        for slot in range(2):
            i = 2 * g + slot
            assert store.text_ids[i] == f"{x['identifier']}#{slot}"
            assert store.image_ids[i] == f"nlvr2_{image_pair(x['identifier'])[slot]}"
            np.testing.assert_array_equal(store.input_ids(i), want)


@pytest.mark.parametrize(
    "line, field, message",
    [
        ("not json", None, "not valid JSON"),
        (statement("dev-5-0-0", label="yes"), "label", "expected 'True' or 'False'"),
        (statement("dev-5-0-0", label=True), "label", "label True"),
        (without(statement("dev-5-0-0"), "label"), "label", "label missing"),
        (statement("dev-5-0-0", sentence=""), "text", "empty text"),
        (without(statement("dev-5-0-0"), "sentence"), "sentence", "missing key"),
        ({**statement("dev-5-0-0"), "identifier": "dev5"}, "identifier", "identifier like"),
        ({**statement("dev-5-0-0"), "identifier": 5}, "identifier", "expected a string"),
        # Only the right image is missing: the left row must not be written either.
        (statement("dev-5-0-9"), "image_id", "'dev-5-0-img1' is not in the image store"),
    ],
)
def test_nlvr2_bad_statements_drop_the_whole_group(tmp_path, vocab, line, field, message):
    lines = [statement("dev-3-0-0"), line, statement("dev-4-1-2", "False")]
    src = write_jsonl(tmp_path / "dev.json", lines)
    ids = [*image_pair("dev-3-0-0"), *image_pair("dev-4-1-2"), "dev-5-0-img0"]
    images = image_store(tmp_path / "img", ids)
    with pytest.raises(DataError, match=message) as err:
        convert_nlvr2(src, tmp_path / "out", vocab=vocab, images=images, progress=False)
    assert "dev.json" in str(err.value) and "line 2" in str(err.value)
    assert err.value.field == field
    assert not (tmp_path / "out").exists()
    summary = convert_nlvr2(
        src, tmp_path / "out", vocab=vocab, images=images, skip_bad=True, progress=False
    )
    assert summary.texts == 4 and len(summary.skipped) == 1
    assert summary.skipped[0].record == "line 2" and summary.skipped[0].field == field
    store = TextStore(str(tmp_path / "out"))
    assert list(store.text_ids) == ["dev-3-0-0#0", "dev-3-0-0#1", "dev-4-1-2#0", "dev-4-1-2#1"]
    # Groups are numbered over the statements written: no gap where one was skipped.
    np.testing.assert_array_equal(store.arrays["group"], [0, 0, 1, 1])
    np.testing.assert_array_equal(store.arrays["slot"], [0, 1, 0, 1])
    np.testing.assert_array_equal(store.arrays["label"], [1, 1, 0, 0])


def test_cli_snli_ve_and_nlvr2(tmp_path, vocab, capsys):
    from uniter_jax.data.convert.__main__ import main

    ve = write_jsonl(tmp_path / "ve.jsonl", [hypothesis(0), hypothesis(1, "neutral")])
    args = ["snli-ve", ve, "--vocab", vocab, "--out", str(tmp_path / "ve"), "--no-progress"]
    assert main(args) == 0
    assert "wrote 2 texts" in capsys.readouterr().out
    nlvr2 = write_jsonl(tmp_path / "n.json", [statement("test1-0-1-0"), statement("test1-1-0-2")])
    args = ["nlvr2", nlvr2, "--vocab", vocab, "--out", str(tmp_path / "n"), "--no-progress"]
    assert main(args) == 0
    assert "wrote 4 texts" in capsys.readouterr().out
    assert TextStore(str(tmp_path / "n")).manifest["source"]["group_size"] == 2
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "b.json", [statement("test1-0-1-0", label="maybe")])
    assert main(["nlvr2", bad, "--vocab", vocab, "--out", str(tmp_path / "b")]) == 2
    assert "line 1" in capsys.readouterr().err
