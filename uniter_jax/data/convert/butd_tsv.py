"""bottom-up-attention TSV -> image store (docs/original.md, Region features).

Columns, tab-separated, no header: `image_id, image_w, image_h, num_boxes,
boxes, features`; `boxes` is base64 float32 `[num_boxes, 4]` pixel
`x1, y1, x2, y2`, `features` base64 float32 `[num_boxes, D]`.

The TSV holds no class information. Soft labels come, optionally, from a
folder of per-image class probabilities `<image_id>.npy`, float `[num_boxes,
1601]` with background first (the detector's `cls_prob`), in the TSV's box
order, or `<image_id>.npz` as extraction scripts write it, holding that
array as `soft_labels`, `cls_prob` or its only array. The confidence stored
is then the highest non-background probability; without soft labels it is
1.0 for every region.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from uniter_jax.data.convert import tsv
from uniter_jax.data.convert.arrays import NUM_LABELS, load_npy, load_npz, soft_label_conf
from uniter_jax.data.convert.common import RegionOptions, Summary, input_paths
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import exists
from uniter_jax.data.regions import ImageRegions

COLUMNS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")


def convert_butd_tsv(
    tsv_paths: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    soft_label_dir: str | os.PathLike | None = None,
    **options: Any,
) -> Summary:
    """Converts one or more BUTD TSV files into one store at `out_dir`.

    `options`: the fields of `RegionOptions`, as keywords.
    """
    opts = RegionOptions(**options)
    paths = input_paths(tsv_paths)
    if soft_label_dir is not None:
        soft_label_dir = os.fspath(soft_label_dir)
        if not exists(soft_label_dir):
            raise DataError("soft-label folder not found", file=soft_label_dir)
    parse = functools.partial(
        parse_detections, feature_dim=opts.feature_dim, soft_label_dir=soft_label_dir
    )
    return opts.write(
        tsv.records(paths, COLUMNS, parse),
        out_dir,
        num_labels=NUM_LABELS if soft_label_dir else None,
        source={"format": "butd-tsv", "files": paths, "soft_label_dir": soft_label_dir},
    )


def parse_detections(
    columns: tsv.Columns, *, feature_dim: int, soft_label_dir: str | None
) -> ImageRegions:
    """One TSV line's `COLUMNS` -> validated regions, features `[n, feature_dim]`.

    With `soft_label_dir`, the image's class distribution `[n, 1601]` is read
    from there (see the module docstring) and its highest non-background
    probability is the confidence; without, every confidence is 1.0. Raises
    DataError naming the column, or the soft-label file, of a bad value.
    """
    detections = tsv.Detections.parse(
        columns, id_column="image_id", width_column="image_w", height_column="image_h"
    )
    if soft_label_dir is None:
        return detections.regions(feature_dim=feature_dim)
    path, soft_labels = _soft_label_file(soft_label_dir, detections.image_id)
    try:
        soft_labels, conf = soft_label_conf(soft_labels, len(detections.xyxy))
    except DataError as e:
        raise e.located(file=path) from None
    return detections.regions(feature_dim=feature_dim, conf=conf, soft_labels=soft_labels)


# Keys an extraction script's `.npz` may hold the class distribution under.
SOFT_LABEL_KEYS = ("soft_labels", "cls_prob")


def _soft_label_file(folder: str, image_id: str) -> tuple[str, np.ndarray]:
    """`(path, [n, 1601] array)` of an image's class distribution:
    `<image_id>.npy`, else `<image_id>.npz` holding it under one of
    `SOFT_LABEL_KEYS` or as its only array."""
    npy = os.path.join(folder, f"{image_id}.npy")
    npz = os.path.join(folder, f"{image_id}.npz")
    if exists(npy) or not exists(npz):
        return npy, load_npy(npy, "soft_labels")
    arrays = load_npz(npz, None)
    for key in SOFT_LABEL_KEYS:
        if key in arrays:
            return npz, arrays[key]
    if len(arrays) == 1:
        return npz, next(iter(arrays.values()))
    raise DataError(
        f"no class distribution: the archive holds {sorted(arrays)}, not one of "
        f"{list(SOFT_LABEL_KEYS)} (or a single array)",
        file=npz,
        field="soft_labels",
    )
