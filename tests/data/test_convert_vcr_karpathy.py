"""Karpathy caption splits and VCR jsonl -> text stores, against independent computations."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stores import image_store

from uniter_jax.data.convert.karpathy import convert_karpathy
from uniter_jax.data.convert.vcr import convert_vcr
from uniter_jax.data.errors import DataError
from uniter_jax.data.text_store import TextStore
from uniter_jax.data.tokenizer import Tokenizer, build_vocab

CAPTIONS = [
    "A man riding a horse on the beach.",
    "Two dogs play with a red frisbee.",
    "a kitchen with a stove and a sink",
    "A bird sits on a wooden fence.",
    "People walk along a busy street.",
]
VCR_WORDS = [
    "Why is person and car near dog ? person , person and car are talking .",
    "He is late . She is happy . They are waiting for the bus because it is raining .",
]
VOCAB_TEXTS = [*CAPTIONS, *VCR_WORDS]  # the `vocab` fixture's corpus (conftest.py)


@pytest.fixture(scope="module")
def sep_id(vocab):
    with open(vocab) as f:
        return [line.rstrip("\n") for line in f].index("[SEP]")


def write_json(path, value):
    path.write_text(json.dumps(value))
    return str(path)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# Karpathy ------------------------------------------------------------------------------


def karpathy_image(imgid, split, captions, *, cocoid=None, filename=None):
    image = {
        "filename": filename or f"COCO_val2014_{cocoid:012d}.jpg",
        "imgid": imgid,
        "split": split,
        "sentids": [100 * imgid + n for n in range(len(captions))],
        "sentences": [
            {
                "raw": c,
                "tokens": c.lower().rstrip(".").split(),
                "imgid": imgid,
                "sentid": 100 * imgid + n,
            }
            for n, c in enumerate(captions)
        ],
    }
    if cocoid is not None:
        image.update(cocoid=cocoid, filepath="val2014")
    return image


def coco_file(tmp_path, images, name="dataset_coco.json"):
    return write_json(tmp_path / name, {"dataset": "coco", "images": images})


def test_karpathy_coco_train_plus_restval(tmp_path, vocab, reference):
    images = [
        karpathy_image(0, "train", CAPTIONS[:2], cocoid=391895),
        karpathy_image(1, "val", CAPTIONS[2:3], cocoid=42),
        karpathy_image(2, "restval", CAPTIONS[3:], cocoid=7),
        karpathy_image(3, "test", CAPTIONS[:1], cocoid=9),
        karpathy_image(4, "train", [" ".join(["horse"] * 80)], cocoid=11),
    ]
    src = coco_file(tmp_path, images)
    summary = convert_karpathy(
        src,
        tmp_path / "out",
        split="train+restval",
        vocab=vocab,
        image_id_format="COCO_{id:012d}",
        progress=False,
    )
    assert summary.texts == 5 and summary.truncated == 1 and not summary.skipped
    store = TextStore(str(tmp_path / "out"))
    want = [  # (sentid, cocoid, raw) of the train and restval images, in file order
        (0, 391895, CAPTIONS[0]),
        (1, 391895, CAPTIONS[1]),
        (200, 7, CAPTIONS[3]),
        (201, 7, CAPTIONS[4]),
        (400, 11, " ".join(["horse"] * 80)),
    ]
    assert len(store) == len(want)
    for i, (sentid, cocoid, raw) in enumerate(want):
        assert store.text_ids[i] == str(sentid)
        assert store.image_ids[i] == f"COCO_{cocoid:012d}"
        expected = reference.encode(raw, add_special_tokens=False)[:60]
        np.testing.assert_array_equal(store.input_ids(i), expected)
    assert store.manifest["task"] == "captions" and store.fields == []
    source = store.manifest["source"]
    assert (source["format"], source["dataset"], source["split"]) == (
        "karpathy",
        "coco",
        "train+restval",
    )


def test_karpathy_flickr_ids_are_file_names(tmp_path, vocab, reference):
    images = [
        karpathy_image(0, "test", CAPTIONS[:2], filename="1000092795.jpg"),
        karpathy_image(1, "train", CAPTIONS[2:3], filename="10002456.jpg"),
    ]
    src = write_json(tmp_path / "f.json", {"dataset": "flickr30k", "images": images})
    convert_karpathy(
        src,
        tmp_path / "out",
        split="test",
        vocab=vocab,
        image_id_format="flickr_{id}",
        progress=False,
    )
    store = TextStore(str(tmp_path / "out"))
    assert list(store.text_ids) == ["0", "1"]
    assert list(store.image_ids) == ["flickr_1000092795"] * 2
    np.testing.assert_array_equal(
        store.input_ids(1), reference.encode(CAPTIONS[1], add_special_tokens=False)
    )
    assert store.manifest["source"]["dataset"] == "flickr30k"


def test_karpathy_empty_split_lists_the_splits_present(tmp_path, vocab):
    src = coco_file(tmp_path, [karpathy_image(0, "train", CAPTIONS[:1], cocoid=1)])
    with pytest.raises(DataError, match=r"no images in split test.*\['train'\]"):
        convert_karpathy(src, tmp_path / "out", split="test", vocab=vocab, progress=False)
    with pytest.raises(ValueError, match="split must be one of"):
        convert_karpathy(src, tmp_path / "out", split="dev", vocab=vocab, progress=False)


def _sentence(**changes):
    sentence = {"raw": "a horse", "tokens": ["a", "horse"], "imgid": 1, "sentid": 50}
    sentence.update(changes)
    return {k: v for k, v in sentence.items() if v is not None}


@pytest.mark.parametrize(
    "image, record, field, message",
    [
        ("not an image", "image 1", None, "expected an object"),
        ({"split": "dev", "sentences": []}, "image 1", "split", "unknown split 'dev'"),
        ({"cocoid": 2, "sentences": []}, "image 1", "split", "missing key 'split'"),
        ({"split": "train", "cocoid": 2}, "image 1", "sentences", "'sentences' list"),
        (
            {"split": "train", "cocoid": 2, "sentences": [_sentence(raw=None)]},
            "image 1 sentence 0",
            "raw",
            "missing keys",
        ),
        (
            {"split": "train", "cocoid": 2, "sentences": [_sentence(raw=5)]},
            "image 1 sentence 0",
            "raw",
            "expected a string",
        ),
        (
            {"split": "train", "cocoid": 2, "sentences": [_sentence(raw="  ")]},
            "image 1 sentence 0",
            "text",
            "empty text",
        ),
        (
            {"split": "train", "cocoid": 2, "sentences": [_sentence(sentid=[1])]},
            "image 1 sentence 0",
            "sentid",
            "integer id",
        ),
        (
            {"split": "train", "sentences": [_sentence()]},
            "image 1 sentence 0",
            "cocoid",
            "integer cocoid",
        ),
        (
            {"split": "train", "cocoid": 404, "sentences": [_sentence()]},
            "image 1 sentence 0",
            "image_id",
            "not in the image store",
        ),
        (
            {"split": "train", "cocoid": 2, "sentences": [_sentence(sentid=0)]},
            "image 1 sentence 0",
            "text_id",
            "duplicate text id",
        ),
    ],
)
def test_karpathy_bad_records(tmp_path, vocab, image, record, field, message):
    good = karpathy_image(0, "train", CAPTIONS[:1], cocoid=1)
    src = coco_file(tmp_path, [good, image], name="k.json")
    images = image_store(tmp_path / "img", ["1", "2"])
    with pytest.raises(DataError, match=message) as err:
        convert_karpathy(
            src, tmp_path / "out", split="train", vocab=vocab, images=images, progress=False
        )
    assert "k.json" in str(err.value) and f"record {record}" in str(err.value)
    assert err.value.field == field
    assert not (tmp_path / "out").exists()
    summary = convert_karpathy(
        src,
        tmp_path / "out",
        split="train",
        vocab=vocab,
        images=images,
        skip_bad=True,
        progress=False,
    )
    assert summary.texts == 1 and len(summary.skipped) == 1
    assert summary.skipped[0].field == field and summary.skipped[0].record == record
    assert list(TextStore(str(tmp_path / "out")).text_ids) == ["0"]


def test_karpathy_bad_files(tmp_path, vocab):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        convert_karpathy(str(tmp_path / "bad.json"), tmp_path / "o", split="train", vocab=vocab)
    with pytest.raises(DataError, match="'images' list"):
        convert_karpathy(
            write_json(tmp_path / "e.json", {"dataset": "coco"}),
            tmp_path / "o",
            split="train",
            vocab=vocab,
        )
    with pytest.raises(DataError, match="unknown dataset 'imagenet'") as err:
        convert_karpathy(
            write_json(tmp_path / "d.json", {"dataset": "imagenet", "images": []}),
            tmp_path / "o",
            split="train",
            vocab=vocab,
        )
    assert err.value.field == "dataset"
    with pytest.raises(DataError, match="cannot read"):
        convert_karpathy(str(tmp_path / "missing.json"), tmp_path / "o", split="train", vocab=vocab)


# VCR -----------------------------------------------------------------------------------

OBJECTS = ["person", "person", "car", "dog"]
QUESTION = ["Why", "is", [0, 2], "near", [3], "?"]
QUESTION_TEXT = "Why is person and car near dog ?"  # written out by hand
ANSWERS = [
    [[0, 1, 2], "are", "talking", "."],
    ["He", "is", "late", "."],
    ["She", "is", "happy", "."],
    [[1], "is", "waiting", "."],
]
ANSWER_TEXTS = [
    "person, person and car are talking .",
    "He is late .",
    "She is happy .",
    "person is waiting .",
]
RATIONALES = [
    ["it", "is", "raining", "."],
    ["They", "are", "waiting", "for", "the", "bus", "."],
    [[3], "is", "happy", "."],
    ["because", [0, 3], "are", "talking", "."],
]
RATIONALE_TEXTS = [
    "it is raining .",
    "They are waiting for the bus .",
    "dog is happy .",
    "because person and dog are talking .",
]


def vcr_record(n, *, answer_label=1, rationale_label=2, **changes):
    record = {
        "annot_id": f"val-{n}",
        "img_fn": f"lsmdc_3015_CHARLIE/3015_CHARLIE_00.23.57.935-00.24.00.783@{n}.jpg",
        "metadata_fn": f"lsmdc_3015_CHARLIE/3015_CHARLIE@{n}.json",
        "movie": "3015_CHARLIE",
        "objects": OBJECTS,
        "question": QUESTION,
        "answer_choices": ANSWERS,
        "rationale_choices": RATIONALES,
        "answer_label": answer_label,
        "rationale_label": rationale_label,
        "question_number": n,
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def image_name(n):
    return f"3015_CHARLIE_00.23.57.935-00.24.00.783@{n}"


def encode(reference, text):
    return reference.encode(text, add_special_tokens=False)


def joined(sep_id, *pieces):
    """Token pieces with `sep_id` between them."""
    out = list(pieces[0])
    for piece in pieces[1:]:
        out.extend([sep_id, *piece])
    return out


def check_group(store, start, group, *, ids, labels, text_ids, image_id):
    for k in range(4):
        i = start + k
        assert store.text_ids[i] == text_ids[k]
        assert store.image_ids[i] == image_id
        np.testing.assert_array_equal(store.input_ids(i), ids[k])
        assert store.field("group", i) == group and store.field("slot", i) == k
        assert store.field("label", i) == labels[k]


def test_vcr_qa_groups(tmp_path, vocab, reference, sep_id):
    records = [vcr_record(0, answer_label=1), vcr_record(1, answer_label=3)]
    src = write_jsonl(tmp_path / "val.jsonl", records)
    summary = convert_vcr(
        src, tmp_path / "out", mode="qa", vocab=vocab, image_id_format="vcr_{id}", progress=False
    )
    assert summary.texts == 8 and summary.truncated == 0
    store = TextStore(str(tmp_path / "out"))
    assert len(store) == 8 and store.manifest["task"] == "vcr_qa"
    assert sorted(store.fields) == ["group", "label", "slot"]
    for name in ("group", "label", "slot"):
        assert store.arrays[name].dtype == np.int64 and store.arrays[name].shape == (8,)
    source = store.manifest["source"]
    assert source["group_size"] == 4 and source["format"] == "vcr" and source["mode"] == "qa"
    q = encode(reference, QUESTION_TEXT)
    for g, correct in enumerate([1, 3]):
        check_group(
            store,
            4 * g,
            g,
            ids=[joined(sep_id, q, encode(reference, a)) for a in ANSWER_TEXTS],
            labels=[int(k == correct) for k in range(4)],
            text_ids=[f"val-{g}#qa#{k}" for k in range(4)],
            image_id=f"vcr_{image_name(g)}",
        )


def test_vcr_qar_conditions_on_the_correct_answer(tmp_path, vocab, reference, sep_id):
    src = write_jsonl(tmp_path / "val.jsonl", [vcr_record(0, answer_label=2, rationale_label=0)])
    convert_vcr(src, tmp_path / "out", mode="qar", vocab=vocab, progress=False)
    store = TextStore(str(tmp_path / "out"))
    assert store.manifest["task"] == "vcr_qar" and len(store) == 4
    q, a = encode(reference, QUESTION_TEXT), encode(reference, ANSWER_TEXTS[2])
    check_group(
        store,
        0,
        0,
        ids=[joined(sep_id, q, a, encode(reference, r)) for r in RATIONALE_TEXTS],
        labels=[1, 0, 0, 0],
        text_ids=[f"val-0#qar#{k}" for k in range(4)],
        image_id=image_name(0),
    )


def test_vcr_test_split_has_no_labels(tmp_path, vocab, reference, sep_id):
    records = [vcr_record(n, answer_label=None, rationale_label=None) for n in range(2)]
    src = write_jsonl(tmp_path / "test.jsonl", records)
    convert_vcr(src, tmp_path / "qa", mode="qa", vocab=vocab, progress=False)
    store = TextStore(str(tmp_path / "qa"))
    assert list(store.arrays["label"]) == [-1] * 8
    np.testing.assert_array_equal(store.arrays["group"], np.repeat([0, 1], 4))
    # QA->R without the correct answer: the rationales under each answer, a group each.
    convert_vcr(src, tmp_path / "qar", mode="qar", vocab=vocab, progress=False)
    store = TextStore(str(tmp_path / "qar"))
    assert len(store) == 32 and list(store.arrays["label"]) == [-1] * 32
    q = encode(reference, QUESTION_TEXT)
    for n in range(2):
        for j in range(4):
            g = 4 * n + j
            check_group(
                store,
                4 * g,
                g,
                ids=[
                    joined(sep_id, q, encode(reference, ANSWER_TEXTS[j]), encode(reference, r))
                    for r in RATIONALE_TEXTS
                ],
                labels=[-1] * 4,
                text_ids=[f"val-{n}#qar#a{j}#{k}" for k in range(4)],
                image_id=image_name(n),
            )


def test_vcr_unlabelled_qar_skips_a_bad_line_under_each_answer(tmp_path, vocab):
    records = [
        vcr_record(0, answer_label=None, rationale_label=None),
        vcr_record(1, answer_label=None, rationale_label=None, question=["Why", [7]]),
        vcr_record(2, answer_label=None, rationale_label=None),
    ]
    src = write_jsonl(tmp_path / "test.jsonl", records)
    summary = convert_vcr(
        src, tmp_path / "out", mode="qar", vocab=vocab, skip_bad=True, progress=False
    )
    assert [s.record for s in summary.skipped] == [f"line 2 answer {j}" for j in range(4)]
    store = TextStore(str(tmp_path / "out"))
    np.testing.assert_array_equal(store.arrays["group"], np.repeat(np.arange(8), 4))
    assert [t.rsplit("#", 2)[0] for t in store.text_ids[::4]] == [
        f"val-{n}#qar" for n in (0, 2) for _ in range(4)
    ]


def test_vcr_truncation_cuts_the_question_first(tmp_path, vocab, reference, sep_id):
    long_question = ["Why"] + ["person"] * 9  # 10 tokens
    answers = [["He", "is", "late"], ["He"], ["She", "is", "happy", "."], ["it"]]
    rationale = ["They", "are", "waiting", "for", "the", "bus", "."]  # 7 tokens
    record = vcr_record(
        0,
        question=long_question,
        answer_choices=answers,
        rationale_choices=[rationale, ["it"], ["it", "is"], ["dog"] * 12],
        answer_label=0,
        rationale_label=0,
    )
    src = write_jsonl(tmp_path / "v.jsonl", [record])
    q = encode(reference, " ".join(long_question))
    assert len(q) == 10
    # Q->A in 8 tokens: the question keeps 8 - 1 - len(answer), at least 1 token.
    summary = convert_vcr(src, tmp_path / "qa", mode="qa", vocab=vocab, max_txt_len=8)
    store = TextStore(str(tmp_path / "qa"))
    want = [
        joined(sep_id, q[:4], encode(reference, "He is late")),
        joined(sep_id, q[:6], encode(reference, "He")),
        joined(sep_id, q[:3], encode(reference, "She is happy .")),
        joined(sep_id, q[:6], encode(reference, "it")),
    ]
    for k in range(4):
        np.testing.assert_array_equal(store.input_ids(k), want[k])
    assert summary.truncated == 4
    # QA->R in 8 tokens: the question down to 1, then the answer, then the rationale's end.
    summary = convert_vcr(src, tmp_path / "qar", mode="qar", vocab=vocab, max_txt_len=8)
    store = TextStore(str(tmp_path / "qar"))
    a = encode(reference, "He is late")
    r = [encode(reference, t) for t in ["They are waiting for the bus .", "it", "it is"]]
    want = [
        joined(sep_id, q[:1], a[:1], r[0][:4]),  # 1 + 1 + 1 + 1 + 7 = 11: the end cut
        joined(sep_id, q[:2], a, r[1]),
        joined(sep_id, q[:1], a, r[2]),
        joined(sep_id, q[:1], a[:1], encode(reference, " ".join(["dog"] * 12)))[:8],
    ]
    for k in range(4):
        np.testing.assert_array_equal(store.input_ids(k), want[k])
        assert len(store.input_ids(k)) == 8
    assert summary.truncated == 4
    assert store.manifest["max_txt_len"] == 8


def test_vcr_skip_bad_keeps_groups_consecutive(tmp_path, vocab):
    records = [
        vcr_record(0),
        vcr_record(1, answer_label=7),
        vcr_record(2),
        vcr_record(3, img_fn="somewhere/missing.jpg"),  # not in the image store
        vcr_record(0),  # a duplicate annot_id
        vcr_record(5),
    ]
    src = write_jsonl(tmp_path / "v.jsonl", records)
    images = image_store(tmp_path / "img", [image_name(n) for n in range(6)])
    with pytest.raises(DataError, match="answer_label"):
        convert_vcr(src, tmp_path / "out", mode="qa", vocab=vocab, images=images, progress=False)
    summary = convert_vcr(
        src, tmp_path / "out", mode="qa", vocab=vocab, images=images, skip_bad=True, progress=False
    )
    assert summary.texts == 12
    assert [(s.record, s.field) for s in summary.skipped] == [
        ("line 2", "answer_label"),
        ("line 4", "image_id"),
        ("line 5", "annot_id"),
    ]
    store = TextStore(str(tmp_path / "out"))
    np.testing.assert_array_equal(store.arrays["group"], np.repeat([0, 1, 2], 4))
    np.testing.assert_array_equal(store.arrays["slot"], np.tile(np.arange(4), 3))
    assert [t.split("#")[0] for t in store.text_ids[::4]] == ["val-0", "val-2", "val-5"]


@pytest.mark.parametrize(
    "changes, mode, field, message",
    [
        ({"answer_label": 4}, "qa", "answer_label", "integer in 0..3"),
        ({"answer_label": "1"}, "qa", "answer_label", "integer in 0..3"),
        ({"answer_label": True}, "qa", "answer_label", "integer in 0..3"),
        ({"rationale_label": -1}, "qar", "rationale_label", "integer in 0..3"),
        ({"rationale_label": None}, "qar", "rationale_label", "without rationale_label"),
        ({"answer_label": None}, "qar", "answer_label", "without answer_label"),
        ({"answer_choices": ANSWERS[:3]}, "qa", "answer_choices", "list of 4 choices, got 3"),
        ({"rationale_choices": "many"}, "qar", "rationale_choices", "list of 4 choices"),
        ({"question": "Why is it ?"}, "qa", "question", "expected a list of tokens"),
        ({"question": ["Why", {"a": 1}]}, "qa", "question", "neither a word"),
        ({"question": ["Why", []]}, "qa", "question", "neither a word"),
        ({"question": ["Why", [4]]}, "qa", "question", "object index 4 outside the 4 objects"),
        ({"question": ["Why", [-1]]}, "qa", "question", "object index -1 outside"),
        ({"question": ["Why", ["0"]]}, "qa", "question", "not an integer"),
        (
            {"answer_choices": [*ANSWERS[:2], [[9], "x"], ANSWERS[3]]},
            "qa",
            "answer_choices",
            "answer choice 2: object index 9",
        ),
        (
            {"rationale_choices": [*RATIONALES[:3], ["a", [5]]]},
            "qar",
            "rationale_choices",
            "rationale choice 3: object index 5",
        ),
        ({"question": []}, "qa", "question", "the question has no tokens"),
        (
            {"answer_choices": [*ANSWERS[:3], ["  "]]},
            "qa",
            "answer_choices",
            "answer choice 3 has no tokens",
        ),
        ({"objects": "person"}, "qa", "objects", "class names"),
        ({"img_fn": None}, "qa", "img_fn", "missing keys"),
        ({"img_fn": 3}, "qa", "img_fn", "expected a file name"),
        ({"annot_id": [1]}, "qa", "annot_id", "expected a string id"),
        ({"rationale_choices": None}, "qar", "rationale_choices", "missing keys"),
    ],
)
def test_vcr_bad_records(tmp_path, vocab, changes, mode, field, message):
    src = write_jsonl(tmp_path / "v.jsonl", [vcr_record(0), vcr_record(1, **changes)])
    with pytest.raises(DataError, match=message) as err:
        convert_vcr(src, tmp_path / "out", mode=mode, vocab=vocab, progress=False)
    assert "v.jsonl" in str(err.value) and "record line 2" in str(err.value)
    assert err.value.field == field
    assert not (tmp_path / "out").exists()
    summary = convert_vcr(
        src, tmp_path / "out", mode=mode, vocab=vocab, skip_bad=True, progress=False
    )
    assert summary.texts == 4 and len(summary.skipped) == 1
    assert summary.skipped[0].field == field


def test_vcr_bad_lines_and_files(tmp_path, vocab):
    src = tmp_path / "v.jsonl"
    src.write_text(json.dumps(vcr_record(0)) + "\n\n{oops\n[1, 2]\n")
    with pytest.raises(DataError, match="not valid JSON") as err:
        convert_vcr(str(src), tmp_path / "out", mode="qa", vocab=vocab, progress=False)
    assert "line 3" in str(err.value)
    summary = convert_vcr(
        str(src), tmp_path / "out", mode="qa", vocab=vocab, skip_bad=True, progress=False
    )
    assert [s.record for s in summary.skipped] == ["line 3", "line 4"]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        convert_vcr(str(tmp_path / "empty.jsonl"), tmp_path / "o", mode="qa", vocab=vocab)
    (tmp_path / "latin.jsonl").write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="not UTF-8"):
        convert_vcr(str(tmp_path / "latin.jsonl"), tmp_path / "o", mode="qa", vocab=vocab)
    with pytest.raises(DataError, match="cannot read"):
        convert_vcr(str(tmp_path / "missing.jsonl"), tmp_path / "o", mode="qa", vocab=vocab)
    with pytest.raises(ValueError, match="mode must be one of"):
        convert_vcr(str(src), tmp_path / "o", mode="q2a", vocab=vocab)


def test_cli(tmp_path, vocab, capsys):
    from uniter_jax.data.convert.__main__ import main

    coco = coco_file(tmp_path, [karpathy_image(0, "val", CAPTIONS[:3], cocoid=5)])
    args = ["karpathy", coco, "--split", "val", "--vocab", vocab, "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "k")]) == 0
    assert "wrote 3 texts" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "k")]) == 2
    assert "already exists" in capsys.readouterr().err

    src = write_jsonl(tmp_path / "v.jsonl", [vcr_record(0)])
    args = ["vcr", src, "--mode", "qar", "--vocab", vocab, "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "v")]) == 0
    store = TextStore(str(tmp_path / "v"))
    assert store.manifest["max_txt_len"] == 120 and store.manifest["task"] == "vcr_qar"
    bad = write_jsonl(tmp_path / "bad.jsonl", [vcr_record(0, answer_label=9)])
    assert main(["vcr", bad, "--mode", "qa", "--vocab", vocab, "--out", str(tmp_path / "b")]) == 2
    assert "answer_label" in capsys.readouterr().err


KEYS = [
    "dataset",
    "images",
    "split",
    "sentences",
    "raw",
    "sentid",
    "cocoid",
    "filename",
    "annot_id",
    "img_fn",
    "objects",
    "question",
    "answer_choices",
    "rationale_choices",
    "answer_label",
    "rationale_label",
]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 5) | st.sampled_from(["coco", "train", "a b"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=6)
    ),
    max_leaves=16,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    karpathy=JSON, vcr=st.lists(JSON, min_size=1, max_size=3), mode=st.sampled_from(["qa", "qar"])
)
def test_fuzzed_input_raises_only_data_errors(tmp_path, vocab, karpathy, vcr, mode):
    import shutil

    cases = [
        lambda out: convert_karpathy(
            write_json(tmp_path / "k.json", karpathy),
            out,
            split="train+restval",
            vocab=vocab,
            progress=False,
        ),
        lambda out: convert_vcr(
            write_jsonl(tmp_path / "v.jsonl", vcr), out, mode=mode, vocab=vocab, progress=False
        ),
    ]
    for n, convert in enumerate(cases):
        out = tmp_path / f"out{n}"
        try:
            convert(out)
        except DataError:
            assert not out.exists()
        else:
            TextStore(str(out))  # whatever was accepted is a readable store
        shutil.rmtree(out, ignore_errors=True)


def test_vcr_text_mode_is_one_pretraining_text_per_labelled_question(tmp_path):
    objects = ["person", "dog"]
    record = {
        "annot_id": "train-7",
        "img_fn": "movie/clip_1.jpg",
        "objects": objects,
        "question": ["Why", "is", [0], "happy", "?"],
        "answer_choices": [["a", str(k)] for k in range(4)],
        "rationale_choices": [["because", [1], str(k)] for k in range(4)],
        "answer_label": 2,
        "rationale_label": 1,
    }
    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps(record) + "\n")
    vocab = build_vocab(["Why is person happy ? a 0 1 2 3 because dog"], str(tmp_path / "v.txt"))
    convert_vcr(str(src), tmp_path / "out", mode="text", vocab=vocab, progress=False)
    store = TextStore(str(tmp_path / "out"))
    assert store.manifest["task"] == "captions" and store.fields == []
    assert list(store.text_ids) == ["train-7#text"] and list(store.image_ids) == ["clip_1"]
    tokenizer = Tokenizer(vocab)
    sep = tokenizer.vocab.sep_id
    pieces = ["Why is person happy ?", "a 2", "because dog 1"]
    want = [i for n, p in enumerate(pieces) for i in ([sep] if n else []) + tokenizer.encode(p)]
    np.testing.assert_array_equal(store.input_ids(0), want)
    del record["answer_label"], record["rationale_label"]
    src.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match="text mode needs labelled records"):
        convert_vcr(str(src), tmp_path / "out2", mode="text", vocab=vocab, progress=False)
