"""`--mode=predict`: a fine-tuned model's predictions written as the task's
official results file, with the metrics where the split has labels.

  python main.py --config=configs/finetune_vqa.py --workdir=W --mode=predict

Writes `results_<split>.<format>` (and a task's companion files beside it,
e.g. retrieval's `scores_<split>.json`) and `predict_report.json` into the
workdir.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from uniter_jax.data.pipeline import Pipeline
from uniter_jax.data.text_store import TextStore
from uniter_jax.downstream.finetune import (
    make_objective,
    pipeline_for,
    resolve_stores,
    task_module,
    with_run_buckets,
)
from uniter_jax.downstream.task import DownstreamObjective, DownstreamTask, Evaluation
from uniter_jax.model import UniterConfig
from uniter_jax.model.config import ConfigError
from uniter_jax.sharding import Layout
from uniter_jax.train import inputs
from uniter_jax.train.state import layout_from_config, optim_settings
from uniter_jax.train.step import StepSettings
from uniter_jax.train.trained import trained_params


def _test_stores(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict[str, str], str]:
    """`(sub-task -> text store, image store)` to predict: the test split, else validation."""
    stores = resolve_stores(config, workdir)
    if stores.test:
        return stores.test, stores.test_images
    if stores.val:
        return stores.val, stores.val_images
    raise ConfigError("nothing to predict: set data.test_texts (or data.val_texts)")


def _pipelines(
    config: ml_collections.ConfigDict,
    workdir: str,
    layout: Layout,
    texts: dict[str, TextStore],
    images: str,
    objective: DownstreamObjective,
    model_cfg: UniterConfig,
) -> dict[str, Pipeline]:
    """In-order pipelines over the stores to predict, in shapes chosen from them
    (not remembered: the run's training shapes stay as they were)."""
    options = objective.pipeline_options
    evaluated = {k: v for k, v in options.items() if k == "group_size"}  # as pipeline_for
    config = with_run_buckets(
        config,
        workdir,
        lambda: [(store, images) for store in texts.values()],
        layout,
        [evaluated],
        remember=False,
    )
    inputs.check_batches(config.data, layout)
    pipelines = {
        name: pipeline_for(config, store, images, train=False, options=options)
        for name, store in texts.items()
    }
    for name, pipeline in pipelines.items():
        inputs.check_compatible(texts[name], pipeline.images, model_cfg)
    return pipelines


def run_predict(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Predicts `data.test_texts` (else `data.val_texts`) with the fine-tuned model,
    writes the task's official result file into the workdir and, where the
    split has labels, the metrics. Returns the report (also `predict_report.json`)."""
    layout = layout_from_config(config.mesh)
    task: DownstreamTask = task_module(config.task)
    paths, images = _test_stores(config, workdir)
    texts = {name: TextStore(path) for name, path in paths.items()}
    for store in texts.values():
        task.check(store)
    objective, model_cfg = make_objective(config, task, next(iter(texts.values())))
    pipelines = _pipelines(config, workdir, layout, texts, images, objective, model_cfg)
    settings = StepSettings(model_cfg, objective, optim_settings(config.optim))
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
    results = root / f"results_{split}.{task.RESULTS_FORMAT}"
    evaluation = Evaluation(
        label="prediction",
        two_stage_k=config.eval.get("two_stage_k", 0),
        cache_dir=str(root / f"ranking_{split}"),
    )
    outputs = task.predict(params, pipelines, settings, layout, evaluation)
    report = {
        "task": config.task,
        "texts": paths,
        "examples": {name: len(store) for name, store in texts.items()},
        "params": source,
        "results": str(results),
        "metrics": task.score(outputs, texts),
    }
    if jax.process_index() == 0:
        task.write_results(outputs, texts, str(results))
        (root / "predict_report.json").write_text(json.dumps(report, indent=2))
    logging.info("predicted %s: %s; results in %s", report["examples"], report["metrics"], results)
    return report
