"""The jitted training and evaluation steps, one compilation per task and batch shape.

The train state is a plain dict `{"params", "opt_state", "step"}` of arrays,
which orbax saves as is. Steps take the parameters as a pure dict and bind
them to the model's graph inside the trace, so nothing stateful crosses jit.
Every array's place on the device mesh comes from the parameters' logical
axis names and a `Layout` (mesh + rules); the steps are jitted with those
shardings as inputs and outputs.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec

from uniter_jax.model import UniterConfig, get_params
from uniter_jax.sharding import Layout, logical_specs
from uniter_jax.train.optimizer import (
    OptimSettings,
    learning_rate,
    make_optimizer,
    optimizer_args,
    task_lr_mul,
)

# How many times each (kind, task) step has been traced: tests and logs use it
# to show that each task compiles once per batch shape.
TRACES: collections.Counter = collections.Counter()


class Objective(Protocol):
    """What a step trains: the model it builds and the losses of its tasks.

    Implemented by the pretraining `TaskSettings` (and, without `loss`, by
    `PRETRAINING`, the pretraining model alone) and by each downstream task
    (`uniter_jax/downstream`). Must be hashable (a frozen dataclass): steps are
    compiled once per objective.
    """

    # Parameter groups besides `uniter` that this objective's model adds and a
    # pretrained checkpoint lacks (a downstream head); () for pretraining.
    head_groups: tuple[str, ...]

    def build(self, config: UniterConfig, rngs: nnx.Rngs) -> nnx.Module:
        """A fresh model: the encoder and this objective's heads."""

    def loss(
        self, task: str, model: Any, batch: dict, mask_key: jax.Array, dropout_key: jax.Array | None
    ) -> tuple[jax.Array, dict]:
        """`(scalar training loss, {metric: (sum, count)})` of `task` on `batch`."""

    def fields(self, task: str) -> tuple[str, ...]:
        """The batch entries `task`'s step reads (the rest stays on the host)."""


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """The static part of a step: model, objective and optimiser settings (hashable)."""

    model: UniterConfig
    tasks: Objective  # pretraining's TaskSettings or a downstream task
    optim: OptimSettings


def batch_fields(task: str, objective: Objective) -> tuple[str, ...]:
    """The batch entries `task`'s step reads."""
    return objective.fields(task)


@functools.lru_cache(maxsize=16)
def _abstract_model(config: UniterConfig, objective: Objective) -> nnx.Module:
    return nnx.eval_shape(lambda: objective.build(config, nnx.Rngs(0)))


def abstract_params(config: UniterConfig, objective: Objective) -> dict:
    """The parameter tree of `objective`'s model, as shapes."""
    return nnx.to_pure_dict(nnx.state(_abstract_model(config, objective), nnx.Param))


def bind(config: UniterConfig, params: dict, objective: Objective) -> nnx.Module:
    """A model whose parameters are `params` (a pure dict); cheap inside a trace."""
    return nnx.merge(nnx.split(_abstract_model(config, objective))[0], params)


# ---- where the state lives ---------------------------------------------------


def param_shardings(config: UniterConfig, layout: Layout, objective: Objective) -> dict:
    """`NamedSharding` of every parameter under `layout`, from its logical axis names."""
    return layout.shardings(logical_specs(_abstract_model(config, objective)))


def _specs(settings: StepSettings) -> dict:
    """Logical `PartitionSpec`s of the train state: optimiser moments follow their
    parameters, counters are replicated."""
    param_specs = logical_specs(_abstract_model(settings.model, settings.tasks))
    optimizer = make_optimizer(settings.optim)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params(settings.model, settings.tasks))
    opt_specs = optax.tree_map_params(
        optimizer,
        lambda _, spec: spec,
        abstract_opt,
        param_specs,
        transform_non_params=lambda _: PartitionSpec(),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
    if settings.optim.per_task_moments:
        opt_specs = {task: opt_specs for task in settings.optim.moment_tasks}
    return {"params": param_specs, "opt_state": opt_specs, "step": PartitionSpec()}


def state_shardings(settings: StepSettings, layout: Layout) -> dict:
    """`NamedSharding` of every train-state array under `layout`."""
    return layout.shardings(_specs(settings))


def abstract_state(settings: StepSettings, layout: Layout) -> dict:
    """The train state as sharded `ShapeDtypeStruct`s: a restore target."""
    shapes = jax.eval_shape(
        functools.partial(_init_state, settings=settings),
        abstract_params(settings.model, settings.tasks),
    )
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        shapes,
        state_shardings(settings, layout),
    )


def _init_state(params: dict, settings: StepSettings) -> dict:
    """With `per_task_moments`, `opt_state` is `{task: optimiser state}`."""
    optimizer, optim = make_optimizer(settings.optim), settings.optim
    if optim.per_task_moments:
        opt_state = {task: optimizer.init(params) for task in optim.moment_tasks}
    else:
        opt_state = optimizer.init(params)
    return {"params": params, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}


def init_params(
    config: UniterConfig,
    seed: int,
    layout: Layout | None = None,
    *,
    objective: Objective,
) -> dict:
    """Fresh parameters of `objective`'s model from `nnx.Rngs(seed)`, created
    directly in their shards (one device by default)."""
    layout = layout or Layout.single_device()
    shardings = param_shardings(config, layout, objective)
    with layout.active():
        return jax.jit(
            lambda: get_params(objective.build(config, nnx.Rngs(seed))),
            out_shardings=shardings,
        )()


def init_state(params: dict, settings: StepSettings, layout: Layout | None = None) -> dict:
    """The state before the first step: `params`, fresh optimiser state, step 0.

    `params` may live anywhere; the state is laid out by `layout` (one device
    by default). The optimiser state is created in its shards: without
    explicit shardings, jit would put all of it on one device.
    """
    layout = layout or Layout.single_device()
    shardings = state_shardings(settings, layout)
    return jax.jit(
        functools.partial(_init_state, settings=settings),
        in_shardings=(shardings["params"],),
        out_shardings=shardings,
    )(params)


# ---- the steps -----------------------------------------------------------------


def _train_step(state: dict, batch: dict, key: jax.Array, *, task: str, settings: StepSettings):
    TRACES["train", task] += 1
    mask_key, dropout_key = jax.random.split(jax.random.fold_in(key, state["step"]))

    def loss_fn(params):
        model = bind(settings.model, params, settings.tasks)
        return settings.tasks.loss(task, model, batch, mask_key, dropout_key)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    # The clip reuses this norm when it is the one it needs (no accumulation).
    extra = optimizer_args(settings.optim, grad_norm)

    optim = settings.optim
    own = optim.per_task_moments
    if own and task not in optim.moment_tasks:
        raise ValueError(f"task {task!r} has no moments of its own; tasks: {optim.moment_tasks}")

    mul = task_lr_mul(optim, task)

    def update(params, opt_state):
        optimizer = make_optimizer(optim)
        updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
        scale = jnp.float32(mul)
        if own:  # the schedule at the run's update count (make_optimizer's lr is 1)
            scale = scale * learning_rate(optim)(state["step"] // optim.accumulation)
        if own or mul != 1.0:
            updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
        return optax.apply_updates(params, updates), opt_state

    # A branch, not `where(finite, new, old)` over every array: the select was
    # one more pass over parameters and moments (docs/benchmarks.md, "The
    # non-finite guard as a branch").
    moments = state["opt_state"][task] if own else state["opt_state"]
    params, moments = jax.lax.cond(finite, update, lambda *old: old, state["params"], moments)
    opt_state = {**state["opt_state"], task: moments} if own else moments
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    one = jnp.float32(1)
    metrics = {**metrics, "objective": (loss, one), "grad_norm": (grad_norm, one)}
    return new_state, {"metrics": metrics, "finite": finite}


def _eval_step(params: dict, batch: dict, key: jax.Array, *, task: str, settings: StepSettings):
    TRACES["eval", task] += 1
    model = bind(settings.model, params, settings.tasks)
    _, metrics = settings.tasks.loss(task, model, batch, key, None)
    return metrics


def _under(layout: Layout, fn):
    """`fn` traced with `layout`'s mesh and rules active (for the model's constraints)."""

    def traced(*args):
        with layout.active():
            return fn(*args)

    return traced


@functools.lru_cache(maxsize=64)
def train_step_fn(task: str, settings: StepSettings, layout: Layout):
    shardings = state_shardings(settings, layout)
    step = functools.partial(_train_step, task=task, settings=settings)
    return jax.jit(
        _under(layout, step),
        in_shardings=(shardings, layout.batch, layout.replicated),
        out_shardings=(shardings, layout.replicated),
        donate_argnums=0,
    )


@functools.lru_cache(maxsize=64)
def eval_step_fn(task: str, settings: StepSettings, layout: Layout):
    shardings = state_shardings(settings, layout)["params"]
    step = functools.partial(_eval_step, task=task, settings=settings)
    return jax.jit(
        _under(layout, step),
        in_shardings=(shardings, layout.batch, layout.replicated),
        out_shardings=layout.replicated,
    )


def _predict_step(params: dict, batch: dict, *, settings: StepSettings):
    TRACES["predict", type(settings.tasks).__name__] += 1
    return settings.tasks.predict(bind(settings.model, params, settings.tasks), batch)


@functools.lru_cache(maxsize=16)
def predict_step_fn(settings: StepSettings, layout: Layout):
    shardings = state_shardings(settings, layout)["params"]
    step = functools.partial(_predict_step, settings=settings)
    return jax.jit(
        _under(layout, step),
        in_shardings=(shardings, layout.batch),
        out_shardings=layout.batch,
    )


def predict_step(
    params: dict, batch: dict, settings: StepSettings, layout: Layout | None = None
) -> dict:
    """A downstream objective's per-example predictions `{name: [B, ...]}` (no dropout),
    split over the batch axis like the batch."""
    return predict_step_fn(settings, layout or Layout.single_device())(params, batch)


def train_step(
    state: dict,
    batch: dict,
    key: jax.Array,
    *,
    task: str,
    settings: StepSettings,
    layout: Layout | None = None,
) -> tuple[dict, dict]:
    """One micro-step of `task`: masking, forward, loss, gradient, optimiser update.

    Compiled once per (task, settings, layout, batch shape), with the state's
    shardings as inputs and outputs and the state donated.

    Args:
      state: `{"params", "opt_state", "step"}`, laid out by `layout`; donated.
      batch: the arrays of `batch_fields(task, settings.tasks)`, `[B, ...]`, split over the
        batch axis (`Layout.global_batch`) or host arrays on one device.
      key: the run's base PRNG key; the step's key is `fold_in(key, step)`.
      layout: mesh and rules; None = one device.

    Returns:
      `(state, out)`: `out["metrics"]` is `{name: (sum, count)}`, and
      `out["finite"]` is False when the loss or gradient was not finite; then
      params and optimiser state are left as they were, so the caller can stop
      with the last good state.
    """
    step = train_step_fn(task, settings, layout or Layout.single_device())
    return step(state, batch, key)


def eval_step(
    params: dict,
    batch: dict,
    key: jax.Array,
    *,
    task: str,
    settings: StepSettings,
    layout: Layout | None = None,
) -> dict:
    """`task`'s metrics `{name: (sum, count)}` without dropout; `key` drives the masking."""
    return eval_step_fn(task, settings, layout or Layout.single_device())(params, batch, key)
