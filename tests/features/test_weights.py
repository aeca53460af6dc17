"""`weights.load_detector` on fake checkpoints in each published layout.

Random torch references write the files: the bua reference of
`test_networks.py` (2-way RPN objectness, Caffe class order) as a `.pth`, and
a detectron2-layout reference written here (one logit per anchor, background
and "no attribute" last, no background box rows) as a detectron2 `.pkl` and
as HuggingFace's `pytorch_model.bin`. Each loaded detector is compared with
its reference, the d2 one after rolling the reference's class and attribute
axes to background first.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from test_networks import (
    BOXES,
    SMALL,
    Backbone,
    Reference,
    assert_close,
    nhwc,
    randomize,
    reference_regions,
    roi_pool_loop,
    stage,
    torch_nchw,
)

from uniter_jax.data.errors import DataError
from uniter_jax.features import boxes as box_ops
from uniter_jax.features.detector_config import DetectorConfig
from uniter_jax.features.weights import ANCHORS_KEY, load_detector

# Seconds to a minute of compiling; the slow tier (CI runs it).
pytestmark = pytest.mark.slow

A = SMALL.num_anchors
# The anchors each port stores: Caffe's (bua) and detectron2's (HF's ParameterList).
CAFFE_ANCHORS = box_ops.caffe_cell_anchors()
D2_ANCHORS = box_ops.detectron2_cell_anchors()

# ---------------------------------------------------------------- references


class RPNHeadD2(torch.nn.Module):
    """detectron2's `StandardRPNHead` (`HID_CHANNELS`): one objectness logit per anchor."""

    def __init__(self, c: DetectorConfig):
        super().__init__()
        self.conv = torch.nn.Conv2d(c.res4_channels, c.rpn_channels, 3, padding=1)
        self.objectness_logits = torch.nn.Conv2d(c.rpn_channels, c.num_anchors, 1)
        self.anchor_deltas = torch.nn.Conv2d(c.rpn_channels, 4 * c.num_anchors, 1)


class PredictorD2(torch.nn.Module):
    """detectron2 `FastRCNNOutputLayers` with `ATTR`: `NUM_CLASSES` objects plus
    background last in the scores, box rows for the objects only."""

    def __init__(self, c: DetectorConfig):
        super().__init__()
        d, objects = c.res5_channels, c.num_classes - 1
        self.cls_score = torch.nn.Linear(d, objects + 1)
        self.bbox_pred = torch.nn.Linear(d, 4 * objects)
        self.cls_embedding = torch.nn.Embedding(objects + 1, c.class_embedding_size)
        self.fc_attr = torch.nn.Linear(d + c.class_embedding_size, c.attribute_hidden_size)
        self.attr_score = torch.nn.Linear(c.attribute_hidden_size, c.num_attributes)


class ReferenceD2(torch.nn.Module):
    def __init__(self, c: DetectorConfig):
        super().__init__()
        self.backbone = Backbone(c)
        self.proposal_generator = torch.nn.Module()
        self.proposal_generator.rpn_head = RPNHeadD2(c)
        self.roi_heads = torch.nn.Module()
        self.roi_heads.res5 = stage(
            c.stage_blocks[3], c.res4_channels, 8 * c.bottleneck_channels, c.res5_channels, 1, 2
        )
        self.roi_heads.box_predictor = PredictorD2(c)


def reference_rpn(ref: torch.nn.Module, images: np.ndarray, two_way: bool):
    """The reference's backbone and RPN head: one logit `[B, H, W, A]` per anchor
    (bua: `fg - bg` of its 2-way softmax) and deltas `[B, H, W, A, 4]`."""
    with torch.no_grad():
        t = torch_nchw(images)
        for part in ("stem", "res2", "res3", "res4"):
            t = getattr(ref.backbone, part)(t)
        head = ref.proposal_generator.rpn_head
        hidden = F.relu(head.conv(t))
        logits, deltas = head.objectness_logits(hidden), head.anchor_deltas(hidden)
    if two_way:
        logits = logits[:, A:] - logits[:, :A]
    n, _, h, w = deltas.shape
    return nhwc(t), nhwc(logits), deltas.view(n, A, 4, h, w).permute(0, 3, 4, 1, 2).numpy()


def reference_regions_d2(ref: ReferenceD2, fmap: np.ndarray, boxes: np.ndarray):
    """detectron2's roi_heads, outputs in its own order (background last)."""
    pooled = np.stack([roi_pool_loop(fmap[b], box, 14, 1 / 16) for b in (0, 1) for box in boxes[b]])
    p = ref.roi_heads.box_predictor
    with torch.no_grad():
        feats = ref.roi_heads.res5(torch_nchw(pooled)).mean(dim=(2, 3))
        scores, deltas = p.cls_score(feats), p.bbox_pred(feats)
        classes = scores.argmax(dim=1)  # over all classes, background included
        hidden = F.relu(p.fc_attr(torch.cat([feats, p.cls_embedding(classes)], dim=1)))
        attrs = p.attr_score(hidden)
    shape = boxes.shape[:2]
    return {
        "features": feats.numpy().reshape(*shape, -1),
        "class_logits": scores.numpy().reshape(*shape, -1),
        "box_deltas": deltas.numpy().reshape(*shape, -1, 4),
        "attribute_logits": attrs.numpy().reshape(*shape, -1),
        "classes": classes.numpy().reshape(shape),
    }


def tensors(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def save_pth(path, state: dict[str, np.ndarray]) -> str:
    """As bottom-up-attention.pytorch's checkpointer: the state dict under "model"."""
    torch.save({"model": tensors(state), "iteration": 7}, path)
    return str(path)


def save_pkl(path, state: dict[str, np.ndarray]) -> str:
    """As py-bottom-up-attention's `.pkl`: numpy arrays under "model", protocol 2
    (its `_codecs.encode` and `OrderedDict` globals included)."""
    data = {"model": dict(state), "__author__": "test", "matching_heuristics": True}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    return str(path)


def loaded_params(model) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    bua_ref, d2_ref = Reference(SMALL).eval(), ReferenceD2(SMALL).eval()
    bua, d2 = randomize(bua_ref, seed=10), randomize(d2_ref, seed=11)
    # HF's file: the d2 state dict bare, BatchNorm2d counters, its stored anchors.
    hf = dict(d2)
    for key in [k for k in d2 if k.endswith("norm.running_mean")]:
        hf[key.replace("running_mean", "num_batches_tracked")] = np.array(0, np.int64)
    hf[ANCHORS_KEY] = D2_ANCHORS
    torch.save(tensors(hf), root / "pytorch_model.bin")
    return {
        "root": root,
        "bua": bua,
        "d2": d2,
        "bua_ref": bua_ref,
        "d2_ref": d2_ref,
        "pth": save_pth(root / "bua.pth", {**bua, ANCHORS_KEY: CAFFE_ANCHORS}),
        "pkl": save_pkl(root / "d2.pkl", d2),
        "bin": str(root / "pytorch_model.bin"),
    }


IMAGES = np.random.default_rng(1).normal(size=(2, 64, 96, 3)).astype(np.float32)
FMAP = np.random.default_rng(4).normal(size=(2, 4, 6, SMALL.res4_channels)).astype(np.float32)

# -------------------------------------------------------------------- tests


def test_bua_pth_matches_its_reference(files):
    model, config, info = load_detector(files["pth"])
    assert config == SMALL  # read from the shapes; anchors: Caffe's, checked
    assert (info.layout, info.file_format, info.anchors_stored) == ("bua", "torch", True)
    np.testing.assert_array_equal(config.cell_anchors(), CAFFE_ANCHORS)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(nnx.state(model)))
    features, logits, deltas = reference_rpn(files["bua_ref"], IMAGES, two_way=True)
    rpn = model(jnp.asarray(IMAGES))
    assert_close(rpn.features, features)
    assert_close(rpn.objectness_logits, logits)
    assert_close(rpn.anchor_deltas, deltas)
    want = reference_regions(files["bua_ref"], FMAP, BOXES, SMALL)
    got = model.regions(jnp.asarray(FMAP), jnp.asarray(BOXES))
    np.testing.assert_array_equal(got.classes, want["classes"])
    for name in ("features", "class_logits", "box_deltas", "attribute_logits"):
        assert_close(getattr(got, name), want[name])


def test_d2_pkl_matches_its_reference_background_first(files):
    model, config, info = load_detector(files["pkl"])
    assert config == dataclasses.replace(SMALL, anchors="detectron2")
    assert model.box_convention == "detectron2"  # its proposals measure boxes as detectron2
    assert (info.layout, info.file_format, info.anchors_stored) == ("d2", "pickle", False)
    assert info.author == "test" and info.running_stats
    np.testing.assert_array_equal(config.cell_anchors(), D2_ANCHORS)
    _, logits, deltas = reference_rpn(files["d2_ref"], IMAGES, two_way=False)
    rpn = model(jnp.asarray(IMAGES))
    assert_close(rpn.objectness_logits, logits)
    assert_close(rpn.anchor_deltas, deltas)
    want = reference_regions_d2(files["d2_ref"], FMAP, BOXES)
    got = model.regions(jnp.asarray(FMAP), jnp.asarray(BOXES))
    assert_close(got.features, want["features"])
    # Ours: background (and "no attribute") first, 4 zero box rows for it.
    assert_close(got.class_logits, np.roll(want["class_logits"], 1, axis=-1))
    np.testing.assert_array_equal(got.classes, (want["classes"] + 1) % SMALL.num_classes)
    assert_close(got.attribute_logits, np.roll(want["attribute_logits"], 1, axis=-1))
    assert_close(got.box_deltas[..., 1:, :], want["box_deltas"])
    np.testing.assert_array_equal(got.box_deltas[..., 0, :], 0.0)


def test_hf_bin_is_the_d2_layout_with_its_anchors(files):
    model, config, info = load_detector(files["bin"])
    assert (info.layout, info.file_format, info.anchors_stored) == ("d2", "torch", True)
    assert config.anchors == "detectron2"
    assert ANCHORS_KEY in info.ignored
    norms = sum(k.endswith("norm.running_mean") for k in files["d2"])
    assert sum(k.endswith("num_batches_tracked") for k in info.ignored) == norms
    from_pkl, _, _ = load_detector(files["pkl"])
    jax.tree.map(np.testing.assert_array_equal, loaded_params(model), loaded_params(from_pkl))


def test_stored_anchors_must_match_a_generator(files, tmp_path):
    """What bua's config alone would give (detectron2's generator on the Caffe
    scales 4..32 as sizes) is refused; detectron2's anchors in a bua file are taken."""
    tiny = box_ops.detectron2_cell_anchors(sizes=(4, 8, 16, 32))
    path = save_pth(tmp_path / "tiny.pth", {**files["bua"], ANCHORS_KEY: tiny})
    with pytest.raises(DataError, match="match neither") as error:
        load_detector(path)
    assert error.value.file == path
    path = save_pth(tmp_path / "d2_anchors.pth", {**files["bua"], ANCHORS_KEY: D2_ANCHORS})
    assert load_detector(path)[1].anchors == "detectron2"


def test_forbidden_global_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone.stem.conv1.weight": Exploit()}}, f)
    with pytest.raises(DataError, match=r"refused .*global (posix|os)\.system") as error:
        load_detector(path)
    assert error.value.file == str(path)
    assert not marker.exists()


def test_missing_unexpected_and_misshapen_keys_are_listed(files, tmp_path):
    state = dict(files["bua"])
    del state["backbone.res3.0.conv2.weight"]
    state["roi_heads.extra.weight"] = np.zeros(3, np.float32)
    state["roi_heads.box_predictor.cls_score.bias"] = np.zeros(22, np.float32)
    path = save_pth(tmp_path / "broken.pth", state)
    with pytest.raises(DataError) as error:
        load_detector(path, SMALL)
    message = str(error.value)
    assert "missing keys (1): backbone.res3.0.conv2.weight" in message
    assert "unexpected keys (1): roi_heads.extra.weight" in message
    assert "roi_heads.box_predictor.cls_score.bias: expected [23], found [22]" in message
    assert error.value.file == path


def test_a_d2_file_read_as_bua_keys_fails_on_the_layout(files, tmp_path):
    state = dict(files["d2"])
    state["proposal_generator.rpn_head.objectness_logits.weight"] = np.zeros((5, 12, 1, 1))
    path = save_pkl(tmp_path / "odd.pkl", state)
    with pytest.raises(DataError, match="cannot tell the layout: 5 objectness rows for 48"):
        load_detector(path)


def test_norms_without_running_statistics_are_weight_and_bias(files, tmp_path):
    state = {k: v for k, v in files["d2"].items() if "running_" not in k}
    model, _, info = load_detector(save_pkl(tmp_path / "affine.pkl", state))
    assert not info.running_stats
    norm = model.backbone.stem.conv1.norm
    np.testing.assert_array_equal(norm.running_mean[...], 0.0)
    np.testing.assert_array_equal(norm.running_var[...], np.float32(1 - SMALL.batch_norm_eps))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(5, SMALL.stem_channels)), jnp.float32)
    assert_close(norm(x), x * norm.weight[...] + norm.bias[...], tol=1e-6)


def test_a_checkpoint_without_attributes_has_no_attribute_head(files, tmp_path):
    state = {k: v for k, v in files["bua"].items() if "attr_" not in k and "cls_embed" not in k}
    model, config, _ = load_detector(save_pth(tmp_path / "no_attr.pth", state))
    assert not config.attributes
    got = model.regions(jnp.asarray(FMAP), jnp.asarray(BOXES))
    assert got.attribute_logits is None
    want = reference_regions(files["bua_ref"], FMAP, BOXES, SMALL)
    assert_close(got.class_logits, want["class_logits"])
    with pytest.raises(DataError, match=r"missing keys \(5\)"):  # the head asked for, absent
        load_detector(save_pth(tmp_path / "no_attr2.pth", state), SMALL)


def test_torch_files_without_torch_say_how_to_install_it(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(DataError, match=r"pip install torch==2\.13\.0"):
        load_detector(files["pth"])
    assert load_detector(files["pkl"])[2].layout == "d2"  # a .pkl needs no torch


def test_config_anchors():
    np.testing.assert_array_equal(DetectorConfig().cell_anchors(), CAFFE_ANCHORS)
    np.testing.assert_array_equal(DetectorConfig(anchors="detectron2").cell_anchors(), D2_ANCHORS)
    with pytest.raises(ValueError, match="anchors must be one of"):
        DetectorConfig(anchors="torchvision")
    with pytest.raises(ValueError, match="num_anchors 9"):
        DetectorConfig(num_anchors=9)
