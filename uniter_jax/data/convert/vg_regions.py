"""Visual Genome `region_descriptions.json` -> a captions text store.

Layout read: a JSON list of images, `[{"id": <image id>, "regions": [{
"region_id", "image_id", "phrase", "x", "y", "width", "height"}, ...]}, ...]`.

Written: one text per region description, text id = `region_id`, text =
`phrase`, image id = the image's `id` through `image_id_format` (`"{id}"` by
default; an int, so `vg_{id:07d}` works), the task "captions" with no task
fields, as the COCO caption converter writes, so pretraining reads both alike.
The region's box is not kept: the image store's regions come from the
detector, not from the annotators. A region whose own `image_id` disagrees
with its image's `id` is bad, as is an empty phrase.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from uniter_jax.data.convert.coco_captions import format_image_id
from uniter_jax.data.convert.texts import Text, TextOptions, TextRecord, TextSummary
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import read_json
from uniter_jax.data.tokenizer import Tokenizer


def records(path: str, images: list, image_id_format: str) -> list[TextRecord]:
    """One lazily parsed record per region description of `images`, in order.

    `images` is the JSON list read from `path` (the file the records name).
    A region is located as `image <n> region <m>`; an image without a
    `regions` list is one record, `image <n>`, whose parse raises, since
    nothing in it can be placed.
    """
    found = []
    for n, image in enumerate(images):
        regions = image.get("regions") if isinstance(image, dict) else None
        if not isinstance(regions, list):
            # Nothing in it can be placed, so the image is one bad record.
            found.append(TextRecord(path, f"image {n}", functools.partial(_bad_image, image)))
            continue
        found += [
            TextRecord(
                path,
                f"image {n} region {m}",
                functools.partial(_parse, image, region, image_id_format),
            )
            for m, region in enumerate(regions)
        ]
    return found


def _bad_image(image: object) -> Text:
    if not isinstance(image, dict):
        raise DataError(f"expected an object, got {type(image).__name__}")
    raise DataError("expected a 'regions' list", field="regions")


def _id(value: object, field: str) -> int | str:
    """An id as VG writes it (an int; a non-empty string accepted)."""
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise DataError(f"expected an integer id, got {value!r}", field=field)
    return value


def _parse(image: dict, region: object, image_id_format: str) -> Text:
    if "id" not in image:
        raise DataError("missing key 'id' (the image id)", field="id")
    image_id = _id(image["id"], "id")
    if not isinstance(region, dict):
        raise DataError(f"expected an object, got {type(region).__name__}", field="regions")
    missing = sorted({"region_id", "phrase"} - set(region))
    if missing:
        raise DataError(f"missing keys {missing}", field=missing[0])
    region_id, phrase = _id(region["region_id"], "region_id"), region["phrase"]
    if "image_id" in region and str(region["image_id"]) != str(image_id):
        raise DataError(
            f"{region['image_id']!r} disagrees with the image's id {image_id!r}", field="image_id"
        )
    if not isinstance(phrase, str):
        raise DataError(f"expected a string, got {type(phrase).__name__}", field="phrase")
    if not phrase.strip():
        raise DataError("empty phrase", field="phrase")
    return Text(str(region_id), format_image_id(image_id_format, image_id), phrase, {})


def convert_vg_regions(
    json_path: str | os.PathLike, out_dir: str | os.PathLike, **options: Any
) -> TextSummary:
    """VG region descriptions -> a captions store; see the module docstring.

    `options`: the fields of `TextOptions`, as keywords (`vocab` required).
    """
    opts = TextOptions(**options)
    path = os.fspath(json_path)
    images = read_json(path)
    if not isinstance(images, list):
        raise DataError("expected a JSON list of images", file=path)
    return opts.write(
        records(path, images, opts.image_id_format),
        out_dir,
        task="captions",
        tokenizer=Tokenizer(opts.vocab),
        images=opts.image_store(),
        source={"format": "vg-regions", "file": path, "image_id_format": opts.image_id_format},
    )
