"""The extraction procedure (preprocess, boxes, NMS, proposals, region selection)
against plain numpy re-derivations of the original's formulas and loops."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from uniter_jax.data.errors import DataError
from uniter_jax.features import boxes as box_ops
from uniter_jax.features import detections, nms, preprocess, proposals

# ----------------------------------------------------------------------------
# numpy references: the original's steps, written out directly
# ----------------------------------------------------------------------------


def ref_cell_anchors(scales, ratios=(0.5, 1, 2), base=16):
    """generate_anchors.py's two stages: ratio anchors of the base box, then
    each enlarged by the scales about its centre."""

    def whctrs(anchor):
        w, h = anchor[2] - anchor[0] + 1, anchor[3] - anchor[1] + 1
        return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)

    def make(ws, hs, cx, cy):
        return [cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)]

    w, h, cx, cy = whctrs(np.array([0, 0, base - 1, base - 1], np.float64))
    out = []
    for ratio in ratios:
        ws = np.round(np.sqrt(w * h / ratio))
        hs = np.round(ws * ratio)
        rw, rh, rcx, rcy = whctrs(np.array(make(ws, hs, cx, cy)))
        out.extend(make(rw * s, rh * s, rcx, rcy) for s in scales)
    return np.array(out, np.float32)


def ref_shifted_anchors(cell, height, width, stride=16):
    """proposal_layer.py: (K, 1, 4) shifts + (1, A, 4) anchors, rows (h, w, a)."""
    sx, sy = np.meshgrid(np.arange(width) * stride, np.arange(height) * stride)
    shifts = np.vstack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel())).T
    return (cell[None] + shifts[:, None]).reshape(-1, 4).astype(np.float32)


def ref_decode(boxes, deltas, clamp=None, pixel=1):
    """bbox_transform_inv (sides with the + 1); `pixel=0`: detectron2's
    apply_deltas, sides without it."""
    boxes, deltas = boxes.astype(np.float32), deltas.astype(np.float32)
    w = boxes[:, 2] - boxes[:, 0] + np.float32(pixel)
    h = boxes[:, 3] - boxes[:, 1] + np.float32(pixel)
    cx, cy = boxes[:, 0] + np.float32(0.5) * w, boxes[:, 1] + np.float32(0.5) * h
    dw, dh = deltas[:, 2], deltas[:, 3]
    if clamp is not None:
        dw, dh = np.minimum(dw, np.float32(clamp)), np.minimum(dh, np.float32(clamp))
    pcx, pcy = deltas[:, 0] * w + cx, deltas[:, 1] * h + cy
    pw, ph = np.exp(dw) * w, np.exp(dh) * h
    half = np.float32(0.5)
    return np.stack([pcx - half * pw, pcy - half * ph, pcx + half * pw, pcy + half * ph], 1)


def ref_clip(boxes, height, width):
    out = boxes.copy()
    out[:, 0::2] = np.maximum(np.minimum(out[:, 0::2], width - 1), 0)
    out[:, 1::2] = np.maximum(np.minimum(out[:, 1::2], height - 1), 0)
    return out


def ref_iou_row(box, others):
    """cpu_nms.pyx's overlap of one box with many, float32, + 1 convention."""
    one = np.float32(1)
    xx1, yy1 = np.maximum(box[0], others[:, 0]), np.maximum(box[1], others[:, 1])
    xx2, yy2 = np.minimum(box[2], others[:, 2]), np.minimum(box[3], others[:, 3])
    inter = np.maximum(np.float32(0), xx2 - xx1 + one) * np.maximum(np.float32(0), yy2 - yy1 + one)
    area = (box[2] - box[0] + one) * (box[3] - box[1] + one)
    areas = (others[:, 2] - others[:, 0] + one) * (others[:, 3] - others[:, 1] + one)
    return inter / (area + areas - inter)


def ref_nms(boxes, scores, valid, threshold, overlaps=None):
    """Greedy: best first, drop the rest at IoU >= threshold (cpu_nms.pyx).
    Equal scores in index order. `overlaps(best, rest) -> bool [len(rest)]`
    replaces the drop rule (torchvision's, below)."""
    if overlaps is None:
        overlaps = lambda best, rest: ref_iou_row(best, rest) >= threshold
    boxes = boxes.astype(np.float32)
    order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
    keep = []
    while order:
        best, rest = order[0], np.asarray(order[1:], np.int64)
        keep.append(int(best))
        order = list(rest[~overlaps(boxes[best], boxes[rest])]) if len(rest) else []
    return keep


def ref_proposals(logits, deltas, image_size, scale, feature_size, pre, post, thr=0.7):
    """proposal_layer.py's forward for one image (masked cells dropped)."""
    height, width, a = logits.shape
    anchors = ref_shifted_anchors(ref_cell_anchors((4, 8, 16, 32)), height, width)
    boxes = ref_clip(ref_decode(anchors, deltas.reshape(-1, 4)), *image_size)
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    in_map = np.repeat(((ys < feature_size[0]) & (xs < feature_size[1])).ravel(), a)
    ws, hs = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    smallest = np.float32(16) * np.float32(scale)
    keep = np.flatnonzero(in_map & (ws >= smallest) & (hs >= smallest))
    scores = logits.reshape(-1)[keep]
    order = keep[np.argsort(-scores, kind="stable")][:pre]
    kept = ref_nms(boxes[order], logits.reshape(-1)[order], np.ones(len(order), bool), thr)
    return boxes[order[kept[:post]]]


def ref_max_conf(probs, boxes, nms_threshold=0.3):
    """generate_tsv.py's max_conf: per class, NMS over all boxes; a box's best
    score among the classes it survives."""
    max_conf = np.zeros(len(boxes), np.float32)
    for cls in range(1, probs.shape[1]):
        scores = probs[:, cls]
        keep = ref_nms(boxes, scores, np.ones(len(boxes), bool), nms_threshold)
        max_conf[keep] = np.where(scores[keep] > max_conf[keep], scores[keep], max_conf[keep])
    return max_conf


def ref_select(max_conf, threshold, min_boxes, max_boxes):
    """generate_tsv.py's keep_boxes (equal max_conf in index order)."""
    keep_boxes = np.where(max_conf >= threshold)[0]
    if len(keep_boxes) < min_boxes:
        keep_boxes = np.argsort(-max_conf, kind="stable")[:min_boxes]
    elif len(keep_boxes) > max_boxes:
        keep_boxes = np.argsort(-max_conf, kind="stable")[:max_boxes]
    return keep_boxes


# The detectron2 ports (.pkl / HF weights): box sides without the + 1.


def ref_d2_cell_anchors(sizes=(64, 128, 256, 512), ratios=(0.5, 1, 2)):
    """DefaultAnchorGenerator: per size, per ratio (h / w), area size^2, centred on 0."""
    out = []
    for size in sizes:
        for ratio in ratios:
            w = np.sqrt(size * size / ratio)
            out.append([-w / 2, -ratio * w / 2, w / 2, ratio * w / 2])
    return np.array(out, np.float32)


def ref_d2_decode(boxes, deltas, clamp=box_ops.SCALE_CLAMP):
    return ref_decode(boxes, deltas, clamp, pixel=0)


def ref_d2_clip(boxes, height, width):
    out = boxes.copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    return out


def ref_d2_iou_row(box, others):
    """torchvision's nms kernel overlap: plain areas."""
    zero = np.float32(0)
    w = np.maximum(zero, np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]))
    h = np.maximum(zero, np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]))
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter)


def ref_d2_nms(boxes, scores, valid, threshold):
    """torchvision's greedy NMS: a box goes only when its IoU is above the threshold."""
    return ref_nms(
        boxes, scores, valid, threshold, lambda best, rest: ref_d2_iou_row(best, rest) > threshold
    )


def ref_d2_proposals(logits, deltas, image_size, feature_size, pre, post, thr=0.7):
    """find_top_rpn_proposals for one image: decode all, the best `pre` of the
    image's cells, clip to [0, w] x [0, h], drop empty boxes, NMS, `post` kept."""
    height, width, a = logits.shape
    anchors = ref_shifted_anchors(ref_d2_cell_anchors(), height, width)
    boxes = ref_d2_decode(anchors, deltas.reshape(-1, 4))
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    in_map = np.repeat(((ys < feature_size[0]) & (xs < feature_size[1])).ravel(), a)
    cells = np.flatnonzero(in_map)
    order = cells[np.argsort(-logits.reshape(-1)[cells], kind="stable")][:pre]
    boxes = ref_d2_clip(boxes[order], *image_size)
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    order, boxes = order[nonempty], boxes[nonempty]
    kept = ref_d2_nms(boxes, logits.reshape(-1)[order], np.ones(len(order), bool), thr)
    return boxes[kept[:post]]


def random_boxes(rng, n, extent=200.0, max_side=80.0):
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(1, max_side, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


# ----------------------------------------------------------------------------
# boxes
# ----------------------------------------------------------------------------


def test_cell_anchors_are_the_caffe_ones():
    np.testing.assert_array_equal(box_ops.caffe_cell_anchors(), ref_cell_anchors((4, 8, 16, 32)))
    # py-faster-rcnn's default (scales 8, 16, 32) prints these first rows (its
    # comment's MATLAB table is one pixel off: -83 -39 100 56).
    first = box_ops.caffe_cell_anchors(scales=(8, 16, 32))[:4]
    np.testing.assert_array_equal(
        first,
        [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199], [-56, -56, 71, 71]],
    )
    d2 = box_ops.detectron2_cell_anchors(sizes=(64,), ratios=(0.5, 1.0, 2.0))
    side = np.sqrt(64 * 64 / 0.5)
    np.testing.assert_allclose(d2[0], [-side / 2, -side / 4, side / 2, side / 4], rtol=1e-6)
    np.testing.assert_allclose(d2[1], [-32, -32, 32, 32])


def test_anchor_grid_is_the_proposal_layer_order():
    cell = box_ops.caffe_cell_anchors()
    grid = np.asarray(box_ops.anchor_grid(3, 5, cell)).reshape(-1, 4)
    np.testing.assert_array_equal(grid, ref_shifted_anchors(cell, 3, 5))


@pytest.mark.parametrize("clamp", [None, box_ops.SCALE_CLAMP])
def test_decode_and_clip(clamp):
    rng = np.random.default_rng(0)
    anchors = random_boxes(rng, 500)
    deltas = rng.normal(0, 1.5, (500, 4)).astype(np.float32)
    deltas[:5, 2:] = 6.0  # beyond the clamp
    ours = np.asarray(box_ops.decode_boxes(jnp.asarray(anchors), jnp.asarray(deltas), clamp))
    np.testing.assert_allclose(ours, ref_decode(anchors, deltas, clamp), rtol=1e-6, atol=1e-4)
    # The original's asymmetry: with w = x2 - x1 + 1 and the centre at x1 + w / 2,
    # a zero delta keeps x1 and moves x2 to x1 + w = x2 + 1.
    same = np.asarray(box_ops.decode_boxes(jnp.asarray(anchors), jnp.zeros((500, 4))))
    np.testing.assert_allclose(same[:, :2], anchors[:, :2], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(same[:, 2:], anchors[:, 2:] + 1, rtol=1e-6, atol=1e-4)
    clipped = np.asarray(box_ops.clip_boxes(jnp.asarray(ours), 120, 150))
    np.testing.assert_array_equal(clipped, ref_clip(ours, 120, 150))
    assert clipped[:, 0::2].max() <= 149 and clipped[:, 1::2].max() <= 119


def test_pairwise_iou():
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, 20), random_boxes(rng, 30)
    ours = np.asarray(box_ops.pairwise_iou(jnp.asarray(a), jnp.asarray(b)))
    ref = np.stack([ref_iou_row(box, b) for box in a])
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    # Legacy areas: [0, 0, 9, 9] is 10 x 10; half of [0, 0, 9, 19].
    pair = box_ops.pairwise_iou(jnp.asarray([[0.0, 0, 9, 9]]), jnp.asarray([[0.0, 0, 9, 19]]))
    assert float(pair[0, 0]) == 0.5


def test_detectron2_anchors_decode_clip_and_iou():
    np.testing.assert_allclose(
        box_ops.detectron2_cell_anchors(), ref_d2_cell_anchors(), rtol=1e-6, atol=1e-5
    )
    rng = np.random.default_rng(0)
    anchors = random_boxes(rng, 500)
    deltas = rng.normal(0, 1.5, (500, 4)).astype(np.float32)
    deltas[:5, 2:] = 6.0  # beyond the clamp
    d2 = box_ops.DETECTRON2
    ours = np.asarray(
        box_ops.decode_boxes(
            jnp.asarray(anchors), jnp.asarray(deltas), d2.scale_clamp, convention=d2
        )
    )
    np.testing.assert_allclose(ours, ref_d2_decode(anchors, deltas), rtol=1e-6, atol=1e-4)
    # No + 1: a zero delta gives the box back.
    same = box_ops.decode_boxes(jnp.asarray(anchors), jnp.zeros((500, 4)), convention=d2)
    np.testing.assert_allclose(np.asarray(same), anchors, rtol=1e-6, atol=1e-4)
    clipped = np.asarray(box_ops.clip_boxes(jnp.asarray(ours), 120, 150, convention=d2))
    np.testing.assert_array_equal(clipped, ref_d2_clip(ours, 120, 150))
    assert clipped[:, 0::2].max() == 150 and clipped[:, 1::2].max() == 120
    a, b = random_boxes(rng, 20), random_boxes(rng, 30)
    iou = np.asarray(box_ops.pairwise_iou(jnp.asarray(a), jnp.asarray(b), convention=d2))
    np.testing.assert_allclose(iou, np.stack([ref_d2_iou_row(box, b) for box in a]), rtol=1e-6)
    # Plain areas: [0, 0, 10, 10] is half of [0, 0, 10, 20].
    pair = box_ops.pairwise_iou(
        jnp.asarray([[0.0, 0, 10, 10]]), jnp.asarray([[0.0, 0, 10, 20]]), convention=d2
    )
    assert float(pair[0, 0]) == 0.5


# ----------------------------------------------------------------------------
# NMS
# ----------------------------------------------------------------------------

_nms = jax.jit(nms.nms, static_argnums=4)


def _check_nms(boxes, scores, valid, threshold, k):
    indices, ok = _nms(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid), threshold, k)
    indices, ok = np.asarray(indices), np.asarray(ok)
    expected = ref_nms(boxes, scores, valid, threshold)[:k]
    assert ok.sum() == len(expected)
    assert list(indices[ok]) == expected
    assert (indices[~ok] == 0).all()


@pytest.mark.parametrize("seed", range(40))
def test_nms_matches_greedy_loop(seed):
    rng = np.random.default_rng(seed)
    n = 64
    boxes = random_boxes(rng, n, extent=rng.choice([60.0, 200.0]))
    scores = rng.random(n).astype(np.float32)
    if seed % 3 == 0:  # many equal scores: the visiting order among ties matters
        scores = np.round(scores * 4).astype(np.float32) / 4
    if seed % 5 == 0:  # duplicated boxes
        boxes[1::4] = boxes[0::4][: len(boxes[1::4])]
    valid = rng.random(n) < rng.choice([1.0, 0.7, 0.2])
    threshold = float(rng.choice([0.3, 0.5, 0.7]))
    _check_nms(boxes, scores, valid, threshold, 64)
    _check_nms(boxes, scores, valid, threshold, 8)


def test_nms_edge_cases():
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 64)
    scores = rng.random(64).astype(np.float32)
    # Nothing valid: nothing kept.
    _check_nms(boxes, scores, np.zeros(64, bool), 0.5, 8)
    # One box repeated: all but the best suppressed.
    same = np.repeat(boxes[:1], 64, axis=0)
    indices, ok = _nms(jnp.asarray(same), jnp.asarray(scores), jnp.ones(64, bool), 0.5, 8)
    assert np.asarray(ok).sum() == 1 and int(indices[0]) == int(np.argmax(scores))
    # IoU exactly at the threshold suppresses (cpu_nms.pyx's >=): [0, 0, 9, 9]
    # is half of [0, 0, 9, 19].
    pair = np.zeros((64, 4), np.float32)
    pair[:2] = [[0, 0, 9, 9], [0, 0, 9, 19]]
    valid = np.arange(64) < 2
    two_scores = np.asarray([0.9, 0.8] + [0.0] * 62, np.float32)
    _check_nms(pair, two_scores, valid, 0.5, 8)
    indices, ok = _nms(jnp.asarray(pair), jnp.asarray(two_scores), jnp.asarray(valid), 0.5, 8)
    assert np.asarray(ok).sum() == 1
    indices, ok = _nms(jnp.asarray(pair), jnp.asarray(two_scores), jnp.asarray(valid), 0.51, 8)
    assert np.asarray(ok).sum() == 2


_nms_d2 = jax.jit(functools.partial(nms.nms, convention=box_ops.DETECTRON2), static_argnums=4)


@pytest.mark.parametrize("seed", range(12))
def test_detectron2_nms_matches_torchvision_rule(seed):
    rng = np.random.default_rng(500 + seed)
    n = 64
    boxes = random_boxes(rng, n, extent=rng.choice([60.0, 200.0]))
    scores = rng.random(n).astype(np.float32)
    if seed % 3 == 0:
        scores = np.round(scores * 4).astype(np.float32) / 4
    valid = rng.random(n) < rng.choice([1.0, 0.5])
    threshold = float(rng.choice([0.3, 0.7]))
    for k in (64, 8):
        indices, ok = _nms_d2(
            jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid), threshold, k
        )
        expected = ref_d2_nms(boxes, scores, valid, threshold)[:k]
        assert list(np.asarray(indices)[np.asarray(ok)]) == expected
    # IoU exactly at the threshold is kept (torchvision drops on >).
    pair = np.zeros((64, 4), np.float32)
    pair[:2] = [[0, 0, 10, 10], [0, 0, 10, 20]]
    two = np.asarray([0.9, 0.8] + [0.0] * 62, np.float32)
    _, ok = _nms_d2(jnp.asarray(pair), jnp.asarray(two), jnp.arange(64) < 2, 0.5, 8)
    assert np.asarray(ok).sum() == 2


@pytest.mark.parametrize("seed", range(6))
def test_nms_per_class_matches_a_loop_over_classes(seed):
    rng = np.random.default_rng(100 + seed)
    n, c = 40, 25
    boxes = random_boxes(rng, n, extent=100.0)
    scores = rng.random((n, c)).astype(np.float32)
    scores[:, 3] = 0.5  # one class of ties
    valid = rng.random(n) < 0.9
    keep = np.asarray(
        jax.jit(nms.nms_per_class)(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid), 0.3)
    )
    for cls in range(c):
        expected = np.zeros(n, bool)
        expected[ref_nms(boxes, scores[:, cls], valid, 0.3)] = True
        np.testing.assert_array_equal(keep[:, cls], expected, err_msg=f"class {cls}")


def test_nms_per_class_exact_threshold():
    """IoU of [0, 0, 2, 9] in [0, 0, 9, 9] is 30 / 100 = 0.3 exactly: suppressed
    at the final step's 0.3 (>=), so each class keeps only its best box."""
    boxes = jnp.asarray([[0.0, 0, 9, 9], [0, 0, 2, 9], [50, 50, 60, 60]])
    scores = jnp.asarray([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    keep = np.asarray(nms.nms_per_class(boxes, scores, jnp.ones(3, bool), 0.3))
    np.testing.assert_array_equal(keep, [[True, False], [False, True], [True, True]])


# ----------------------------------------------------------------------------
# proposals
# ----------------------------------------------------------------------------


_propose = jax.jit(functools.partial(proposals.propose, pre_nms_top_n=150, post_nms_top_n=40))


def test_proposals_match_the_proposal_layer():
    rng = np.random.default_rng(3)
    b, h, w, a = 2, 6, 8, 12
    logits = rng.normal(size=(b, h, w, a)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (b, h, w, a, 4)).astype(np.float32)
    image_sizes = np.array([[90, 120], [70, 128]])
    scales = np.array([1.5, 0.5], np.float32)
    feature_sizes = np.array([[6, 8], [5, 8]])
    out = _propose(jnp.asarray(logits), jnp.asarray(deltas), image_sizes, scales, feature_sizes)
    for i in range(b):
        expected = ref_proposals(
            logits[i], deltas[i], image_sizes[i], scales[i], feature_sizes[i], 150, 40
        )
        valid = np.asarray(out.valid[i])
        assert valid.sum() == len(expected) > 0
        np.testing.assert_allclose(np.asarray(out.boxes[i])[valid], expected, rtol=1e-6, atol=1e-4)
        assert (np.asarray(out.boxes[i])[~valid] == 0).all()
        assert np.all(np.diff(np.asarray(out.scores[i])[valid]) <= 0)


def test_proposals_match_detectron2s_rpn():
    """The order matters: detectron2 takes the best `pre` before dropping empty
    boxes, so boxes pushed off the image still take places in the 150."""
    rng = np.random.default_rng(4)
    b, h, w, a = 2, 6, 8, 12
    logits = rng.normal(size=(b, h, w, a)).astype(np.float32)
    deltas = rng.normal(0, 0.3, (b, h, w, a, 4)).astype(np.float32)
    # The best-scored tenth of the anchors pushed far right: off the image, empty.
    top = logits > np.quantile(logits, 0.9)
    deltas[..., 0] = np.where(top, 40.0, deltas[..., 0])
    image_sizes = np.array([[90, 120], [70, 128]])
    scales = np.array([1.5, 0.5], np.float32)
    feature_sizes = np.array([[6, 8], [5, 8]])
    out = jax.jit(
        functools.partial(
            proposals.propose,
            pre_nms_top_n=150,
            post_nms_top_n=40,
            cell_anchors=box_ops.detectron2_cell_anchors(),
            convention=box_ops.DETECTRON2,
        )
    )(jnp.asarray(logits), jnp.asarray(deltas), image_sizes, scales, feature_sizes)
    for i in range(b):
        expected = ref_d2_proposals(logits[i], deltas[i], image_sizes[i], feature_sizes[i], 150, 40)
        valid = np.asarray(out.valid[i])
        assert valid.sum() == len(expected) > 0
        np.testing.assert_allclose(np.asarray(out.boxes[i])[valid], expected, rtol=1e-6, atol=1e-4)
        assert np.all(np.diff(np.asarray(out.scores[i])[valid]) <= 0)


# ----------------------------------------------------------------------------
# region selection
# ----------------------------------------------------------------------------


_select_regions = jax.jit(detections.select_regions, static_argnames=("min_boxes", "max_boxes"))


@pytest.mark.parametrize("seed", range(8))
def test_region_selection_matches_generate_tsv(seed):
    rng = np.random.default_rng(200 + seed)
    b, r, c = 2, 40, 21
    logits = (rng.normal(size=(b, r, c)) * rng.choice([1.0, 3.0])).astype(np.float32)
    boxes = np.stack([random_boxes(rng, r, extent=150.0) for _ in range(b)])
    valid = np.stack([np.arange(r) < r - 3 * i for i in range(b)])
    scales = np.array([1.25, 0.8], np.float32)
    min_boxes, max_boxes = 5, 12
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    confs = [ref_max_conf(probs[i, valid[i]], boxes[i, valid[i]] / scales[i]) for i in range(b)]
    # A threshold equal to image 0's k-th best max_conf: k = 3, 8, 20 give fewer
    # than the minimum, between, and more than the maximum (and test the >=).
    threshold = float(np.sort(confs[0])[::-1][(3, 8, 20)[seed % 3] - 1])
    regions = _select_regions(
        jnp.asarray(logits),
        jnp.asarray(boxes),
        jnp.asarray(valid),
        scales,
        conf_threshold=threshold,
        min_boxes=min_boxes,
        max_boxes=max_boxes,
    )
    for i in range(b):
        real = np.flatnonzero(valid[i])
        image_boxes = boxes[i] / scales[i]
        conf = confs[i]
        index = real[ref_select(conf, threshold, min_boxes, max_boxes)]
        count = int(regions.count[i])
        assert count == len(index)
        np.testing.assert_array_equal(np.asarray(regions.indices[i, :count]), index)
        np.testing.assert_allclose(
            np.asarray(regions.confidence[i, :count]), conf[index - real[0]], rtol=1e-6
        )
        # XLA may divide by multiplying with the reciprocal: an ulp apart.
        np.testing.assert_allclose(
            np.asarray(regions.boxes[i, :count]), image_boxes[index], rtol=1e-6
        )
        np.testing.assert_allclose(np.asarray(regions.class_probs[i, :count]), probs[i, index])
        np.testing.assert_array_equal(
            np.asarray(regions.object_class[i, :count]), probs[i, index, 1:].argmax(1) + 1
        )
        assert not np.asarray(regions.valid[i, count:]).any()
        assert (np.asarray(regions.indices[i, count:]) == 0).all()


def test_region_selection_full_size_and_fixed_count():
    rng = np.random.default_rng(5)
    r, c = 30, 1601
    logits = rng.normal(0, 2, (1, r, c)).astype(np.float32)
    boxes = random_boxes(rng, r, extent=300.0)[None]
    valid = np.ones((1, r), bool)
    attributes = rng.normal(size=(1, r, 401)).astype(np.float32)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    conf = ref_max_conf(probs[0], boxes[0])
    for low, high in ((10, 100), (12, 12)):
        regions = _select_regions(
            jnp.asarray(logits),
            jnp.asarray(boxes),
            valid,
            np.ones(1, np.float32),
            attributes,
            min_boxes=low,
            max_boxes=high,
        )
        index = ref_select(conf, 0.2, low, high)
        count = int(regions.count[0])
        assert regions.indices.shape == (1, high) and regions.class_probs.shape == (1, high, c)
        np.testing.assert_array_equal(np.asarray(regions.indices[0, :count]), index)
        expected_attr = attributes[0, index, 1:].argmax(1) + 1
        np.testing.assert_array_equal(np.asarray(regions.attribute[0, :count]), expected_attr)
    assert count == 12


# ----------------------------------------------------------------------------
# preprocessing
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((480, 640), (600, 800, 1.25)),  # COCO 4:3, shorter side -> 600
        ((333, 500), (600, 901, 600 / 333)),  # 500 * 1.8018 = 900.9
        ((640, 427), (899, 600, 600 / 427)),  # 640 * 1.4052 = 899.3
        ((500, 2000), (250, 1000, 0.5)),  # 2400 > 1000: longer side -> 1000
        ((1000, 1667), (600, 1000, 0.6)),  # 1000.2 rounds to 1000: kept
        ((1000, 1668), (600, 1000, 1000 / 1668)),  # 1000.8 rounds to 1001: capped
        ((8000, 6000), (800, 600, 0.1)),
        ((600, 600), (600, 600, 1.0)),
    ],
)
def test_resized_size(size, expected):
    new_h, new_w, scale = preprocess.resized_size(*size)
    assert (new_h, new_w) == expected[:2]
    assert scale == pytest.approx(expected[2], rel=1e-12)
    assert preprocess.choose_bucket(new_h, new_w) in preprocess.BUCKETS


def ref_cv2_linear(image, scale):
    """cv2 INTER_LINEAR, pixel by pixel: source coordinate (d + 0.5) / s - 0.5,
    the border pixel alone outside [0, n - 1]."""
    h, w = image.shape[:2]
    nh, nw = round(h * scale), round(w * scale)

    def taps(d, n):
        f = np.float32((d + 0.5) * (1.0 / scale) - 0.5)
        i = int(np.floor(f))
        if i < 0:
            return 0, 0, 0.0
        if i >= n - 1:
            return n - 1, n - 1, 0.0
        return i, i + 1, float(f - np.float32(i))

    out = np.zeros((nh, nw, image.shape[2]))
    for y in range(nh):
        y0, y1, fy = taps(y, h)
        for x in range(nw):
            x0, x1, fx = taps(x, w)
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            out[y, x] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize("scale", [1.7, 0.45, 2.0, 0.5])
def test_resize_linear_is_cv2_bilinear(scale):
    rng = np.random.default_rng(0)
    image = rng.uniform(-120, 150, (9, 13, 3)).astype(np.float32)
    ours = preprocess.resize_linear(image, scale)
    np.testing.assert_allclose(ours, ref_cv2_linear(image, scale), atol=1e-3)


def test_resize_linear_against_pil():
    """Enlarging: PIL's BILINEAR agrees (same filter); shrinking it antialiases."""
    yy, xx = np.mgrid[0:48, 0:64]
    image = (100 * np.sin(xx / 3.0 + yy / 5.0)).astype(np.float32)[:, :, None]
    differences = []
    for scale in (1.25, 0.6):
        ours = preprocess.resize_linear(image, scale)[:, :, 0]
        pil = Image.fromarray(image[:, :, 0], "F").resize(ours.shape[::-1], Image.BILINEAR)
        differences.append(np.abs(ours - np.asarray(pil)).max())
    assert differences[0] < 0.01 and differences[1] > 1.0


def test_pad_batch():
    a = preprocess.PreparedImage(np.ones((600, 800, 3), np.float32), 1.25, (480, 640))
    b = preprocess.PreparedImage(np.full((600, 750, 3), 2, np.float32), 1.5, (400, 500))
    batch = preprocess.pad_batch([a, b], (600, 800))
    assert batch.images.shape == (2, 600, 800, 3)
    assert (batch.images[1, :, 750:] == 0).all() and (batch.images[1, :, :750] == 2).all()
    np.testing.assert_array_equal(batch.image_sizes, [[600, 800], [600, 750]])
    np.testing.assert_array_equal(batch.original_sizes, [[480, 640], [400, 500]])
    with pytest.raises(ValueError, match="exceeds"):
        preprocess.pad_batch([a], (600, 600))


# ----------------------------------------------------------------------------
# image files
# ----------------------------------------------------------------------------

RED = (230, 20, 10)


def _save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def _png_header_only(path, width, height):
    """A PNG that declares its size and holds no pixels (read lazily)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_read_colour_modes(tmp_path):
    rgb = Image.new("RGB", (40, 30), RED)
    cases = {
        "rgb.jpg": (rgb, {"quality": 95}),
        "rgb.png": (rgb, {}),
        "grey.png": (Image.new("L", (40, 30), 77), {}),
        "cmyk.jpg": (rgb.convert("CMYK"), {"quality": 95}),
        "rgba.png": (Image.new("RGBA", (40, 30), (*RED, 0)), {}),
        "palette.png": (rgb.convert("P", palette=Image.Palette.ADAPTIVE), {}),
    }
    for name, (image, kwargs) in cases.items():
        bgr = preprocess.read_image(_save(tmp_path, name, image, **kwargs))
        assert bgr.shape == (30, 40, 3) and bgr.dtype == np.uint8, name
        expected = (77, 77, 77) if name.startswith("grey") else RED[::-1]
        assert np.abs(bgr.astype(int) - expected).max() <= 6, name
    # 16-bit greyscale keeps its top byte, as cv2's colour mode.
    deep = Image.fromarray(np.full((20, 20), 0xAB12, np.uint16))
    bgr = preprocess.read_image(_save(tmp_path, "deep.png", deep))
    assert (bgr == 0xAB).all()


def test_read_bad_files(tmp_path):
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(jpeg, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    text = tmp_path / "notes.jpg"
    text.write_bytes(b"this is not an image\n" * 10)
    tiny = _save(tmp_path, "tiny.png", Image.new("RGB", (8, 8), RED))
    huge = _png_header_only(tmp_path / "huge.png", 30000, 20)
    cases = {
        truncated: "cannot read",
        text: "cannot read",
        tiny: "8 x 8",
        huge: "over 20000",
        tmp_path / "missing.jpg": "cannot read",
    }
    for path, message in cases.items():
        with pytest.raises(DataError, match=message) as error:
            preprocess.read_image(path)
        assert error.value.file == str(path)


def test_prepare_image(tmp_path):
    path = _save(tmp_path, "coco.jpg", Image.new("RGB", (640, 480), RED), quality=95)
    prepared = preprocess.prepare_image(path)
    assert prepared.pixels.shape == (600, 800, 3) and prepared.pixels.dtype == np.float32
    assert prepared.scale == 1.25 and prepared.original_size == (480, 640)
    centre = prepared.pixels[300, 400]
    np.testing.assert_allclose(centre, np.array(RED[::-1]) - preprocess.PIXEL_MEANS_BGR, atol=6)
    assert preprocess.choose_bucket(*prepared.pixels.shape[:2]) == (600, 800)
