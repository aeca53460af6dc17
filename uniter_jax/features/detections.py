"""Which proposals become regions: the original's max-confidence selection.

`tools/generate_tsv.py: get_detections_from_im` (bottom-up-attention; the
same in bottom-up-attention.pytorch `utils/extract_utils.py: save_roi_features`):

- `scores` = softmax over the 1601 classes (`cls_prob`, background at 0);
- boxes = the proposals themselves (`rois / im_scale`, original-image pixels,
  *not* the class-regressed boxes);
- for each object class 1..1600: NMS at IoU 0.3 (`TEST.NMS`) over all
  proposals by that class's score; `max_conf[i]` = the highest score of
  proposal `i` among the classes where it survives (0 if none);
- keep `max_conf >= 0.2`; if fewer than `MIN_BOXES` = 10, the 10 best by
  `max_conf` instead, if more than `MAX_BOXES` = 100, the 100 best. For 36
  regions per image, both are 36 (`generate_tsv.py`'s comment).

The order is the original's too: by descending `max_conf` when the count was
clamped to the minimum or maximum, otherwise the proposals above the threshold
in proposal order (descending objectness). Equal `max_conf` go in index order
(the original's `argsort()[::-1]` leaves them unspecified). Region `k`'s pooled
feature is the box head's row `indices[k]`: the features are computed for all
proposals and gathered with the same indices, as `pool5[keep_boxes]`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from uniter_jax.features.nms import nms_per_class

CONF_THRESHOLD = 0.2
MIN_BOXES = 10
MAX_BOXES = 100
NMS_THRESHOLD = 0.3


class Regions(NamedTuple):
    """`K` = `max_boxes` slots per image; slots from `count` on are padding
    (index 0, zeros)."""

    indices: jax.Array  # [B, K] int32 into the R proposals (and the box head's rows)
    valid: jax.Array  # [B, K] bool
    count: jax.Array  # [B] int32, regions kept
    boxes: jax.Array  # [B, K, 4] float32 proposal boxes in original-image pixels
    confidence: jax.Array  # [B, K] float32 max_conf, the selection score
    class_probs: jax.Array  # [B, K, C] float32 softmax over all classes (MRC-kl's target)
    object_class: jax.Array  # [B, K] int32 argmax over classes 1.., in the C-way index
    object_conf: jax.Array  # [B, K] float32 its probability
    attribute: jax.Array | None  # [B, K] int32 argmax over attributes 1.. (401-way index)
    attribute_conf: jax.Array | None  # [B, K] float32


def max_confidence(
    probs: jax.Array, boxes: jax.Array, valid: jax.Array, nms_threshold: float = NMS_THRESHOLD
) -> jax.Array:
    """The original's `max_conf` of one image: `probs` `[R, C]` (background at 0),
    `boxes` `[R, 4]` (original-image pixels), `valid` `[R]` -> `[R]` float32:
    per proposal the highest class score (classes 1..) among the classes whose
    NMS it survives, 0 if none; `-inf` for invalid proposals."""
    objects = probs[:, 1:].astype(jnp.float32)
    keep = nms_per_class(boxes, objects, valid, nms_threshold)
    best = jnp.max(jnp.where(keep, objects, 0.0), axis=1, initial=0.0)
    return jnp.where(valid, best, -jnp.inf)


def _select(
    conf: jax.Array, valid: jax.Array, threshold: float, min_boxes: int, max_boxes: int
) -> tuple[jax.Array, jax.Array]:
    """`[R]` max_conf -> (`[max_boxes]` indices, count), the original's rule."""
    r = conf.shape[0]
    index = jnp.arange(r, dtype=jnp.int32)
    above = valid & (conf >= threshold)
    num_above = jnp.sum(above.astype(jnp.int32))
    num_valid = jnp.sum(valid.astype(jnp.int32))
    # Descending max_conf, invalid last, ties by index.
    by_conf = jax.lax.sort(((~valid).astype(jnp.int32), -conf, index), num_keys=2, is_stable=True)[
        2
    ]
    # The proposals above the threshold in index order, first.
    by_index = jax.lax.sort(((~above).astype(jnp.int32), index), num_keys=1, is_stable=True)[1]
    clamped = (num_above < min_boxes) | (num_above > max_boxes)
    order = jnp.where(clamped, by_conf, by_index)
    if r < max_boxes:
        order = jnp.pad(order, (0, max_boxes - r))
    count = jnp.where(
        num_above < min_boxes, jnp.minimum(min_boxes, num_valid), jnp.minimum(num_above, max_boxes)
    )
    return order[:max_boxes], count


def select_regions(
    class_logits: jax.Array,
    boxes: jax.Array,
    valid: jax.Array,
    scales: jax.Array,
    attribute_logits: jax.Array | None = None,
    *,
    conf_threshold: float = CONF_THRESHOLD,
    min_boxes: int = MIN_BOXES,
    max_boxes: int = MAX_BOXES,
    nms_threshold: float = NMS_THRESHOLD,
) -> Regions:
    """The regions of `B` images from their `R` proposals.

    Args:
      class_logits: `[B, R, C]` box-head logits, background at 0 (C = 1601).
      boxes: `[B, R, 4]` proposal boxes in input-image (resized) pixels, as
        `proposals.propose` returns them; divided by `scales` here, so the NMS
        runs in original-image pixels as the original's does (the legacy `+ 1`
        IoU is not scale-free).
      valid: `[B, R]` bool, real proposals.
      scales: `[B]` resize factors (resized / original).
      attribute_logits: `[B, R, 401]` or None, "no attribute" at 0.
      conf_threshold, min_boxes, max_boxes: the selection (module doc); for a
        fixed count `n` pass `min_boxes = max_boxes = n`.
    """
    if not 0 < min_boxes <= max_boxes:
        raise ValueError(f"need 0 < min_boxes <= max_boxes, got {min_boxes}, {max_boxes}")
    probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)
    image_boxes = boxes.astype(jnp.float32) / jnp.asarray(scales, jnp.float32)[:, None, None]

    def one_image(probs, image_boxes, valid):
        conf = max_confidence(probs, image_boxes, valid, nms_threshold)
        return (conf, *_select(conf, valid, conf_threshold, min_boxes, max_boxes))

    conf, indices, count = jax.vmap(one_image)(probs, image_boxes, valid)
    slot_valid = jnp.arange(max_boxes)[None, :] < count[:, None]
    indices = jnp.where(slot_valid, indices, 0)

    def gather(values):
        taken = jnp.take_along_axis(
            values, indices.reshape(*indices.shape, *([1] * (values.ndim - 2))), axis=1
        )
        mask = slot_valid.reshape(*slot_valid.shape, *([1] * (values.ndim - 2)))
        return jnp.where(mask, taken, jnp.zeros((), values.dtype))

    kept_probs = gather(probs)
    attribute = attribute_conf = None
    if attribute_logits is not None:
        attr_probs = gather(jax.nn.softmax(attribute_logits.astype(jnp.float32), axis=-1))
        attribute = jnp.where(slot_valid, jnp.argmax(attr_probs[..., 1:], axis=-1) + 1, 0)
        attribute_conf = jnp.max(attr_probs[..., 1:], axis=-1)
    return Regions(
        indices=indices,
        valid=slot_valid,
        count=count,
        boxes=gather(image_boxes),
        confidence=gather(conf),
        class_probs=kept_probs,
        object_class=jnp.where(slot_valid, jnp.argmax(kept_probs[..., 1:], axis=-1) + 1, 0),
        object_conf=jnp.max(kept_probs[..., 1:], axis=-1),
        attribute=attribute,
        attribute_conf=attribute_conf,
    )
