"""The region proposal network's head: one logit and four deltas per anchor.

As bottom-up-attention.pytorch `bua/caffe/modeling/rpn.py`
(`StandardBUARPNHead`) and py-bottom-up-attention
`detectron2/modeling/proposal_generator/rpn.py` (`StandardRPNHead` with
`HID_CHANNELS: 512`): conv 3x3 1024 -> 512 (bias, padding 1) -> ReLU, then two
1x1 convs with biases: objectness and anchor deltas. 12 anchors per position
(4 sizes x 3 aspect ratios).

The Caffe model scores each anchor with a 2-way softmax (channels `[0, A)`
background, `[A, 2A)` foreground: bua `rpn_outputs.py` views the `2A`
channels as `(2, A)`). Its foreground probability is `sigmoid(l_fg - l_bg)`,
so one logit per anchor with kernel `w_fg - w_bg` and bias `b_fg - b_bg` is
the same model; detectron2's layout already has one logit per anchor.
Deltas are `(dx, dy, dw, dh)` per anchor, channel `4 a + k` in both layouts.
Proposals from these (anchors, decoding, NMS) are `proposals.py`'s.
"""

from __future__ import annotations

import jax
from flax import nnx

from uniter_jax.features.detector_config import DetectorConfig
from uniter_jax.features.resnet import Conv2d


class RPNHead(nnx.Module):
    """`[B, H, W, 1024]` -> objectness `[B, H, W, A]`, deltas `[B, H, W, A, 4]` (fp32)."""

    def __init__(self, config: DetectorConfig, rngs: nnx.Rngs):
        hidden, anchors = config.rpn_channels, config.num_anchors
        # The ports initialise these three with normal(0.01); irrelevant once loaded.
        std = 0.01
        self.conv = Conv2d(
            config.res4_channels,
            hidden,
            3,
            config,
            rngs,
            padding=1,
            use_bias=True,
            norm=False,
            init_std=std,
        )
        self.objectness_logits = Conv2d(
            hidden,
            anchors,
            1,
            config,
            rngs,
            use_bias=True,
            norm=False,
            fp32_output=True,
            init_std=std,
        )
        self.anchor_deltas = Conv2d(
            hidden,
            4 * anchors,
            1,
            config,
            rngs,
            use_bias=True,
            norm=False,
            fp32_output=True,
            init_std=std,
        )
        self.num_anchors = anchors

    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        hidden = jax.nn.relu(self.conv(features))
        logits = self.objectness_logits(hidden)
        deltas = self.anchor_deltas(hidden)
        return logits, deltas.reshape(*deltas.shape[:-1], self.num_anchors, 4)
