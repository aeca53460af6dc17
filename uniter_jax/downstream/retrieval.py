"""Image-text retrieval (Flickr30K, COCO): ITM fine-tuning with hard negatives;
the ranking it is evaluated by lives in `downstream/ranking.py`.

Training (the original's hard-negative recipe, docs/original.md#image-text-retrieval):
each text comes with its image and `negatives` other images (the pipeline's
`negatives_per_text`), and, as a second stream of batches, each image with
one of its texts and `text_negatives` texts of other images
(`negatives_per_image`): the original mines hard negatives in both
directions. A no-dropout pass scores every pair of a group, the
`hard_negatives` best-scored negatives are kept, and the margin ranking loss
`max(0, margin + s(neg) - s(pos))` on sigmoid scores trains the cross-encoder
on those. The score is the pretrained ITM head's "match" logit. A second,
optional loss (`dual_weight`) trains the same encoder to score texts and
images encoded apart (texts alone, `[CLS]` + regions alone) by late
interaction, each token's best region cosine averaged over the tokens,
contrastive against the batch's images: the cheap first stage of the
two-stage mode.

Evaluation and prediction (`predict`): Recall@1/5/10 in both directions from
the scores of every text-image pair of the split and, with
`eval.two_stage_k`, of the two-stage ranking.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from uniter_jax.data.errors import DataError
from uniter_jax.data.pipeline import Pipeline
from uniter_jax.data.text_store import TextStore
from uniter_jax.downstream import ranking
from uniter_jax.downstream.model import UniterWithHead
from uniter_jax.downstream.ranking import late_interaction
from uniter_jax.downstream.task import DownstreamObjective, Evaluation, Outputs
from uniter_jax.model import UniterConfig
from uniter_jax.model.config import ConfigError
from uniter_jax.model.heads import ITMHead
from uniter_jax.model.inputs import MODEL_INPUTS, encode
from uniter_jax.sharding import Layout
from uniter_jax.train.step import StepSettings

MODES = ("cross", "text", "image")
RESULTS_FORMAT = "json"
# Name suffix of the training stream whose groups are an image with sampled texts.
BY_IMAGE = "_by_image"


@dataclasses.dataclass(frozen=True)
class Retrieval(DownstreamObjective):
    """The retrieval objective (a step's `Objective`); `mode` picks what `predict` gives."""

    negatives: int = 399  # sampled images per text (the original's negative_size)
    hard_negatives: int = 31  # trained on per group (hard_neg_size)
    text_negatives: int = 0  # sampled texts per image (the other direction); 0: off
    margin: float = 0.2
    dual_weight: float = 0.0  # weight of the dual-encoder loss; 0: the original recipe
    dual_temperature: float = 0.05
    mode: str = "cross"
    head_groups: tuple[str, ...] = ("itm",)

    def __post_init__(self):
        if not 0 < self.hard_negatives <= self.negatives:
            raise ConfigError("task_options: need 0 < hard_negatives <= negatives")
        if self.text_negatives and not self.hard_negatives <= self.text_negatives:
            raise ConfigError(
                "task_options: need hard_negatives <= text_negatives (or text_negatives 0)"
            )
        if self.mode not in MODES:
            raise ConfigError(f"task_options: unknown mode {self.mode!r}; choose from {MODES}")

    @property
    def pipeline_options(self) -> dict:
        return {"negatives_per_text": self.negatives}

    @property
    def pipeline_streams(self) -> dict[str, dict]:
        """Training streams by name suffix: texts with sampled images and, with
        `text_negatives`, images with sampled texts."""
        streams = {"": self.pipeline_options}
        if self.text_negatives:
            streams[BY_IMAGE] = {"negatives_per_image": self.text_negatives}
        return streams

    def build(self, config: UniterConfig, rngs: nnx.Rngs) -> UniterWithHead:
        return UniterWithHead(config, rngs, "itm", ITMHead)

    def fields(self, task: str) -> tuple[str, ...]:
        return (*MODEL_INPUTS, "valid", "image_index")

    def scores(self, model: UniterWithHead, batch: dict, dropout_key) -> jax.Array:
        """`[B]` cross-encoder match logits of the rows' text-image pairs."""
        return model.head(model.uniter.pool(encode(model, batch, dropout_key)))[:, 1]

    def embed_texts(self, model: UniterWithHead, batch: dict, dropout_key) -> jax.Array:
        """`[B, Lt, H]` unit-norm token outputs of the texts encoded alone."""
        sequence = model(batch["input_ids"], batch["text_mask"], dropout_key=dropout_key)
        return _unit(sequence)

    def embed_images(self, model: UniterWithHead, batch: dict, dropout_key) -> jax.Array:
        """`[B, Nr, H]` unit-norm region outputs of `[CLS]` and the regions encoded alone."""
        cls = batch["input_ids"][:, :1]
        sequence = model(
            cls,
            jnp.ones_like(cls),
            batch["img_feat"],
            batch["img_pos"],
            batch["img_mask"],
            dropout_key=dropout_key,
        )
        return _unit(sequence[:, 1:])

    def loss(self, task, model, batch, mask_key, dropout_key):
        del mask_key
        # A group: the positive pair first, then its sampled negatives.
        sampled = self.text_negatives if task.endswith(BY_IMAGE) else self.negatives
        width, k = 1 + sampled, self.hard_negatives
        inputs = {name: batch[name] for name in MODEL_INPUTS}
        # Mining pass: no dropout, no gradient (the original scores in eval mode).
        pool = jax.lax.stop_gradient(self.scores(model, inputs, None)).reshape(-1, width)
        groups = pool.shape[0]
        hard = jax.lax.top_k(pool[:, 1:], k)[1] + 1  # [G, K] rows inside each group
        rows = jnp.concatenate([jnp.zeros((groups, 1), hard.dtype), hard], 1)
        rows = (rows + (jnp.arange(groups) * width)[:, None]).reshape(-1)
        keys = jax.random.split(dropout_key, 3) if dropout_key is not None else [None] * 3
        chosen = {name: value[rows] for name, value in inputs.items()}
        score = jax.nn.sigmoid(self.scores(model, chosen, keys[0])).reshape(groups, 1 + k)
        hinge = jnp.maximum(0.0, self.margin + score[:, 1:] - score[:, :1])  # [G, K]
        valid = batch["valid"].reshape(-1, width)[:, 0].astype(jnp.float32)
        total = jnp.sum(hinge.mean(1) * valid)
        count = jnp.sum(valid)
        ranked_first = jnp.all(score[:, :1] > score[:, 1:], axis=1)
        out = {
            "loss": (total, count),
            "hard_accuracy": (jnp.sum(ranked_first * valid), count),
        }
        objective = total / jnp.maximum(count, 1)
        if self.dual_weight:
            dual = self._dual_loss(model, inputs, batch["image_index"], valid, keys[1:])
            out["dual_loss"] = (dual * count, count)
            objective = objective + self.dual_weight * dual
        return objective, out

    def _dual_loss(self, model, inputs, image_index, valid, keys) -> jax.Array:
        """Contrastive loss of the late-interaction score (`late_interaction`) of
        texts and images encoded apart, both directions.

        Text -> image: each text against its own group's images (its image and
        its sampled negatives) and the other groups' images; image -> text: each
        text's image against the batch's texts. Another copy of a text's own
        image is not a negative; filler groups (`valid` 0) are nobody's negative.
        """
        width = 1 + self.negatives
        firsts = {k: v[::width] for k, v in inputs.items()}
        tokens = self.embed_texts(model, firsts, keys[0])  # [G, Lt, H]
        regions = self.embed_images(model, inputs, keys[1])  # [B, Nr, H]
        groups = tokens.shape[0]
        text_mask, region_mask = firsts["text_mask"], inputs["img_mask"]
        grouped = regions.reshape(groups, width, *regions.shape[1:])
        own = late_interaction(
            tokens[:, None], text_mask[:, None], grouped, region_mask.reshape(groups, width, -1)
        )  # [G, width]: each text with its group's images
        pairs = late_interaction(
            tokens[:, None], text_mask[:, None], regions[None, ::width], region_mask[None, ::width]
        )  # [G, G]: each text with each group's own image
        own, pairs = own / self.dual_temperature, pairs / self.dual_temperature
        mine = image_index[::width]
        same = mine[:, None] == mine[None, :]
        real = (valid[:, None] > 0) & (valid[None, :] > 0)
        # Other groups' images, for text -> image: not its own image again.
        others = jnp.where(real & ~same, pairs, -1e9)
        t2i = jax.nn.log_softmax(jnp.concatenate([own, others], axis=1), axis=1)[:, 0]
        diagonal = jnp.eye(groups, dtype=bool)
        square = jnp.where(diagonal | (real & ~same), pairs, -1e9)
        i2t = jnp.diagonal(jax.nn.log_softmax(square, axis=0))
        per = -(t2i + i2t) / 2
        return jnp.sum(per * valid) / jnp.maximum(jnp.sum(valid), 1)

    def predict(self, model, batch) -> dict[str, jax.Array]:
        if self.mode == "text":
            return {"embedding": self.embed_texts(model, batch, None), "mask": batch["text_mask"]}
        if self.mode == "image":
            return {"embedding": self.embed_images(model, batch, None), "mask": batch["img_mask"]}
        return {"score": self.scores(model, batch, None)}


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def objective(texts: TextStore, **options) -> Retrieval:
    return Retrieval(**options)


def check(texts: TextStore, train: TextStore | None = None) -> None:
    if texts.manifest.get("task") != "captions":
        raise DataError(
            f"retrieval reads caption stores (Karpathy or COCO converters); this one is "
            f"{texts.manifest.get('task')!r}",
            file=texts.directory,
        )


def targets(texts: TextStore, text_index: np.ndarray) -> dict[str, np.ndarray]:
    return {}


# ---- the module's `DownstreamTask` interface (downstream/task.py) ----------------

SUBTASKS = {"retrieval": ""}


def predict(
    params: dict,
    pipelines: dict[str, Pipeline],
    settings: StepSettings,
    layout: Layout,
    evaluation: Evaluation,
) -> Outputs:
    """The ranking of the split (`ranking.rank`): its `[T, I]` scores, metrics and ids."""
    (pipeline,) = pipelines.values()
    if evaluation.two_stage_k and not settings.tasks.dual_weight:
        logging.log_first_n(
            logging.WARNING,
            "eval.two_stage_k is set but task_options.dual_weight is 0: the first stage "
            "is a dual encoder this run does not train, so its candidates are poor",
            1,
        )
    found, scores = ranking.rank(
        params,
        pipeline,
        settings,
        layout,
        two_stage_k=evaluation.two_stage_k,
        cache_dir=evaluation.cache_dir,
        fingerprint=ranking.params_fingerprint(params) if evaluation.cache_dir else "",
    )
    split = ranking.Split.of(pipeline)
    ids = {"text_ids": pipeline.texts.text_ids, "image_ids": pipeline.images.ids[split.images]}
    return {"retrieval": {"scores": scores, "metrics": found, **ids}}


def score(outputs: Outputs, texts: dict[str, TextStore]) -> dict[str, float]:
    return dict(outputs["retrieval"]["metrics"])


def write_results(outputs: Outputs, texts: dict[str, TextStore], path: str) -> None:
    """The ranking (`path`) and, beside it, `scores_<split>.json`: recall under the
    original evaluation's names."""
    out = outputs["retrieval"]
    ranking.write_ranking(out["scores"], out["text_ids"], out["image_ids"], path)
    folder, name = posixpath.split(path)
    scores_path = posixpath.join(folder, name.replace("results_", "scores_", 1))
    original = ranking.original_scores(out["metrics"])
    epath.Path(scores_path).write_text(json.dumps(original, indent=2))
