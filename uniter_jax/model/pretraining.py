"""`UniterForPretraining`: the encoder with its four pretraining heads.

This is the whole of an original pretraining checkpoint. Downstream models
hold a `Uniter` and their own heads instead.
"""

from __future__ import annotations

import jax
from flax import nnx

from uniter_jax.model.config import UniterConfig
from uniter_jax.model.heads import ITMHead, MLMHead, RegionClassHead, RegionFeatureHead
from uniter_jax.model.uniter import Uniter

# Parameter groups a checkpoint may lack (a downstream or BERT file); the
# encoder groups `uniter/embeddings` and `uniter/encoder` are always required.
HEADS = ("mlm", "mrfr", "mrc", "itm")  # the pretraining heads' parameter groups
OPTIONAL_GROUPS = ("uniter/img_embeddings", "uniter/pooler", *HEADS)


class UniterForPretraining(nnx.Module):
    """`uniter` plus the MLM, MRFR, MRC and ITM heads."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        self.config = config
        self.uniter = Uniter(config, rngs)
        self.mlm = MLMHead(config, rngs)
        self.mrfr = RegionFeatureHead(config, rngs)
        self.mrc = RegionClassHead(config, rngs)
        self.itm = ITMHead(config, rngs)

    def __call__(self, *args, **kwargs) -> jax.Array:
        """The encoder's sequence output; see `Uniter.__call__`."""
        return self.uniter(*args, **kwargs)

    def mlm_logits(self, hidden: jax.Array) -> jax.Array:
        """`[..., H]` hidden states of masked tokens -> `[..., vocab]` logits."""
        return self.mlm(hidden, self.uniter.embeddings.word.embedding[...])

    def mrfr_features(self, hidden: jax.Array) -> jax.Array:
        """`[..., H]` hidden states of masked regions -> `[..., img_dim]` features."""
        return self.mrfr(hidden, self.uniter.img_embeddings.img_linear.kernel[...])

    def mrc_logits(self, hidden: jax.Array) -> jax.Array:
        """`[..., H]` hidden states of masked regions -> `[..., 1601]` class logits."""
        return self.mrc(hidden)

    def itm_logits(self, sequence: jax.Array) -> jax.Array:
        """`[B, L, H]` sequence output -> `[B, 2]` match logits via the pooler."""
        return self.itm(self.uniter.pool(sequence))


def abstract_params(config: UniterConfig) -> dict:
    """The parameter tree of `UniterForPretraining` as ShapeDtypeStructs (no memory)."""
    model = nnx.eval_shape(lambda: UniterForPretraining(config, nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def param_groups(params: dict) -> tuple[str, ...]:
    """Group names of a parameter tree: `uniter/<part>` and each head."""
    groups = []
    for name, sub in params.items():
        if name == "uniter" and isinstance(sub, dict):
            groups += [f"uniter/{part}" for part in sub]
        else:
            groups.append(name)
    return tuple(groups)


def get_params(model: nnx.Module) -> dict:
    """A module's parameters as a plain nested dict of arrays."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def set_params(model: nnx.Module, params: dict) -> None:
    """Replaces a module's parameters in place with a full nested dict of arrays."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
