"""Greedy non-maximum suppression with static shapes.

The original's NMS (`lib/nms/cpu_nms.pyx`, chosen by `USE_GPU_NMS: False` in
`experiments/cfgs/faster_rcnn_end2end_resnet.yml`, the config `generate_tsv.py`
runs with; bottom-up-attention.pytorch's `nms_cpu.cpp` is the same) visits the
boxes by descending score and drops every later box whose IoU with a kept box
is `>= threshold`, IoU with the legacy `+ 1` areas (`boxes.pairwise_iou`). (The
GPU kernel and `py_cpu_nms.py` drop on `>` instead; only exact ties differ.)

Here the visit is a `lax.while_loop` over ranks with a fixed-size suppression
mask, so nothing depends on a data-dependent shape. Equal scores are visited in
index order (a stable sort); the original's `argsort()[::-1]` leaves their order
unspecified. `nms` keeps up to `max_outputs` indices of one set of boxes (the
RPN's 6000 -> 300); `nms_per_class` runs every class at once over one shared set
of boxes (the 1600 classes of the final step, all over the same proposals).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from uniter_jax.features.boxes import CAFFE, BoxConvention, pairwise_iou


def _score_order(scores: jax.Array, valid: jax.Array) -> jax.Array:
    """Indices sorting `[..., N]` by valid first, then descending score, then
    index (stable): the order in which greedy NMS visits the boxes."""
    n = scores.shape[-1]
    index = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), scores.shape)
    invalid = jnp.broadcast_to(~valid, scores.shape).astype(jnp.int32)
    return jax.lax.sort(
        (invalid, -scores.astype(jnp.float32), index), dimension=-1, num_keys=2, is_stable=True
    )[2]


def nms(
    boxes: jax.Array,
    scores: jax.Array,
    valid: jax.Array,
    iou_threshold: float | jax.Array,
    max_outputs: int,
    *,
    convention: BoxConvention = CAFFE,
) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS of `boxes` `[N, 4]` with `scores` `[N]`; boxes with `valid`
    `[N]` False take no part. Returns `indices` `[max_outputs]` int32 (kept
    boxes by descending score, 0 after the last) and their `valid`
    `[max_outputs]`: exactly the first `max_outputs` of the original's keep list.
    `convention` DETECTRON2 is torchvision's: IoU without `+ 1`, dropped on `>`.

    Sequential in rank (one IoU row of `N` per step, no `N x N` matrix); it stops
    once `max_outputs` are kept or the valid boxes run out. vmap it for a batch.
    """
    n = boxes.shape[0]
    order = _score_order(scores, valid)
    sorted_boxes = boxes.astype(jnp.float32)[order]
    num_valid = jnp.sum(valid.astype(jnp.int32))

    def cond(state):
        rank, count, _, _ = state
        return (rank < num_valid) & (count < max_outputs)

    def body(state):
        rank, count, suppressed, kept = state
        keep = ~suppressed[rank]
        iou = pairwise_iou(sorted_boxes[rank][None], sorted_boxes, convention=convention)[0]
        over = iou >= iou_threshold if convention.suppress_at_threshold else iou > iou_threshold
        suppressed = suppressed | (keep & over)
        kept = kept.at[count].set(jnp.where(keep, order[rank], kept[count]))
        return rank + 1, count + keep.astype(jnp.int32), suppressed, kept

    init = (
        jnp.int32(0),
        jnp.int32(0),
        jnp.zeros((n,), bool),
        jnp.zeros((max_outputs,), jnp.int32),
    )
    _, count, _, kept = jax.lax.while_loop(cond, body, init)
    return kept, jnp.arange(max_outputs) < count


def nms_per_class(
    boxes: jax.Array, scores: jax.Array, valid: jax.Array, iou_threshold: float | jax.Array
) -> jax.Array:
    """Greedy NMS of one set of `boxes` `[N, 4]` separately for each of `C`
    classes, `scores` `[N, C]`: returns `keep` `[N, C]` bool, box `i` survives
    class `c`'s NMS (no cap on the count, no score threshold: the original runs
    `nms` on all proposals per class). Invalid boxes are never kept.

    The boxes are the same for every class, so the overlap test is one `[N, N]`
    bool matrix; the classes differ only in their visiting order. Step `t` takes
    each class's `t`-th box at once (`[C]`), and, if unsuppressed, suppresses its
    overlap row (`[C, N]` gathered). A kept box is never suppressed later (IoU is
    symmetric), so `keep = valid & ~suppressed` at the end. Memory for N = 300,
    C = 1600: overlap 90 KB, orders 1.9 MB (int32), suppression state and the
    gathered rows 0.5 MB each (bool), scores 1.9 MB: a few MB per image, where a
    per-class `[C, N, N]` IoU would be 576 MB in float32.
    """
    n, num_classes = scores.shape
    overlap = pairwise_iou(boxes, boxes) >= iou_threshold
    overlap = overlap & ~jnp.eye(n, dtype=bool)
    order = _score_order(scores.T, valid[None, :])  # [C, N]
    num_valid = jnp.sum(valid.astype(jnp.int32))

    def body(state):
        rank, suppressed = state
        current = order[:, rank]  # [C]
        keep = ~jnp.take_along_axis(suppressed, current[:, None], axis=1)[:, 0]
        suppressed = suppressed | (keep[:, None] & overlap[current])
        return rank + 1, suppressed

    _, suppressed = jax.lax.while_loop(
        lambda state: state[0] < num_valid,
        body,
        (jnp.int32(0), jnp.zeros((num_classes, n), bool)),
    )
    return (valid[None, :] & ~suppressed).T
