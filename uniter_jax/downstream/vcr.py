"""VCR: multiple choice Q->A, QA->R and their product Q->AR (docs/original.md, VCR).

Two grouped stores (uniter_jax/data/convert/vcr.py), four candidates per
question: `vcr_qa` rows are `question [SEP] answer k`, `vcr_qar` rows are
`question [SEP] correct answer [SEP] rationale k`. One model scores every
candidate from the pooled output (`dense H->2H, ReLU, LayerNorm, dense
2H->2`, the original's head) and trains on both stores, mixed 1:1, with
cross-entropy on "is this the right candidate"; a question's choice is its
candidate with the highest "right" logit. Metrics: Q->A and QA->R accuracy,
and Q->AR, both right for the same question. Results file: JSON
`[{"annot_id", "answer", "rationale"}]`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import posixpath

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from uniter_jax.data.errors import DataError
from uniter_jax.data.text_store import TextStore
from uniter_jax.downstream.model import UniterWithHead
from uniter_jax.downstream.prediction import predict_examples
from uniter_jax.downstream.task import DownstreamObjective
from uniter_jax.model import UniterConfig
from uniter_jax.model.heads import ClassifierHead
from uniter_jax.model.inputs import MODEL_INPUTS, encode
from uniter_jax.objectives import losses

INPUTS = (*MODEL_INPUTS, "valid")
GROUP_SIZE = 4
# The two stores trained together: sub-task -> suffix of its `data.*_texts` fields.
SUBTASKS = {"vcr_qa": "", "vcr_qar": "_qar"}
RESULTS_FORMAT = "json"


@dataclasses.dataclass(frozen=True)
class Vcr(DownstreamObjective):
    """The VCR objective (a step's `Objective`), for both sub-tasks."""

    head_groups: tuple[str, ...] = ("vcr",)
    group_size: int = GROUP_SIZE

    @property
    def pipeline_options(self) -> dict:
        return {"group_size": self.group_size}

    def build(self, config: UniterConfig, rngs: nnx.Rngs) -> UniterWithHead:
        return UniterWithHead(config, rngs, "vcr", lambda c, r: ClassifierHead(c, 2, r, relu=True))

    def fields(self, task: str) -> tuple[str, ...]:
        return (*INPUTS, "label")

    def logits(self, model: UniterWithHead, batch: dict, dropout_key) -> jax.Array:
        """`[B, 2]` per candidate: (wrong, right)."""
        return model.head(model.uniter.pool(encode(model, batch, dropout_key)))

    def loss(self, task, model, batch, mask_key, dropout_key):
        del task, mask_key
        logits = self.logits(model, batch, dropout_key)
        labels = batch["label"]
        weight = batch["valid"].astype(jnp.float32) * (labels >= 0)
        ce = losses.cross_entropy(logits, jnp.maximum(labels, 0), weight)
        # Question accuracy: the group's best "right" logit is its labelled candidate.
        right = logits[:, 1].reshape(-1, GROUP_SIZE)
        chosen = jnp.argmax(right, -1)
        truth = jnp.argmax(labels.reshape(-1, GROUP_SIZE), -1)
        group_weight = weight.reshape(-1, GROUP_SIZE)[:, 0]
        correct = jnp.sum((chosen == truth) * group_weight)
        out = {"loss": ce, "accuracy": (correct, jnp.sum(group_weight))}
        return ce[0] / jnp.maximum(ce[1], 1), out

    def predict(self, model, batch) -> dict[str, jax.Array]:
        return {"score": self.logits(model, batch, None)[:, 1]}


def objective(texts: TextStore) -> Vcr:
    return Vcr()


def check(texts: TextStore, train: TextStore | None = None) -> None:
    if texts.manifest.get("task") not in SUBTASKS:
        raise DataError(
            f"not a VCR text store (task {texts.manifest.get('task')!r})", file=texts.directory
        )


def targets(texts: TextStore, text_index: np.ndarray) -> dict[str, np.ndarray]:
    return {"label": texts.arrays["label"][text_index].astype(np.int32)}


def choices(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """`[Q]` the chosen candidate of each group."""
    return np.argmax(outputs["score"].reshape(-1, GROUP_SIZE), -1)


def _annot_ids(texts: TextStore) -> np.ndarray:
    return np.array([str(t).split("#", 1)[0] for t in texts.text_ids[::GROUP_SIZE]])


def score(
    outputs: dict[str, dict[str, np.ndarray]], texts: dict[str, TextStore]
) -> dict[str, float]:
    """Q->A, QA->R and Q->AR accuracy over labelled questions."""
    out, right = {}, {}
    for task, name in (("vcr_qa", "qa_accuracy"), ("vcr_qar", "qar_accuracy")):
        if task not in outputs:
            continue
        labels = texts[task].arrays["label"].reshape(-1, GROUP_SIZE)
        labelled = (labels >= 0).all(1)
        if not labelled.any():
            continue
        hit = choices(outputs[task]) == np.argmax(labels, -1)
        out[name] = float(hit[labelled].mean())
        right[task] = dict(zip(_annot_ids(texts[task])[labelled], hit[labelled], strict=True))
    if len(right) == 2:
        both = [right["vcr_qa"][a] and right["vcr_qar"].get(a, False) for a in right["vcr_qa"]]
        out["q_ar_accuracy"] = float(np.mean(both))
    return out


def write_results(
    outputs: dict[str, dict[str, np.ndarray]], texts: dict[str, TextStore], path: str
) -> None:
    """`[{"annot_id", "answer", "rationale"}]`: the chosen answer, and the chosen
    rationale given it (for unlabelled QA->R stores, from the group of the chosen
    answer; else the store's single group per question)."""
    answers = dict(
        zip(_annot_ids(texts["vcr_qa"]), choices(outputs["vcr_qa"]).tolist(), strict=True)
    )
    rationales: dict[str, int] = {}
    if "vcr_qar" in outputs:
        ids = texts["vcr_qar"].text_ids[::GROUP_SIZE]
        for text_id, choice in zip(ids, choices(outputs["vcr_qar"]).tolist(), strict=True):
            annot, _, rest = str(text_id).split("#", 2)
            given = rest.split("#")[0]  # "a<j>" when conditioned on answer j, else "k"
            if not given.startswith("a") or int(given[1:]) == answers.get(annot):
                rationales[annot] = choice
    results = [
        {"annot_id": a, "answer": answers[a], "rationale": rationales.get(a)} for a in answers
    ]
    epath.Path(path).write_text(json.dumps(results))
    if "vcr_qar" in outputs:
        table = leaderboard_rows(outputs, texts)
        if table:
            write_leaderboard(table, leaderboard_path(path))


LEADERBOARD_COLUMNS = (
    "annot_id",
    *(f"answer_{k}" for k in range(4)),
    *(f"rationale_conditioned_on_a{j}_{k}" for j in range(4) for k in range(4)),
)


def leaderboard_path(results_path: str) -> str:
    """`.../results_<split>.json` -> `.../leaderboard_<split>.csv`."""
    folder, name = posixpath.split(str(results_path))
    stem = name.rsplit(".", 1)[0].replace("results_", "leaderboard_", 1)
    return posixpath.join(folder, f"{stem}.csv")


def leaderboard_rows(
    outputs: dict[str, dict[str, np.ndarray]], texts: dict[str, TextStore]
) -> list[list]:
    """The VCR leaderboard's rows: per question, the 4 answer probabilities and
    the 4 rationale probabilities given each answer (softmax over each group's
    scores, as the VCR authors' evaluation writes them), questions in the
    order of their annotation number. Empty unless the QA->R store holds
    rationales for every answer (an unlabelled split: test)."""
    qa = _probabilities(outputs["vcr_qa"])
    answers = {a: qa[q] for q, a in enumerate(_annot_ids(texts["vcr_qa"]))}
    given: dict[str, dict[int, np.ndarray]] = {}
    qar = _probabilities(outputs["vcr_qar"])
    for q, text_id in enumerate(texts["vcr_qar"].text_ids[::GROUP_SIZE]):
        annot, _, rest = str(text_id).split("#", 2)
        condition = rest.split("#")[0]
        if not condition.startswith("a"):
            return []  # labelled: rationales only under the correct answer
        given.setdefault(annot, {})[int(condition[1:])] = qar[q]
    rows = []
    for annot in sorted(answers, key=_annotation_number):
        conditioned = given.get(annot, {})
        if sorted(conditioned) != list(range(4)):
            raise ValueError(f"VCR leaderboard: {annot} lacks rationales for some answers")
        rows.append([annot, *answers[annot], *np.concatenate([conditioned[j] for j in range(4)])])
    return rows


def write_leaderboard(rows: list[list], path: str) -> None:
    """The leaderboard CSV: a header of LEADERBOARD_COLUMNS, one row a question."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LEADERBOARD_COLUMNS)
    for annot, *values in rows:
        writer.writerow([annot, *(f"{float(v):.6f}" for v in values)])
    epath.Path(path).write_text(out.getvalue())


def _probabilities(outputs: dict[str, np.ndarray]) -> np.ndarray:
    scores = np.asarray(outputs["score"], np.float64).reshape(-1, GROUP_SIZE)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    return scores / scores.sum(-1, keepdims=True)


def _annotation_number(annot_id: str) -> tuple:
    """`"test-12"` -> (12, ...): the leaderboard file's row order."""
    tail = str(annot_id).rsplit("-", 1)[-1]
    return (int(tail), annot_id) if tail.isdigit() else (float("inf"), annot_id)


predict = predict_examples  # the module's `DownstreamTask` interface (downstream/task.py)
