"""Every stage of one extraction, loaded from a file in each published layout,
against the chain of independent references.

The reference chain starts from the same file's weights in plain torch
(`test_weights.py`: bua's 2-way RPN and Caffe class order; detectron2's one
logit per anchor, background last) and goes on in numpy: the proposal layer
of the weights' code base (`test_procedure.py`: Caffe's, or detectron2's
`find_top_rpn_proposals` with torchvision's NMS), the RoIPool kernel loop
(`test_networks.py`), the box head in torch again, then `generate_tsv.py`'s
max-confidence and selection loops. Each stage of ours is compared with the
reference's at 1e-4 (fp32), and each reference stage feeds the next one, so a
difference cannot hide behind an agreement later on.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_networks import SMALL, assert_close, roi_pool_loop
from test_procedure import ref_d2_proposals, ref_max_conf, ref_proposals, ref_select
from test_weights import IMAGES, files, reference_regions, reference_regions_d2, reference_rpn
from tiny_detector import tiny_extract

from uniter_jax.features import boxes as box_ops
from uniter_jax.features import proposals
from uniter_jax.features.extract_step import detect
from uniter_jax.features.roi_pool import roi_pool
from uniter_jax.features.weights import load_detector

# Compiles the whole step once per layout (about 20 s each): the slow tier.
pytestmark = pytest.mark.slow

__all__ = ["files"]  # the fixture, imported for pytest

CONFIG = tiny_extract(min_boxes=3, max_boxes=10, pre_nms_top_n=300, post_nms_top_n=50)
IMAGE = IMAGES[:1]  # [1, 64, 96, 3], already "minus the pixel means"
IMAGE_SIZE = np.array([[64, 96]], np.int32)  # resized size: the whole input
SCALE = np.array([0.8], np.float32)  # so the original image was 80 x 120
FEATURE_SIZE = np.array([[4, 6]], np.int32)


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def reference_chain(layout: str, ref) -> dict[str, np.ndarray]:
    """The references' stages for `IMAGE`, each from the one before."""
    features, logits, deltas = reference_rpn(ref, IMAGE, two_way=layout == "bua")
    image_size, feature_size = IMAGE_SIZE[0], FEATURE_SIZE[0]
    pre, post = CONFIG.pre_nms_top_n, CONFIG.post_nms_top_n
    if layout == "bua":
        boxes = ref_proposals(logits[0], deltas[0], image_size, SCALE[0], feature_size, pre, post)
        regions = reference_regions(ref, features, boxes[None], SMALL)
        class_logits, attribute_logits = regions["class_logits"], regions["attribute_logits"]
    else:
        boxes = ref_d2_proposals(logits[0], deltas[0], image_size, feature_size, pre, post)
        regions = reference_regions_d2(ref, np.repeat(features, 2, axis=0), np.stack([boxes] * 2))
        regions = {k: v[:1] for k, v in regions.items()}
        # detectron2 puts background (and "no attribute") last; ours, first.
        class_logits = np.roll(regions["class_logits"], 1, axis=-1)
        attribute_logits = np.roll(regions["attribute_logits"], 1, axis=-1)
    pooled = np.stack([roi_pool_loop(features[0], box, 14, 1 / 16) for box in boxes])
    probs = softmax(class_logits[0])
    attribute_probs = softmax(attribute_logits[0])
    image_boxes = boxes / SCALE[0]
    max_conf = ref_max_conf(probs, image_boxes, 0.3)
    keep = ref_select(max_conf, CONFIG.conf_threshold, CONFIG.min_boxes, CONFIG.max_boxes)
    return {
        "features": features,
        "logits": logits,
        "deltas": deltas,
        "proposals": boxes,
        "pooled": pooled,
        "region_features": regions["features"][0],
        "class_probs": probs,
        "attribute_probs": attribute_probs,
        "keep": keep,
        "boxes": image_boxes[keep],
        "confidence": max_conf[keep],
        "kept_features": regions["features"][0][keep],
        "kept_probs": probs[keep],
        "attribute": np.argmax(attribute_probs[keep][:, 1:], axis=-1) + 1,
    }


@pytest.mark.parametrize("layout, file", [("bua", "pth"), ("d2", "pkl")])
def test_every_stage_matches_the_reference_chain(files, layout, file):
    model, config, info = load_detector(files[file])
    assert info.layout == layout
    want = reference_chain(layout, files[f"{layout}_ref"])
    convention = box_ops.CONVENTIONS[model.box_convention]
    assert convention == (box_ops.CAFFE if layout == "bua" else box_ops.DETECTRON2)

    rpn = model(jnp.asarray(IMAGE))
    assert_close(rpn.features, want["features"])
    assert_close(rpn.objectness_logits, want["logits"])
    assert_close(rpn.anchor_deltas, want["deltas"])

    propose = functools.partial(
        proposals.propose,
        cell_anchors=config.cell_anchors(),
        pre_nms_top_n=CONFIG.pre_nms_top_n,
        post_nms_top_n=CONFIG.post_nms_top_n,
        convention=convention,
    )
    proposed = jax.jit(propose)(
        rpn.objectness_logits, rpn.anchor_deltas, IMAGE_SIZE, SCALE, FEATURE_SIZE
    )
    valid = np.asarray(proposed.valid[0])
    assert valid.sum() == len(want["proposals"]) > CONFIG.max_boxes
    assert_close(np.asarray(proposed.boxes[0])[valid], want["proposals"])

    pooled = roi_pool(rpn.features, proposed.boxes)
    assert_close(np.asarray(pooled[0])[valid], want["pooled"])
    heads = model.regions(rpn.features, proposed.boxes)
    assert_close(np.asarray(heads.features[0])[valid], want["region_features"])
    probs = jax.nn.softmax(heads.class_logits[0], axis=-1)
    assert_close(np.asarray(probs)[valid], want["class_probs"])
    attribute_probs = jax.nn.softmax(heads.attribute_logits[0], axis=-1)
    assert_close(np.asarray(attribute_probs)[valid], want["attribute_probs"])

    # The whole step, as `extract` runs it.
    step = jax.jit(
        functools.partial(detect, config=CONFIG, cell_anchors=config.cell_anchors()),
    )
    out = step(model, jnp.asarray(IMAGE), IMAGE_SIZE, SCALE, FEATURE_SIZE)
    count = int(out.count[0])
    assert count == len(want["keep"]) and CONFIG.min_boxes <= count <= CONFIG.max_boxes
    assert_close(out.boxes[0, :count], want["boxes"])
    assert_close(out.confidence[0, :count], want["confidence"])
    assert_close(out.features[0, :count], want["kept_features"])
    assert_close(out.class_probs[0, :count], want["kept_probs"])
    np.testing.assert_array_equal(out.attribute[0, :count], want["attribute"])
