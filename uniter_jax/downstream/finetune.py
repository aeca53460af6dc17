"""Fine-tuning on one downstream task: the `Job` (`uniter_jax/train/job.py`) that
`main.py` hands to the training loop for `config.job = "finetune"`.

  python main.py --config=configs/finetune_vqa.py --config.init_from=DIR --workdir=W

The job is the task's objective, its pipelines (pretraining's, with the
task's targets joined on the host by text index) and its validation, which
predicts every example of the split (partial batches filled, fillers
dropped; retrieval ranks every pair) and scores them with the task's
metric. Prediction into the official results files is `downstream/results.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from uniter_jax.data.pipeline import Pipeline, PipelineConfig
from uniter_jax.data.store_sets import open_images
from uniter_jax.data.text_store import TextStore
from uniter_jax.downstream import nlvr2, refexp, retrieval, vcr, ve, vqa
from uniter_jax.downstream.task import DownstreamObjective, DownstreamTask, Evaluation
from uniter_jax.model import UniterConfig
from uniter_jax.model.config import ConfigError
from uniter_jax.objectives.tasks import MixSchedule
from uniter_jax.seeds import pipeline_seed
from uniter_jax.sharding import Layout
from uniter_jax.train import inputs, shapes
from uniter_jax.train.job import Job
from uniter_jax.train.state import initial_params, optim_settings
from uniter_jax.train.step import StepSettings

# Pipelines of one fine-tuning run (stores x directions) have their own orders.
_MAX_STREAMS = 16

# `config.task` -> its module (each a `DownstreamTask`).
TASKS: dict[str, DownstreamTask] = {
    "vqa": vqa,
    "ve": ve,
    "refexp": refexp,
    "nlvr2": nlvr2,
    "vcr": vcr,
    "retrieval": retrieval,
}


def task_module(name: str) -> DownstreamTask:
    if name not in TASKS:
        raise ConfigError(f"unknown downstream task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def subtasks(config: ml_collections.ConfigDict) -> dict[str, str]:
    """The task's text stores trained together: name -> suffix of its `data.*_texts`
    fields (VCR: `vcr_qa` in `train_texts`, `vcr_qar` in `train_texts_qar`)."""
    return task_module(config.task).SUBTASKS


@dataclasses.dataclass(frozen=True)
class TaskStores:
    images: str
    val_images: str
    test_images: str
    train: dict[str, str]  # sub-task -> text store
    val: dict[str, str]  # empty: no validation
    test: dict[str, str]  # empty: predict on val


def resolve_stores(config: ml_collections.ConfigDict, workdir: str) -> TaskStores:
    """The configured stores, or the synthetic world's stores of this task."""
    data, names = config.data, subtasks(config)
    if bool(data.images) != bool(data.train_texts):
        raise ConfigError("set both data.images and data.train_texts, or neither (synthetic data)")
    if data.images:

        def split(kind: str) -> dict[str, str]:
            found = {n: data.get(f"{kind}_texts{suffix}", "") for n, suffix in names.items()}
            return {n: path for n, path in found.items() if path}

        train = split("train")
        if set(train) != set(names):
            missing = [f"data.train_texts{names[n]}" for n in names if n not in train]
            raise ConfigError(f"{config.task} trains on every one of its stores: set {missing}")
        return TaskStores(
            data.images,
            data.val_images or data.images,
            data.test_images or data.val_images or data.images,
            train,
            split("val"),
            split("test"),
        )
    root = inputs.synthetic_world(config, workdir)
    images = os.path.join(root, "images")

    def synthetic(kind: str) -> dict[str, str]:
        return {n: os.path.join(root, "texts", f"{n}_{kind}") for n in names}

    return TaskStores(images, images, images, synthetic("train"), synthetic("val"), {})


class WithTargets:
    """A pipeline whose batches also carry the task's targets, read from its text store."""

    def __init__(self, pipeline: Pipeline, add: Callable[[np.ndarray], dict[str, np.ndarray]]):
        self.pipeline, self.add = pipeline, add

    def __iter__(self) -> WithTargets:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self.pipeline)
        return {**batch, **self.add(batch["text_index"])}

    def state(self) -> dict[str, Any]:
        return self.pipeline.state()

    def restore(self, state: dict[str, Any]) -> None:
        self.pipeline.restore(state)

    def close(self) -> None:
        self.pipeline.close()


def pipeline_for(
    config: ml_collections.ConfigDict,
    texts: TextStore,
    images: str,
    *,
    train: bool,
    options: dict | None = None,
    stream: int = 0,
) -> Pipeline:
    """A pipeline over one text store: shuffled for training, in order with partial
    batches filled for evaluation. `options` (an objective's `pipeline_options`)
    apply to training; evaluation keeps only `group_size`."""
    settings = inputs.pipeline_config(
        config.data,
        seed=pipeline_seed(config.seed, stream, _MAX_STREAMS),  # each its own order
        itm_neg_prob=0.0,
        soft_labels=False,
        shuffle=train,
    )
    options = dict(options or {})
    if not train:
        options = {k: v for k, v in options.items() if k == "group_size"}
    settings = dataclasses.replace(settings, keep_partial=not train, **options)
    return Pipeline(
        texts,
        open_images(images),
        settings,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def make_objective(
    config: ml_collections.ConfigDict, task: DownstreamTask, texts: TextStore
) -> tuple[DownstreamObjective, UniterConfig]:
    """`(objective, model config)` of `config.task`: its `task_options` applied, and
    the model fields the task changes (NLVR2's third segment type)."""
    options = config.get("task_options")
    objective = task.objective(texts, **(options.to_dict() if options else {}))
    return objective, objective.model_config(inputs.model_config(config.model))


def with_run_buckets(
    config: ml_collections.ConfigDict,
    workdir: str,
    read: Callable[[], list[tuple[TextStore, str]]],
    layout: Layout,
    streams: Any,
    remember: bool = True,
) -> ml_collections.ConfigDict:
    """`config` with the run's buckets (`train/shapes.py`), their batch sizes
    divisible by every stream's rows that stay together."""
    widths = [
        dataclasses.replace(PipelineConfig(buckets=()), **options).unit_width for options in streams
    ]
    buckets = shapes.run_buckets(
        config.data,
        workdir,
        lambda: [(texts, open_images(images)) for texts, images in read()],
        ways=layout.batch_shards * jax.process_count(),
        group_size=math.lcm(*widths),
        remember=remember,
    )
    return shapes.with_buckets(config, buckets)


def _train_pipelines(
    config: ml_collections.ConfigDict,
    task: DownstreamTask,
    stores: TaskStores,
    objective: DownstreamObjective,
    model_cfg: UniterConfig,
) -> dict[str, WithTargets]:
    """One pipeline per sub-task store and stream (retrieval: text-anchored and
    image-anchored groups), each in its own order, with the task's targets."""
    streams = objective.pipeline_streams
    train = {}
    for index, (name, path) in enumerate(stores.train.items()):
        texts = TextStore(path)
        for offset, (suffix, options) in enumerate(streams.items()):
            pipeline = pipeline_for(
                config,
                texts,
                stores.images,
                train=True,
                options=options,
                stream=index * len(streams) + offset,
            )
            inputs.check_compatible(texts, pipeline.images, model_cfg)
            train[name + suffix] = WithTargets(pipeline, functools.partial(task.targets, texts))
    return train


def _val_pipelines(
    config: ml_collections.ConfigDict,
    task: DownstreamTask,
    stores: TaskStores,
    objective: DownstreamObjective,
    model_cfg: UniterConfig,
) -> dict[str, Pipeline]:
    val = {}
    for name, path in stores.val.items():
        texts = TextStore(path)
        task.check(texts, TextStore(stores.train[name]) if name in stores.train else None)
        val[name] = pipeline_for(
            config, texts, stores.val_images, train=False, options=objective.pipeline_options
        )
        inputs.check_compatible(texts, val[name].images, model_cfg)
    if not val:
        logging.warning("no validation data (data.val_texts is empty): no validation metrics")
    return val


def finetuning_job(config: ml_collections.ConfigDict, workdir: str, layout: Layout) -> Job:
    """The `Job` of `config.task`."""
    task = task_module(config.task)
    stores = resolve_stores(config, workdir)
    train_texts = [TextStore(path) for path in stores.train.values()]
    for texts in train_texts:
        task.check(texts)
    objective, model_cfg = make_objective(config, task, train_texts[0])

    def read() -> list[tuple[TextStore, str]]:
        val = [(TextStore(p), stores.val_images) for p in stores.val.values()]
        return [(t, stores.images) for t in train_texts] + val

    streams = objective.pipeline_streams.values()
    config = with_run_buckets(config, workdir, read, layout, streams)
    inputs.check_batches(config.data, layout)
    train = _train_pipelines(config, task, stores, objective, model_cfg)
    val = _val_pipelines(config, task, stores, objective, model_cfg)
    if not config.init_from:
        logging.warning("config.init_from is empty: fine-tuning from random parameters")
    optim = dataclasses.replace(optim_settings(config.optim), head_groups=objective.head_groups)
    settings = StepSettings(model=model_cfg, tasks=objective, optim=optim)
    evaluation = Evaluation(two_stage_k=config.eval.get("two_stage_k", 0))

    def validate(params: dict) -> dict[str, float]:
        outputs = task.predict(params, val, settings, layout, evaluation)
        scores = task.score(outputs, {n: p.texts for n, p in val.items()})
        return {f"val/{config.task}/{k}": v for k, v in scores.items()}

    def close() -> None:
        for p in (*train.values(), *val.values()):
            p.close()

    return Job(
        name=f"finetune_{config.task}",
        settings=settings,
        mix=MixSchedule({name: 1.0 for name in train}),
        pipelines=train,
        validate=validate if val else None,
        initial_params=lambda: initial_params(
            model_cfg, config.seed, config.init_from, layout, objective=objective
        ),
        close=close,
    )
