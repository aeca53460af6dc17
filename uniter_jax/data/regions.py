"""Per-image region data: validation, 7-d box features, region selection.

From docs/original.md, Image embedder and Region features: boxes are
`[x1, y1, x2, y2]` in pixels; the box feature is
`[x1/W, y1/H, x2/W, y2/H, w/W, h/H, (w/W)*(h/H)]`; the original keeps the
first `clip(#(conf > conf_th), min_bb, max_bb)` regions, sorted by detector
confidence.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from uniter_jax.data.errors import DataError

BOX_DIM = 7
# Pixel slack allowed outside the image: detectors clip to [0, W-1] or [0, W].
_EDGE_SLACK = 1.0


@dataclasses.dataclass(frozen=True)
class ImageRegions:
    """One image's detections, as stored.

    Regions are sorted by confidence, highest first (stable), so the original's
    "first n" selection keeps the most confident ones.
    """

    image_id: str
    features: np.ndarray  # [n, D] float16
    boxes: np.ndarray  # [n, 7] float32, normalised box features
    conf: np.ndarray  # [n] float32 detector confidence (1.0 where unknown)
    soft_labels: np.ndarray | None = None  # [n, num_labels] float16, background first

    @property
    def num_boxes(self) -> int:
        return int(self.features.shape[0])


def box_features(xyxy: np.ndarray, width: float, height: float) -> np.ndarray:
    """`[n, 4]` pixel boxes -> `[n, 7]` float32 normalised box features."""
    xyxy = np.asarray(xyxy, np.float64)
    x1, y1, x2, y2 = (xyxy[:, i] for i in range(4))
    w, h = (x2 - x1) / width, (y2 - y1) / height
    feats = [x1 / width, y1 / height, x2 / width, y2 / height, w, h, w * h]
    return np.stack(feats, axis=1).astype(np.float32)


def check_pixel_boxes(xyxy: np.ndarray, width: float, height: float) -> None:
    """Raises DataError (field `boxes`) for boxes outside the image or of zero area."""
    if not (np.isfinite(width) and np.isfinite(height) and width > 0 and height > 0):
        raise DataError(f"image size {width} x {height} is not positive", field="image_w/image_h")
    xyxy = np.asarray(xyxy, np.float64)
    if xyxy.ndim != 2 or xyxy.shape[1] != 4:
        raise DataError(f"expected [n, 4] boxes, got shape {list(xyxy.shape)}", field="boxes")
    if not np.isfinite(xyxy).all():
        raise DataError("non-finite box coordinates", field="boxes")
    x1, y1, x2, y2 = xyxy.T
    outside = (
        (x1 < -_EDGE_SLACK)
        | (y1 < -_EDGE_SLACK)
        | (x2 > width + _EDGE_SLACK)
        | (y2 > height + _EDGE_SLACK)
    )
    if outside.any():
        i = int(np.argmax(outside))
        raise DataError(
            f"box {i} {xyxy[i].tolist()} lies outside the {width} x {height} image", field="boxes"
        )
    empty = (x2 <= x1) | (y2 <= y1)
    if empty.any():
        i = int(np.argmax(empty))
        raise DataError(f"box {i} {xyxy[i].tolist()} has zero area", field="boxes")


def make_regions(
    image_id: str,
    features: np.ndarray,
    boxes7: np.ndarray,
    conf: np.ndarray | None = None,
    soft_labels: np.ndarray | None = None,
    *,
    feature_dim: int | None = None,
    num_labels: int | None = None,
) -> ImageRegions:
    """Validates one image's arrays and returns them sorted by confidence.

    Raises DataError naming the field: wrong shapes, NaN/inf values, a feature
    width other than `feature_dim`, soft labels that are not distributions.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise DataError(
            f"expected [n > 0, D] features, got shape {list(features.shape)}", field="features"
        )
    n, dim = features.shape
    if feature_dim is not None and dim != feature_dim:
        raise DataError(f"feature dimension {dim}, expected {feature_dim}", field="features")
    if not np.isfinite(features).all():
        raise DataError("NaN or inf in features", field="features")
    if np.abs(features).max() > np.finfo(np.float16).max:
        raise DataError("features overflow float16 (|x| > 65504)", field="features")
    boxes7 = np.asarray(boxes7, np.float32)
    if boxes7.shape != (n, BOX_DIM):
        raise DataError(f"expected [{n}, 7] boxes, got {list(boxes7.shape)}", field="boxes")
    if not np.isfinite(boxes7).all():
        raise DataError("NaN or inf in boxes", field="boxes")
    conf = np.ones(n, np.float32) if conf is None else np.asarray(conf, np.float32)
    if conf.shape != (n,) or not np.isfinite(conf).all():
        raise DataError(f"expected {n} finite confidences, got {list(conf.shape)}", field="conf")
    if soft_labels is not None:
        soft_labels = np.asarray(soft_labels)
        want = (n, num_labels if num_labels is not None else soft_labels.shape[-1])
        if soft_labels.shape != want:
            raise DataError(
                f"expected {list(want)} soft labels, got {list(soft_labels.shape)}",
                field="soft_labels",
            )
        soft32 = soft_labels.astype(np.float32)
        if not np.isfinite(soft32).all() or (soft32 < 0).any():
            raise DataError("soft labels must be finite and non-negative", field="soft_labels")
        if np.abs(soft32.sum(-1) - 1.0).max() > 0.02:
            raise DataError("soft labels do not sum to 1 per region", field="soft_labels")
        soft_labels = soft_labels.astype(np.float16)
    order = np.argsort(-conf, kind="stable")
    return ImageRegions(
        image_id=image_id,
        features=features.astype(np.float16)[order],
        boxes=boxes7[order],
        conf=conf[order],
        soft_labels=None if soft_labels is None else soft_labels[order],
    )


def num_kept(conf: np.ndarray, conf_th: float, min_bb: int, max_bb: int) -> int:
    """The original's region count: `clip(#(conf > conf_th), min_bb, max_bb)`, at most n."""
    n = len(conf)
    return int(min(n, max(min_bb, min(max_bb, int((np.asarray(conf) > conf_th).sum())))))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of `[..., 4]` boxes `(x1, y1, x2, y2)`, broadcast against each other; 0
    where the union is empty. Any units, as long as both use the same."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    union = _area(a) + _area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _area(box: np.ndarray) -> np.ndarray:
    return np.clip(box[..., 2] - box[..., 0], 0, None) * np.clip(box[..., 3] - box[..., 1], 0, None)
