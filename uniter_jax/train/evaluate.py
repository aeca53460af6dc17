"""Validation during pretraining: each task's metrics on held-out pairs.

The same batches and the same masks every time (the pipeline restarts at its
first step and the masking keys depend only on the batch index), so
successive evaluations are comparable. Metrics are sums over all batches
divided once by their counts.
"""

from __future__ import annotations

import collections
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from uniter_jax.data.errors import DataError
from uniter_jax.data.pipeline import Pipeline
from uniter_jax.objectives.tasks import TASKS
from uniter_jax.sharding import Layout, to_host
from uniter_jax.train.preemption import interruption_point
from uniter_jax.train.step import StepSettings, batch_fields, eval_step

# What validation reports for each task. MRC's batches give both region-class
# metrics: accuracy against the top class and MRC-kl's divergence (summed over
# classes, averaged over regions, as the original validates it).
REPORTED = {
    "itm": ("loss", "accuracy", "wra_matched", "wra_mismatched"),
    "mlm": ("loss", "accuracy"),
    "mrfr": ("loss",),
    "mrc": ("loss", "accuracy", "kl"),
}


def eval_tasks(has_soft_labels: bool) -> tuple[str, ...]:
    return ("itm", "mlm", "mrfr") + (("mrc",) if has_soft_labels else ())


def evaluate(
    params: dict,
    pipeline: Pipeline,
    settings: StepSettings,
    key: jax.Array,
    *,
    tasks: tuple[str, ...],
    num_batches: int = 0,
    layout: Layout | None = None,
    prefix: str = "val",
) -> dict[str, float]:
    """`{"<prefix>/<task>/<metric>": value}` over `num_batches` batches (0: one
    epoch); pretraining on several datasets uses the prefix `val/<dataset>`."""
    start = time.perf_counter()
    layout = layout or Layout.single_device()
    pipeline.restore({**pipeline.state(), "epoch": 0, "step": 0})
    plan = pipeline.plan(0)
    if plan.num_steps == 0:
        raise DataError(
            "the validation texts fill no batch of any bucket: lower the bucket batch sizes",
            file=pipeline.texts.directory,
        )
    count = min(num_batches, plan.num_steps) if num_batches else plan.num_steps
    if plan.dropped and not num_batches:
        logging.info(
            "validation leaves out %d of %d examples (partial batches)",
            plan.dropped,
            len(pipeline.texts),
        )
    sums: dict[str, np.ndarray] = collections.defaultdict(lambda: np.zeros(2))
    try:
        for index in tqdm(
            range(count), desc="validation", unit="batch", disable=jax.process_index() > 0
        ):
            interruption_point()  # a SIGTERM agreed by all processes ends validation here
            batch = next(pipeline)
            for task in tasks:
                task_key = jax.random.fold_in(jax.random.fold_in(key, index), TASKS.index(task))
                fields = layout.global_batch(
                    {k: batch[k] for k in batch_fields(task, settings.tasks)}
                )
                metrics = to_host(
                    eval_step(params, fields, task_key, task=task, settings=settings, layout=layout)
                )
                for name in REPORTED[task]:
                    sums[f"{prefix}/{task}/{name}"] += np.asarray(metrics[name], np.float64)
    finally:
        pipeline.close()
    out = {name: float(s / c) for name, (s, c) in sums.items() if c > 0}
    logging.info(
        "validation on %d batches in %.1fs: %s",
        count,
        time.perf_counter() - start,
        ", ".join(f"{k} {v:.4f}" for k, v in sorted(out.items())),
    )
    return out
