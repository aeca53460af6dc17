"""Running a downstream objective's `predict` over planned batches, on every host,
and over every example of a store (`predict_examples`, the `predict` of
every task but retrieval, which ranks).

Each host reads its own rows of every global batch; the jitted predict step
sees the global batch and its outputs are gathered, so a host keeps the
contiguous slice that belongs to its rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from uniter_jax.data.errors import DataError
from uniter_jax.data.pipeline import Pipeline
from uniter_jax.downstream.task import Evaluation, Outputs
from uniter_jax.model.inputs import MODEL_INPUTS
from uniter_jax.sharding import Layout, to_host
from uniter_jax.train.preemption import interruption_point
from uniter_jax.train.step import StepSettings, predict_step


def predict_batches(
    params: dict,
    batches: Iterable[dict[str, np.ndarray]],
    settings: StepSettings,
    layout: Layout,
    *,
    progress: str = "",
    total: int | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Yields `(host batch, outputs of this host's rows)` for each batch; a
    `progress` label shows a progress bar of `total` batches on process 0."""
    bar = tqdm(
        batches,
        total=total,
        desc=progress,
        unit="batch",
        disable=not progress or jax.process_index() > 0,
    )
    for batch in bar:
        interruption_point()  # in training's validation: a SIGTERM agreed by all processes
        fields = layout.global_batch({k: batch[k] for k in MODEL_INPUTS})
        out = to_host(predict_step(params, fields, settings, layout))
        rows = len(batch["valid"])
        mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
        yield batch, {k: v[mine] for k, v in out.items()}


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
    gathered = multihost_utils.process_allgather({"seen": seen, **outputs})
    owner = np.argmax(gathered["seen"], axis=0)  # [N]: the host that predicted each
    n = np.arange(len(seen))
    return {name: gathered[name][owner, n] for name in outputs}


def predict_examples(
    params: dict,
    pipelines: dict[str, Pipeline],
    settings: StepSettings,
    layout: Layout,
    evaluation: Evaluation,
) -> Outputs:
    """`predict` for every example of each sub-task's store (`DownstreamTask.predict`)."""
    return {
        name: predict(params, p, settings, layout, what=f"{evaluation.label} ({name})")
        for name, p in pipelines.items()
    }
