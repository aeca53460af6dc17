"""VQA v2 questions (+ annotations) JSON -> a VQA text store.

Read: `{"questions": [{"question_id", "image_id", "question"}]}` and, for
train/val, `{"annotations": [{"question_id", "answers": [{"answer"}, ...],
"multiple_choice_answer"}]}`. The answer vocabulary is the `num_answers`
(3129) most frequent `multiple_choice_answer`s of the given annotations (ties
alphabetical), or a JSON list passed in (use the train vocabulary for val).
Each question stores the vocabulary answers its ten human answers name, how
many humans gave each (`counts`, with `humans`, for the official accuracy)
and the training targets `min(count / 3, 1)` (`scores`). Answers are
compared after the official evaluation's normalization
(`uniter_jax/data/convert/vqa_answers.py`: punctuation, number words,
articles, contractions).

For val and test, pass the train store's vocabulary (`answer_vocab_from`), so
answer ids mean the same answers in every split.
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any

import numpy as np

from uniter_jax.data.convert.coco_captions import format_image_id
from uniter_jax.data.convert.texts import Text, TextOptions, TextRecord, TextSummary
from uniter_jax.data.convert.vqa_answers import normalize
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import read_json
from uniter_jax.data.tokenizer import Tokenizer


def normalize_answer(answer: str) -> str:
    """The official evaluation's normalization (`vqa_answers.normalize`)."""
    return normalize(answer)


def _list(path: str, key: str) -> list:
    data = read_json(path)
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DataError(f"expected an object with a {key!r} list", file=path)
    return items


def answer_vocabulary(annotations: list, num_answers: int) -> list[str]:
    """The `num_answers` most frequent normalized `multiple_choice_answer`s."""
    counts = collections.Counter(
        normalize_answer(a["multiple_choice_answer"])
        for a in annotations
        if isinstance(a, dict) and isinstance(a.get("multiple_choice_answer"), str)
    )
    ranked = sorted(counts, key=lambda a: (-counts[a], a))
    return ranked[:num_answers]


def answer_counts(answers: list, vocab: dict[str, int]) -> tuple[list[int], list[int]]:
    """Vocabulary ids of the human answers and how many humans gave each."""
    if not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
        raise DataError("every answer must be an object with a string 'answer'", field="answers")
    counts = collections.Counter(normalize_answer(a["answer"]) for a in answers)
    ids = sorted(vocab[a] for a in counts if a in vocab)
    inverse = {i: a for a, i in vocab.items()}
    return ids, [counts[inverse[i]] for i in ids]


def soft_scores(answers: list, vocab: dict[str, int]) -> tuple[list[int], list[float]]:
    """Vocabulary ids of the human answers and their scores `min(count / 3, 1)`."""
    ids, counts = answer_counts(answers, vocab)
    return ids, [min(k / 3.0, 1.0) for k in counts]


def _parse(
    question: object,
    annotation: dict | None,
    vocab: dict[str, int],
    image_id_format: str,
    annotated: bool,
) -> Text:
    if not isinstance(question, dict):
        raise DataError(f"expected an object, got {type(question).__name__}")
    missing = sorted({"question_id", "image_id", "question"} - set(question))
    if missing:
        raise DataError(f"missing keys {missing}", field=missing[0])
    if not isinstance(question["question"], str):
        raise DataError("expected a string", field="question")
    ids, counts, humans = [], [], 0
    if annotated and annotation is None:
        raise DataError("no annotation for this question", field="question_id")
    if annotation is not None:
        answers = annotation.get("answers")
        if not isinstance(answers, list):
            raise DataError("annotation without an 'answers' list", field="answers")
        ids, counts = answer_counts(answers, vocab)
        humans = len(answers)
    image_id = format_image_id(image_id_format, question["image_id"])
    return Text(
        str(question["question_id"]),
        image_id,
        question["question"],
        {
            "answers": np.asarray(ids, np.int64),
            "scores": np.minimum(np.asarray(counts, np.float64) / 3.0, 1.0),
            # For the official accuracy (`metrics.vqa_credit`).
            "counts": np.asarray(counts, np.int32),
            "humans": np.int32(humans),
        },
    )


def answer_vocab_from(path: str) -> list[str]:
    """The answer vocabulary of a VQA text store folder, or of a JSON list file."""
    manifest = os.path.join(path, "manifest.json")
    if os.path.isdir(path) and os.path.exists(manifest):
        vocab = (read_json(manifest).get("source") or {}).get("answer_vocab")
        if not isinstance(vocab, list):
            raise DataError("this text store records no answer vocabulary", file=manifest)
        return vocab
    vocab = read_json(path)
    if not isinstance(vocab, list) or not all(isinstance(a, str) for a in vocab):
        raise DataError("expected a JSON list of answer strings", file=path)
    return vocab


def convert_vqa(
    questions_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    annotations_path: str | os.PathLike | None = None,
    answer_vocab: list[str] | None = None,
    num_answers: int = 3129,
    **options: Any,
) -> TextSummary:
    """VQA v2 questions (and annotations) -> a VQA text store; see the module docstring.

    `options`: the fields of `TextOptions`, as keywords (`vocab` required).
    """
    opts = TextOptions(**options)
    questions_path = os.fspath(questions_path)
    questions = _list(questions_path, "questions")
    by_question: dict = {}
    if annotations_path is not None:
        annotations = _list(os.fspath(annotations_path), "annotations")
        by_question = {a.get("question_id"): a for a in annotations if isinstance(a, dict)}
        if answer_vocab is None:
            answer_vocab = answer_vocabulary(annotations, num_answers)
    if answer_vocab is None:
        raise DataError(
            "questions without annotations need an answer vocabulary", file=questions_path
        )
    # Humans' answers are normalized, so a vocabulary passed in is matched
    # through the same normalization (the first of two entries that agree wins).
    index: dict[str, int] = {}
    for i, a in enumerate(answer_vocab):
        index.setdefault(normalize(a), i)
    records = [
        TextRecord(
            questions_path,
            f"question {n}",
            functools.partial(
                _parse,
                q,
                by_question.get(q.get("question_id")) if isinstance(q, dict) else None,
                index,
                opts.image_id_format,
                annotations_path is not None,
            ),
        )
        for n, q in enumerate(questions)
    ]
    return opts.write(
        records,
        out_dir,
        task="vqa",
        tokenizer=Tokenizer(opts.vocab),
        images=opts.image_store(),
        ragged=("answers", "scores", "counts"),
        source={
            "format": "vqa-v2",
            "questions": questions_path,
            "annotations": os.fspath(annotations_path) if annotations_path else None,
            "answer_vocab": list(answer_vocab),
        },
    )
