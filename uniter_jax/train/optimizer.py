"""The original's optimiser: clipped AdamW on a warm-up/decay schedule.

Values and rules: docs/original.md, Optimizer and schedule.

Weight decay skips biases and LayerNorm parameters, as the original's
`no_decay` list. With gradient accumulation the micro-step gradients are
summed (not averaged) before clipping, as the original does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from uniter_jax.model.config import ConfigError


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """Hashable, so a jitted step can take it as a static argument."""

    lr: float = 5e-5  # peak learning rate
    warmup_steps: int = 10_000  # linear warm-up from 0 to `lr` (optimizer updates)
    total_steps: int = 200_000  # linear decay to 0 at this many updates
    b1: float = 0.9  # Adam beta1
    b2: float = 0.98  # Adam beta2 (the original's)
    eps: float = 1e-6  # Adam epsilon
    weight_decay: float = 0.01  # decoupled (AdamW); not on biases or LayerNorm
    clip_norm: float = 5.0  # global gradient norm; 0 disables clipping
    accumulation: int = 1  # micro-steps whose gradients are summed per update
    # Fine-tuning: the new head's parameters (top-level groups `head_groups`)
    # learn `head_lr_mul` times faster, as the original's `lr_mul`.
    head_lr_mul: float = 1.0
    head_groups: tuple[str, ...] = ()
    # The image projection (each `img_embeddings/img_linear`, region feature ->
    # hidden) learns `image_lr_mul` times the learning rate; 0 keeps it where
    # it started (docs/results.md, "A slower image projection").
    image_lr_mul: float = 1.0
    # Pretraining: each task keeps its own AdamW moments and bias correction,
    # so a task with large gradients (MRC) does not shrink the steps of one
    # with small gradients (ITM) through a shared second moment; the learning
    # rate still follows the run's update count. Memory: one set of moments
    # per task. False: one state shared by all tasks, as the original.
    per_task_moments: bool = False
    # The tasks that own moments when `per_task_moments` (set by the
    # pretraining job from its mix, not by the config).
    moment_tasks: tuple[str, ...] = ()
    # Pretraining: (task, multiplier) pairs; a step of that task moves the
    # parameters `multiplier` times as far (its AdamW update, decay included,
    # scaled), with shared or per-task moments. Tasks not listed: 1.
    task_lr_mul: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        problems = []
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.total_steps <= 0 or not 0 <= self.warmup_steps <= self.total_steps:
            problems.append(
                f"need 0 <= warmup_steps ({self.warmup_steps}) <= total_steps "
                f"({self.total_steps}) and total_steps > 0: set --config.optim.warmup_steps "
                "or --config.optim.total_steps"
            )
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            problems.append(f"betas must be in [0, 1), got ({self.b1}, {self.b2})")
        if self.weight_decay < 0 or self.clip_norm < 0 or self.eps <= 0:
            problems.append("weight_decay and clip_norm must be >= 0 and eps > 0")
        if not self.head_lr_mul > 0:
            problems.append(f"head_lr_mul must be positive, got {self.head_lr_mul}")
        if not 0 <= self.image_lr_mul < float("inf"):
            problems.append(f"image_lr_mul must be finite and >= 0, got {self.image_lr_mul}")
        if self.per_task_moments and not self.moment_tasks:
            problems.append("per_task_moments needs the run's tasks (pretraining sets them)")
        bad = [f"{t}={m}" for t, m in self.task_lr_mul if not 0 <= m < float("inf")]
        if bad:
            problems.append(f"task_lr_mul must be finite and >= 0, got {', '.join(bad)}")
        if self.accumulation < 1:
            problems.append(f"accumulation must be >= 1, got {self.accumulation}")
        if problems:
            raise ConfigError("config optim: " + "; ".join(problems))


def task_lr_mul(settings: OptimSettings, task: str) -> float:
    """How many times the learning rate a step of `task` uses (1 unless set)."""
    return dict(settings.task_lr_mul).get(task, 1.0)


def learning_rate(settings: OptimSettings) -> optax.Schedule:
    """`lr * min(t / warmup, (total - t) / (total - warmup))`, floored at 0.

    `t` counts updates from 1, as the original (its first update already uses
    `lr / warmup`); optax passes the count from 0.
    """

    def schedule(count):
        t = jnp.asarray(count, jnp.float32) + 1.0
        warm = t / max(settings.warmup_steps, 1)
        decay = (settings.total_steps - t) / max(settings.total_steps - settings.warmup_steps, 1)
        factor = jnp.where(t <= settings.warmup_steps, warm, decay)
        return settings.lr * jnp.clip(factor, 0.0, 1.0)

    return schedule


def decay_mask(params: dict) -> dict:
    """True where weight decay applies: every leaf but biases and LayerNorm scales."""

    def decays(path, _):
        return path[-1].key not in ("bias", "scale")

    return jax.tree_util.tree_map_with_path(decays, params)


IMAGE_PROJECTION = ("img_embeddings", "img_linear")


def image_projection_mask(params: dict) -> dict:
    """True on the image projection's kernel and bias, wherever the model nests it."""

    def inside(path, _):
        keys = [getattr(entry, "key", None) for entry in path]
        return any(tuple(keys[i : i + 2]) == IMAGE_PROJECTION for i in range(len(keys) - 1))

    return jax.tree_util.tree_map_with_path(inside, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """Scales the gradient by `min(1, max_norm / norm)`, `norm` its global norm,
    as PyTorch's `clip_grad_norm_` does (without its 1e-6 in the denominator).

    `update(grads, state, params, grad_norm=...)` takes the norm, a float32
    scalar, when the caller has it already, which saves a pass over the
    gradient; without it the norm is computed here. It must be the global L2
    norm of exactly `grads`: `optimizer_args` says when the train step's norm
    is that one.

    One multiply by a scalar, which XLA fuses into AdamW's moment updates.
    `optax.clip_by_global_norm` selects between the gradient and a divided
    copy instead, and XLA:CPU wrote that copy out: two more passes over the
    gradient (docs/benchmarks.md, "Clipping by a scalar factor").
    """

    def update(updates, state, params=None, *, grad_norm=None, **extra_args):
        del params, extra_args
        norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
        factor = jnp.minimum(1.0, max_norm / norm)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


def optimizer_args(settings: OptimSettings, grad_norm: jax.Array) -> dict:
    """The extra arguments of `make_optimizer(settings).update` for a step whose
    gradient has global norm `grad_norm` (a float32 scalar).

    Without accumulation that is the norm the clip needs. With it, the clip
    must measure the summed gradient, which only `optax.MultiSteps` sees, and
    MultiSteps hands extra arguments to every micro-step: passing the
    micro-step's norm there would clip by the wrong amount, silently.
    """
    return {"grad_norm": grad_norm} if settings.accumulation == 1 else {}


def make_optimizer(
    settings: OptimSettings,
) -> optax.GradientTransformationExtraArgs | optax.MultiSteps:
    """The optimiser of one state. With `per_task_moments` its learning rate is
    1: the step scales the update by `learning_rate(settings)` at the run's
    update count, which a task's own count would lag."""
    chain = []
    if settings.clip_norm:
        chain.append(clip_by_global_norm(settings.clip_norm))
    chain.append(
        optax.adamw(
            1.0 if settings.per_task_moments else learning_rate(settings),
            b1=settings.b1,
            b2=settings.b2,
            eps=settings.eps,
            weight_decay=settings.weight_decay,
            mask=decay_mask,
        )
    )
    if settings.head_lr_mul != 1.0 and settings.head_groups:
        # Scaling AdamW's whole update (step and decoupled decay) is the same as
        # a parameter group with `head_lr_mul` times the learning rate.
        heads = set(settings.head_groups)
        chain.append(
            optax.masked(
                optax.scale(settings.head_lr_mul),
                lambda params: {
                    k: jax.tree.map(lambda _, k=k: k in heads, v) for k, v in params.items()
                },
            )
        )
    if settings.image_lr_mul != 1.0:
        chain.append(optax.masked(optax.scale(settings.image_lr_mul), image_projection_mask))
    optimizer = optax.chain(*chain)
    if settings.accumulation > 1:
        optimizer = optax.MultiSteps(
            optimizer, every_k_schedule=settings.accumulation, use_grad_mean=False
        )
    return optimizer
