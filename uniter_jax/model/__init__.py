"""Flax NNX modules of UNITER: config, embedders, encoder, heads."""

from uniter_jax.model.config import ConfigError, UniterConfig
from uniter_jax.model.pretraining import (
    OPTIONAL_GROUPS,
    UniterForPretraining,
    abstract_params,
    get_params,
    param_groups,
    set_params,
)
from uniter_jax.model.uniter import Uniter

__all__ = [
    "OPTIONAL_GROUPS",
    "ConfigError",
    "Uniter",
    "UniterConfig",
    "UniterForPretraining",
    "abstract_params",
    "get_params",
    "param_groups",
    "set_params",
]
