"""Running a downstream objective's `predict` over planned batches, on every host.

Each host reads its own rows of every global batch; the jitted predict step
sees the global batch and its outputs are gathered, so a host keeps the
contiguous slice that belongs to its rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import jax
import numpy as np
from tqdm import tqdm

from uniter_jax.objectives.tasks import MODEL_INPUTS
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
