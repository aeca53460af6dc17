"""The detector's Caffe-style ResNet: frozen batch norm, convs, stem, bottlenecks.

NHWC activations and HWIO kernels throughout. "Caffe-style" (the MSRA ResNet
the bottom-up-attention model was trained from) means, as the detectron2
ports define it:

- the stride of a bottleneck sits in its first 1x1 conv (and the 1x1
  projection shortcut), not the 3x3 (`STRIDE_IN_1X1 = True`, detectron2
  `modeling/backbone/resnet.py` `BottleneckBlock`);
- the stem is conv 7x7/2 (padding 3, no bias) -> frozen BN -> ReLU -> max-pool
  3x3/2 with padding 0 and `ceil_mode=True` (bottom-up-attention.pytorch
  `bua/caffe/modeling/backbone.py` `BUABasicStem`; py-bottom-up-attention's
  `CAFFE_MAXPOOL` stem), where detectron2's own stem pads by 1 and floors;
- every batch norm is a fixed per-channel affine from `weight`, `bias`,
  `running_mean`, `running_var` with eps 1e-5 (detectron2
  `layers/batch_norm.py` `FrozenBatchNorm2d`; torch `BatchNorm2d` in eval
  mode, which bottom-up-attention.pytorch uses for res4 and res5, is the same
  affine with the same eps).

Convs run in the config's compute dtype (fp32 at full precision, also on
GPUs that would otherwise use TF32); batch norm is applied in fp32 and
rounded back, like the biases of `uniter_jax.model.layers.Dense`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from uniter_jax.features.detector_config import DetectorConfig


def compute_dtype(config: DetectorConfig) -> jnp.dtype:
    return jnp.dtype(config.dtype)


def precision(dtype: jnp.dtype) -> jax.lax.Precision | None:
    """Full fp32 products in fp32 mode (no TF32); the default in bf16."""
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None


class FrozenBatchNorm(nnx.Module):
    """`(x - running_mean) / sqrt(running_var + eps) * weight + bias` per channel.

    The four vectors keep detectron2's names so a checkpoint maps one to one;
    the running statistics are `nnx.BatchStat`s, as in `nnx.BatchNorm`.
    """

    def __init__(self, channels: int, config: DetectorConfig):
        self.weight = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.running_mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
        self.running_var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))
        self.eps = config.batch_norm_eps

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[..., C]` -> `[..., C]` in `x`'s dtype, computed in fp32."""
        scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + self.eps)
        shift = self.bias[...] - self.running_mean[...] * scale
        return (x.astype(jnp.float32) * scale + shift).astype(x.dtype)


class Conv2d(nnx.Module):
    """A conv with optional bias and optional frozen batch norm after it, like
    detectron2's `layers.Conv2d(..., norm=...)` (keys `kernel`, `bias`, `norm.*`).

    `fp32_output` accumulates and returns fp32 whatever the compute dtype (for
    the RPN's logits and deltas).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        config: DetectorConfig,
        rngs: nnx.Rngs,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        use_bias: bool = False,
        norm: bool = True,
        fp32_output: bool = False,
        init_std: float | None = None,
    ):
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        if init_std is None:  # detectron2's c2_msra_fill: He normal over fan-out
            init_std = math.sqrt(2.0 / (kernel_size * kernel_size * out_channels))
        self.kernel = nnx.Param(init_std * jax.random.normal(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if use_bias else None
        self.norm = FrozenBatchNorm(out_channels, config) if norm else None
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.dtype = compute_dtype(config)
        self.fp32_output = fp32_output

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[B, H, W, in]` -> `[B, H', W', out]`, H' = floor((H + 2p - d(k-1) - 1) / s) + 1."""
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding=((self.padding, self.padding), (self.padding, self.padding)),
            rhs_dilation=(self.dilation, self.dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision(self.dtype),
            preferred_element_type=jnp.float32 if self.fp32_output else None,
        )
        if self.bias is not None:
            y = (y.astype(jnp.float32) + self.bias[...]).astype(y.dtype)
        if self.norm is not None:
            y = self.norm(y)
        return y


def max_pool_ceil(x: jax.Array, window: int = 3, stride: int = 2) -> jax.Array:
    """Max-pool `[B, H, W, C]` with no padding and `ceil_mode=True`, as
    `torch.nn.functional.max_pool2d(x, 3, 2, padding=0, ceil_mode=True)`.

    Ceil mode adds windows that hang over the bottom and right edges; they
    take the max of their in-image part. (torch drops a last window that
    would start past the input; with no padding that cannot happen.)
    """
    pads = []
    for size in x.shape[1:3]:
        out = -(-(size - window) // stride) + 1  # ceil((size - window) / stride) + 1
        if (out - 1) * stride >= size:
            out -= 1
        pads.append((0, max((out - 1) * stride + window - size, 0)))
    return jax.lax.reduce_window(
        x,
        jnp.array(-jnp.inf, x.dtype),
        jax.lax.max,
        (1, window, window, 1),
        (1, stride, stride, 1),
        ((0, 0), *pads, (0, 0)),
    )


class Stem(nnx.Module):
    """conv 7x7/2 + frozen BN -> ReLU -> Caffe max-pool: `[B, H, W, 3]` -> stride 4."""

    def __init__(self, config: DetectorConfig, rngs: nnx.Rngs):
        self.conv1 = Conv2d(3, config.stem_channels, 7, config, rngs, stride=2, padding=3)

    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool_ceil(jax.nn.relu(self.conv1(x)))


class Bottleneck(nnx.Module):
    """1x1 (stride) -> 3x3 (dilation) -> 1x1, each with frozen BN, ReLU between,
    plus the identity or a 1x1 projection (stride) shortcut; ReLU after the sum.
    """

    def __init__(
        self,
        in_channels: int,
        bottleneck_channels: int,
        out_channels: int,
        config: DetectorConfig,
        rngs: nnx.Rngs,
        *,
        stride: int = 1,
        dilation: int = 1,
    ):
        self.shortcut = (
            Conv2d(in_channels, out_channels, 1, config, rngs, stride=stride)
            if in_channels != out_channels
            else None
        )
        # Caffe / MSRA: the stride is in the first 1x1 conv.
        self.conv1 = Conv2d(in_channels, bottleneck_channels, 1, config, rngs, stride=stride)
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            3,
            config,
            rngs,
            padding=dilation,
            dilation=dilation,
        )
        self.conv3 = Conv2d(bottleneck_channels, out_channels, 1, config, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[B, H, W, in]` -> `[B, H / stride, W / stride, out]` (rounded up)."""
        y = jax.nn.relu(self.conv1(x))
        y = jax.nn.relu(self.conv2(y))
        y = self.conv3(y)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return jax.nn.relu(y + shortcut.astype(y.dtype))


def make_stage(
    num_blocks: int,
    in_channels: int,
    bottleneck_channels: int,
    out_channels: int,
    config: DetectorConfig,
    rngs: nnx.Rngs,
    *,
    first_stride: int,
    dilation: int = 1,
) -> nnx.List:
    """`num_blocks` bottlenecks; only the first strides (and projects)."""
    blocks = []
    for i in range(num_blocks):
        blocks.append(
            Bottleneck(
                in_channels if i == 0 else out_channels,
                bottleneck_channels,
                out_channels,
                config,
                rngs,
                stride=first_stride if i == 0 else 1,
                dilation=dilation,
            )
        )
    return nnx.List(blocks)


def run_stage(blocks: nnx.List, x: jax.Array) -> jax.Array:
    for block in blocks:
        x = block(x)
    return x


class ResNetC4(nnx.Module):
    """The backbone: stem, res2 (stride 4), res3 (8), res4 (16, 1024 channels).

    res5 is not here: in a C4 detector it runs per region in the box head.
    """

    def __init__(self, config: DetectorConfig, rngs: nnx.Rngs):
        self.stem = Stem(config, rngs)
        blocks = config.stage_blocks
        in_channels = config.stem_channels
        out_channels = config.res2_channels
        bottleneck = config.bottleneck_channels
        stages = []
        for index in range(3):
            stages.append(
                make_stage(
                    blocks[index],
                    in_channels,
                    bottleneck,
                    out_channels,
                    config,
                    rngs,
                    first_stride=1 if index == 0 else 2,
                )
            )
            in_channels, out_channels, bottleneck = out_channels, 2 * out_channels, 2 * bottleneck
        self.res2, self.res3, self.res4 = stages

    def __call__(self, images: jax.Array) -> jax.Array:
        """Preprocessed images `[B, H, W, 3]` -> res4 `[B, H', W', 1024]`, about
        H / 16 (each stride-2 step rounds up), in the compute dtype."""
        x = self.stem(images)
        for stage in (self.res2, self.res3, self.res4):
            x = run_stage(stage, x)
        return x
