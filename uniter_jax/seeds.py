"""The random streams of a run, each derived from `config.seed` here, so two
streams never share a seed by accident and a resumed run derives the same
ones. Parameter initialisation uses `nnx.Rngs(seed)` itself; evaluation
masking uses `config.eval.seed`.

The derivations are part of what a saved run depends on (data order enters
the pipelines' fingerprints): changing one changes every run's batches.
"""

from __future__ import annotations

import jax
import numpy as np

_TRAIN_STREAM = 0x7472_6169  # "trai": masking and dropout keys of the train steps
_TASK_DRAW = 0x7A5C  # which task each micro-step trains


def pipeline_seed(seed: int, stream: int, streams: int) -> int:
    """The data-order seed of pipeline `stream` of `streams` (each pretraining
    task, or each fine-tuning store and direction, reads in its own order)."""
    if not 0 <= stream < streams:
        raise ValueError(f"stream {stream} is not one of {streams}")
    return seed * streams + stream


def train_key(seed: int) -> jax.Array:
    """The base key of the train steps' masking and dropout (step `s` folds in `s`)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), _TRAIN_STREAM)


def task_draw(seed: int, step: int) -> float:
    """A uniform number in [0, 1) for step `step`'s task, stateless in the step."""
    return float(np.random.default_rng([seed, _TASK_DRAW, step]).random())
