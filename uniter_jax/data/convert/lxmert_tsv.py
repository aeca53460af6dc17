"""LXMERT TSV -> image store (docs/original.md, Region features).

Columns, tab-separated, no header: `img_id, img_h, img_w` (height before
width), `objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes,
features`; the arrays are base64 of int64 `[N]`, float32 `[N]`, int64 `[N]`,
float32 `[N]`, float32 `[N, 4]` pixel `x1, y1, x2, y2` and float32 `[N, D]`.

LXMERT keeps hard labels only: `objects_id` is the argmax over the 1600
object classes without background. The stored confidence is `objects_conf`.
By default the store has no soft labels (hard-label MRC must then come from
elsewhere). Since the store has no hard-label field, `one_hot_labels=True`
(`--one-hot-labels`) keeps the class as one-hot soft labels `[N, 1601]` with
the 1 at index `objects_id + 1` (background is index 0); MRC-kl on those is
cross-entropy to the hard label. Attributes are checked for length only and
not stored.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from uniter_jax.data.convert import tsv
from uniter_jax.data.convert.arrays import NUM_LABELS, probabilities
from uniter_jax.data.convert.common import RegionOptions, Summary, input_paths
from uniter_jax.data.errors import DataError
from uniter_jax.data.regions import ImageRegions

COLUMNS = (
    "img_id",
    "img_h",
    "img_w",
    "objects_id",
    "objects_conf",
    "attrs_id",
    "attrs_conf",
    "num_boxes",
    "boxes",
    "features",
)


def convert_lxmert_tsv(
    tsv_paths: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    one_hot_labels: bool = False,
    **options: Any,
) -> Summary:
    """Converts one or more LXMERT TSV files into one store at `out_dir`.

    `options`: the fields of `RegionOptions`, as keywords.
    """
    opts = RegionOptions(**options)
    paths = input_paths(tsv_paths)
    parse = functools.partial(_parse, feature_dim=opts.feature_dim, one_hot_labels=one_hot_labels)
    return opts.write(
        tsv.records(paths, COLUMNS, parse),
        out_dir,
        num_labels=NUM_LABELS if one_hot_labels else None,
        source={"format": "lxmert-tsv", "files": paths, "one_hot_labels": one_hot_labels},
    )


def _parse(columns: tsv.Columns, *, feature_dim: int, one_hot_labels: bool) -> ImageRegions:
    detections = tsv.Detections.parse(
        columns, id_column="img_id", width_column="img_w", height_column="img_h"
    )
    n = len(detections.xyxy)
    objects = tsv.decode(columns["objects_id"], "int64", "objects_id", (n,))
    conf = tsv.decode(columns["objects_conf"], "float32", "objects_conf", (n,))
    probabilities(conf, "objects_conf", (n,))
    tsv.decode(columns["attrs_id"], "int64", "attrs_id", (n,))
    tsv.decode(columns["attrs_conf"], "float32", "attrs_conf", (n,))
    soft_labels = _one_hot(objects) if one_hot_labels else None
    return detections.regions(feature_dim=feature_dim, conf=conf, soft_labels=soft_labels)


def _one_hot(objects: np.ndarray) -> np.ndarray:
    """`[N]` object ids in 0..1599 -> `[N, 1601]` float16 one-hot, background at 0."""
    if objects.min() < 0 or objects.max() >= NUM_LABELS - 1:
        raise DataError(
            f"object ids must lie in [0, {NUM_LABELS - 1}), got {objects.min()}..{objects.max()}",
            field="objects_id",
        )
    soft_labels = np.zeros((len(objects), NUM_LABELS), np.float16)
    soft_labels[np.arange(len(objects)), objects + 1] = 1
    return soft_labels
