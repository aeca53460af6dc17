"""The detector's networks against an independent PyTorch / numpy reference.

The reference is written here from the ports' definitions (bottom-up-attention
.pytorch `bua/caffe/modeling`, detectron2 `BottleneckBlock`): plain
`torch.nn.Conv2d`, the frozen-BN affine by hand, torch's ceil-mode max-pool,
a numpy loop for RoIPool (the torchvision kernel's rule), the bua key names
and the bua 2-way RPN objectness. Random weights go into the reference and
are copied into our model through the bua -> ours key mapping of
`uniter_jax/features/detector.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from tiny_detector import TINY_DETECTOR

from uniter_jax.features.detector import Detector
from uniter_jax.features.detector_config import DetectorConfig
from uniter_jax.features.resnet import max_pool_ceil, run_stage
from uniter_jax.features.roi_pool import fp32_quotient, roi_pool, round_half_away

EPS = 1e-5
SMALL = dataclasses.replace(TINY_DETECTOR, blocks_per_stage=(1, 1, 2, 2))

# ---------------------------------------------------------------- reference


class FrozenBN(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, torch.zeros(channels))

    def forward(self, x):
        view = (1, -1, 1, 1)
        scale = self.weight / torch.sqrt(self.running_var + EPS)
        return (x - self.running_mean.view(view)) * scale.view(view) + self.bias.view(view)


class Conv(torch.nn.Conv2d):
    """detectron2's conv-then-norm (keys `weight`, `norm.*`)."""

    def __init__(self, cin, cout, k, *, stride=1, padding=0, dilation=1, norm=True, bias=False):
        super().__init__(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=bias)
        self.norm = FrozenBN(cout) if norm else None

    def forward(self, x):
        y = super().forward(x)
        return y if self.norm is None else self.norm(y)


class Block(torch.nn.Module):
    def __init__(self, cin, width, cout, stride, dilation=1):
        super().__init__()
        self.shortcut = Conv(cin, cout, 1, stride=stride) if cin != cout else None
        self.conv1 = Conv(cin, width, 1, stride=stride)  # stride in the 1x1
        self.conv2 = Conv(width, width, 3, padding=dilation, dilation=dilation)
        self.conv3 = Conv(width, cout, 1)

    def forward(self, x):
        y = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def stage(n, cin, width, cout, stride, dilation=1):
    return torch.nn.Sequential(
        *[
            Block(cin if i == 0 else cout, width, cout, stride if i == 0 else 1, dilation)
            for i in range(n)
        ]
    )


class Stem(torch.nn.Module):
    def __init__(self, cout):
        super().__init__()
        self.conv1 = Conv(3, cout, 7, stride=2, padding=3)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv1(x)), 3, 2, padding=0, ceil_mode=True)


class Backbone(torch.nn.Module):
    def __init__(self, c: DetectorConfig):
        super().__init__()
        n = c.stage_blocks
        w, out = c.bottleneck_channels, c.res2_channels
        self.stem = Stem(c.stem_channels)
        self.res2 = stage(n[0], c.stem_channels, w, out, 1)
        self.res3 = stage(n[1], out, 2 * w, 2 * out, 2)
        self.res4 = stage(n[2], 2 * out, 4 * w, 4 * out, 2)


class RPNHead2Way(torch.nn.Module):
    """bua's head: 2A objectness channels, viewed as (bg, fg) x A."""

    def __init__(self, c: DetectorConfig):
        super().__init__()
        a = c.num_anchors
        self.conv = torch.nn.Conv2d(c.res4_channels, c.rpn_channels, 3, padding=1)
        self.objectness_logits = torch.nn.Conv2d(c.rpn_channels, 2 * a, 1)
        self.anchor_deltas = torch.nn.Conv2d(c.rpn_channels, 4 * a, 1)


class Predictor(torch.nn.Module):
    """bua's `BUACaffeFastRCNNOutputLayers` names."""

    def __init__(self, c: DetectorConfig):
        super().__init__()
        d = c.res5_channels
        self.cls_score = torch.nn.Linear(d, c.num_classes)
        self.bbox_pred = torch.nn.Linear(d, 4 * c.num_classes)
        self.cls_embed = torch.nn.Embedding(c.num_classes, c.class_embedding_size)
        self.attr_linear1 = torch.nn.Linear(d + c.class_embedding_size, c.attribute_hidden_size)
        self.attr_linear2 = torch.nn.Linear(c.attribute_hidden_size, c.num_attributes)


class Reference(torch.nn.Module):
    def __init__(self, c: DetectorConfig):
        super().__init__()
        self.backbone = Backbone(c)
        self.proposal_generator = torch.nn.Module()
        self.proposal_generator.rpn_head = RPNHead2Way(c)
        self.roi_heads = torch.nn.Module()
        self.roi_heads.res5 = stage(
            c.stage_blocks[3], c.res4_channels, 8 * c.bottleneck_channels, c.res5_channels, 1, 2
        )
        self.roi_heads.box_predictor = Predictor(c)


def randomize(model: torch.nn.Module, seed: int) -> dict[str, np.ndarray]:
    """Well-scaled random values for every weight and BN vector; the state dict."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var") or name.endswith("norm.weight"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith("bias") or name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif t.ndim >= 2:
                fan_in = t[0].numel() if "embed" not in name else 1
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(fan_in))
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def bua_key(path: str) -> str:
    """Our parameter path -> the bua `.pth` key (the docstring's table)."""
    key = path.replace("rpn_head.", "proposal_generator.rpn_head.")
    key = key.replace("cls_embedding.embedding", "cls_embed.weight")
    key = key.replace("fc_attr.", "attr_linear1.").replace("attr_score.", "attr_linear2.")
    return key[: -len("kernel")] + "weight" if key.endswith(".kernel") else key


def detector_from_bua(config: DetectorConfig, state: dict[str, np.ndarray]) -> Detector:
    """Our detector with the bua state dict's values (built abstract, then filled)."""
    model = nnx.eval_shape(lambda: Detector(config, nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(model))
    anchors = config.num_anchors
    for path, variable in flat:
        name = ".".join(map(str, path))
        value = state[bua_key(name)]
        if name.startswith("rpn_head.objectness_logits"):  # 2-way softmax -> one logit
            value = value[anchors:] - value[:anchors]
        if name.endswith(".kernel"):
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        assert value.shape == variable.shape, name
        variable.set_value(jnp.asarray(value))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def roi_pool_loop(fmap: np.ndarray, box, size: int, scale: float) -> np.ndarray:
    """torchvision's RoIPool kernel for one box on one `[H, W, C]` map, as loops."""

    def c_round(v):  # ties away from zero; exact for fp32 values in float64
        return int(math.copysign(math.floor(abs(v) + 0.5), v))

    height, width, channels = fmap.shape
    x1, y1, x2, y2 = (c_round(float(np.float32(v) * np.float32(scale))) for v in box)
    bin_h = np.float32(max(y2 - y1 + 1, 1)) / np.float32(size)
    bin_w = np.float32(max(x2 - x1 + 1, 1)) / np.float32(size)
    out = np.zeros((size, size, channels), fmap.dtype)
    for ph in range(size):
        for pw in range(size):
            h0 = min(max(int(np.floor(np.float32(ph) * bin_h)) + y1, 0), height)
            h1 = min(max(int(np.ceil(np.float32(ph + 1) * bin_h)) + y1, 0), height)
            w0 = min(max(int(np.floor(np.float32(pw) * bin_w)) + x1, 0), width)
            w1 = min(max(int(np.ceil(np.float32(pw + 1) * bin_w)) + x1, 0), width)
            if h1 > h0 and w1 > w0:
                out[ph, pw] = fmap[h0:h1, w0:w1].max(axis=(0, 1))
    return out


def torch_nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2).copy())


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def assert_close(ours, ref, tol=1e-4):
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol * max(1.0, np.abs(ref).max()))


def reference_regions(ref: Reference, fmap: np.ndarray, boxes: np.ndarray, c: DetectorConfig):
    """bua's roi_heads on a res4 map `[B, H, W, C]` and boxes `[B, R, 4]`."""
    pooled = np.stack(
        [
            roi_pool_loop(fmap[b], box, c.pooler_resolution, 1 / c.feature_stride)
            for b in range(boxes.shape[0])
            for box in boxes[b]
        ]
    )
    head = ref.roi_heads
    with torch.no_grad():
        res5 = head.res5(torch_nchw(pooled))
        feats = res5.mean(dim=(2, 3))
        p = head.box_predictor
        scores = p.cls_score(feats)
        deltas = p.bbox_pred(feats)
        classes = scores.argmax(dim=1)
        hidden = F.relu(p.attr_linear1(torch.cat([feats, p.cls_embed(classes)], dim=1)))
        attrs = p.attr_linear2(hidden)
    shape = boxes.shape[:2]
    return {
        "pooled": pooled.reshape(*shape, *pooled.shape[1:]),
        "features": feats.numpy().reshape(*shape, -1),
        "class_logits": scores.numpy().reshape(*shape, -1),
        "box_deltas": deltas.numpy().reshape(*shape, -1, 4),
        "attribute_logits": attrs.numpy().reshape(*shape, -1),
        "classes": classes.numpy().reshape(shape),
    }


# ------------------------------------------------------------------- fixtures

# Boxes on a 64 x 96 image (res4 4 x 6): inside, rounding ties (8 / 16 = 0.5,
# 40 / 16 = 2.5, -40 / 16 = -2.5), zero-size, inverted, partly and wholly
# outside, larger than the image.
BOXES = np.array(
    [
        [[0, 0, 95, 63], [8, 8, 40, 24], [10.3, 5.1, 30.7, 50.2], [50, 30, 50, 30]],
        [[60, 40, 20, 10], [-40, -30, 20, 20], [80, 50, 400, 300], [-200, -100, -50, -20]],
    ],
    np.float32,
)


@pytest.fixture(scope="module")
def small():
    ref = Reference(SMALL).eval()
    state = randomize(ref, seed=0)
    model = detector_from_bua(SMALL, state)
    images = np.random.default_rng(1).normal(size=(2, 64, 96, 3)).astype(np.float32)
    return ref, model, images


# ---------------------------------------------------------------------- tests


def test_backbone_stages_match_torch(small):
    ref, model, images = small
    x = jnp.asarray(images)
    t = torch_nchw(images)
    with torch.no_grad():
        t = ref.backbone.stem(t)
        x = model.backbone.stem(x)
        assert_close(x, nhwc(t))
        assert x.shape == (2, 16, 24, SMALL.stem_channels)  # 64 -> 32 -> ceil-pool 16
        for name in ("res2", "res3", "res4"):
            t = getattr(ref.backbone, name)(t)
            x = run_stage(getattr(model.backbone, name), x)
            assert_close(x, nhwc(t))
    assert x.shape == (2, 4, 6, SMALL.res4_channels)
    assert_close(model(jnp.asarray(images)).features, nhwc(t))


def test_caffe_max_pool_keeps_the_partial_last_window():
    """ceil mode, no padding: 7 -> 3 and 8 -> 4 (a 2-wide last window)."""
    stem_out = np.random.default_rng(0).normal(size=(1, 7, 8, 2)).astype(np.float32)
    ours = max_pool_ceil(jnp.asarray(stem_out))
    ref = F.max_pool2d(torch_nchw(stem_out), 3, 2, padding=0, ceil_mode=True)
    assert ours.shape == (1, 3, 4, 2)
    np.testing.assert_array_equal(ours, nhwc(ref))


def test_rpn_is_the_2way_softmax_as_one_logit(small):
    ref, model, images = small
    out = model(jnp.asarray(images))
    a = SMALL.num_anchors
    head = ref.proposal_generator.rpn_head
    with torch.no_grad():
        hidden = F.relu(head.conv(torch_nchw(out.features)))
        two_way = head.objectness_logits(hidden)  # [N, 2A, H, W]
        deltas = head.anchor_deltas(hidden)
    n, _, h, w = two_way.shape
    # bua: view (N, 2, A, H, W), softmax over the 2, keep the foreground.
    fg = F.softmax(two_way.view(n, 2, a, h, w), dim=1)[:, 1].permute(0, 2, 3, 1)
    logit = (two_way[:, a:] - two_way[:, :a]).permute(0, 2, 3, 1)
    assert out.objectness_logits.shape == (2, 4, 6, a)
    assert_close(out.objectness_logits, logit.numpy())
    assert_close(jax.nn.sigmoid(out.objectness_logits), fg.numpy())
    # bua / detectron2: view (N, A, 4, H, W) -> per position, anchor, coordinate.
    deltas = deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2)
    assert out.anchor_deltas.shape == (2, 4, 6, a, 4)
    assert_close(out.anchor_deltas, deltas.numpy())


def test_roi_pool_matches_the_kernel_loop():
    rng = np.random.default_rng(2)
    fmap = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)
    ours = np.asarray(jax.jit(roi_pool)(jnp.asarray(fmap), jnp.asarray(BOXES)))
    ref = np.stack(
        [np.stack([roi_pool_loop(fmap[b], box, 14, 1 / 16) for box in BOXES[b]]) for b in (0, 1)]
    )
    assert ours.shape == (2, 4, 14, 14, 5)
    np.testing.assert_array_equal(ours, ref)  # a max: exact
    assert (ours[1, 3] == 0).all()  # wholly outside: every bin empty
    assert (ours[1, 2] == 0).any() and (ours[1, 2] != 0).any()  # partly outside


@pytest.mark.parametrize("rois_per_step", [1, 3, 4])
def test_roi_pool_in_steps_equals_the_kernel_loop(rois_per_step):
    """Boxes pooled a few at a time (the memory bound), R not a multiple of the step."""
    rng = np.random.default_rng(5)
    fmap = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)
    boxes = np.concatenate([BOXES, BOXES[:, :3] + 7.0], axis=1)  # 7 boxes per image
    pool = functools.partial(roi_pool, rois_per_step=rois_per_step)
    ours = np.asarray(jax.jit(pool)(jnp.asarray(fmap), jnp.asarray(boxes)))
    ref = np.stack(
        [np.stack([roi_pool_loop(fmap[b], box, 14, 1 / 16) for box in boxes[b]]) for b in (0, 1)]
    )
    np.testing.assert_array_equal(ours, ref)


def test_roi_pool_on_a_larger_map_and_in_bf16():
    rng = np.random.default_rng(3)
    fmap = rng.normal(size=(1, 23, 31, 3)).astype(np.float32)
    corners = rng.uniform(-40, 520, size=(1, 16, 2, 2)).astype(np.float32)
    boxes = np.concatenate([corners.min(2), corners.max(2)], axis=-1)  # x1 y1 x2 y2
    boxes[0, :4] = np.round(boxes[0, :4] / 8) * 8  # corners on ties of the 1/16 scale
    ref = np.stack([roi_pool_loop(fmap[0], box, 14, 1 / 16) for box in boxes[0]])[None]
    pool = jax.jit(roi_pool)
    np.testing.assert_array_equal(pool(jnp.asarray(fmap), jnp.asarray(boxes)), ref)
    low = fmap.astype(jnp.bfloat16)
    pooled = pool(jnp.asarray(low), jnp.asarray(boxes))
    assert pooled.dtype == jnp.bfloat16
    ref = np.stack([roi_pool_loop(low.astype(np.float32)[0], b, 14, 1 / 16) for b in boxes[0]])
    np.testing.assert_array_equal(np.asarray(pooled, np.float32), ref[None])


def test_round_half_away_from_zero_like_c():
    x = jnp.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 2.4999998, 3.0, -0.2], jnp.float32)
    np.testing.assert_array_equal(round_half_away(x), [1, 2, 3, -1, -3, 0, 2, 3, -0.0])


def test_box_head_matches_torch(small):
    ref, model, _ = small
    fmap = np.random.default_rng(4).normal(size=(2, 4, 6, SMALL.res4_channels)).astype(np.float32)
    want = reference_regions(ref, fmap, BOXES, SMALL)
    pooled = jax.jit(roi_pool)(jnp.asarray(fmap), jnp.asarray(BOXES))
    np.testing.assert_array_equal(pooled, want["pooled"])
    got = model.regions(jnp.asarray(fmap), jnp.asarray(BOXES))
    assert got.features.shape == (2, 4, SMALL.res5_channels)
    assert got.box_deltas.shape == (2, 4, SMALL.num_classes, 4)
    np.testing.assert_array_equal(got.classes, want["classes"])
    for name in ("features", "class_logits", "box_deltas", "attribute_logits"):
        assert_close(getattr(got, name), want[name])


def test_attributes_follow_the_given_classes(small):
    """Conditioning on other classes changes only the attribute logits."""
    _, model, _ = small
    fmap = jnp.asarray(np.random.default_rng(5).normal(size=(2, 4, 6, SMALL.res4_channels)))
    fmap = fmap.astype(jnp.float32)
    boxes = jnp.asarray(BOXES[:, :2])
    regions = nnx.jit(lambda m, *args: m.regions(*args))
    auto = regions(model, fmap, boxes, None)
    other = (auto.classes + 1) % SMALL.num_classes
    given = regions(model, fmap, boxes, other)
    np.testing.assert_array_equal(given.classes, other)
    np.testing.assert_array_equal(given.class_logits, auto.class_logits)
    assert not np.allclose(given.attribute_logits, auto.attribute_logits)


def test_bf16_compute_keeps_fp32_params_and_outputs(small):
    _, model, images = small
    low = nnx.eval_shape(
        lambda: Detector(dataclasses.replace(SMALL, dtype="bfloat16"), nnx.Rngs(0))
    )
    nnx.update(low, nnx.state(model))

    @nnx.jit
    def run(detector, images, boxes):
        rpn = detector(images)
        return rpn, detector.regions(rpn.features, boxes)

    boxes = jnp.asarray(BOXES[:, :3])
    rpn, regions = run(model, jnp.asarray(images), boxes)
    rpn16, regions16 = run(low, jnp.asarray(images), boxes)
    params = jax.tree.leaves(nnx.state(low))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    assert rpn16.features.dtype == jnp.bfloat16
    for ours, full in [
        (rpn16.objectness_logits, rpn.objectness_logits),
        *zip(regions16, regions, strict=True),
    ]:
        assert ours.dtype == full.dtype
        if ours.dtype == jnp.float32:
            scale = float(jnp.abs(full).max())
            assert float(jnp.abs(ours - full).max()) < 0.1 * scale


def test_full_size_shapes_at_stride_16():
    """ResNet-101 at the ports' 600 x 1000 input: res4 38 x 63 (every stride-2
    step rounds up), 1024 channels; abstract, nothing is computed."""
    config = DetectorConfig()
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Detector(config, nnx.Rngs(0))))
    images = jax.ShapeDtypeStruct((1, 600, 1000, 3), jnp.float32)
    boxes = jax.ShapeDtypeStruct((1, 300, 4), jnp.float32)

    def run(state, images, boxes):
        detector = nnx.merge(graphdef, state)
        rpn = detector(images)
        return rpn, detector.regions(rpn.features, boxes)

    rpn, regions = jax.eval_shape(run, state, images, boxes)
    assert rpn.features.shape == (1, 38, 63, 1024)
    assert rpn.objectness_logits.shape == (1, 38, 63, 12)
    assert rpn.anchor_deltas.shape == (1, 38, 63, 12, 4)
    assert regions.features.shape == (1, 300, 2048)
    assert regions.class_logits.shape == (1, 300, 1601)
    assert regions.box_deltas.shape == (1, 300, 1601, 4)
    assert regions.attribute_logits.shape == (1, 300, 401)
    blocks = [k for k, _ in nnx.to_flat_state(state) if k[-1] == "kernel" and k[-2] == "conv1"]
    assert len(blocks) == 1 + 3 + 4 + 23 + 3  # stem, res2..res4, res5


@pytest.mark.slow
def test_resnet101_matches_torch_on_a_tiny_image():
    config = DetectorConfig()
    ref = Reference(config).eval()
    state = randomize(ref, seed=6)
    model = detector_from_bua(config, state)
    images = np.random.default_rng(7).normal(size=(1, 40, 56, 3)).astype(np.float32)
    boxes = np.array([[[0, 0, 55, 39], [12, 8, 40, 30]]], np.float32)
    rpn = model(jnp.asarray(images))
    with torch.no_grad():
        t = torch_nchw(images)
        for part in ("stem", "res2", "res3", "res4"):
            t = getattr(ref.backbone, part)(t)
        hidden = F.relu(ref.proposal_generator.rpn_head.conv(t))
        two_way = ref.proposal_generator.rpn_head.objectness_logits(hidden)
    a = config.num_anchors
    assert rpn.features.shape == (1, 3, 4, 1024)
    assert_close(rpn.features, nhwc(t))
    assert_close(rpn.objectness_logits, nhwc(two_way[:, a:] - two_way[:, :a]))
    want = reference_regions(ref, np.asarray(rpn.features), boxes, config)
    got = model.regions(rpn.features, jnp.asarray(boxes))
    np.testing.assert_array_equal(got.classes, want["classes"])
    for name in ("features", "class_logits", "box_deltas", "attribute_logits"):
        assert_close(getattr(got, name), want[name])


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="depth"):
        DetectorConfig(depth=34)
    with pytest.raises(ValueError, match="blocks_per_stage"):
        DetectorConfig(blocks_per_stage=(1, 1, 1))
    with pytest.raises(ValueError, match="dtype"):
        DetectorConfig(dtype="float16")
    assert DetectorConfig(depth=152).stage_blocks == (3, 8, 36, 3)


def test_roi_pool_bin_edges_for_every_extent():
    """Boxes 1..600 cells wide on one row whose values are the column index:
    each bin's max is its last column, so the pooled row shows every bin's
    end, `ceil(fp32(fp32(w / 14) * (pw + 1)))`, as the kernel computes it."""
    width, size = 600, 14
    fmap = np.broadcast_to(np.arange(width, dtype=np.float32), (1, 1, width))[..., None]
    extents = np.arange(1, width + 1)
    boxes = np.zeros((1, width, 4), np.float32)
    boxes[0, :, 2] = 16 * (extents - 1)  # x2' = extent - 1, inclusive
    got = np.asarray(jax.jit(roi_pool)(jnp.asarray(fmap), jnp.asarray(boxes)))[0, :, 0, :, 0]
    bin_w = extents.astype(np.float32)[:, None] / np.float32(size)
    ends = np.ceil(np.arange(1, size + 1, dtype=np.float32) * bin_w).astype(int)
    np.testing.assert_array_equal(got, np.minimum(ends, width) - 1)


@pytest.mark.parametrize("denominator", [14, 7, 6, 1, 63])
def test_fp32_quotient_is_ieee_division(denominator):
    numerators = np.concatenate([np.arange(1, 70000), 2**24 - np.arange(1, 5000)])
    want = numerators.astype(np.float32) / np.float32(denominator)
    got = jax.jit(fp32_quotient, static_argnums=1)(jnp.asarray(numerators, jnp.int32), denominator)
    np.testing.assert_array_equal(got, want)
