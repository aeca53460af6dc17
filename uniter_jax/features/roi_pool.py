"""RoIPool (Fast R-CNN max pooling of box regions), with static shapes.

The ports pool with `torchvision.ops.RoIPool(output_size=14, spatial_scale=1/16)`
(detectron2 `modeling/poolers.py`, `POOLER_TYPE: "ROIPool"` in both ports'
configs); its kernel (torchvision `csrc/ops/cpu/roi_pool_kernel.cpp`, the same
rule as Caffe's `ROIPoolingLayer`) is, per box and output bin `(ph, pw)`:

- box corners scaled by `spatial_scale` (in fp32) and rounded to integers
  half away from zero (C `round`): `x1' = round(x1 / 16)`, ..., inclusive;
- `roi_w = max(x2' - x1' + 1, 1)` (malformed boxes become 1x1), likewise
  `roi_h`; bin size `roi_w / 14` in fp32;
- bin `pw` covers columns `[floor(pw * bin_w), ceil((pw + 1) * bin_w))`
  offset by `x1'` and clipped to `[0, W]`; rows likewise; bins overlap
  where the size is not an integer;
- the output is the max over the bin, or 0 where the clipped bin is empty.

Here every bin is a mask over the feature map's rows and columns, and the
max is taken separably (over columns, then rows), so any box, inside the
image or not, gives the kernel's result with shapes that depend only on
`[B, H, W, C]` and `R`. Work is `R * 14 * H * W * C` comparisons.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def round_half_away(x: jax.Array) -> jax.Array:
    """C's `round` (ties away from zero); `jnp.round` rounds ties to even."""
    magnitude = jnp.abs(x)
    whole = jnp.floor(magnitude)
    rounded = whole + (magnitude - whole >= 0.5)  # the difference is exact in fp32
    return jnp.copysign(rounded, x)


def fp32_quotient(numerator: jax.Array, denominator: int) -> jax.Array:
    """`numerator / denominator` rounded to the nearest fp32 (ties to even), as
    the kernel's fp32 division, from integer arithmetic.

    XLA does not divide exactly: it rewrites `x / 14` as `x * (1 / 14)`, and
    XLA:CPU's vectorised division was 1 ulp off as well (3 / 14), and one ulp
    moves a bin edge (`ceil(14 * fp32(3 / 14))` is 3, not 4).

    Args:
      numerator: int32 in `[1, 2^24)`.
      denominator: a positive integer below 2^6.
    """
    ceil_log2 = (denominator - 1).bit_length()
    bits = jax.lax.bitcast_convert_type(numerator.astype(jnp.float32), jnp.int32)
    exponent = (bits >> 23) - 126  # numerator = m * 2^exponent, m in [0.5, 1)
    # Scale so the quotient's 24-bit mantissa is the integer part:
    # numerator * 2^shift / denominator in [2^23, 2^24).
    shift = 24 - exponent + ceil_log2
    scaled = numerator << shift  # < 2^(24 + ceil_log2): fits int32
    too_big = scaled >= denominator << 24
    shift = shift - too_big.astype(jnp.int32)
    scaled = jnp.where(too_big, scaled >> 1, scaled)
    mantissa, remainder = scaled // denominator, scaled % denominator
    halfway = 2 * remainder == denominator
    up = (2 * remainder > denominator) | (halfway & (mantissa % 2 == 1))
    mantissa = mantissa + up.astype(jnp.int32)
    power = jax.lax.bitcast_convert_type((127 - shift) << 23, jnp.float32)  # 2^-shift
    return mantissa.astype(jnp.float32) * power


def _bin_masks(start: jax.Array, end: jax.Array, bins: int, size: int) -> jax.Array:
    """`[...]` rounded box start / end (inclusive) on one axis -> `[..., bins, size]`
    membership of each feature position in each bin, and `[..., bins]` emptiness."""
    bin_size = fp32_quotient(jnp.maximum(end - start + 1, 1), bins)
    index = jnp.arange(bins, dtype=jnp.float32)
    lo = jnp.floor(index * bin_size[..., None]).astype(jnp.int32) + start[..., None]
    hi = jnp.ceil((index + 1) * bin_size[..., None]).astype(jnp.int32) + start[..., None]
    lo, hi = jnp.clip(lo, 0, size), jnp.clip(hi, 0, size)
    position = jnp.arange(size)
    inside = (position >= lo[..., None]) & (position < hi[..., None])
    return inside, hi <= lo


def roi_pool(
    features: jax.Array,
    boxes: jax.Array,
    *,
    output_size: int = 14,
    spatial_scale: float = 1.0 / 16,
    rois_per_step: int = 4,
) -> jax.Array:
    """`_pool` over the boxes `rois_per_step` at a time (a loop), so the masked
    intermediate holds `B * rois_per_step * 14 * H * W * C` elements, not `R`
    times that: a full-width detector at 300 boxes asked XLA:CPU for 41.8 GB
    in one piece. Same arguments and result as `_pool`."""
    batch, count, _ = boxes.shape
    if count <= rois_per_step:
        return _pool(features, boxes, output_size=output_size, spatial_scale=spatial_scale)
    steps = -(-count // rois_per_step)
    padded = jnp.pad(boxes, ((0, 0), (0, steps * rois_per_step - count), (0, 0)))
    chunks = padded.reshape(batch, steps, rois_per_step, 4).swapaxes(0, 1)
    pooled = jax.lax.map(
        lambda chunk: _pool(features, chunk, output_size=output_size, spatial_scale=spatial_scale),
        chunks,
    )  # [steps, B, rois_per_step, P, P, C]
    pooled = pooled.swapaxes(0, 1).reshape(batch, steps * rois_per_step, *pooled.shape[3:])
    return pooled[:, :count]


def _pool(
    features: jax.Array,
    boxes: jax.Array,
    *,
    output_size: int,
    spatial_scale: float,
) -> jax.Array:
    """Max-pools each box's region of the feature map into a fixed grid.

    Args:
      features: `[B, H, W, C]` feature map (NHWC), any float dtype.
      boxes: `[B, R, 4]` boxes `(x1, y1, x2, y2)` in input-image pixels; box
        `r` of image `b` pools from `features[b]`.
      output_size: bins per side (14 in the ports).
      spatial_scale: feature-map cells per input pixel (1/16 for res4).

    Returns:
      `[B, R, output_size, output_size, C]` in `features`' dtype; bins that fall
      outside the feature map are 0.
    """
    _, height, width, _ = features.shape
    scaled = boxes.astype(jnp.float32) * jnp.float32(spatial_scale)
    # Clipped so the extents stay below 2^24 cells (2^28 pixels at 1/16).
    corners = round_half_away(jnp.clip(scaled, -(2.0**22), 2.0**22)).astype(jnp.int32)
    in_cols, empty_cols = _bin_masks(corners[..., 0], corners[..., 2], output_size, width)
    in_rows, empty_rows = _bin_masks(corners[..., 1], corners[..., 3], output_size, height)

    lowest = jnp.array(-jnp.inf, features.dtype)
    # [B, R, PW, H, C]: each column bin's max, for every row.
    col_max = jnp.max(
        jnp.where(in_cols[:, :, :, None, :, None], features[:, None, None, :, :, :], lowest),
        axis=4,
    )
    # [B, R, PH, PW, C]: then over each row bin.
    pooled = jnp.max(
        jnp.where(in_rows[:, :, :, None, :, None], col_max[:, :, None, :, :, :], lowest),
        axis=4,
    )
    empty = empty_rows[:, :, :, None] | empty_cols[:, :, None, :]
    return jnp.where(empty[..., None], jnp.zeros((), features.dtype), pooled)
