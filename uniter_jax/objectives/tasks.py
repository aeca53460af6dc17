"""The pretraining tasks (docs/original.md, Pretraining tasks) and how steps choose among them.

Each task maps `(model, batch, keys)` to a scalar training loss and metrics as
`(sum, count)` pairs. Masked tasks run their heads only on the masked
positions, gathered into a static `[max_count, H]` block. Masking is
conditional (one modality per task) and uses only matched pairs: an example
whose `itm_label` is 0 contributes nothing to MLM or MRM, so the same batch
format serves every task and validation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uniter_jax.model import UniterConfig, UniterForPretraining
from uniter_jax.model.config import ConfigError
from uniter_jax.model.inputs import MODEL_INPUTS, encode
from uniter_jax.objectives import losses
from uniter_jax.objectives.masking import gather_chosen, mlm_mask, mrm_mask
from uniter_jax.objectives.wra import SOLVERS, WraSettings, wra_distance, wra_loss
from uniter_jax.seeds import task_draw

TASKS = ("itm", "mlm", "mrfr", "mrc", "mrc_kl")
Metrics = dict[str, tuple[jax.Array, jax.Array]]
# What pretraining steps read.
INPUT_FIELDS = (*MODEL_INPUTS, "itm_label")


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    """Everything the task losses need besides the model (hashable: a jit static)."""

    mask_id: int  # [MASK]
    special_ids: tuple[int, ...]  # never chosen for MLM: [CLS], [SEP], [PAD]
    random_range: tuple[int, int]  # [lo, hi) ids for the 10% random replacements
    mask_prob: float = 0.15  # MLM and MRM selection probability
    gather_sigmas: float = 5.0  # gather room: expected masked count + this many std devs
    wra_weight: float = 0.1  # ITM loss + wra_weight * WRA loss
    # + wra_input_weight * WRA between the encoder's inputs (the embedders'
    # outputs) of words and regions; 0 in the original (docs/results.md,
    # "Alignment at the input").
    wra_input_weight: float = 0.0
    # The WRA plan's solver and its settings (`WraSettings`, their one source).
    wra_solver: str = WraSettings.solver
    wra_epsilon: float = WraSettings.epsilon
    wra_beta: float = WraSettings.beta
    wra_iterations: int = WraSettings.iterations

    def __post_init__(self):
        problems = []
        if not 0.0 < self.mask_prob <= 1.0:
            problems.append(f"tasks.mask_prob must be in (0, 1], got {self.mask_prob}")
        if not 0.0 <= self.gather_sigmas < math.inf:
            problems.append(
                f"tasks.gather_sigmas must be finite and >= 0, got {self.gather_sigmas}"
            )
        for name in ("wra_weight", "wra_input_weight"):
            if not 0.0 <= getattr(self, name) < math.inf:
                problems.append(f"tasks.{name} must be finite and >= 0, got {getattr(self, name)}")
        if not self.wra_epsilon > 0.0:
            problems.append(f"tasks.wra_epsilon must be > 0, got {self.wra_epsilon}")
        if self.wra_solver not in SOLVERS:
            problems.append(f"tasks.wra_solver must be one of {SOLVERS}, got {self.wra_solver!r}")
        if not self.wra_beta > 0.0:
            problems.append(f"tasks.wra_beta must be > 0, got {self.wra_beta}")
        if self.wra_iterations < 1:
            problems.append(f"tasks.wra_iterations must be >= 1, got {self.wra_iterations}")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def wra(self) -> WraSettings:
        return WraSettings(self.wra_solver, self.wra_epsilon, self.wra_beta, self.wra_iterations)

    # The step's `Objective` interface (uniter_jax/train/step.py). The heads are
    # part of a pretrained checkpoint: none is added fresh.
    head_groups: ClassVar[tuple[str, ...]] = ()

    def build(self, config: UniterConfig, rngs: nnx.Rngs) -> UniterForPretraining:
        return UniterForPretraining(config, rngs)

    def loss(self, task: str, model, batch, mask_key, dropout_key) -> tuple[jax.Array, Metrics]:
        return TASK_FNS[task](model, batch, mask_key, dropout_key, self)

    def fields(self, task: str) -> tuple[str, ...]:
        return batch_fields(task)


@dataclasses.dataclass(frozen=True)
class PretrainingModel:
    """The pretraining model without its task settings: it builds
    `UniterForPretraining` and names the tasks' batch fields, as `TaskSettings`
    does, for code that needs the model's parameters or inputs but no loss
    (initialisation, scoring, parameter counts, benchmarks)."""

    head_groups: ClassVar[tuple[str, ...]] = ()
    build = TaskSettings.build
    fields = TaskSettings.fields


PRETRAINING = PretrainingModel()


def max_masked(batch: int, length: int, prob: float, sigmas: float) -> int:
    """Static gather size for `[batch, length]` positions, each chosen with `prob`.

    The masks choose each eligible position independently and force one in
    an example that drew none (`mlm_mask`, `mrm_mask`), so an example's count
    is `max(binomial(e, prob), 1)` for its `e` eligible positions, largest
    when all `length` are. The room is the mean of that worst case over the
    batch plus `sigmas` standard deviations (exact moments, normal tail):
    for MLM at 16 x 40, 142 positions where a flat 30% of the batch took 192,
    and at 256 x 62, 2606 instead of 4762. The MLM vocabulary projection is
    sized by this number. At 5 standard deviations a batch overflows with
    probability under 1e-6 at those shapes and under 3e-5 for tiny ones
    (`tests/objectives/test_tasks.py` convolves the exact distribution);
    chosen positions past the room are dropped and counted (`dropped`).
    """
    mean, var = masked_count_moments(length, prob)
    room = math.ceil(batch * mean + sigmas * math.sqrt(batch * var))
    return min(batch * length, room)


def masked_count_moments(length: int, prob: float) -> tuple[float, float]:
    """Mean and variance of `max(binomial(length, prob), 1)`: one example's
    chosen count when all `length` positions are eligible."""
    none = (1.0 - prob) ** length  # no draw: one position is forced
    mean = length * prob + none
    var = length * prob * (1.0 - prob) + none * (1.0 - none - 2.0 * length * prob)
    return mean, max(var, 0.0)


def _gather(hidden: jax.Array, chosen: jax.Array, s: TaskSettings):
    """Hidden states `[B, L, H]` at chosen `[B, L]` positions -> `[K, H]`, index, valid."""
    index, valid = gather_chosen(chosen, max_masked(*chosen.shape, s.mask_prob, s.gather_sigmas))
    return hidden.reshape(-1, hidden.shape[-1])[index], index, valid


def _dropped(chosen: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Chosen positions that did not fit the gather, as `(sum, count)`."""
    total = chosen.sum().astype(jnp.float32)
    return total - valid.sum().astype(jnp.float32), total


def _positive(batch: Mapping[str, jax.Array]) -> jax.Array:
    return (batch["itm_label"] == 1)[:, None]


def itm(model, batch, mask_key, dropout_key, s: TaskSettings) -> tuple[jax.Array, Metrics]:
    """Image-text matching on the pooled output, plus word-region alignment
    (of the final states; with `wra_input_weight`, of the encoder's input too)."""
    del mask_key
    if s.wra_input_weight:
        sequence, embedded = encode(model, batch, dropout_key, return_embeddings=True)
    else:
        sequence = encode(model, batch, dropout_key)
    labels = batch["itm_label"]
    weights = jnp.ones(labels.shape, jnp.float32)
    logits = model.itm_logits(sequence)
    ce = losses.cross_entropy(logits, labels, weights)
    lt = batch["input_ids"].shape[1]
    distance = wra_distance(
        sequence[:, :lt],
        batch["text_mask"],
        sequence[:, lt:],
        batch["img_mask"],
        s.wra,
    )
    ot = wra_loss(distance, labels)
    matched = (labels == 1).astype(jnp.float32)
    metrics = {
        "loss": ce,
        "accuracy": losses.accuracy(logits, labels, weights),
        "wra_loss": (ot * labels.shape[0], jnp.float32(labels.shape[0])),
        "wra_matched": (jnp.sum(distance * matched), jnp.sum(matched)),
        "wra_mismatched": (jnp.sum(distance * (1 - matched)), jnp.sum(1 - matched)),
    }
    objective = ce[0] / ce[1] + s.wra_weight * ot
    if s.wra_input_weight:
        distance = wra_distance(
            embedded[:, :lt], batch["text_mask"], embedded[:, lt:], batch["img_mask"], s.wra
        )
        objective += s.wra_input_weight * wra_loss(distance, labels)
        metrics["wra_input_matched"] = (jnp.sum(distance * matched), jnp.sum(matched))
        metrics["wra_input_mismatched"] = (
            jnp.sum(distance * (1 - matched)),
            jnp.sum(1 - matched),
        )
    return objective, metrics


def mlm(model, batch, mask_key, dropout_key, s: TaskSettings) -> tuple[jax.Array, Metrics]:
    """Masked language modelling conditioned on the intact image."""
    ids = batch["input_ids"]
    masked_ids, chosen = mlm_mask(
        mask_key,
        ids,
        batch["text_mask"],
        mask_id=s.mask_id,
        random_range=s.random_range,
        special_ids=s.special_ids,
        prob=s.mask_prob,
    )
    chosen &= _positive(batch)
    sequence = encode(model, batch, dropout_key, input_ids=masked_ids)
    hidden, index, valid = _gather(sequence[:, : ids.shape[1]], chosen, s)
    logits = model.mlm_logits(hidden)
    labels = ids.reshape(-1)[index]
    ce = losses.cross_entropy(logits, labels, valid)
    metrics = {
        "loss": ce,
        "accuracy": losses.accuracy(logits, labels, valid),
        "dropped": _dropped(chosen, valid),
    }
    return ce[0] / jnp.maximum(ce[1], 1), metrics


def _masked_regions(model, batch, mask_key, dropout_key, s: TaskSettings):
    chosen = mrm_mask(mask_key, batch["img_mask"], prob=s.mask_prob) & _positive(batch)
    sequence = encode(model, batch, dropout_key, img_masked=chosen)
    lt = batch["input_ids"].shape[1]
    hidden, index, valid = _gather(sequence[:, lt:], chosen, s)
    return chosen, hidden, index, valid


def mrfr(model, batch, mask_key, dropout_key, s: TaskSettings) -> tuple[jax.Array, Metrics]:
    """Masked region feature regression (mean squared error per feature)."""
    chosen, hidden, index, valid = _masked_regions(model, batch, mask_key, dropout_key, s)
    feat = batch["img_feat"]
    target = feat.reshape(-1, feat.shape[-1])[index]
    se = losses.mrfr(model.mrfr_features(hidden), target, valid)
    return se[0] / jnp.maximum(se[1], 1), {"loss": se, "dropped": _dropped(chosen, valid)}


def _region_classes(kl: bool):
    def task(model, batch, mask_key, dropout_key, s: TaskSettings) -> tuple[jax.Array, Metrics]:
        chosen, hidden, index, valid = _masked_regions(model, batch, mask_key, dropout_key, s)
        soft = batch["img_soft_labels"]
        soft = soft.reshape(-1, soft.shape[-1])[index].astype(jnp.float32)
        logits = model.mrc_logits(hidden)
        hard = jnp.argmax(soft[:, 1:], axis=-1) + 1
        divergence = losses.mrc_kl(logits, soft, valid)
        metrics = {
            "accuracy": losses.accuracy(logits, hard, valid),
            "kl": (divergence[0], valid.sum().astype(jnp.float32)),  # summed over classes
            "dropped": _dropped(chosen, valid),
        }
        if kl:
            metrics["loss"] = divergence
        else:
            metrics["loss"] = losses.mrc(logits, soft, valid)
        loss = metrics["loss"]
        return loss[0] / jnp.maximum(loss[1], 1), metrics

    task.__name__ = task.__qualname__ = "mrc_kl" if kl else "mrc"
    task.__doc__ = "Masked region classification: " + (
        "KL to the detector's soft labels." if kl else "cross-entropy to its top class."
    )
    return task


TASK_FNS: dict[str, Callable] = {
    "itm": itm,
    "mlm": mlm,
    "mrfr": mrfr,
    "mrc": _region_classes(kl=False),
    "mrc_kl": _region_classes(kl=True),
}


def needs_soft_labels(task: str) -> bool:
    return task in ("mrc", "mrc_kl")


def batch_fields(task: str) -> tuple[str, ...]:
    """The batch entries a pretraining task's step reads (the rest stays on the host)."""
    return INPUT_FIELDS + (("img_soft_labels",) if needs_soft_labels(task) else ())


def check_mix(mix: Mapping[str, float]) -> dict[str, float]:
    """Validates mix ratios (`{task: weight}`) and returns the non-zero ones."""
    unknown = sorted(set(mix) - set(TASKS))
    if unknown:
        raise ConfigError(f"unknown tasks {unknown} in the task mix; known: {list(TASKS)}")
    bad = {k: v for k, v in mix.items() if not (v >= 0 and math.isfinite(v))}
    if bad:
        raise ConfigError(f"task mix ratios must be finite and >= 0, got {bad}")
    active = {k: float(v) for k, v in mix.items() if v > 0}
    if not active:
        raise ConfigError("the task mix gives every task a zero ratio")
    return active


@dataclasses.dataclass(frozen=True)
class MixSchedule:
    """The task mix by micro-step: `first` for the first `first_steps`, then
    `second` for the next `second_steps`, then `mix`.

    A first phase of ITM alone lets ITM leave chance on images where the
    regions a caption names are few among many; the full mix from the start
    holds it there longer (docs/results.md, "Dilution alone"). A second phase
    of MRC alone after it lets MRC learn to read overlapping boxes where the
    other tasks hold it back, without stalling the first phase's ITM
    (docs/results.md, "A phase of MRC alone").
    """

    mix: dict[str, float]
    first: dict[str, float] = dataclasses.field(default_factory=dict)
    first_steps: int = 0
    second: dict[str, float] = dataclasses.field(default_factory=dict)
    second_steps: int = 0
    # Micro-steps that share one draw: 1, each draws its own task; the
    # accumulation, one task per update, as the original's MetaLoader.
    draw_every: int = 1

    def __post_init__(self):
        for phase in ("first", "second"):
            steps = getattr(self, f"{phase}_steps")
            if steps < 0:
                raise ConfigError(f"tasks.{phase}_steps must be >= 0, got {steps}")
            if steps and not getattr(self, phase):
                raise ConfigError(f"tasks.{phase}_steps is set but tasks.{phase}_mix gives no task")
        if self.draw_every < 1:
            raise ConfigError(f"micro-steps per task draw must be >= 1, got {self.draw_every}")

    def at(self, step: int) -> dict[str, float]:
        """The mix that draws the task of micro-step `step`."""
        if step < self.first_steps:
            return self.first
        return self.second if step < self.first_steps + self.second_steps else self.mix

    def stream(self, step: int, seed: int) -> str:
        """The stream micro-step `step` trains: one draw (`task_for_step`, keyed
        by the draw's number) per `draw_every` micro-steps, from the mix of the
        draw's first micro-step."""
        draw = step // self.draw_every
        return task_for_step(self.at(draw * self.draw_every), seed, draw)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task some step may draw, sorted."""
        first = set(self.first) if self.first_steps else set()
        second = set(self.second) if self.second_steps else set()
        return tuple(sorted(set(self.mix) | first | second))


def task_for_step(mix: Mapping[str, float], seed: int, step: int) -> str:
    """The task of a step, drawn by mix ratio from an RNG seeded by `(seed, step)`.

    Stateless: a resumed run draws the same tasks without saving an RNG.
    """
    names = sorted(mix)
    weights = np.array([mix[n] for n in names], np.float64)
    draw = task_draw(seed, step)
    index = np.searchsorted(np.cumsum(weights) / weights.sum(), draw, side="right")
    return names[min(int(index), len(names) - 1)]  # min: rounding in the last cumsum
