"""Text and image embedders (docs/original.md, Model).

Text: word + position + token type, LayerNorm, dropout (BERT's).
Regions: `LN(W_img f + b) + LN(W_pos p + b) + token_type[1]`, LayerNorm,
dropout; masked regions (MRM) have `f` replaced by row 1 of a 2-row mask
embedding table whose row 0 is held at zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from uniter_jax.model.config import UniterConfig
from uniter_jax.model.layers import LayerNorm, dense, dropout
from uniter_jax.sharding import EMBED, FEATURES, VOCAB, annotate, param


def embed(
    num: int, features: int, config: UniterConfig, rngs: nnx.Rngs, row_axis: str | None = None
) -> nnx.Embed:
    """An embedding table `[num, features]` with BERT's normal(initializer_range) init."""
    return nnx.Embed(
        num,
        features,
        embedding_init=annotate(nnx.initializers.normal(config.initializer_range), row_axis, EMBED),
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def gather_rows(table: nnx.Embed, ids: jax.Array) -> jax.Array:
    """`table`'s rows for `ids`, gathered from the fp32 table, in the compute dtype.

    The same values as `table(ids)`, which casts the table first. The gradient
    is a scatter-add of every position into its id's row, and it runs in the
    dtype of the gather: after a cast to bf16, the thousands of [CLS], [SEP]
    and frequent-word positions of a batch would be summed in bf16.
    """
    return jnp.take(table.embedding[...], ids, axis=0).astype(table.dtype)


class TextEmbeddings(nnx.Module):
    """Token ids -> `[B, L, H]` embeddings."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        self.word = embed(config.vocab_size, config.hidden_size, config, rngs, VOCAB)
        self.position = embed(config.max_position_embeddings, config.hidden_size, config, rngs)
        # Shared with the image embedder: row 1 marks regions.
        self.token_type = embed(config.type_vocab_size, config.hidden_size, config, rngs)
        self.norm = LayerNorm(config.hidden_size, config)
        self.dropout_rate = config.hidden_dropout

    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array,
        position_ids: jax.Array,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """All inputs `[B, L]` int -> `[B, L, H]`."""
        summed = gather_rows(self.word, input_ids) + gather_rows(self.position, position_ids)
        summed = summed + self.type_rows(token_type_ids)
        return dropout(self.norm(summed), self.dropout_rate, dropout_key)

    def type_rows(self, type_ids: jax.Array) -> jax.Array:
        """Token-type rows `[..., H]` in the compute dtype for `type_ids` `[...]`.

        A one-hot product in fp32 rather than a gather: the table has a few
        rows, and a gather's gradient adds every position into one of them.
        As a scatter-add that ran in the compute dtype (in bf16, a sum over
        every region position of the batch, rounded at each addition) and, on
        a GPU, as atomic adds into one row, which took most of a base step
        (docs/benchmarks.md, "Type-embedding gradient"). The product's
        gradient is a matmul over the positions, accumulated in fp32. Ids
        outside `[0, type_vocab_size)` give zeros.
        """
        table = self.token_type.embedding[...]
        one_hot = jax.nn.one_hot(type_ids, table.shape[0], dtype=jnp.float32)
        return (one_hot @ table).astype(self.token_type.dtype)


class ImageEmbeddings(nnx.Module):
    """Region features and boxes -> `[B, N, H]` embeddings."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        hidden = config.hidden_size
        self.img_linear = dense(config.img_dim, hidden, config, rngs, (FEATURES, EMBED))
        self.img_norm = LayerNorm(hidden, config)
        self.pos_linear = dense(config.pos_dim, hidden, config, rngs, (None, EMBED))
        self.pos_norm = LayerNorm(hidden, config)
        # Row 0 is never used (held at zero, as the original's padding_idx=0);
        # row 1 stands in for the feature of a masked region.
        table = nnx.initializers.normal(config.initializer_range)(
            rngs.params(), (2, config.img_dim), jnp.float32
        )
        self.mask_embedding = param(table.at[0].set(0.0), None, FEATURES)
        self.norm = LayerNorm(hidden, config)
        self.dropout_rate = config.hidden_dropout
        self.dtype = jnp.dtype(config.dtype)

    def __call__(
        self,
        feat: jax.Array,
        pos: jax.Array,
        type_embeddings: jax.Array,
        masked: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Embeds regions.

        Args:
          feat: `[B, N, img_dim]` features (any float dtype; fp16 on disk).
          pos: `[B, N, 7]` normalised box features.
          type_embeddings: `[B, N, H]` token-type rows for the regions.
          masked: optional `[B, N]` bool, regions masked for MRM.
          dropout_key: PRNG key, or None for deterministic output.
        """
        feat = feat.astype(self.dtype)
        if masked is not None:
            mask_row = self.mask_embedding[...][1].astype(self.dtype)
            feat = jnp.where(masked[..., None], mask_row, feat)
        summed = self.img_norm(self.img_linear(feat)) + self.pos_norm(
            self.pos_linear(pos.astype(self.dtype))
        )
        summed = summed + type_embeddings
        return dropout(self.norm(summed), self.dropout_rate, dropout_key)
