"""VQA v2: a 3129-way answer classifier on the pooled output (docs/original.md, VQA).

Loss: binary cross-entropy against the human answers' soft scores, summed
over answers and averaged over questions (the original's mean-BCE times the
number of answers). Metric: the official VQA accuracy, `min(#humans who gave
it / 3, 1)` averaged over the ten leave-one-annotator-out subsets
(`metrics.vqa_credit`). Results file: the official
`[{"question_id": int, "answer": str}]` JSON.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx

from uniter_jax.data.errors import DataError
from uniter_jax.data.text_store import TextStore
from uniter_jax.downstream import metrics
from uniter_jax.downstream.model import UniterWithHead
from uniter_jax.downstream.prediction import predict_examples
from uniter_jax.downstream.task import DownstreamObjective, scored_by, written_by
from uniter_jax.model import UniterConfig
from uniter_jax.model.heads import ClassifierHead
from uniter_jax.model.inputs import MODEL_INPUTS, encode

INPUTS = (*MODEL_INPUTS, "valid")


@dataclasses.dataclass(frozen=True)
class Vqa(DownstreamObjective):
    """The VQA objective (a step's `Objective`)."""

    num_answers: int = 3129
    head_groups: tuple[str, ...] = ("vqa",)

    def build(self, config: UniterConfig, rngs: nnx.Rngs) -> UniterWithHead:
        return UniterWithHead(
            config, rngs, "vqa", lambda c, r: ClassifierHead(c, self.num_answers, r)
        )

    def fields(self, task: str) -> tuple[str, ...]:
        return (*INPUTS, "targets")

    def logits(self, model: UniterWithHead, batch: dict, dropout_key) -> jax.Array:
        """`[B, num_answers]` fp32 answer logits."""
        return model.head(model.uniter.pool(encode(model, batch, dropout_key)))

    def loss(self, task, model, batch, mask_key, dropout_key):
        del task, mask_key
        logits = self.logits(model, batch, dropout_key)
        targets = batch["targets"].astype(jnp.float32)
        weight = batch["valid"].astype(jnp.float32)
        per_question = optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)
        score = jnp.take_along_axis(targets, jnp.argmax(logits, -1)[:, None], 1)[:, 0]
        total, count = jnp.sum(per_question * weight), jnp.sum(weight)
        metrics_ = {"loss": (total, count), "accuracy": (jnp.sum(score * weight), count)}
        return total / jnp.maximum(count, 1), metrics_

    def predict(self, model, batch) -> dict[str, jax.Array]:
        logits = self.logits(model, batch, None)
        return {"answer": jnp.argmax(logits, -1), "confidence": jax.nn.sigmoid(logits.max(-1))}


def objective(texts: TextStore) -> Vqa:
    return Vqa(num_answers=len(answer_vocab(texts)))


def answer_vocab(texts: TextStore) -> list[str]:
    vocab = (texts.manifest.get("source") or {}).get("answer_vocab")
    if not isinstance(vocab, list) or not vocab:
        raise DataError(
            "not a VQA text store: its manifest records no answer vocabulary",
            file=texts.directory,
        )
    return vocab


def check(texts: TextStore, train: TextStore | None = None) -> None:
    """Raises DataError unless `texts` is a VQA store sharing `train`'s answers."""
    vocab = answer_vocab(texts)
    if train is not None and vocab != answer_vocab(train):
        raise DataError(
            "the answer vocabulary differs from the training store's: convert this split "
            "with --answer-vocab pointing at the training store",
            file=texts.directory,
        )


def targets(texts: TextStore, text_index: np.ndarray) -> dict[str, np.ndarray]:
    """Dense soft-score targets `[b, answers]` float32 of the given examples."""
    num_answers = len(answer_vocab(texts))
    rows, answers = texts.ragged("answers", text_index)
    _, scores = texts.ragged("scores", text_index)
    out = np.zeros((len(text_index), num_answers), np.float32)
    out[rows, answers] = scores
    return {"targets": out}


def answer_credits(texts: TextStore) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per question, the answer ids humans gave and the official accuracy's credit
    for each (`metrics.vqa_credit`).

    Stores without human counts (converted from the original's LMDB, or by an
    older converter) give `min(count / 3, 1)` instead, about a point higher.
    """
    n = len(texts)
    answers = [texts.field("answers", i) for i in range(n)]
    if not {"counts", "humans"} <= set(texts.fields):
        return answers, [texts.field("scores", i) for i in range(n)]
    humans = texts.arrays["humans"]
    credits = [metrics.vqa_credit(texts.field("counts", i), int(humans[i])) for i in range(n)]
    return answers, credits


def evaluate(outputs: dict[str, np.ndarray], texts: TextStore) -> dict[str, float]:
    """The official VQA accuracy; nothing for a split converted without
    annotations (test)."""
    if not (texts.manifest.get("source") or {}).get("annotations"):
        return {}
    return {"accuracy": metrics.vqa_accuracy(outputs["answer"], *answer_credits(texts))}


def _write_results(outputs: dict[str, np.ndarray], texts: TextStore, path: str) -> None:
    """The official results file: `[{"question_id", "answer"}]`."""
    vocab = answer_vocab(texts)
    results = [
        {"question_id": _question_id(q), "answer": vocab[int(a)]}
        for q, a in zip(texts.text_ids, outputs["answer"], strict=True)
    ]
    epath.Path(path).write_text(json.dumps(results))  # local or gs://


def _question_id(text_id: str) -> int | str:
    return int(text_id) if str(text_id).isdigit() else str(text_id)


# The module's `DownstreamTask` interface (uniter_jax/downstream/task.py).
SUBTASKS = {"vqa": ""}
RESULTS_FORMAT = "json"
predict = predict_examples
score = scored_by(evaluate)
write_results = written_by(_write_results)
