"""SNLI-VE JSON Lines (`snli_ve_<split>.jsonl`) -> a visual entailment text store.

Read: one JSON object per line with `"pairID"` (the text id, e.g.
`"2248275918.jpg#2r1e"`), `"sentence2"` (the hypothesis, the text stored; the
premise is the image), `"gold_label"` (`entailment`, `neutral` or
`contradiction`) and the Flickr30k image as `"Flikr30kID"` (`"2248275918.jpg"`,
the public spelling) or `"Flickr30K_ID"` (`"2248275918"`); the other keys
(`sentence1`, parses, `annotator_labels`, ...) are not read. The image id is
the Flickr id without `.jpg`, passed as a string through `image_id_format`.

Written, task `snli_ve`, for N hypotheses: `label` int64 [N], the index of
`gold_label` in `LABELS` (0 entailment, 1 neutral, 2 contradiction). A line
whose gold label is missing or not one of the three (SNLI's `"-"`, no
majority) is bad.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from uniter_jax.data.convert.coco_captions import format_image_id
from uniter_jax.data.convert.jsonl import convert_jsonl, string_field
from uniter_jax.data.convert.texts import Text, TextOptions, TextSummary
from uniter_jax.data.errors import DataError

LABELS = ("entailment", "neutral", "contradiction")


def flickr_id(record: dict[str, Any]) -> str:
    """The Flickr30k id of a line, from `Flikr30kID` or `Flickr30K_ID`, without `.jpg`."""
    found = {}
    for key in ("Flikr30kID", "Flickr30K_ID"):
        if key not in record:
            continue
        value = record[key]
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # the id is a number; accept it written as one
        if not isinstance(value, str):
            raise DataError(f"expected a string, got {type(value).__name__}", field=key)
        found[key] = value.removesuffix(".jpg")
    if not found:
        raise DataError("missing key 'Flikr30kID' (or 'Flickr30K_ID')", field="Flikr30kID")
    if len(set(found.values())) > 1:
        raise DataError(
            f"{found['Flickr30K_ID']!r} disagrees with Flikr30kID {found['Flikr30kID']!r}",
            field="Flickr30K_ID",
        )
    key, value = next(iter(found.items()))
    if not value.strip():
        raise DataError("empty image id", field=key)
    return value


def gold_label(record: dict[str, Any]) -> int:
    """The index of the line's `gold_label` in `LABELS`."""
    value = record.get("gold_label")
    if value not in LABELS:
        found = "missing" if "gold_label" not in record else f"{value!r}"
        raise DataError(f"gold label {found}, expected one of {list(LABELS)}", field="gold_label")
    return LABELS.index(value)


def _parse(record: dict[str, Any], image_id_format: str) -> Text:
    pair_id = string_field(record, "pairID")
    hypothesis = string_field(record, "sentence2")
    label = gold_label(record)
    image_id = format_image_id(image_id_format, flickr_id(record))
    return Text(pair_id, image_id, hypothesis, {"label": np.int64(label)})


def convert_snli_ve(
    jsonl_path: str | os.PathLike, out_dir: str | os.PathLike, **options: Any
) -> TextSummary:
    """SNLI-VE JSON Lines -> a visual entailment store (see the module docstring).

    `options`: the fields of `TextOptions`, as keywords (`vocab` required).
    """
    source = {"format": "snli-ve", "labels": list(LABELS)}
    return convert_jsonl(
        jsonl_path, out_dir, _parse, TextOptions(**options), task="snli_ve", source=source
    )
