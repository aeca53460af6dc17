"""Referring expressions (RefCOCO, RefCOCO+, RefCOCOg): which region does the text name?

A score per region (`RegionScoreHead` on each region's output), softmax over
the image's kept regions (padding masked), cross-entropy to the target region
(the stored region with the best IoU against the annotation). Metrics:
`accuracy`, the fraction of predicted regions whose box has IoU >= 0.5 with
the annotated box (the paper's metric, right for detected and ground-truth
boxes alike), and `target_accuracy`, the predicted region is the target.
Results file: JSON `[{"ref_sent_id", "box": [x1, y1, x2, y2]}]`, the box
normalised by image size as the store keeps it.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from uniter_jax.data.errors import DataError
from uniter_jax.data.text_store import TextStore
from uniter_jax.downstream import metrics
from uniter_jax.downstream.model import UniterWithHead
from uniter_jax.downstream.prediction import predict_examples
from uniter_jax.downstream.task import DownstreamObjective, scored_by, written_by
from uniter_jax.model import UniterConfig
from uniter_jax.model.heads import RegionScoreHead
from uniter_jax.model.inputs import MODEL_INPUTS, encode
from uniter_jax.objectives import losses

INPUTS = (*MODEL_INPUTS, "valid")
_MASKED = -1e9  # the score of padded regions: never chosen, no softmax mass


@dataclasses.dataclass(frozen=True)
class ReferringExpressions(DownstreamObjective):
    """The referring-expression objective (a step's `Objective`)."""

    head_groups: tuple[str, ...] = ("refexp",)

    def build(self, config: UniterConfig, rngs: nnx.Rngs) -> UniterWithHead:
        return UniterWithHead(config, rngs, "refexp", RegionScoreHead)

    def fields(self, task: str) -> tuple[str, ...]:
        return (*INPUTS, "target")

    def scores(self, model: UniterWithHead, batch: dict, dropout_key) -> jax.Array:
        """`[B, Nr]` fp32 region scores, padding at `_MASKED`."""
        sequence = encode(model, batch, dropout_key)
        regions = sequence[:, batch["input_ids"].shape[1] :]
        return jnp.where(batch["img_mask"] > 0, model.head(regions), _MASKED)

    def loss(self, task, model, batch, mask_key, dropout_key):
        del task, mask_key
        scores = self.scores(model, batch, dropout_key)
        target = batch["target"]
        # A target region cut by the region selection (conf_th / max_bb) cannot
        # be learned: it is left out of the loss (counted by the caller). Its
        # index may lie past this batch's padded region count, so it is looked
        # up clipped and the row weighted 0 (an out-of-range gather is NaN).
        inside = target < scores.shape[1]
        target = jnp.clip(target, 0, scores.shape[1] - 1)
        kept = inside & (jnp.take_along_axis(batch["img_mask"], target[:, None], 1)[:, 0] > 0)
        weight = batch["valid"].astype(jnp.float32) * kept
        ce = losses.cross_entropy(scores, target, weight)
        out = {"loss": ce, "accuracy": losses.accuracy(scores, target, weight)}
        return ce[0] / jnp.maximum(ce[1], 1), out

    def predict(self, model, batch) -> dict[str, jax.Array]:
        region = jnp.argmax(self.scores(model, batch, None), -1)
        box = jnp.take_along_axis(batch["img_pos"][..., :4], region[:, None, None], 1)[:, 0]
        return {"region": region, "box": box.astype(jnp.float32)}


def objective(texts: TextStore) -> ReferringExpressions:
    return ReferringExpressions()


def check(texts: TextStore, train: TextStore | None = None) -> None:
    missing = sorted({"target", "gt_box"} - set(texts.fields))
    if missing:
        raise DataError(
            f"not a referring-expression text store: fields {missing} are missing",
            file=texts.directory,
        )


def targets(texts: TextStore, text_index: np.ndarray) -> dict[str, np.ndarray]:
    return {"target": texts.arrays["target"][text_index].astype(np.int32)}


def evaluate(outputs: dict[str, np.ndarray], texts: TextStore) -> dict[str, float]:
    return {
        "accuracy": metrics.grounding_accuracy(outputs["box"], texts.arrays["gt_box"]),
        "target_accuracy": metrics.accuracy(outputs["region"], texts.arrays["target"]),
    }


def _write_results(outputs: dict[str, np.ndarray], texts: TextStore, path: str) -> None:
    """The original's results file: sentence id -> `{"pred_box", "tgt_box"}`, each
    `[x, y, w, h]` in pixels (normalised units for stores written before the
    converters kept the image size)."""
    boxes = np.asarray(outputs["box"], np.float64)
    truth = np.asarray(texts.arrays["gt_box"], np.float64)
    if "image_size" in texts.fields:
        size = np.tile(np.asarray(texts.arrays["image_size"], np.float64), 2)
        boxes, truth = boxes * size, truth * size
    results = {
        _sent_id(t): {"pred_box": _xywh(p), "tgt_box": _xywh(g)}
        for t, p, g in zip(texts.text_ids, boxes, truth, strict=True)
    }
    epath.Path(path).write_text(json.dumps(results))  # local or gs://


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [round(v, 4) for v in (x1, y1, x2 - x1, y2 - y1)]


def _sent_id(text_id: str) -> str:
    """The sentence id of a text id `"<ref_id>-<sent_id>"`."""
    return str(text_id).rsplit("-", 1)[-1]


# The module's `DownstreamTask` interface (uniter_jax/downstream/task.py).
SUBTASKS = {"refexp": ""}
RESULTS_FORMAT = "json"
predict = predict_examples
score = scored_by(evaluate)
write_results = written_by(_write_results)
