"""Fine-tuning on one downstream task, and prediction into the official result files.

  python main.py --config=configs/finetune_vqa.py --config.init_from=DIR --workdir=W
  python main.py --config=configs/finetune_vqa.py --workdir=W --mode=predict

Training runs through the same loop as pretraining (`uniter_jax/train/loop.py`):
this module supplies the job, that is the task's objective, its pipeline
(pretraining's, with the task's targets joined on the host by text index)
and its validation, which predicts every example of the split (partial
batches filled, fillers dropped) and scores them with the task's metric.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.pipeline import Pipeline, PipelineConfig
from uniter_jax.data.text_store import TextStore
from uniter_jax.downstream import nlvr2, refexp, retrieval, vcr, ve, vqa
from uniter_jax.downstream.prediction import predict_batches
from uniter_jax.model.config import ConfigError
from uniter_jax.objectives.tasks import MixSchedule
from uniter_jax.sharding import Layout
from uniter_jax.train import inputs, shapes
from uniter_jax.train.step import StepSettings
from uniter_jax.train.trained import trained_params

# Task name -> module with `objective(texts)`, `check(texts, train)`,
# `targets(texts, index)`, `evaluate(outputs, texts)`, `write_results(...)`.
TASKS: dict[str, ModuleType] = {
    "vqa": vqa,
    "ve": ve,
    "refexp": refexp,
    "nlvr2": nlvr2,
    "vcr": vcr,
    "retrieval": retrieval,
}


def task_module(name: str) -> ModuleType:
    if name not in TASKS:
        raise ConfigError(f"unknown downstream task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def subtasks(config: ml_collections.ConfigDict) -> dict[str, str]:
    """The task's text stores trained together: name -> suffix of its `data.*_texts`
    fields (VCR: `vcr_qa` in `train_texts`, `vcr_qar` in `train_texts_qar`)."""
    return getattr(task_module(config.task), "SUBTASKS", {config.task: ""})


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


def _pipeline(
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
        seed=config.seed * 16 + stream,  # each trained store its own order
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
        ImageStore(images),
        settings,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def make_objective(
    config: ml_collections.ConfigDict, task: ModuleType, texts: TextStore
) -> tuple[Any, Any]:
    """`(objective, model config)` of `config.task`: its `task_options` applied, and
    the model fields the task changes (NLVR2's third segment type)."""
    options = config.get("task_options")
    objective = task.objective(texts, **(options.to_dict() if options else {}))
    model_cfg = inputs.model_config(config.model)
    overrides = getattr(objective, "model_overrides", {})
    return objective, dataclasses.replace(model_cfg, **overrides) if overrides else model_cfg


def predict(
    params: dict,
    pipeline: Pipeline,
    settings: StepSettings,
    layout: Layout,
    *,
    what: str = "prediction",
) -> dict[str, np.ndarray]:
    """Predictions for every example of the pipeline's text store, in store order."""
    start = time.perf_counter()
    pipeline.restore({**pipeline.state(), "epoch": 0, "step": 0})
    plan = pipeline.plan(0)
    texts = pipeline.texts
    outputs: dict[str, np.ndarray] = {}
    seen = np.zeros(len(texts), bool)
    batches = (next(pipeline) for _ in range(plan.num_steps))
    predicted = predict_batches(
        params, batches, settings, layout, progress=what, total=plan.num_steps
    )
    for batch, out in predicted:
        keep = batch["valid"] > 0
        where = batch["text_index"][keep]
        for name, value in out.items():
            if name not in outputs:
                outputs[name] = np.zeros((len(texts), *value.shape[1:]), value.dtype)
            outputs[name][where] = value[keep]
        seen[where] = True
    pipeline.close()
    if jax.process_count() > 1:
        outputs = _merge_hosts(outputs, seen)
        seen[:] = True
    if not seen.all():
        raise DataError(
            f"{int((~seen).sum())} examples were not predicted (a bug, or a store changed "
            "while reading)",
            file=texts.directory,
        )
    logging.info("%s of %d examples in %.1fs", what, len(texts), time.perf_counter() - start)
    return outputs


def _merge_hosts(outputs: dict[str, np.ndarray], seen: np.ndarray) -> dict[str, np.ndarray]:
    """Every host predicted its own rows: combine them (each example is seen by one host)."""
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather({"seen": seen, **outputs})
    owner = np.argmax(gathered["seen"], axis=0)  # [N]: the host that predicted each
    n = np.arange(len(seen))
    return {name: gathered[name][owner, n] for name in outputs}


def _predict_all(
    params: dict,
    pipelines: dict[str, Pipeline],
    settings: StepSettings,
    layout: Layout,
    what: str,
) -> dict[str, dict[str, np.ndarray]]:
    return {
        name: predict(params, p, settings, layout, what=f"{what} ({name})")
        for name, p in pipelines.items()
    }


def _score(
    task: ModuleType,
    outputs: dict[str, dict[str, np.ndarray]],
    texts: dict[str, TextStore],
) -> dict[str, float]:
    if hasattr(task, "evaluate_joint"):
        return task.evaluate_joint(outputs, texts)
    (name,) = outputs
    return task.evaluate(outputs[name], texts[name])


def _with_run_buckets(
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
        lambda: [(texts, ImageStore(images)) for texts, images in read()],
        ways=layout.batch_shards * jax.process_count(),
        group_size=math.lcm(*widths),
        remember=remember,
    )
    return shapes.with_buckets(config, buckets)


def finetuning_job(config: ml_collections.ConfigDict, workdir: str, layout: Layout):
    """The `Job` (uniter_jax/train/loop.py) of `config.task`."""
    from uniter_jax.train import loop

    task = task_module(config.task)
    stores = resolve_stores(config, workdir)
    train_texts = {name: TextStore(path) for name, path in stores.train.items()}
    for texts in train_texts.values():
        task.check(texts)
    first = next(iter(train_texts.values()))
    objective, model_cfg = make_objective(config, task, first)
    options = getattr(objective, "pipeline_options", {})
    # Streams of one store (retrieval: text-anchored and image-anchored groups).
    streams = getattr(objective, "pipeline_streams", {"": options})

    def read() -> list[tuple[TextStore, str]]:
        val = [(TextStore(p), stores.val_images) for p in stores.val.values()]
        return [(t, stores.images) for t in train_texts.values()] + val

    config = _with_run_buckets(config, workdir, read, layout, streams.values())
    inputs.check_batches(config.data, layout)
    train, val = {}, {}
    for index, (name, texts) in enumerate(train_texts.items()):
        for offset, (suffix, stream_options) in enumerate(streams.items()):
            pipeline = _pipeline(
                config,
                texts,
                stores.images,
                train=True,
                options=stream_options,
                stream=index * len(streams) + offset,
            )
            inputs.check_compatible(texts, pipeline.images, model_cfg)
            train[name + suffix] = WithTargets(pipeline, functools.partial(task.targets, texts))
    for name, path in stores.val.items():
        texts = TextStore(path)
        task.check(texts, train_texts.get(name))
        val[name] = _pipeline(config, texts, stores.val_images, train=False, options=options)
        inputs.check_compatible(texts, val[name].images, model_cfg)
    if not val:
        logging.warning("no validation data (data.val_texts is empty): no validation metrics")
    if not config.init_from:
        logging.warning("config.init_from is empty: fine-tuning from random parameters")
    optim = loop.optim_settings(config.optim)
    optim = dataclasses.replace(optim, head_groups=objective.head_groups)
    settings = StepSettings(model=model_cfg, tasks=objective, optim=optim)
    if config.eval.get("two_stage_k", 0) and not getattr(objective, "dual_weight", 1.0):
        logging.warning(
            "eval.two_stage_k is set but task_options.dual_weight is 0: the first stage "
            "is a dual encoder this run does not train, so its candidates are poor"
        )

    def validate(params: dict) -> dict[str, float]:
        if task is retrieval:
            (pipeline,) = val.values()
            two_stage = config.eval.get("two_stage_k", 0)
            scores, _ = retrieval.rank(params, pipeline, settings, layout, two_stage_k=two_stage)
            return {f"val/{config.task}/{k}": v for k, v in scores.items()}
        outputs = _predict_all(params, val, settings, layout, "validation")
        scores = _score(task, outputs, {n: p.texts for n, p in val.items()})
        return {f"val/{config.task}/{k}": v for k, v in scores.items()}

    def close() -> None:
        for p in (*train.values(), *val.values()):
            p.close()

    return loop.Job(
        name=f"finetune_{config.task}",
        settings=settings,
        mix=MixSchedule({name: 1.0 for name in train}),
        pipelines=train,
        validate=validate if val else None,
        initial_params=lambda: loop.initial_params(
            model_cfg, config.seed, config.init_from, layout, objective
        ),
        close=close,
    )


def run_predict(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Predicts `data.test_texts` (else `data.val_texts`) with the fine-tuned model,
    writes the task's official result file into the workdir and, where the
    split has labels, the metrics. Returns the report (also `predict_report.json`)."""
    import json

    from etils import epath

    from uniter_jax.train import loop

    layout = loop.layout_from_config(config.mesh)
    task = task_module(config.task)
    stores = resolve_stores(config, workdir)
    paths, images = stores.test, stores.test_images
    if not paths:
        paths, images = stores.val, stores.val_images
    if not paths:
        raise ConfigError("nothing to predict: set data.test_texts (or data.val_texts)")
    texts = {name: TextStore(path) for name, path in paths.items()}
    for store in texts.values():
        task.check(store)
    objective, model_cfg = make_objective(config, task, next(iter(texts.values())))
    options = getattr(objective, "pipeline_options", {})
    evaluated = {k: v for k, v in options.items() if k == "group_size"}  # as _pipeline
    config = _with_run_buckets(
        config,
        workdir,
        lambda: [(store, images) for store in texts.values()],
        layout,
        [evaluated],
        remember=False,
    )
    inputs.check_batches(config.data, layout)
    pipelines = {
        name: _pipeline(config, store, images, train=False, options=options)
        for name, store in texts.items()
    }
    for name, pipeline in pipelines.items():
        inputs.check_compatible(texts[name], pipeline.images, model_cfg)
    settings = StepSettings(model_cfg, objective, loop.optim_settings(config.optim))
    params, source = trained_params(
        config,
        workdir,
        settings,
        layout,
        objective,
        require=objective.head_groups,
        hint=f"fine-tune on {config.task} first (or point config.init_from at a fine-tuned model)",
    )
    root = epath.Path(workdir)
    split = os.path.basename(os.path.normpath(next(iter(paths.values()))))
    results = root / f"results_{split}.{getattr(task, 'RESULTS_FORMAT', 'json')}"
    report = {
        "task": config.task,
        "texts": paths,
        "examples": {name: len(store) for name, store in texts.items()},
        "params": source,
        "results": str(results),
    }
    if task is retrieval:
        (pipeline,) = pipelines.values()
        report["metrics"], scores = retrieval.rank(
            params,
            pipeline,
            settings,
            layout,
            two_stage_k=config.eval.get("two_stage_k", 0),
            cache_dir=str(root / f"ranking_{split}"),
            fingerprint=retrieval.params_fingerprint(params),
        )
        if jax.process_index() == 0:
            retrieval.write_ranking(scores, pipeline, str(results))
            original = retrieval.original_scores(report["metrics"])
            (root / f"scores_{split}.json").write_text(json.dumps(original, indent=2))
            (root / "predict_report.json").write_text(json.dumps(report, indent=2))
        logging.info("ranked %s: %s; results in %s", report["examples"], report["metrics"], results)
        return report
    outputs = _predict_all(params, pipelines, settings, layout, "prediction")
    report["metrics"] = _score(task, outputs, texts)
    if jax.process_index() == 0:
        if hasattr(task, "write_results_joint"):
            task.write_results_joint(outputs, texts, str(results))
        else:
            (name,) = outputs
            task.write_results(outputs[name], texts[name], str(results))
        (root / "predict_report.json").write_text(json.dumps(report, indent=2))
    logging.info("predicted %s: %s; results in %s", report["examples"], report["metrics"], results)
    return report
