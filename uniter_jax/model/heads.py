"""Pretraining heads (docs/original.md, Pretraining heads): MLM, MRFR, MRC and ITM.

MLM and MRFR reuse encoder weights (the word-embedding table, the image
linear layer's weight); they receive those arrays at call time, so the tie is
structural and there is one copy of each parameter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from uniter_jax.model.config import UniterConfig
from uniter_jax.model.layers import LayerNorm, dense, gelu, wide_einsum
from uniter_jax.sharding import CLASSES, EMBED, FEATURES, VOCAB, param


class Transform(nnx.Module):
    """`LN(gelu(W h + b))`, the shared front of the MLM, MRFR and MRC heads."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        self.dense = dense(config.hidden_size, config.hidden_size, config, rngs, (EMBED, None))
        self.norm = LayerNorm(config.hidden_size, config)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return self.norm(gelu(self.dense(hidden)))


class MLMHead(nnx.Module):
    """Masked language modelling: `[..., H]` -> `[..., vocab]` fp32 logits."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        self.transform = Transform(config, rngs)
        self.bias = param(jnp.zeros((config.vocab_size,), jnp.float32), VOCAB)

    def __call__(self, hidden: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        """`word_embeddings`: the tied `[vocab, H]` table."""
        h = self.transform(hidden)
        logits = wide_einsum("...h,vh->...v", h, word_embeddings.astype(h.dtype))
        return logits + self.bias[...]


class RegionFeatureHead(nnx.Module):
    """Masked region feature regression: `[..., H]` -> `[..., img_dim]` fp32."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        self.transform = Transform(config, rngs)
        self.bias = param(jnp.zeros((config.img_dim,), jnp.float32), FEATURES)

    def __call__(self, hidden: jax.Array, img_kernel: jax.Array) -> jax.Array:
        """`img_kernel`: the image embedder's `[img_dim, H]` kernel, applied transposed."""
        h = self.transform(hidden)
        out = wide_einsum("...h,dh->...d", h, img_kernel.astype(h.dtype))
        return out + self.bias[...]


class RegionClassHead(nnx.Module):
    """Masked region classification: `[..., H]` -> `[..., num_region_labels]` fp32."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        self.transform = Transform(config, rngs)
        self.classifier = dense(
            config.hidden_size,
            config.num_region_labels,
            config,
            rngs,
            (EMBED, CLASSES),
            fp32_output=True,
        )

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return self.classifier(self.transform(hidden)).astype(jnp.float32)


class ITMHead(nnx.Module):
    """Image-text matching: pooled `[B, H]` -> `[B, 2]` fp32 logits (1 = match)."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        self.dense = dense(config.hidden_size, 2, config, rngs, (EMBED, CLASSES), fp32_output=True)

    def __call__(self, pooled: jax.Array) -> jax.Array:
        return self.dense(pooled).astype(jnp.float32)


class ClassifierHead(nnx.Module):
    """The downstream answer classifier (VQA, SNLI-VE): `[B, H]` -> `[B, n]` fp32.

    `dense H->2H, GELU, LayerNorm, dense 2H->n` on the pooled output
    (docs/original.md, VQA).
    """

    def __init__(
        self, config: UniterConfig, num_classes: int, rngs: nnx.Rngs, *, relu: bool = False
    ):
        wide = 2 * config.hidden_size
        self.dense = dense(config.hidden_size, wide, config, rngs, (EMBED, None))
        self.norm = LayerNorm(wide, config)
        self.out = dense(wide, num_classes, config, rngs, (None, CLASSES), fp32_output=True)
        self.activation = jax.nn.relu if relu else gelu  # VCR's head uses ReLU

    def __call__(self, pooled: jax.Array) -> jax.Array:
        return self.out(self.norm(self.activation(self.dense(pooled)))).astype(jnp.float32)


class RegionScoreHead(nnx.Module):
    """Referring expressions: one score per region, `[..., H]` -> `[...]` fp32.

    A linear layer on each region's output, the original's default (`mlp=1`).
    """

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        self.out = dense(config.hidden_size, 1, config, rngs, (EMBED, None), fp32_output=True)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return self.out(hidden)[..., 0].astype(jnp.float32)
