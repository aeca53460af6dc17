"""A `Job`: what one training run trains. Pretraining (`train/pretrain.py`) and
each fine-tuning task (`downstream/finetune.py`) make one; `train/loop.py`
runs any of them the same way; `main.py` picks which."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections

from uniter_jax.objectives.tasks import MixSchedule
from uniter_jax.sharding import Layout
from uniter_jax.train.step import StepSettings


@dataclasses.dataclass
class Job:
    """What one training run trains: the part that differs between pretraining and
    each fine-tuning task; `train` runs any job the same way.

    `pipelines` maps each stream the mix draws to an iterator of host batches
    with `state()` / `restore(state)` / `close()` (a `Pipeline` or a wrapper);
    `streams` maps a stream to the task its steps train where the names differ
    (pretraining's `"<dataset>/<task>"`; absent: the stream is the task);
    `validate(params)` returns `{"val/...": value}`; `initial_params()`
    creates (or loads) the parameters of a fresh run.
    """

    name: str  # the report is `<name>_report.json`
    settings: StepSettings
    mix: MixSchedule
    pipelines: dict[str, Any]
    validate: Callable[[dict], dict[str, float]] | None
    initial_params: Callable[[], dict]
    close: Callable[[], None]
    streams: dict[str, str] = dataclasses.field(default_factory=dict)

    def task(self, stream: str) -> str:
        """The task the steps of `stream` train."""
        return self.streams.get(stream, stream)


# `(config, workdir, layout) -> Job`: how `main.py` hands the job to the loop.
JobFactory = Callable[[ml_collections.ConfigDict, str, Layout], Job]
