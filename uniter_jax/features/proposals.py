"""Region proposals from the RPN's outputs, with static shapes.

The original's proposal layer (`lib/rpn/proposal_layer.py`, TEST values from
`lib/fast_rcnn/config.py`), per image:

1. anchors on the res4 map (stride 16, 12 per cell, `boxes.caffe_cell_anchors`),
   each moved by its deltas (`boxes.decode_boxes`, no clamp);
2. clipped to the input image (`[0, w - 1] x [0, h - 1]`, the resized image);
3. dropped when a side (`x2 - x1 + 1`) is below `RPN_MIN_SIZE` = 16 px of the
   *original* image, i.e. `16 * scale` here;
4. the 6000 best by foreground probability (`RPN_PRE_NMS_TOP_N`);
5. NMS at IoU 0.7 (`RPN_NMS_THRESH`, `nms.nms`), the first 300 kept
   (`RPN_POST_NMS_TOP_N`), in descending score.

The detectron2 ports (py-bottom-up-attention `proposal_generator/rpn_outputs.py:
find_top_rpn_proposals`, transformers' LXMERT demo `modeling_frcnn.py`, the
same) decode with the detectron2 convention (`boxes.DETECTRON2`: no `+ 1`,
`dw, dh` capped at `log(1000 / 16)`), take the 6000 best of all anchors first,
then clip to `[0, w] x [0, h]`, drop boxes with a side `<= 0` (`MIN_SIZE 0`, no
16 px filter) and run torchvision's NMS (IoU without `+ 1`, dropped on `>`),
keeping 300 as the demos set `POST_NMS_TOPK_TEST`. `convention` picks one.

The Caffe RPN scores an anchor with a 2-way softmax; its foreground probability
is `sigmoid(fg - bg)`, increasing in the one logit that `rpn.py` keeps, so
ranking by the logit is ranking by the probability. bottom-up-attention.pytorch
(`bua/caffe/modeling/rpn_outputs.py: find_top_bua_rpn_proposals`) does the same
steps in the same order, except that it keeps sides `> 16 * scale` (strictly)
and first drops boxes with `x2 <= x1` or `y2 <= y1`.

Batches: images share a padded size (a bucket, `preprocess.py`), so the map
`[H', W']` is the bucket's. Cells outside an image's own map (`feature_sizes`)
would be anchors the original never had: they are masked out. The features
near the right and bottom border still differ slightly from a single unpadded
image (the convolutions see the padding's activations instead of zero padding).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uniter_jax.features import boxes as box_ops
from uniter_jax.features.nms import nms

PRE_NMS_TOP_N = 6000
POST_NMS_TOP_N = 300
NMS_THRESHOLD = 0.7
MIN_SIZE = 16  # pixels of the original image


class Proposals(NamedTuple):
    """`R` = `post_nms_top_n` proposals per image, descending objectness."""

    boxes: jax.Array  # [B, R, 4] float32, (x1, y1, x2, y2) in input-image (resized) pixels
    scores: jax.Array  # [B, R] float32 objectness logits
    valid: jax.Array  # [B, R] bool; rows after the last proposal are padding (zeros)


def propose(
    objectness_logits: jax.Array,
    anchor_deltas: jax.Array,
    image_sizes: jax.Array,
    scales: jax.Array,
    feature_sizes: jax.Array | None = None,
    *,
    cell_anchors: np.ndarray | None = None,
    stride: int = box_ops.FEATURE_STRIDE,
    pre_nms_top_n: int = PRE_NMS_TOP_N,
    post_nms_top_n: int = POST_NMS_TOP_N,
    nms_threshold: float = NMS_THRESHOLD,
    min_size: float = MIN_SIZE,
    convention: box_ops.BoxConvention = box_ops.CAFFE,
) -> Proposals:
    """RPN outputs -> proposals, as the original's proposal layer (module doc).

    Args:
      objectness_logits: `[B, H', W', A]`, one logit per anchor.
      anchor_deltas: `[B, H', W', A, 4]`, `(dx, dy, dw, dh)`.
      image_sizes: `[B, 2]` (height, width) of each resized image inside the
        padded batch, in pixels; boxes are clipped to it.
      scales: `[B]` resize factors (resized / original); the minimum side is
        `min_size * scale`.
      feature_sizes: `[B, 2]` (height, width) of each image's own res4 map;
        cells beyond it are no anchors. `None`: the whole map.
      cell_anchors: `[A, 4]` in the order of the RPN's channels; default
        `boxes.caffe_cell_anchors()`.
      min_size: the Caffe filter's smallest side, pixels of the original image.
      convention: how boxes are measured and filtered (module doc): CAFFE, the
        original; DETECTRON2, the ports of the `.pkl` / HF weights (`min_size`
        unused: they keep every box with both sides `> 0`).
    """
    batch, height, width, num_anchors = objectness_logits.shape
    if cell_anchors is None:
        cell_anchors = box_ops.caffe_cell_anchors()
    if cell_anchors.shape != (num_anchors, 4):
        raise ValueError(f"cell_anchors {cell_anchors.shape} for {num_anchors} anchors per cell")
    anchors = box_ops.anchor_grid(height, width, cell_anchors, stride).reshape(-1, 4)
    if feature_sizes is None:
        feature_sizes = jnp.broadcast_to(jnp.asarray([height, width], jnp.int32), (batch, 2))
    pre_nms = min(pre_nms_top_n, anchors.shape[0])

    def one_image(logits, deltas, image_size, scale, feature_size):
        rows = jnp.arange(height)[:, None, None] < feature_size[0]
        cols = jnp.arange(width)[None, :, None] < feature_size[1]
        in_map = jnp.broadcast_to(rows & cols, (height, width, num_anchors)).reshape(-1)
        boxes = box_ops.decode_boxes(
            anchors, deltas.reshape(-1, 4), convention.scale_clamp, convention=convention
        )
        boxes = box_ops.clip_boxes(boxes, image_size[0], image_size[1], convention=convention)
        widths, heights = box_ops.box_sides(boxes, convention=convention)
        scores = logits.reshape(-1).astype(jnp.float32)
        if convention == box_ops.CAFFE:  # size filter, then the best 6000
            smallest = min_size * scale
            valid = in_map & (widths >= smallest) & (heights >= smallest)
            candidates = valid
        else:  # the best 6000, then drop the empty ones
            valid = in_map & (widths > 0.0) & (heights > 0.0)
            candidates = in_map
        # top_k puts the lower index first among equal values, as the stable sort in nms.
        _, top = jax.lax.top_k(jnp.where(candidates, scores, -jnp.inf), pre_nms)
        top_valid = valid[top] & candidates[top]
        kept, kept_valid = nms(
            boxes[top], scores[top], top_valid, nms_threshold, post_nms_top_n, convention=convention
        )
        index = top[kept]
        mask = kept_valid[:, None]
        return (
            jnp.where(mask, boxes[index], 0.0),
            jnp.where(kept_valid, scores[index], 0.0),
            kept_valid,
        )

    boxes, scores, valid = jax.vmap(one_image)(
        objectness_logits,
        anchor_deltas,
        jnp.asarray(image_sizes, jnp.int32),
        jnp.asarray(scales, jnp.float32),
        jnp.asarray(feature_sizes, jnp.int32),
    )
    return Proposals(boxes, scores, valid)
