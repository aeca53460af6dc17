"""The UNITER encoder: embedders, a stack of post-LN layers, and the pooler.

Text `[B, Lt]` and regions `[B, Nr]` are each padded to a static length and
concatenated, giving `[B, Lt + Nr, H]`. The original packs both compactly per
example instead; that is the same computation because regions carry no
position embedding and padding is masked out of attention.

The layer parameters are always stored stacked (leading axis = layer), so a
checkpoint is the same whether the stack runs as a Python loop or as
`lax.scan`, with or without rematerialisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from uniter_jax.model.config import REMAT_FULL, REMAT_NONE, UniterConfig
from uniter_jax.model.embeddings import ImageEmbeddings, TextEmbeddings
from uniter_jax.model.layers import (
    MASK_LOGIT,
    TransformerLayer,
    attention_bias,
    dense,
    split_key,
)
from uniter_jax.sharding import BATCH, EMBED, LAYERS, LENGTH, constrain


class Encoder(nnx.Module):
    """`num_layers` transformer layers with stacked parameters."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
        def make_layers(rngs: nnx.Rngs) -> TransformerLayer:
            return TransformerLayer(config, rngs)

        self.layers = make_layers(rngs)
        self.num_layers = config.num_layers
        self.scan = config.scan_layers
        self.remat = config.remat

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        dropout_key: jax.Array | None = None,
        *,
        return_attention: bool = False,
        segments: jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """`x` `[B, L, H]`, `mask` `[B, L]` (1 = valid) -> `[B, L, H]`; with
        `return_attention` also every layer's attention `[layers, B, heads, L, L]`.
        With `segments` `[L]` (an id per position), a position attends only to
        positions of its own segment."""
        bias = attention_bias(mask)
        if segments is not None:
            bias = bias + segment_bias(segments)
        # Plain jax.lax.scan / jax.checkpoint over the split layer state rather
        # than nnx.scan / nnx.remat: layers are pure (dropout keys are inputs,
        # nothing is mutated), so the plain transforms need no NNX state
        # plumbing, and the loop and the scan share one code path.
        graphdef, stacked = nnx.split(self.layers)
        keys = None if dropout_key is None else jax.random.split(dropout_key, self.num_layers)

        def apply_layer(h, layer_inputs):
            layer_state, key = layer_inputs
            layer = nnx.merge(graphdef, layer_state)
            if return_attention:
                return layer(h, bias, key, return_attention=True)
            return layer(h, bias, key), None

        if self.remat == REMAT_FULL:
            apply_layer = jax.checkpoint(apply_layer, prevent_cse=not self.scan)
        elif self.remat != REMAT_NONE:
            policy = getattr(jax.checkpoint_policies, self.remat)
            apply_layer = jax.checkpoint(apply_layer, policy=policy, prevent_cse=not self.scan)

        if self.scan:
            x, attention = jax.lax.scan(apply_layer, x, (stacked, keys))
        else:
            per_layer = []
            for layer_inputs in unstack_layers((stacked, keys), self.num_layers):
                x, probs = apply_layer(x, layer_inputs)
                per_layer.append(probs)
            attention = jnp.stack(per_layer) if return_attention else None
        return (x, attention) if return_attention else x


def segment_bias(segments: jax.Array) -> jax.Array:
    """`[L]` segment ids -> `[1, 1, L, L]` additive fp32 bias that blocks
    attention between positions of different segments."""
    across = segments[:, None] != segments[None, :]
    return jnp.where(across, MASK_LOGIT, 0.0).astype(jnp.float32)[None, None]


def unstack_layers(tree, num_layers: int) -> list:
    """The per-layer slices of a tree of `[num_layers, ...]` arrays, as `num_layers` trees.

    One `split` per array rather than `a[i]` per layer: the gradient of a split
    is one concatenation, while the gradient of each `a[i]` is a zero-padded
    copy of the whole stack, and XLA summed twelve of them
    (docs/benchmarks.md, "Per-layer parameters by one split").
    """
    leaves, treedef = jax.tree.flatten(tree)
    pieces = [jnp.split(leaf, num_layers) for leaf in leaves]
    return [
        treedef.unflatten([jnp.squeeze(piece[i], 0) for piece in pieces]) for i in range(num_layers)
    ]


class Pooler(nnx.Module):
    """`tanh(W h_0 + b)` on the first ([CLS]) position."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        self.dense = dense(config.hidden_size, config.hidden_size, config, rngs, (EMBED, None))

    def __call__(self, sequence: jax.Array) -> jax.Array:
        """`[B, L, H]` -> `[B, H]`."""
        return jnp.tanh(self.dense(sequence[:, 0]))


class Uniter(nnx.Module):
    """Single-stream image-text encoder."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = TextEmbeddings(config, rngs)
        self.img_embeddings = ImageEmbeddings(config, rngs)
        self.encoder = Encoder(config, rngs)
        self.pooler = Pooler(config, rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        text_mask: jax.Array,
        img_feat: jax.Array | None = None,
        img_pos: jax.Array | None = None,
        img_mask: jax.Array | None = None,
        *,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        img_type_ids: jax.Array | None = None,
        img_masked: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
        return_attention: bool = False,
        return_embeddings: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Encodes a padded batch of texts and (optionally) regions.

        Args:
          input_ids: `[B, Lt]` token ids, `[CLS] text [SEP]` then padding.
          text_mask: `[B, Lt]`, 1 for real tokens.
          img_feat: `[B, Nr, img_dim]` region features; None for text only.
          img_pos: `[B, Nr, 7]` box features.
          img_mask: `[B, Nr]`, 1 for real regions.
          token_type_ids: `[B, Lt]`, default 0.
          position_ids: `[B, Lt]`, default `0..Lt-1`.
          img_type_ids: `[B, Nr]`, default 1.
          img_masked: `[B, Nr]` bool, regions masked for MRM.
          dropout_key: PRNG key for dropout; None = deterministic (eval).
          return_attention: also return every layer's attention probabilities.
          return_embeddings: also return the encoder's input (the embedders'
            outputs, `[B, Lt + Nr, H]`), as the second element.

        Returns:
          `[B, Lt + Nr, H]` final hidden states in the compute dtype; padded
          positions hold values that must be ignored. With `return_attention`,
          the pair `(hidden, attention [layers, B, heads, L, L])`, fp32, rows =
          queries, text positions first, then regions.
        """
        check_inputs(self.config, input_ids, text_mask, img_feat, img_pos, img_mask)
        text_key, img_key, encoder_key = split_key(dropout_key, 3)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        hidden = self.embeddings(input_ids, token_type_ids, position_ids, text_key)
        mask, segments = text_mask, None
        if img_feat is not None:
            if img_type_ids is None:
                img_type_ids = jnp.ones(img_feat.shape[:2], jnp.int32)
            type_embeddings = self.embeddings.type_rows(img_type_ids)
            # Padded slots may hold anything (even NaN from a bad pad value):
            # zero them so nothing non-finite reaches valid outputs or gradients.
            valid = img_mask.astype(bool)[..., None]
            img_feat = jnp.where(valid, img_feat, 0)
            img_pos = jnp.where(valid, img_pos, 0)
            regions = self.img_embeddings(img_feat, img_pos, type_embeddings, img_masked, img_key)
            hidden = jnp.concatenate([hidden, regions], axis=1)
            mask = jnp.concatenate([text_mask, img_mask.astype(text_mask.dtype)], axis=1)
            if not self.config.cross_modal_attention:
                # Text positions are segment 0, regions segment 1.
                segments = jnp.arange(hidden.shape[1]) >= input_ids.shape[1]
        hidden = constrain(hidden, BATCH, LENGTH, EMBED)
        if return_embeddings:
            if return_attention:
                raise ValueError("return_attention and return_embeddings: one at a time")
            return self.encoder(hidden, mask, encoder_key, segments=segments), hidden
        return self.encoder(
            hidden, mask, encoder_key, return_attention=return_attention, segments=segments
        )

    def pool(self, sequence: jax.Array) -> jax.Array:
        """`[B, L, H]` -> pooled `[B, H]` from the first position."""
        return self.pooler(sequence)


def check_inputs(
    config: UniterConfig,
    input_ids: jax.Array,
    text_mask: jax.Array,
    img_feat: jax.Array | None,
    img_pos: jax.Array | None,
    img_mask: jax.Array | None,
) -> None:
    """Raises ValueError naming the field whose shape or dtype is wrong."""
    problems = []
    if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
        problems.append(f"input_ids must be an integer [B, Lt] array, got {_desc(input_ids)}")
    elif input_ids.shape[1] > config.max_position_embeddings:
        problems.append(
            f"input_ids length {input_ids.shape[1]} exceeds max_position_embeddings "
            f"{config.max_position_embeddings}"
        )
    if text_mask.shape != input_ids.shape:
        problems.append(f"text_mask must match input_ids {input_ids.shape}, got {_desc(text_mask)}")
    if img_feat is not None:
        if img_pos is None or img_mask is None:
            problems.append("img_feat needs img_pos and img_mask")
        elif img_feat.ndim != 3 or img_feat.shape[-1] != config.img_dim:
            problems.append(f"img_feat must be [B, Nr, {config.img_dim}], got {_desc(img_feat)}")
        elif img_feat.shape[0] != input_ids.shape[0]:
            problems.append(
                f"img_feat batch {img_feat.shape[0]} != input_ids batch {input_ids.shape[0]}"
            )
        else:
            regions = img_feat.shape[:2]
            if img_pos.shape != (*regions, config.pos_dim):
                problems.append(
                    f"img_pos must be {[*regions, config.pos_dim]}, got {_desc(img_pos)}"
                )
            if img_mask.shape != regions:
                problems.append(f"img_mask must be {list(regions)}, got {_desc(img_mask)}")
        if img_feat is not None and not jnp.issubdtype(img_feat.dtype, jnp.floating):
            problems.append(f"img_feat must be floating point, got {img_feat.dtype}")
    if problems:
        raise ValueError("bad UNITER inputs: " + "; ".join(problems))


def _desc(x: jax.Array) -> str:
    return f"shape {list(x.shape)} dtype {x.dtype}"
