"""Boxes of the bottom-up-attention detector: anchors, decoding, clipping, IoU.

Boxes are `(x1, y1, x2, y2)` in pixels, float32, in the Caffe "legacy"
convention of the original (peteanderson80/bottom-up-attention, a py-faster-rcnn
fork): a box covers the pixels `x1..x2` inclusive, so its width is
`x2 - x1 + 1`. That `+ 1` enters the anchors, the decoding and the IoU.

- Anchors (`lib/rpn/generate_anchors.py`, scales from the proposal layer's
  `param_str` in `models/vg/ResNet-101/faster_rcnn_end2end_final/test.prototxt`:
  `feat_stride 16`, `scales (4, 8, 16, 32)`, ratios `(0.5, 1, 2)`): a 16 x 16
  base box `(0, 0, 15, 15)`; per ratio `r`, width `round(sqrt(256 / r))`,
  height `round(width * r)` (numpy's round, half to even); each then times the
  scale; all centred on `(7.5, 7.5)`. 12 anchors, ratio-major (`a = 4 * ratio
  + scale`). Position `(y, x)` of the stride-16 map adds `(16 x, 16 y)`
  (`lib/rpn/proposal_layer.py`), so anchor centres sit at `16 k + 7.5`.
  detectron2's generator (py-bottom-up-attention, `SIZES [[64, 128, 256, 512]]`,
  `OFFSET 0.0`) differs: exact `sqrt(size^2 / r)` sides, no rounding, centres at
  `16 k`, size-major order (`a = 3 * size + ratio`); `detectron2_cell_anchors`.
- Decoding (`lib/fast_rcnn/bbox_transform.py: bbox_transform_inv`): centre
  `x1 + 0.5 w`, new centre `dx w + cx`, new width `exp(dw) w`, corners
  `cx' -+ 0.5 w'` (so the decoded `x2 - x1 + 1` is `w' + 1`). The original
  clamps nothing; bottom-up-attention.pytorch (`bua/caffe/modeling/box_regression.py`)
  and detectron2 clamp `dw, dh` at `log(1000 / 16)` (`SCALE_CLAMP`).
- Clipping (`clip_boxes`): x to `[0, width - 1]`, y to `[0, height - 1]`.
- IoU (`lib/nms/cpu_nms.pyx`): areas and intersections with the `+ 1`,
  `inter / (area_a + area_b - inter)`.

The detectron2 ports that read the `.pkl` / HF weights (py-bottom-up-attention,
`detectron2/modeling/box_regression.py: Box2BoxTransform.apply_deltas`,
`structures/boxes.py: Boxes.clip`; transformers' LXMERT demo,
`modeling_frcnn.py`, the same) measure boxes without the `+ 1`: width
`x2 - x1`, centre `x1 + 0.5 w`, clipping to `[0, width] x [0, height]`, and
torchvision's NMS (`csrc/ops/cpu/nms_kernel.cpp`) takes areas without it and
drops a box only when its IoU is `> threshold`. `BoxConvention` names the two
(`CAFFE`, `DETECTRON2`); every function here takes one, Caffe by default.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class BoxConvention:
    """How a code base measures boxes in pixels (module doc)."""

    name: str
    # 1.0: a box covers pixels x1..x2 inclusive, width x2 - x1 + 1 (Caffe);
    # 0.0: width x2 - x1, corners on pixel edges (detectron2).
    pixel: float
    # Whether NMS drops a box whose IoU equals the threshold (Caffe's `>=`) or
    # only above it (torchvision's `>`).
    suppress_at_threshold: bool
    # The cap on `dw, dh` before `exp` when the RPN's deltas are decoded.
    scale_clamp: float | None


# detectron2 / bua's clamp of dw, dh before exp: a 16 px box grows at most to 1000 px.
SCALE_CLAMP = math.log(1000.0 / 16.0)
CAFFE = BoxConvention("caffe", pixel=1.0, suppress_at_threshold=True, scale_clamp=None)
DETECTRON2 = BoxConvention(
    "detectron2", pixel=0.0, suppress_at_threshold=False, scale_clamp=SCALE_CLAMP
)
CONVENTIONS = {c.name: c for c in (CAFFE, DETECTRON2)}
# The VG ResNet-101 model's proposal layer (test.prototxt `param_str`).
FEATURE_STRIDE = 16
ANCHOR_SCALES = (4, 8, 16, 32)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)


def caffe_cell_anchors(
    base_size: int = FEATURE_STRIDE,
    ratios: tuple[float, ...] = ANCHOR_RATIOS,
    scales: tuple[float, ...] = ANCHOR_SCALES,
) -> np.ndarray:
    """The anchors of one feature-map cell at position (0, 0), Caffe convention:
    `[len(ratios) * len(scales), 4]` float32, ratio-major (see the module doc)."""
    side = float(base_size)
    centre = 0.5 * (side - 1.0)
    rows = []
    for ratio in ratios:
        # Equal area per ratio, rounded to whole pixels before scaling.
        width = np.round(np.sqrt(side * side / ratio))
        height = np.round(width * ratio)
        for scale in scales:
            half_w, half_h = 0.5 * (width * scale - 1.0), 0.5 * (height * scale - 1.0)
            rows.append([centre - half_w, centre - half_h, centre + half_w, centre + half_h])
    return np.asarray(rows, np.float32)


def detectron2_cell_anchors(
    sizes: tuple[float, ...] = (64, 128, 256, 512), ratios: tuple[float, ...] = ANCHOR_RATIOS
) -> np.ndarray:
    """detectron2's `DefaultAnchorGenerator` cell anchors, centred on 0:
    `[len(sizes) * len(ratios), 4]` float32, size-major. With `OFFSET 0.0` (the
    py-bottom-up-attention config) `anchor_grid` places them as the ports do."""
    rows = []
    for size in sizes:
        for ratio in ratios:
            width = math.sqrt(size * size / ratio)
            height = ratio * width
            rows.append([-width / 2, -height / 2, width / 2, height / 2])
    return np.asarray(rows, np.float32)


def anchor_grid(
    height: int, width: int, cell_anchors: np.ndarray, stride: int = FEATURE_STRIDE
) -> jnp.ndarray:
    """All anchors of an `height x width` feature map: `[height, width, A, 4]`,
    cell `(y, x)` shifted by `(stride * x, stride * y)`; flattened, the order is
    the original's `(h, w, a)`."""
    shift_x = jnp.arange(width, dtype=jnp.float32) * stride
    shift_y = jnp.arange(height, dtype=jnp.float32) * stride
    shift_y, shift_x = jnp.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = jnp.stack([shift_x, shift_y, shift_x, shift_y], axis=-1)  # [H, W, 4]
    return shifts[:, :, None, :] + jnp.asarray(cell_anchors, jnp.float32)


def decode_boxes(
    boxes: jnp.ndarray,
    deltas: jnp.ndarray,
    scale_clamp: float | None = None,
    *,
    convention: BoxConvention = CAFFE,
) -> jnp.ndarray:
    """Applies `(dx, dy, dw, dh)` `deltas` `[..., 4]` to `boxes` `[..., 4]`
    (Caffe `bbox_transform_inv`, weights 1; detectron2's `apply_deltas` with
    `convention` DETECTRON2: sides without the `+ 1`). `scale_clamp` caps
    `dw, dh` first (`SCALE_CLAMP` as the ports; `None`, the original: no cap,
    an overflowing `exp` gives infinite corners that clipping brings back to
    the border)."""
    boxes = boxes.astype(jnp.float32)
    deltas = deltas.astype(jnp.float32)
    widths, heights = box_sides(boxes, convention=convention)
    ctr_x = boxes[..., 0] + 0.5 * widths
    ctr_y = boxes[..., 1] + 0.5 * heights
    dx, dy, dw, dh = (deltas[..., k] for k in range(4))
    if scale_clamp is not None:
        dw, dh = jnp.minimum(dw, scale_clamp), jnp.minimum(dh, scale_clamp)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = jnp.exp(dw) * widths
    pred_h = jnp.exp(dh) * heights
    return jnp.stack(
        [
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ],
        axis=-1,
    )


def clip_boxes(
    boxes: jnp.ndarray,
    height: jnp.ndarray,
    width: jnp.ndarray,
    *,
    convention: BoxConvention = CAFFE,
) -> jnp.ndarray:
    """Clips `boxes` `[..., 4]` to an image of `height x width` pixels (scalars,
    or arrays broadcasting against `boxes[..., 0]`): x into `[0, width - 1]`,
    y into `[0, height - 1]` (DETECTRON2: `[0, width]`, `[0, height]`)."""
    x_max = jnp.asarray(width, jnp.float32) - convention.pixel
    y_max = jnp.asarray(height, jnp.float32) - convention.pixel
    x1 = jnp.clip(boxes[..., 0], 0.0, x_max)
    y1 = jnp.clip(boxes[..., 1], 0.0, y_max)
    x2 = jnp.clip(boxes[..., 2], 0.0, x_max)
    y2 = jnp.clip(boxes[..., 3], 0.0, y_max)
    return jnp.stack([x1, y1, x2, y2], axis=-1)


def box_sides(
    boxes: jnp.ndarray, *, convention: BoxConvention = CAFFE
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Widths and heights `[...]` (with the `+ 1` of the Caffe convention)."""
    pixel = convention.pixel
    return boxes[..., 2] - boxes[..., 0] + pixel, boxes[..., 3] - boxes[..., 1] + pixel


def pairwise_iou(
    boxes_a: jnp.ndarray, boxes_b: jnp.ndarray, *, convention: BoxConvention = CAFFE
) -> jnp.ndarray:
    """IoU of `[..., N, 4]` against `[..., M, 4]`: `[..., N, M]` (Caffe: `+ 1`
    areas, as the original's NMS). Symmetric bit for bit: `iou(a, b)[i, j] ==
    iou(b, a)[j, i]`."""
    pixel = convention.pixel
    a = boxes_a[..., :, None, :]
    b = boxes_b[..., None, :, :]
    inter_w = jnp.maximum(
        0.0, jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]) + pixel
    )
    inter_h = jnp.maximum(
        0.0, jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]) + pixel
    )
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + pixel) * (a[..., 3] - a[..., 1] + pixel)
    area_b = (b[..., 2] - b[..., 0] + pixel) * (b[..., 3] - b[..., 1] + pixel)
    return inter / (area_a + area_b - inter)
