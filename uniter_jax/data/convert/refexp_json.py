"""Referring expressions as plain JSON -> a refexp text store (no refer toolkit).

Read: a JSON list, or JSON Lines, of one object per expression:

  {"ref_id": 7, "image_id": 391895, "sentence": "the man on the left",
   "bbox": [x, y, w, h], "width": 640, "height": 480}

`bbox` is the referred box in pixels, COCO style (top-left corner, width,
height) and `width`/`height` the image's size; an optional `sent_id` names
the sentence (else its position among the ref's sentences). Written exactly
as the RefCOCO converter writes (`uniter_jax/data/convert/refcoco.py`): text
id `"<ref_id>-<sent_id>"`, fields `gt_box`, `target` and `target_iou`
against the image store's regions, `--boxes gt` checking that the store
holds the annotated boxes.
"""

from __future__ import annotations

import collections
import functools
import json
import os
from typing import Any

from uniter_jax.data.convert.coco_captions import format_image_id
from uniter_jax.data.convert.refcoco import (
    BOXES,
    boxes_of,
    gt_box_of,
    image_size,
    target_fields,
    write_refexp_store,
)
from uniter_jax.data.convert.texts import Text, TextOptions, TextRecord, TextSummary
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import read_bytes
from uniter_jax.data.store_sets import open_images

REQUIRED = ("ref_id", "image_id", "sentence", "bbox", "width", "height")


def read_expressions(path: str) -> list[object]:
    """The objects of a JSON list or JSON Lines file (each checked later, alone)."""
    try:
        content = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text ({error})", file=path) from None
    if content.lstrip().startswith("["):
        try:
            items = json.loads(content)
        except json.JSONDecodeError as error:
            raise DataError(f"not valid JSON ({error})", file=path) from None
        return items
    items = []
    for number, line in enumerate(content.splitlines(), 1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(
                    f"not valid JSON ({error})", file=path, record=f"line {number}"
                ) from None
    return items


def _parse(item: object, sent_id: int, boxes_of_image, image_id_format: str, boxes: str) -> Text:
    if not isinstance(item, dict):
        raise DataError(f"expected an object, got {type(item).__name__}")
    missing = [k for k in REQUIRED if k not in item]
    if missing:
        raise DataError(f"missing keys {missing}", field=missing[0])
    for key in ("ref_id", "image_id"):
        if not isinstance(item[key], int | str) or isinstance(item[key], bool):
            raise DataError(f"expected an int or string, got {item[key]!r}", field=key)
    if not isinstance(item["sentence"], str) or not item["sentence"].strip():
        raise DataError("expected a non-empty string", field="sentence")
    gt_box = gt_box_of(
        {"id": item["ref_id"], "bbox": item["bbox"]},
        {"width": item["width"], "height": item["height"]},
        item["image_id"],
    )
    image_id = format_image_id(image_id_format, item["image_id"])
    fields = target_fields(gt_box, boxes_of_image(image_id), image_id, boxes)
    fields["image_size"] = image_size(item)
    sent = item.get("sent_id", sent_id)
    return Text(f"{item['ref_id']}-{sent}", image_id, item["sentence"], fields)


def convert_refexp_json(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    images: str,
    boxes: str = "detected",
    **options: Any,
) -> TextSummary:
    """Plain JSON referring expressions -> a refexp text store; see the module docstring.

    `options`: the other fields of `TextOptions`, as keywords (`vocab` required).
    """
    opts = TextOptions(images=images, **options)
    if boxes not in BOXES:
        raise ValueError(f"boxes must be one of {BOXES}, got {boxes!r}")
    path = os.fspath(path)
    items = read_expressions(path)
    if not isinstance(items, list) or not items:
        raise DataError("expected a non-empty list of expressions", file=path)
    store = open_images(images)
    boxes_of_image = boxes_of(store)
    seen: collections.Counter = collections.Counter()
    records = []
    for n, item in enumerate(items):
        ref = item.get("ref_id") if isinstance(item, dict) else None
        key = ref if isinstance(ref, int | str) else None
        sent_id = seen[key]  # position among the ref's sentences
        seen[key] += 1
        parse = functools.partial(
            _parse, item, sent_id, boxes_of_image, opts.image_id_format, boxes
        )
        records.append(TextRecord(path, f"expression {n}", parse))
    source = {"format": "refexp-json", "expressions": path, "boxes": boxes}
    return write_refexp_store(records, out_dir, opts, store, source)
