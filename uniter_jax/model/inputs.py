"""What the encoder reads from a batch: the names every objective and the
prediction step pass on to `Uniter.__call__`, and `encode`, which does so."""

from __future__ import annotations

from collections.abc import Mapping

import jax

# Batch entries the encoder reads: tokens `[B, Lt]`, text mask `[B, Lt]`,
# region features `[B, Nr, img_dim]`, boxes `[B, Nr, pos_dim]`, region mask `[B, Nr]`.
MODEL_INPUTS = ("input_ids", "text_mask", "img_feat", "img_pos", "img_mask")


def encode(model, batch: Mapping[str, jax.Array], dropout_key, **overrides) -> jax.Array:
    """The sequence output `[B, Lt + Nr, H]` of a batch's text and regions;
    `overrides` replace inputs (masked tokens) or add arguments (`img_masked`)."""
    inputs = {k: batch[k] for k in MODEL_INPUTS}
    inputs.update(overrides)
    return model(**inputs, dropout_key=dropout_key)
