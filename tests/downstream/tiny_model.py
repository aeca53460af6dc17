"""The small model config the downstream objective tests share (no dropout)."""

from uniter_jax.model import UniterConfig


def tiny_config(**overrides) -> UniterConfig:
    fields = dict(
        vocab_size=64, img_dim=16, num_region_labels=5, hidden_dropout=0.0, attention_dropout=0.0
    )
    return UniterConfig.preset("tiny", **{**fields, **overrides})
