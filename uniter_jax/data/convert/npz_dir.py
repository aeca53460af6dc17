"""A folder of one `.npz` per image -> image store.

Each `<image_id>.npz` (the id is the file stem) holds `features` `[N, D]` and
either `norm_bb` `[N, 6]` = `[x1/W, y1/H, x2/W, y2/H, w/W, h/H]` (the original
UNITER record; `w*h` is appended as the 7th value, docs/original.md, Region features) or
`boxes` `[N, 4]` pixel `x1, y1, x2, y2` with scalars `image_w`, `image_h`
(`norm_bb` wins when both are present). Optional: `conf` `[N]` and
`soft_labels` `[N, 1601]` (background first). Without `conf` the confidence is
the highest non-background soft label, or 1.0 without soft labels. Other keys
are ignored. Files are read with `allow_pickle=False`.

Soft labels: `soft_labels=True` requires them in every file, `False` ignores
them, None (the default) follows the first readable file and treats a file
that differs as bad.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from uniter_jax.data.convert.arrays import (
    NUM_LABELS,
    image_id,
    load_npz,
    numeric,
    positive_int,
    probabilities,
    soft_label_conf,
)
from uniter_jax.data.convert.common import Record, RegionOptions, Summary
from uniter_jax.data.errors import DataError
from uniter_jax.data.regions import ImageRegions, box_features, check_pixel_boxes, make_regions

KEYS = ("features", "norm_bb", "boxes", "image_w", "image_h", "conf", "soft_labels")
# Normalised coordinates may overshoot [0, 1] by rounding (fp16 in the original), no more.
_NORM_SLACK = 1e-3


def convert_npz_dir(
    directory: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    soft_labels: bool | None = None,
    num_labels: int = NUM_LABELS,
    **options: Any,
) -> Summary:
    """Converts every `*.npz` directly in `directory` (local), in name order.

    `options`: the fields of `RegionOptions`, as keywords.
    """
    opts = RegionOptions(**options)
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DataError("folder not found", file=directory)
    paths = sorted(
        os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(".npz")
    )
    if not paths:
        raise DataError("no .npz files", file=directory)
    strict = soft_labels is None
    if soft_labels is None:
        soft_labels = first_has_soft_labels(paths)
    parse = functools.partial(
        parse_file,
        feature_dim=opts.feature_dim,
        soft_labels=soft_labels,
        num_labels=num_labels,
        strict=strict,
    )
    records = (Record(path, file_stem(path), functools.partial(parse, path)) for path in paths)
    return opts.write(
        records,
        out_dir,
        num_labels=num_labels if soft_labels else None,
        source={"format": "npz-dir", "directory": directory, "soft_labels": soft_labels},
        total=len(paths),
    )


def file_stem(path: str) -> str:
    """The image id an `<image_id>.npz` path names (its file name without `.npz`)."""
    return os.path.basename(path)[: -len(".npz")]


def first_has_soft_labels(paths: list[str]) -> bool:
    """Whether the first readable file of `paths` holds `soft_labels` (False if none is).

    This is what `soft_labels=None` follows; unreadable files are passed over
    here and reported as bad when they are converted.
    """
    for path in paths:
        try:
            return "soft_labels" in load_npz(path, ("soft_labels",))
        except DataError:
            continue
    return False


def parse_file(
    path: str, *, feature_dim: int, soft_labels: bool, num_labels: int, strict: bool
) -> ImageRegions:
    """One `<image_id>.npz` -> validated regions, features `[n, feature_dim]`.

    `soft_labels`: require `[n, num_labels]` soft labels (True) or ignore them
    (False); `strict`: a file holding them while `soft_labels` is False is bad
    (the default mode, where the first file decides). Raises DataError naming
    the key of a bad or missing array.
    """
    name = image_id(file_stem(path), "file name")
    arrays = load_npz(path, KEYS)
    if "features" not in arrays:
        raise DataError("missing", field="features")
    features = numeric(arrays["features"], "features", (None, None))
    n = len(features)
    if n == 0:
        raise DataError("no regions", field="features")
    if "norm_bb" in arrays:
        boxes7 = norm_bb_features(numeric(arrays["norm_bb"], "norm_bb", (n, 6)))
    elif {"boxes", "image_w", "image_h"} <= arrays.keys():
        width = positive_int(arrays["image_w"], "image_w")
        height = positive_int(arrays["image_h"], "image_h")
        xyxy = numeric(arrays["boxes"], "boxes", (n, 4))
        check_pixel_boxes(xyxy, width, height)
        boxes7 = box_features(xyxy, width, height)
    else:
        raise DataError("missing: needs norm_bb, or boxes with image_w and image_h", field="boxes")
    soft, conf = None, None
    has_soft = "soft_labels" in arrays
    if soft_labels and not has_soft:
        raise DataError("missing (pass --no-soft-labels to leave them out)", field="soft_labels")
    if strict and has_soft and not soft_labels:
        raise DataError(
            "present, but the first file has none (pass --soft-labels or --no-soft-labels)",
            field="soft_labels",
        )
    if soft_labels:
        soft, conf = soft_label_conf(arrays["soft_labels"], n, num_labels)
    if "conf" in arrays:
        conf = probabilities(arrays["conf"], "conf", (n,))
    return make_regions(name, features, boxes7, conf, soft, feature_dim=feature_dim)


def norm_bb_features(norm_bb: np.ndarray) -> np.ndarray:
    """`[n, 6]` normalised boxes -> `[n, 7]` float32, `(w/W) * (h/H)` appended.

    Raises DataError (field `norm_bb`) for boxes outside the image or of zero area.
    """
    boxes = norm_bb.astype(np.float32)
    x1, y1, x2, y2, w, h = boxes.T
    if boxes[:, :4].min() < -_NORM_SLACK or boxes[:, :4].max() > 1 + _NORM_SLACK:
        raise DataError(
            "normalised coordinates outside [0, 1]: box outside the image", field="norm_bb"
        )
    empty = (x2 <= x1) | (y2 <= y1) | (w <= 0) | (h <= 0)
    if empty.any():
        i = int(np.argmax(empty))
        raise DataError(f"box {i} {boxes[i].tolist()} has zero area", field="norm_bb")
    return np.concatenate([boxes, boxes[:, 4:5] * boxes[:, 5:6]], axis=1)
