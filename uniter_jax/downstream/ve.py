"""SNLI-VE: does the image entail, contradict or leave open the statement?

A 3-way classifier on the pooled output (the VQA head's shape), trained with
cross-entropy; metric: accuracy. Results file: JSON `[{"pair_id", "label"}]`
with the label names of the converter (`entailment`, `neutral`,
`contradiction`).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from uniter_jax.data.convert.snli_ve import LABELS
from uniter_jax.data.errors import DataError
from uniter_jax.data.text_store import TextStore
from uniter_jax.downstream import metrics
from uniter_jax.downstream.model import UniterWithHead
from uniter_jax.downstream.prediction import predict_examples
from uniter_jax.downstream.task import DownstreamObjective, scored_by, written_by
from uniter_jax.model import UniterConfig
from uniter_jax.model.heads import ClassifierHead
from uniter_jax.model.inputs import MODEL_INPUTS, encode
from uniter_jax.objectives import losses

INPUTS = (*MODEL_INPUTS, "valid")


@dataclasses.dataclass(frozen=True)
class VisualEntailment(DownstreamObjective):
    """The SNLI-VE objective (a step's `Objective`)."""

    head_groups: tuple[str, ...] = ("ve",)

    def build(self, config: UniterConfig, rngs: nnx.Rngs) -> UniterWithHead:
        return UniterWithHead(config, rngs, "ve", lambda c, r: ClassifierHead(c, len(LABELS), r))

    def fields(self, task: str) -> tuple[str, ...]:
        return (*INPUTS, "label")

    def logits(self, model: UniterWithHead, batch: dict, dropout_key) -> jax.Array:
        return model.head(model.uniter.pool(encode(model, batch, dropout_key)))

    def loss(self, task, model, batch, mask_key, dropout_key):
        del task, mask_key
        logits = self.logits(model, batch, dropout_key)
        weight = batch["valid"].astype(jnp.float32)
        ce = losses.cross_entropy(logits, batch["label"], weight)
        out = {"loss": ce, "accuracy": losses.accuracy(logits, batch["label"], weight)}
        return ce[0] / jnp.maximum(ce[1], 1), out

    def predict(self, model, batch) -> dict[str, jax.Array]:
        return {"label": jnp.argmax(self.logits(model, batch, None), -1)}


def objective(texts: TextStore) -> VisualEntailment:
    return VisualEntailment()


def check(texts: TextStore, train: TextStore | None = None) -> None:
    if "label" not in texts.fields:
        raise DataError("not an SNLI-VE text store: it has no 'label' field", file=texts.directory)


def targets(texts: TextStore, text_index: np.ndarray) -> dict[str, np.ndarray]:
    return {"label": texts.arrays["label"][text_index].astype(np.int32)}


def evaluate(outputs: dict[str, np.ndarray], texts: TextStore) -> dict[str, float]:
    return {"accuracy": metrics.accuracy(outputs["label"], texts.arrays["label"])}


def _write_results(outputs: dict[str, np.ndarray], texts: TextStore, path: str) -> None:
    """The original's results file: one JSON object, pair id -> predicted label."""
    results = {
        str(t): LABELS[int(p)] for t, p in zip(texts.text_ids, outputs["label"], strict=True)
    }
    epath.Path(path).write_text(json.dumps(results))  # local or gs://


# The module's `DownstreamTask` interface (uniter_jax/downstream/task.py).
SUBTASKS = {"ve": ""}
RESULTS_FORMAT = "json"
predict = predict_examples
score = scored_by(evaluate)
write_results = written_by(_write_results)
