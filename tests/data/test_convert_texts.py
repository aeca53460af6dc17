"""COCO caption and VQA v2 JSON -> text stores, against independent computations."""

import collections
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stores import image_store

from uniter_jax.data.convert.coco_captions import convert_coco_captions
from uniter_jax.data.convert.vqa import convert_vqa
from uniter_jax.data.convert.vqa_answers import normalize
from uniter_jax.data.errors import DataError
from uniter_jax.data.text_store import TextStore
from uniter_jax.downstream import vqa

CAPTIONS = [
    "A man riding a horse on the beach.",
    "Two dogs play with a red frisbee.",
    "a kitchen with a stove and a sink",
]
# The `vocab` fixture's corpus (conftest.py).
VOCAB_TEXTS = [*CAPTIONS, "what colour is it? yes no red blue two"]


def write_json(path, value):
    path.write_text(json.dumps(value))
    return str(path)


def coco(annotations):
    return {"images": [], "annotations": annotations}


def test_coco_captions_round_trip(tmp_path, vocab, reference):
    anns = [{"id": 10 + i, "image_id": 7 * i, "caption": c} for i, c in enumerate(CAPTIONS)]
    anns.append({"id": 99, "image_id": 0, "caption": " ".join(["horse"] * 80)})
    src = write_json(tmp_path / "captions.json", coco(anns))
    summary = convert_coco_captions(
        src,
        tmp_path / "out",
        vocab=vocab,
        progress=False,
        image_id_format="COCO_{id:06d}",
        max_txt_len=60,
    )
    assert summary.texts == 4 and summary.truncated == 1
    store = TextStore(str(tmp_path / "out"))
    for i, ann in enumerate(anns):
        assert store.text_ids[i] == str(ann["id"])
        assert store.image_ids[i] == f"COCO_{ann['image_id']:06d}"
        want = reference.encode(ann["caption"], add_special_tokens=False)[:60]
        np.testing.assert_array_equal(store.input_ids(i), want)


@pytest.mark.parametrize(
    "annotation, field",
    [
        ({"id": 1, "image_id": 1, "caption": "   "}, "text"),
        ({"id": 1, "caption": "a horse"}, "image_id"),
        ({"id": 1, "image_id": 1, "caption": 5}, "caption"),
        ({"id": 1, "image_id": 404, "caption": "a horse"}, "image_id"),  # not in the store
    ],
)
def test_coco_bad_records_name_file_record_and_field(tmp_path, vocab, annotation, field):
    good = {"id": 0, "image_id": 1, "caption": "a horse"}
    src = write_json(tmp_path / "c.json", coco([good, annotation]))
    images = image_store(tmp_path / "img", ["1", "2"])
    with pytest.raises(DataError) as err:
        convert_coco_captions(src, tmp_path / "out", vocab=vocab, images=images, progress=False)
    assert "c.json" in str(err.value) and "annotation 1" in str(err.value)
    assert err.value.field == field
    assert not (tmp_path / "out").exists()
    summary = convert_coco_captions(
        src, tmp_path / "out", vocab=vocab, images=images, skip_bad=True, progress=False
    )
    assert summary.texts == 1 and len(summary.skipped) == 1
    assert summary.skipped[0].field == field


def test_coco_duplicate_ids_and_bad_files(tmp_path, vocab):
    dup = [{"id": 1, "image_id": 1, "caption": "a"}, {"id": 1, "image_id": 2, "caption": "b"}]
    with pytest.raises(DataError, match="duplicate text id"):
        convert_coco_captions(
            write_json(tmp_path / "d.json", coco(dup)), tmp_path / "o", vocab=vocab, progress=False
        )
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        convert_coco_captions(str(tmp_path / "bad.json"), tmp_path / "o", vocab=vocab)
    with pytest.raises(DataError, match="'annotations' list"):
        convert_coco_captions(write_json(tmp_path / "e.json", []), tmp_path / "o", vocab=vocab)


def human(*answers):
    return [
        {"answer": a, "answer_confidence": "yes", "answer_id": i} for i, a in enumerate(answers)
    ]


def test_vqa_answer_vocabulary_and_soft_scores(tmp_path, vocab):
    rng = np.random.default_rng(0)
    pool = ["red", "blue", "two", "yes", "no", "Red.", "green"]
    questions, annotations = [], []
    for q in range(40):
        answers = list(rng.choice(pool, 10))
        questions.append({"question_id": q, "image_id": q % 5, "question": "what colour is it?"})
        annotations.append(
            {
                "question_id": q,
                "image_id": q % 5,
                "answers": human(*answers),
                "multiple_choice_answer": answers[0],
            }
        )
    qs = write_json(tmp_path / "q.json", {"questions": questions})
    ans = write_json(tmp_path / "a.json", {"annotations": annotations})
    convert_vqa(
        qs, tmp_path / "out", vocab=vocab, annotations_path=ans, num_answers=4, progress=False
    )
    store = TextStore(str(tmp_path / "out"))

    def norm(a):  # the evaluation's normalization on this pool: case, period, number word
        a = a.lower().strip().rstrip(".")
        return {"two": "2"}.get(a, a)

    mc = collections.Counter(norm(a["multiple_choice_answer"]) for a in annotations)
    want_vocab = sorted(mc, key=lambda a: (-mc[a], a))[:4]
    answer_vocab = store.manifest["source"]["answer_vocab"]
    assert answer_vocab == want_vocab
    for i, ann in enumerate(annotations):
        counts = collections.Counter(norm(a["answer"]) for a in ann["answers"])
        want = {a: min(c / 3, 1) for a, c in counts.items() if a in want_vocab}
        got = dict(
            zip(
                (answer_vocab[j] for j in store.field("answers", i)),
                store.field("scores", i),
                strict=True,
            )
        )
        assert got == pytest.approx(want)


def official_accuracy(humans: list[str], predicted: str) -> float:
    """The official evaluation, literally: for each annotator left out, the
    others who gave the predicted answer, over 3, at most 1; averaged."""
    credit = []
    for left_out in range(len(humans)):
        others = humans[:left_out] + humans[left_out + 1 :]
        credit.append(min(others.count(predicted) / 3, 1.0))
    return float(np.mean(credit))


def test_vqa_validation_accuracy_is_the_official_leave_one_out_average(tmp_path, vocab):
    rng = np.random.default_rng(1)
    pool = ["red", "blue", "two", "yes", "no"]
    questions, annotations, humans = [], [], []
    for q in range(60):
        # Mostly 10 annotators, some 9; skewed so that 1, 2, 3 and 4+ matches occur.
        given = list(rng.choice(pool, 10 - (q % 7 == 0), p=[0.5, 0.2, 0.1, 0.1, 0.1]))
        humans.append(given)
        questions.append({"question_id": q, "image_id": 0, "question": "what colour is it?"})
        annotations.append(
            {
                "question_id": q,
                "image_id": 0,
                "answers": human(*given),
                "multiple_choice_answer": "red",
            }
        )
    qs = write_json(tmp_path / "q.json", {"questions": questions})
    ans = write_json(tmp_path / "a.json", {"annotations": annotations})
    convert_vqa(
        qs, tmp_path / "out", vocab=vocab, annotations_path=ans, answer_vocab=pool, progress=False
    )
    store = TextStore(str(tmp_path / "out"))
    predicted = rng.integers(0, len(pool), len(questions))
    want = np.mean([official_accuracy(h, pool[p]) for h, p in zip(humans, predicted, strict=True)])
    got = vqa.evaluate({"answer": predicted}, store)["accuracy"]
    assert got == pytest.approx(want, abs=1e-9)
    # Three of ten humans: 0.9 officially, where min(3 / 3, 1) would give 1.
    assert official_accuracy(["red"] * 3 + ["no"] * 7, "red") == pytest.approx(0.9)
    assert want < np.mean(
        [min(h.count(pool[p]) / 3, 1) for h, p in zip(humans, predicted, strict=True)]
    )


def test_vqa_test_split_and_missing_annotations(tmp_path, vocab):
    questions = [
        {"question_id": 1, "image_id": 3, "question": "is it red?"},
        {"question_id": 2, "image_id": 3, "question": "is it blue?"},
    ]
    qs = write_json(tmp_path / "q.json", {"questions": questions})
    with pytest.raises(DataError, match="answer vocabulary"):
        convert_vqa(qs, tmp_path / "o", vocab=vocab, progress=False)
    convert_vqa(qs, tmp_path / "o", vocab=vocab, answer_vocab=["yes", "no"], progress=False)
    assert len(TextStore(str(tmp_path / "o")).field("answers", 0)) == 0
    ans = write_json(
        tmp_path / "a.json",
        {
            "annotations": [
                {"question_id": 1, "answers": human("yes"), "multiple_choice_answer": "yes"}
            ]
        },
    )
    with pytest.raises(DataError, match="no annotation for this question") as err:
        convert_vqa(qs, tmp_path / "o2", vocab=vocab, annotations_path=ans, progress=False)
    assert "question 1" in str(err.value)


def test_cli_text_formats(tmp_path, vocab, capsys):
    from uniter_jax.data.convert.__main__ import main

    anns = [{"id": i, "image_id": i, "caption": c} for i, c in enumerate(CAPTIONS)]
    src = write_json(tmp_path / "c.json", coco(anns))
    args = ["coco-captions", src, "--vocab", vocab, "--out", str(tmp_path / "c"), "--no-progress"]
    assert main(args) == 0
    assert "wrote 3 texts" in capsys.readouterr().out
    qs = write_json(
        tmp_path / "q.json",
        {"questions": [{"question_id": 1, "image_id": 1, "question": "is it red?"}]},
    )
    answers = write_json(tmp_path / "answers.json", ["yes", "no"])
    args = ["vqa", qs, "--answer-vocab", answers, "--vocab", vocab, "--out", str(tmp_path / "v")]
    assert main([*args, "--no-progress"]) == 0
    assert TextStore(str(tmp_path / "v")).manifest["source"]["answer_vocab"] == ["yes", "no"]
    assert main([*args, "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "image_id",
                    "caption",
                    "question_id",
                    "question",
                    "answers",
                    "answer",
                    "annotations",
                    "questions",
                    "multiple_choice_answer",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(captions=JSON, questions=JSON, annotations=JSON)
def test_fuzzed_json_raises_only_data_errors(tmp_path, vocab, captions, questions, annotations):
    cases = [
        lambda out: convert_coco_captions(
            write_json(tmp_path / "c.json", captions), out, vocab=vocab, progress=False
        ),
        lambda out: convert_vqa(
            write_json(tmp_path / "q.json", questions),
            out,
            vocab=vocab,
            progress=False,
            annotations_path=write_json(tmp_path / "a.json", annotations),
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
        if out.exists():
            import shutil

            shutil.rmtree(out)


def test_vqa_malformed_answers(tmp_path, vocab):
    qs = write_json(
        tmp_path / "q.json",
        {"questions": [{"question_id": 1, "image_id": 3, "question": "is it red?"}]},
    )
    ans = write_json(
        tmp_path / "a.json",
        {
            "annotations": [
                {"question_id": 1, "answers": [{"answer": 5}], "multiple_choice_answer": "yes"}
            ]
        },
    )
    with pytest.raises(DataError) as err:
        convert_vqa(qs, tmp_path / "o", vocab=vocab, annotations_path=ans, progress=False)
    assert err.value.field == "answers" and "question 0" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "compared"),
    [
        ("Two.", "2"),  # final period, number word, case
        ("none", "0"),
        ("a dog", "dog"),  # articles go
        ("The Red Car", "red car"),
        ("1,000", "1000"),  # a comma between digits: punctuation dropped
        ("3.5", "3.5"),  # a decimal point stays
        ("yes!", "yes"),  # punctuation with nothing beside it becomes a space, then trimmed
        ("left-side", "left side"),
        ("red , blue", "red blue"),  # punctuation beside a space is dropped
        ("dont", "don't"),  # contractions get their apostrophes back
        ("whats up?", "what's up"),
        ("couldntve", "couldn't've"),
        ("its", "its"),  # an ordinary word is left alone
        ("  tennis\tracket\n", "tennis racket"),
    ],
)
def test_answers_are_normalized_as_the_official_evaluation_does(raw, compared):
    assert normalize(raw) == compared
    assert normalize(compared) == compared  # stored answers stay what they are
