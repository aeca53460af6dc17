"""Building blocks of the BERT-style encoder: dense, LayerNorm, attention, layer.

Parameters are always fp32. Matmuls run in the config's compute dtype;
biases are added, and LayerNorm statistics, attention logits and softmax
computed, in fp32. Dropout takes an explicit PRNG key (`None` means
deterministic), so a layer is a pure function of its parameters and inputs
and can be scanned or rematerialised freely.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from uniter_jax.model.config import UniterConfig
from uniter_jax.sharding import BATCH, EMBED, HEADS, KV, LENGTH, MLP, annotate, constrain, param

# Added to attention logits of padding positions, as the original (not -inf:
# keeps parity with its fp32 numbers and is safe in bf16).
MASK_LOGIT = -10000.0


def gelu(x: jax.Array) -> jax.Array:
    """The exact (erf) GELU of BERT and UNITER, `x / 2 * (1 + erf(x / sqrt(2)))`.

    Written with `erf`, as PyTorch computes it, rather than
    `jax.nn.gelu(approximate=False)`, which uses `erfc`: XLA:CPU evaluates
    `erfc` through an exponential and range selects, which is slower, the
    forward most of all (docs/benchmarks.md, "GELU through `erf`"). Both are
    within 1.1e-6 of a float64 GELU. Computed in fp32 and rounded to the
    input's dtype, as PyTorch does: in bf16, `1 + erf` cancels to 0 below
    x = -3.1.
    """
    wide = x.astype(jnp.float32)
    return (0.5 * wide * (1.0 + jax.lax.erf(wide * (1.0 / math.sqrt(2.0))))).astype(x.dtype)


# Dropout masks come from a counter-based hash, not from `jax.random`: each
# element's 32-bit draw is a bijective integer mix of its global index and a
# per-call seed (two words drawn from `key` by threefry). It costs a small
# fraction of `jax.random.bits`, whose masks were a visible share of a CPU
# train step (docs/benchmarks.md, "Dropout masks from a hash"); and because
# it depends only on the global index, the masks are the same on every mesh
# and sharding, like threefry's partitionable mode.
# The drop probability is `rate` rounded to a multiple of 2^-32.
_DRAW_LEVELS = 1 << 32


def _mix32(x: jax.Array) -> jax.Array:
    """A bijective avalanche mix of uint32 (xorshift-multiply, "lowbias32")."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def uniform_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 draws of `shape`, a pure function of `key` and each element's index.

    The row-major index is built from broadcast iotas, so a sharded array
    computes only its own block (indices wrap past 2^32 elements)."""
    seed = jax.random.bits(key, (2,), jnp.uint32)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride = (stride * shape[axis]) % _DRAW_LEVELS
    return _mix32(_mix32(index ^ seed[0]) + seed[1])


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; the identity when `key` is None or `rate` is 0."""
    if key is None or rate == 0.0:
        return x
    threshold = min(round(rate * _DRAW_LEVELS), _DRAW_LEVELS - 1)
    keep = uniform_bits(key, x.shape) >= jnp.uint32(threshold)
    scale = _DRAW_LEVELS / (_DRAW_LEVELS - threshold)
    return jnp.where(keep, x * scale, 0.0).astype(x.dtype)


def split_key(key: jax.Array | None, num: int) -> list[jax.Array | None]:
    """`num` independent keys, or `num` Nones in deterministic mode."""
    if key is None:
        return [None] * num
    return list(jax.random.split(key, num))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def wide_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """`jnp.einsum(spec, a, b)` accumulated and returned in fp32, for logits and
    outputs that feed a loss; its gradient matmuls run in the inputs' dtype.

    A plain fp32-output einsum gets an fp32 cotangent, so in bf16 mode JAX
    computed both of its gradient matmuls in fp32: the attention logits' query
    and key gradients in every layer, and the MLM vocabulary projection's
    `[masked, vocab]` products. Here the cotangent is rounded to the inputs'
    dtype first, as PyTorch's autocast does; in fp32 this is the plain einsum.
    `a` and `b` must share a dtype. Reverse mode only (a `custom_vjp`):
    `jax.jvp` through it raises.
    """
    if a.dtype != b.dtype:
        raise TypeError(
            f"wide_einsum({spec!r}): operands are {a.dtype} and {b.dtype}, not one dtype"
        )
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _wide_einsum_fwd(spec, a, b):
    return wide_einsum(spec, a, b), (a, b)


def _wide_einsum_bwd(spec, residuals, cotangent):
    a, b = residuals
    out, pullback = jax.vjp(functools.partial(jnp.einsum, spec), a, b)
    return pullback(cotangent.astype(out.dtype))


wide_einsum.defvjp(_wide_einsum_fwd, _wide_einsum_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def linear(x: jax.Array, kernel: jax.Array, wide: bool) -> jax.Array:
    """`x [..., in] @ kernel [in, out]`; with `wide`, accumulated and returned
    in fp32 (its cotangent rounded to the inputs' dtype, as `wide_einsum`).

    The kernel's gradient is written as one 2-D product over the flattened
    positions, `x.reshape(-1, in).T @ dy.reshape(-1, out)`. Differentiating
    the einsum gives the same contraction over the leading axes, but XLA:CPU
    then wrote each producer of `dy` (LayerNorm's and dropout's backward, for
    example) transposed, a strided pass over the whole activation
    (docs/benchmarks.md, "The dense layers' own backward"). Reverse mode only.
    """
    if x.dtype != kernel.dtype:
        raise TypeError(f"linear: input is {x.dtype} and kernel {kernel.dtype}, not one dtype")
    return jnp.einsum(
        "...i,io->...o", x, kernel, preferred_element_type=jnp.float32 if wide else None
    )


def _linear_fwd(x, kernel, wide):
    return linear(x, kernel, wide), (x, kernel)


def _linear_bwd(wide, residuals, cotangent):
    x, kernel = residuals
    cotangent = cotangent.astype(x.dtype)
    dx = jnp.einsum("...o,io->...i", cotangent, kernel)
    dkernel = x.reshape(-1, x.shape[-1]).T @ cotangent.reshape(-1, cotangent.shape[-1])
    return dx, dkernel


linear.defvjp(_linear_fwd, _linear_bwd)


class Dense(nnx.Linear):
    """`nnx.Linear` whose bias is added in fp32, then rounded to the output dtype.

    The bias's gradient is the sum of the output's gradient over every
    position of the batch. `nnx.Linear` adds a bias cast to the compute dtype,
    so in bf16 that sum ran in bf16 and lost precision over a large batch's
    positions (docs/benchmarks.md, GPU section). Here it runs in fp32, as
    PyTorch's autocast accumulates it; the matmuls, forward and backward, stay
    in the compute dtype.
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        x, kernel = inputs.astype(self.dtype), self.kernel[...].astype(self.dtype)
        y = linear(x, kernel, self.preferred_element_type == jnp.float32)
        return (y.astype(jnp.float32) + self.bias[...]).astype(y.dtype)


def dense(
    in_features: int,
    out_features: int,
    config: UniterConfig,
    rngs: nnx.Rngs,
    axes: tuple[str | None, str | None],
    *,
    fp32_output: bool = False,
) -> Dense:
    """A linear layer with BERT's init: normal(initializer_range) weights, zero bias.

    `axes` are the logical names of the kernel's `[in, out]` dimensions (the
    bias takes the second). `fp32_output` accumulates and returns fp32
    whatever the compute dtype: for logits and regression outputs that feed a
    loss.
    """
    return Dense(
        in_features,
        out_features,
        kernel_init=annotate(nnx.initializers.normal(config.initializer_range), *axes),
        bias_init=annotate(nnx.initializers.zeros_init(), axes[1]),
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.float32,
        preferred_element_type=jnp.float32 if fp32_output else None,
        rngs=rngs,
    )


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, computed in fp32, returned in `dtype`.

    Biased variance and `eps` inside the square root, as PyTorch's.
    """

    def __init__(self, features: int, config: UniterConfig):
        self.scale = param(jnp.ones((features,), jnp.float32), EMBED)
        self.bias = param(jnp.zeros((features,), jnp.float32), EMBED)
        self.eps = config.layer_norm_eps
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


# Per-head activations `[B, L, heads, head_dim]`.
_HEADS = (BATCH, LENGTH, HEADS, KV)


def attention_bias(mask: jax.Array) -> jax.Array:
    """`[B, L]` validity mask -> `[B, 1, 1, L]` additive fp32 logit bias."""
    return (1.0 - mask.astype(jnp.float32))[:, None, None, :] * MASK_LOGIT


class SelfAttention(nnx.Module):
    """Multi-head attention with BERT's output projection: self-attention, or
    cross-attention when a `context` gives the keys and values (NLVR2 pair-attn)."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        hidden = config.hidden_size
        self.query = dense(hidden, hidden, config, rngs, (EMBED, HEADS))
        self.key = dense(hidden, hidden, config, rngs, (EMBED, HEADS))
        self.value = dense(hidden, hidden, config, rngs, (EMBED, HEADS))
        self.out = dense(hidden, hidden, config, rngs, (HEADS, EMBED))
        self.num_heads = config.num_heads
        self.dropout_rate = config.attention_dropout

    def __call__(
        self,
        x: jax.Array,
        bias: jax.Array,
        dropout_key: jax.Array | None = None,
        context: jax.Array | None = None,
        *,
        return_probs: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """`x` `[B, L, H]`, `bias` `[B, 1, 1, Lc]` -> `[B, L, H]` (before residual);
        keys and values come from `context` `[B, Lc, H]` (default: `x`).

        With `return_probs`, also the attention probabilities `[B, heads, L, Lc]`
        (fp32, before dropout), for inspection."""
        batch, length, hidden = x.shape
        head_dim = hidden // self.num_heads
        context = x if context is None else context

        def heads(y):
            return constrain(y.reshape(*y.shape[:2], self.num_heads, head_dim), *_HEADS)

        q, k, v = heads(self.query(x)), heads(self.key(context)), heads(self.value(context))
        logits = wide_einsum("bqnd,bknd->bnqk", q, k)
        logits = logits / math.sqrt(head_dim) + bias
        probs = jax.nn.softmax(logits, axis=-1)
        dropped = dropout(probs, self.dropout_rate, dropout_key).astype(v.dtype)
        context = constrain(jnp.einsum("bnqk,bknd->bqnd", dropped, v), *_HEADS)
        out = self.out(context.reshape(batch, length, hidden))
        return (out, probs) if return_probs else out


class TransformerLayer(nnx.Module):
    """One post-LN BERT layer: attention and feed-forward, each `LN(x + drop(f(x)))`."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        self.attention = SelfAttention(config, rngs)
        self.attention_norm = LayerNorm(config.hidden_size, config)
        self.intermediate = dense(
            config.hidden_size, config.intermediate_size, config, rngs, (EMBED, MLP)
        )
        self.output = dense(
            config.intermediate_size, config.hidden_size, config, rngs, (MLP, EMBED)
        )
        self.output_norm = LayerNorm(config.hidden_size, config)
        self.dropout_rate = config.hidden_dropout

    def __call__(
        self,
        x: jax.Array,
        bias: jax.Array,
        dropout_key: jax.Array | None = None,
        *,
        return_attention: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """`x` `[B, L, H]` -> `[B, L, H]`, and with `return_attention` also the
        attention probabilities `[B, heads, L, L]`."""
        attn_key, attn_out_key, ffn_key = split_key(dropout_key, 3)
        attended, probs = self.attention(x, bias, attn_key, return_probs=True)
        x = self.attention_norm(x + dropout(attended, self.dropout_rate, attn_out_key))
        ffn = self.output(constrain(gelu(self.intermediate(x)), BATCH, LENGTH, MLP))
        out = constrain(
            self.output_norm(x + dropout(ffn, self.dropout_rate, ffn_key)), BATCH, LENGTH, EMBED
        )
        return (out, probs) if return_attention else out
