"""What a downstream task module provides, as the fine-tuning job
(`downstream/finetune.py`) and `--mode=predict` (`downstream/results.py`) use it.

Each task module (`vqa`, `ve`, `refexp`, `nlvr2`, `vcr`, `retrieval`)
implements `DownstreamTask` at module level, and its objective class derives
from `DownstreamObjective`. A task may train several text stores together
(VCR: Q->A and QA->R); outputs and stores are therefore keyed by sub-task
name, `SUBTASKS`' keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from uniter_jax.data.pipeline import Pipeline
from uniter_jax.data.text_store import TextStore
from uniter_jax.model import UniterConfig
from uniter_jax.sharding import Layout
from uniter_jax.train.step import StepSettings

# sub-task -> output name -> `[N, ...]` per example of its store, in store order
# (retrieval: its `[T, I]` scores and the ranking's metrics).
Outputs = dict[str, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How validation and prediction run, besides the parameters."""

    label: str = "validation"  # progress bars and log lines
    two_stage_k: int = 0  # retrieval: candidates per text of the two-stage ranking; 0: off
    cache_dir: str | None = None  # retrieval: resumable ranking chunks


class DownstreamObjective:
    """The defaults of a downstream objective's optional parts. Subclasses are
    frozen dataclasses and a step's `Objective` (`train/step.py`): `build`,
    `loss`, `fields`, and `predict(model, batch) -> {name: [B, ...]}`."""

    head_groups: tuple[str, ...] = ()  # the parameter groups the task adds to `uniter`

    @property
    def pipeline_options(self) -> dict[str, Any]:
        """`PipelineConfig` fields the task's pipelines set (group sizes, negatives)."""
        return {}

    @property
    def pipeline_streams(self) -> dict[str, dict[str, Any]]:
        """Training streams of one store, by name suffix, with their options."""
        return {"": self.pipeline_options}

    @property
    def model_overrides(self) -> dict[str, Any]:
        """`UniterConfig` fields the task changes (NLVR2's third segment type)."""
        return {}

    def model_config(self, config: UniterConfig) -> UniterConfig:
        overrides = self.model_overrides
        return dataclasses.replace(config, **overrides) if overrides else config


@runtime_checkable
class DownstreamTask(Protocol):
    """A task module's interface."""

    SUBTASKS: dict[str, str]  # sub-task -> suffix of its `data.*_texts` config fields
    RESULTS_FORMAT: str  # extension of the official results file

    def objective(self, texts: TextStore, **options: Any) -> DownstreamObjective:
        """The objective for a training store, with `config.task_options` applied."""

    def check(self, texts: TextStore, train: TextStore | None = None) -> None:
        """Raises a `DataError` when `texts` is not this task's store (or does
        not match the training store `train`, e.g. another answer vocabulary)."""

    def targets(self, texts: TextStore, text_index: np.ndarray) -> dict[str, np.ndarray]:
        """The training targets of a batch's examples, joined on the host."""

    def predict(
        self,
        params: dict,
        pipelines: dict[str, Pipeline],
        settings: StepSettings,
        layout: Layout,
        evaluation: Evaluation,
    ) -> Outputs:
        """Predictions for every example of each sub-task's store."""

    def score(self, outputs: Outputs, texts: dict[str, TextStore]) -> dict[str, float]:
        """The task's metrics; empty where the stores carry no labels."""

    def write_results(self, outputs: Outputs, texts: dict[str, TextStore], path: str) -> None:
        """The official results file (and any companion files beside it)."""


def _only(outputs: Outputs, texts: dict[str, TextStore]) -> tuple[dict, TextStore]:
    (name,) = outputs
    return outputs[name], texts[name]


def scored_by(
    evaluate: Callable[[dict[str, np.ndarray], TextStore], dict[str, float]],
) -> Callable[[Outputs, dict[str, TextStore]], dict[str, float]]:
    """`DownstreamTask.score` of a task with one store, from its per-store metric."""

    def score(outputs: Outputs, texts: dict[str, TextStore]) -> dict[str, float]:
        return evaluate(*_only(outputs, texts))

    score.__doc__ = evaluate.__doc__
    return score


def written_by(
    write: Callable[[dict[str, np.ndarray], TextStore, str], None],
) -> Callable[[Outputs, dict[str, TextStore], str], None]:
    """`DownstreamTask.write_results` of a task with one store, from its per-store writer."""

    def write_results(outputs: Outputs, texts: dict[str, TextStore], path: str) -> None:
        write(*_only(outputs, texts), path)

    write_results.__doc__ = write.__doc__
    return write_results
