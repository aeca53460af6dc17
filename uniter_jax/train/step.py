"""The jitted training and evaluation steps, one compilation per task and batch shape.

The train state is a plain dict `{"params", "opt_state", "step"}` of arrays,
which orbax saves as is. Steps take the parameters as a pure dict and bind
them to the model's graph inside the trace, so nothing stateful crosses jit.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from uniter_jax.model import UniterConfig, UniterForPretraining
from uniter_jax.objectives.tasks import TASK_FNS, TaskSettings, needs_soft_labels
from uniter_jax.train.optimizer import OptimSettings, make_optimizer

# How many times each (kind, task) step has been traced: tests and logs use it
# to show that each task compiles once per batch shape.
TRACES: collections.Counter = collections.Counter()

INPUT_FIELDS = ("input_ids", "text_mask", "img_feat", "img_pos", "img_mask", "itm_label")


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """The static part of a step: model, task and optimiser settings (hashable)."""

    model: UniterConfig
    tasks: TaskSettings
    optim: OptimSettings


def batch_fields(task: str) -> tuple[str, ...]:
    """The batch entries a task's step reads (the rest stays on the host)."""
    return INPUT_FIELDS + (("img_soft_labels",) if needs_soft_labels(task) else ())


@functools.lru_cache(maxsize=8)
def _graphdef(config: UniterConfig) -> nnx.GraphDef:
    abstract = nnx.eval_shape(lambda: UniterForPretraining(config, nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def bind(config: UniterConfig, params: dict) -> UniterForPretraining:
    """A model whose parameters are `params` (a pure dict); cheap inside a trace."""
    return nnx.merge(_graphdef(config), params)


def init_state(params: dict, settings: StepSettings) -> dict:
    """The state before the first step: `params`, fresh optimiser state, step 0."""
    return {
        "params": params,
        "opt_state": make_optimizer(settings.optim).init(params),
        "step": jnp.zeros((), jnp.int32),
    }


@functools.partial(jax.jit, static_argnames=("task", "settings"), donate_argnames=("state",))
def train_step(
    state: dict, batch: dict, key: jax.Array, *, task: str, settings: StepSettings
) -> tuple[dict, dict]:
    """One micro-step of `task`: masking, forward, loss, gradient, optimiser update.

    Args:
      state: `{"params", "opt_state", "step"}`; donated.
      batch: the arrays of `batch_fields(task)`, `[B, ...]`.
      key: the run's base PRNG key; the step's key is `fold_in(key, step)`.

    Returns:
      `(state, metrics)`: metrics are `{name: (sum, count)}` plus `finite`
      (bool). A non-finite loss or gradient leaves params and optimiser state
      as they were, so the caller can stop with the last good state.
    """
    TRACES["train", task] += 1
    mask_key, dropout_key = jax.random.split(jax.random.fold_in(key, state["step"]))

    def loss_fn(params):
        model = bind(settings.model, params)
        return TASK_FNS[task](model, batch, mask_key, dropout_key, settings.tasks)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = make_optimizer(settings.optim).update(
        grads, state["opt_state"], state["params"]
    )
    params = optax.apply_updates(state["params"], updates)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    new_state = {
        "params": keep(params, state["params"]),
        "opt_state": keep(opt_state, state["opt_state"]),
        "step": state["step"] + 1,
    }
    one = jnp.float32(1)
    metrics = {**metrics, "objective": (loss, one), "grad_norm": (grad_norm, one)}
    return new_state, {"metrics": metrics, "finite": finite}


@functools.partial(jax.jit, static_argnames=("task", "settings"))
def eval_step(
    params: dict, batch: dict, key: jax.Array, *, task: str, settings: StepSettings
) -> dict:
    """`task`'s metrics without dropout; `key` drives the masking."""
    TRACES["eval", task] += 1
    model = bind(settings.model, params)
    _, metrics = TASK_FNS[task](model, batch, key, None, settings.tasks)
    return metrics
