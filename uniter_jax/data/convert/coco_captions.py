"""COCO caption JSON (`captions_train2014.json` and alike) -> a captions text store.

Layout read: `{"images": [{"id": ...}], "annotations": [{"id", "image_id",
"caption"}]}`. Image ids become store ids through `image_id_format`
(`"{id}"` by default; `"COCO_train2014_{id:012d}"` matches LXMERT's names).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from uniter_jax.data.convert.texts import Text, TextOptions, TextRecord, TextSummary
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import read_json
from uniter_jax.data.tokenizer import Tokenizer


def records(path: str, image_id_format: str) -> list[TextRecord]:
    """One lazily parsed record per annotation of the caption JSON at `path`, in order.

    Each record is located as `annotation <n>` (counted from 0); its parse
    makes a `Text` with text id = the annotation's `id` and image id = its
    `image_id` through `image_id_format`. Raises DataError (naming `path`) when
    the file is not an object with an `annotations` list.
    """
    data = read_json(path)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise DataError("expected an object with an 'annotations' list", file=path)
    return [
        TextRecord(path, f"annotation {n}", functools.partial(_parse, ann, image_id_format))
        for n, ann in enumerate(annotations)
    ]


def _parse(ann: object, image_id_format: str) -> Text:
    if not isinstance(ann, dict):
        raise DataError(f"expected an object, got {type(ann).__name__}")
    missing = sorted({"id", "image_id", "caption"} - set(ann))
    if missing:
        raise DataError(f"missing keys {missing}", field=missing[0])
    if not isinstance(ann["caption"], str):
        raise DataError(f"expected a string, got {type(ann['caption']).__name__}", field="caption")
    return Text(
        str(ann["id"]), format_image_id(image_id_format, ann["image_id"]), ann["caption"], {}
    )


def format_image_id(image_id_format: str, value: object) -> str:
    """A store image id from an annotation's id, e.g. `COCO_train2014_{id:012d}`."""
    try:
        return image_id_format.format(id=value)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise DataError(
            f"cannot format {value!r} with {image_id_format!r}: {e}", field="image_id"
        ) from None


def convert_coco_captions(
    json_path: str | os.PathLike, out_dir: str | os.PathLike, **options: Any
) -> TextSummary:
    """COCO caption JSON -> a captions text store.

    `options`: the fields of `TextOptions`, as keywords (`vocab` required).
    """
    opts = TextOptions(**options)
    path = os.fspath(json_path)
    return opts.write(
        records(path, opts.image_id_format),
        out_dir,
        task="captions",
        tokenizer=Tokenizer(opts.vocab),
        images=opts.image_store(),
        source={"format": "coco-captions", "file": path, "image_id_format": opts.image_id_format},
    )
