"""COCO caption JSON (`captions_train2014.json` and alike) -> a captions text store.

Layout read: `{"images": [{"id": ...}], "annotations": [{"id", "image_id",
"caption"}]}`. Image ids become store ids through `image_id_format`
(`"{id}"` by default; `"COCO_train2014_{id:012d}"` matches LXMERT's names).
"""

from __future__ import annotations

import functools
import os

from uniter_jax.data.convert.texts import Text, TextRecord, TextSummary, write_text_store
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import read_json
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.tokenizer import Tokenizer


def _records(path: str, image_id_format: str) -> tuple[list[TextRecord], int]:
    data = read_json(path)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise DataError("expected an object with an 'annotations' list", file=path)
    records = [
        TextRecord(path, f"annotation {n}", functools.partial(_parse, ann, image_id_format))
        for n, ann in enumerate(annotations)
    ]
    return records, len(records)


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
    json_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vocab: str,
    images: str | None = None,
    image_id_format: str = "{id}",
    max_txt_len: int = 60,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TextSummary:
    path = os.fspath(json_path)
    records, total = _records(path, image_id_format)
    return write_text_store(
        records,
        out_dir,
        task="captions",
        tokenizer=Tokenizer(vocab),
        max_txt_len=max_txt_len,
        images=ImageStore(images) if images else None,
        source={"format": "coco-captions", "file": path, "image_id_format": image_id_format},
        skip_bad=skip_bad,
        overwrite=overwrite,
        progress=progress,
        total=total,
    )
