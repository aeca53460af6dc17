"""VCR annotations (`train.jsonl`, `val.jsonl`, `test.jsonl`) -> a grouped VCR text store.

Layout read: one JSON object a line with `annot_id` ("val-0"), `img_fn`
("lsmdc_.../<name>.jpg"), `objects` (detector class names, e.g. ["person",
"person", "car"]), `question`, `answer_choices` (4), `rationale_choices` (4),
`answer_label` and `rationale_label` (0..3; absent in the test split) and
keys not read here. A question, answer or rationale is a list of tokens, each
a word or a list of indices into `objects`: ["Why", "is", [0, 2], "here", "?"]
reads "Why is person and car here ?" (several objects: "a, b and c").

Written: one group of 4 consecutive examples per annotation (the shared
grouped-store contract, `source["group_size"] == 4`), one per candidate k:

- mode "qa" (Q->A): question [SEP] answer k; task "vcr_qa".
- mode "qar" (QA->R): question [SEP] correct answer [SEP] rationale k; task
  "vcr_qar". Without labels (the test split) the correct answer is unknown,
  so each annotation gets 4 groups, the rationales conditioned on answer j
  in group j (what the leaderboard's Q->AR submission scores).
- mode "text": one text per labelled question, not a group: question [SEP]
  correct answer [SEP] correct rationale, text id `<annot_id>#text`; task
  "captions", the store pretraining reads (the original's second-stage
  pretraining on VCR: `configs/pretrain.py` with `data.texts` this store).

Each piece is tokenized on its own and the ids joined with the vocabulary's
`[SEP]` id (the pipeline adds `[CLS]` before and `[SEP]` after). Text ids are
`<annot_id>#<mode>#<k>`, or `<annot_id>#qar#a<j>#<k>` for unlabelled QA->R;
the image id is `img_fn`'s file name without folder and extension, formatted
with `image_id_format`. Fields, all int64 `[N]`:

- `label`: 1 for the correct candidate (the answer in qa, the rationale in
  qar), 0 for the other three, -1 for every row when the record has no labels.
- `group`: the group's index, 0, 0, 0, 0, 1, ... consecutive in the store
  (numbered by write_text_store, so skipped records leave no gap).
- `slot`: k, the candidate's index 0..3 inside its group.

A record is one group: a line, or for unlabelled QA->R a line under one
answer ("line 7 answer 2"), so there a bad line is listed 4 times when skipped.

Texts over `max_txt_len` tokens are cut here, not by the store writer: first
the question (to 1 token at least, keeping its start), then the answer in qar
(likewise), then the end of the candidate. They are counted in the returned
summary's `truncated`; the manifest's own `truncated` stays 0, as the writer
never sees a text longer than the limit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import posixpath
from typing import Any

import numpy as np

from uniter_jax.data.convert.coco_captions import format_image_id
from uniter_jax.data.convert.texts import Text, TextOptions, TextRecord, TextSummary
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import read_bytes
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.tokenizer import Tokenizer

MODES = ("qa", "qar", "text")
GROUP_SIZE = 4
# "text" stores are plain caption-like stores: what pretraining reads.
TASKS = {"qa": "vcr_qa", "qar": "vcr_qar", "text": "captions"}


@dataclasses.dataclass
class _Conversion:
    """What every record's parse reads, and what the good records leave behind.

    A parse counts its cut texts, so it must succeed only for records that
    are then written: it checks the image and the text ids itself (the
    checks write_text_store would make after it), so those always pass.
    """

    mode: str
    tokenizer: Tokenizer
    images: ImageStore | None
    image_id_format: str
    max_txt_len: int
    cut: int = 0
    text_ids: set[str] = dataclasses.field(default_factory=set)


def object_phrase(names: list[str]) -> str:
    """["person"] -> "person"; ["person", "dog", "car"] -> "person, dog and car"."""
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _words(tokens: object, objects: list[str], field: str, what: str) -> str:
    """A VCR token list as text, object references replaced by their class names."""
    if not isinstance(tokens, list):
        raise DataError(
            f"{what}: expected a list of tokens, got {type(tokens).__name__}", field=field
        )
    words = []
    for token in tokens:
        if isinstance(token, str):
            words.append(token)
            continue
        if not isinstance(token, list) or not token:
            raise DataError(f"{what}: {token!r} is neither a word nor object indices", field=field)
        for i in token:
            if isinstance(i, bool) or not isinstance(i, int):
                raise DataError(f"{what}: object index {i!r} is not an integer", field=field)
            if not 0 <= i < len(objects):
                raise DataError(
                    f"{what}: object index {i} outside the {len(objects)} objects", field=field
                )
        words.append(object_phrase([objects[i] for i in token]))
    return " ".join(words)


def _choices(record: dict, key: str, objects: list[str]) -> list[str]:
    choices = record[key]
    if not isinstance(choices, list) or len(choices) != GROUP_SIZE:
        got = len(choices) if isinstance(choices, list) else type(choices).__name__
        raise DataError(f"expected a list of {GROUP_SIZE} choices, got {got}", field=key)
    name = key.split("_")[0]
    return [_words(c, objects, key, f"{name} choice {k}") for k, c in enumerate(choices)]


def _label(record: dict, key: str) -> int:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < GROUP_SIZE:
        raise DataError(f"expected an integer in 0..{GROUP_SIZE - 1}, got {value!r}", field=key)
    return value


def fit_pieces(pieces: list[list[int]], sep_id: int, max_len: int) -> tuple[list[int], bool]:
    """Joins token pieces with `sep_id`, cut to `max_len`; returns (ids, whether cut).

    Pieces before the last are shortened in order, each to 1 token at least
    and keeping its start; then the end of the joined ids is dropped.
    """
    total = sum(map(len, pieces)) + len(pieces) - 1
    over = total - max_len
    kept = [list(p) for p in pieces]
    for piece in kept[:-1]:
        drop = max(min(over, len(piece) - 1), 0)
        del piece[len(piece) - drop :]
        over -= drop
    ids = kept[0]
    for piece in kept[1:]:
        ids = [*ids, sep_id, *piece]
    return ids[:max_len], total > max_len


def _parse(line: str, c: _Conversion, condition: int | None) -> list[Text]:
    """One line's group of 4; `condition`: the answer an unlabelled QA->R group is under."""
    record = _record(line, c.mode)
    annot_id, img_fn, objects = _header(record)
    labelled, answer, rationale = _labels(record, c.mode, condition)
    image_id = format_image_id(c.image_id_format, posixpath.splitext(posixpath.basename(img_fn))[0])
    if c.images is not None and image_id not in c.images:
        raise DataError(f"image {image_id!r} is not in the image store", field="image_id")

    question = _words(record["question"], objects, "question", "question")
    answers = _choices(record, "answer_choices", objects)
    with_rationales = c.mode in ("qar", "text")
    rationales = _choices(record, "rationale_choices", objects) if with_rationales else []
    q_ids, a_ids, r_ids = _encode(c.tokenizer, question, answers, rationales)
    if c.mode == "text":
        return _text(c, annot_id, image_id, [q_ids, a_ids[answer], r_ids[rationale]])

    if c.mode == "qa":
        prefix, correct = "qa", answer
        pieces = [[q_ids, a] for a in a_ids]
        words = [[question, a] for a in answers]
    else:
        j = answer if labelled else condition
        prefix, correct = ("qar", rationale) if labelled else (f"qar#a{j}", None)
        pieces = [[q_ids, a_ids[j], r] for r in r_ids]
        words = [[question, answers[j], r] for r in rationales]
    return _group(c, annot_id, prefix, image_id, correct, pieces, words)


def _record(line: str, mode: str) -> dict:
    """The line's JSON object, with the keys `mode` reads."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise DataError(f"expected an object, got {type(record).__name__}")
    needed = ["annot_id", "img_fn", "objects", "question", "answer_choices"]
    if mode in ("qar", "text"):
        needed.append("rationale_choices")
    missing = [key for key in needed if key not in record]
    if missing:
        raise DataError(f"missing keys {missing}", field=missing[0])
    return record


def _header(record: dict) -> tuple[str, str, list[str]]:
    """The record's `annot_id` (as a string), `img_fn` and `objects`, checked."""
    annot_id = record["annot_id"]
    if isinstance(annot_id, bool) or not isinstance(annot_id, int | str) or annot_id == "":
        raise DataError(f"expected a string id, got {annot_id!r}", field="annot_id")
    img_fn = record["img_fn"]
    if not isinstance(img_fn, str) or not img_fn:
        raise DataError(f"expected a file name, got {img_fn!r}", field="img_fn")
    objects = record["objects"]
    if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
        raise DataError("expected a list of class names", field="objects")
    return str(annot_id), img_fn, objects


def _labels(record: dict, mode: str, condition: int | None) -> tuple[bool, int | None, int | None]:
    """(labelled, the right answer, the right rationale); None where unknown or unused.

    A group under a `condition` (unlabelled QA->R) is unlabelled; otherwise
    the record is labelled when it has `answer_label`.
    """
    labelled = condition is None and "answer_label" in record
    answer = _label(record, "answer_label") if labelled else None
    rationale = None
    if mode == "text" and not labelled:
        raise DataError("text mode needs labelled records (train or val)", field="answer_label")
    if mode in ("qar", "text"):
        if labelled and "rationale_label" not in record:
            raise DataError("answer_label without rationale_label", field="rationale_label")
        if not labelled and "rationale_label" in record:
            raise DataError("rationale_label without answer_label", field="answer_label")
        rationale = _label(record, "rationale_label") if labelled else None
    return labelled, answer, rationale


def _encode(
    tokenizer: Tokenizer, question: str, answers: list[str], rationales: list[str]
) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """Token ids of the question, the answers and the rationales; an empty piece is bad."""
    encoded = tokenizer.encode_batch([question, *answers, *rationales])
    for n, ids in enumerate(encoded):
        if not ids:
            field, what = "question", "the question"
            if n:
                field = "answer_choices" if n <= GROUP_SIZE else "rationale_choices"
                what = f"{field.split('_')[0]} choice {(n - 1) % GROUP_SIZE}"
            raise DataError(f"{what} has no tokens (empty text)", field=field)
    return encoded[0], encoded[1 : 1 + GROUP_SIZE], encoded[1 + GROUP_SIZE :]


def _group(
    c: _Conversion,
    annot_id: str,
    prefix: str,
    image_id: str,
    correct: int | None,
    pieces: list[list[list[int]]],
    words: list[list[str]],
) -> list[Text]:
    """The 4 texts of a group, `<annot_id>#<prefix>#<k>` joined from `pieces[k]`.

    `correct`: the right candidate's k; None when unknown (every label -1).
    """
    text_ids = [f"{annot_id}#{prefix}#{k}" for k in range(GROUP_SIZE)]
    if any(t in c.text_ids for t in text_ids):
        raise DataError(f"duplicate annot_id {annot_id!r}", field="annot_id")
    out, cut = [], 0
    for k in range(GROUP_SIZE):
        ids, was_cut = fit_pieces(pieces[k], c.tokenizer.vocab.sep_id, c.max_txt_len)
        cut += was_cut
        # write_text_store adds `group` and `slot` (k) to the Texts of a list.
        label = {"label": np.int64(-1 if correct is None else int(k == correct))}
        text = " [SEP] ".join(words[k])
        out.append(Text(text_ids[k], image_id, text, label, input_ids=ids))
    c.cut += cut
    c.text_ids.update(text_ids)
    return out


def _text(c: _Conversion, annot_id: str, image_id: str, pieces: list[list[int]]) -> Text:
    """Mode "text": the question with its right answer and rationale, one text."""
    text_id = f"{annot_id}#text"
    if text_id in c.text_ids:
        raise DataError(f"duplicate annot_id {annot_id!r}", field="annot_id")
    ids, was_cut = fit_pieces(pieces, c.tokenizer.vocab.sep_id, c.max_txt_len)
    c.cut += was_cut
    c.text_ids.add(text_id)
    return Text(text_id, image_id, "", {}, input_ids=ids)


def _line_records(path: str, n: int, line: str, c: _Conversion) -> list[TextRecord]:
    """A line's records: one group, or for unlabelled QA->R one group per answer."""
    if c.mode == "qar":
        try:  # parsed again (lazily, where errors are skippable) by each record
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and not {"answer_label", "rationale_label"} & set(record):
            return [
                TextRecord(path, f"line {n} answer {j}", functools.partial(_parse, line, c, j))
                for j in range(GROUP_SIZE)
            ]
    return [TextRecord(path, f"line {n}", functools.partial(_parse, line, c, None))]


def convert_vcr(
    jsonl_path: str | os.PathLike, out_dir: str | os.PathLike, *, mode: str, **options: Any
) -> TextSummary:
    """Writes the Q->A ("qa") or QA->R ("qar") groups of a VCR jsonl; see the module docstring.

    The test split has no labels: every row's `label` is then -1. `options`:
    the fields of `TextOptions`, as keywords (`vocab` required); `max_txt_len`
    defaults to 120 here, room for a question, an answer and a rationale.
    """
    opts = TextOptions(**{"max_txt_len": 120, **options})
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    path = os.fspath(jsonl_path)
    try:
        lines = read_bytes(path).decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e})", file=path) from None
    tokenizer = Tokenizer(opts.vocab)
    conversion = _Conversion(
        mode, tokenizer, opts.image_store(), opts.image_id_format, opts.max_txt_len
    )
    records = [
        record
        for n, line in enumerate(lines, 1)
        if line.strip()
        for record in _line_records(path, n, line, conversion)
    ]
    if not records:
        raise DataError("no records (an empty file)", file=path)
    summary = opts.write(
        records,
        out_dir,
        task=TASKS[mode],
        tokenizer=tokenizer,
        images=None,  # checked in _parse, see _Conversion
        source={
            "format": "vcr",
            "file": path,
            "mode": mode,
            **({} if mode == "text" else {"group_size": GROUP_SIZE}),
            "image_id_format": opts.image_id_format,
        },
    )
    summary.truncated += conversion.cut
    return summary
