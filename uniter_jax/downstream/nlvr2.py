"""NLVR2: is a statement true of a pair of images? Three model variants.

Batches come from a grouped store (uniter_jax/data/convert/nlvr2.py): each
statement is two consecutive rows, with its left and its right image. The
left image's regions have segment type 1, the right's type 2 (a third
segment embedding, started from the pretrained image type; see
`param_checkpoint.overlay`). Variants (docs/original.md, NLVR2):
  pair       each row encoded alone; the two pooled outputs concatenated,
             `dense 2H -> 2`.
  triplet    one sequence `[CLS] text [SEP] left regions right regions`;
             pooled, `dense H -> 2`.
  pair-attn  each row encoded alone; each side cross-attends to the other,
             `dense 2H -> H` + ReLU on `[attended, own]`, attention pooling,
             `dense 2H -> 2` on both pooled sides.
Loss: cross-entropy per statement. Metric: accuracy. Results file: CSV
`identifier,prediction` with `True` / `False`, the official layout.
"""

from __future__ import annotations

import dataclasses

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
from uniter_jax.model.config import ConfigError
from uniter_jax.model.inputs import MODEL_INPUTS
from uniter_jax.model.layers import SelfAttention, attention_bias, dense, dropout, split_key
from uniter_jax.objectives import losses
from uniter_jax.sharding import CLASSES, EMBED

INPUTS = (*MODEL_INPUTS, "valid")
VARIANTS = ("pair", "triplet", "pair-attn")
GROUP_SIZE = 2
_MASKED = -1e4  # attention-pooling score of padding, as the original


class AttentionPool(nnx.Module):
    """`[B, L, H]` -> `[B, H]`: softmax over `relu(dense H->1)` scores of valid positions."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        self.score = dense(config.hidden_size, 1, config, rngs, (EMBED, None), fp32_output=True)
        self.rate = config.attention_dropout

    def __call__(self, x: jax.Array, mask: jax.Array, key: jax.Array | None) -> jax.Array:
        score = jax.nn.relu(self.score(x)[..., 0].astype(jnp.float32))
        score = score + (1.0 - mask.astype(jnp.float32)) * _MASKED
        weights = dropout(jax.nn.softmax(score, axis=-1), self.rate, key)
        return jnp.einsum("bl,blh->bh", weights.astype(x.dtype), x)


class PairAttentionHead(nnx.Module):
    """pair-attn: bidirectional cross-attention between the two sides, then pooling."""

    def __init__(self, config: UniterConfig, rngs: nnx.Rngs):
        h = config.hidden_size
        self.left_to_right = SelfAttention(config, rngs)
        self.right_to_left = SelfAttention(config, rngs)
        self.fuse = dense(2 * h, h, config, rngs, (None, EMBED))
        self.pool = AttentionPool(config, rngs)
        self.out = dense(2 * h, 2, config, rngs, (None, CLASSES), fp32_output=True)
        self.rate = config.hidden_dropout

    def __call__(
        self,
        left: jax.Array,
        right: jax.Array,
        left_mask: jax.Array,
        right_mask: jax.Array,
        key: jax.Array | None,
    ) -> jax.Array:
        """Sides `[P, L, H]` with masks `[P, L]` -> `[P, 2]` fp32 logits."""
        keys = split_key(key, 6)
        l2r = self.left_to_right(left, attention_bias(right_mask), keys[0], context=right)
        r2l = self.right_to_left(right, attention_bias(left_mask), keys[1], context=left)

        def fuse(attended, own, k):
            fused = jax.nn.relu(self.fuse(jnp.concatenate([attended, own], -1)))
            return dropout(fused, self.rate, k)

        left_pooled = self.pool(fuse(l2r, left, keys[2]), left_mask, keys[4])
        right_pooled = self.pool(fuse(r2l, right, keys[3]), right_mask, keys[5])
        return self.out(jnp.concatenate([left_pooled, right_pooled], -1)).astype(jnp.float32)


def _linear(in_features: int):
    def make(config: UniterConfig, rngs: nnx.Rngs) -> nnx.Module:
        size = in_features * config.hidden_size
        return dense(size, 2, config, rngs, (None, CLASSES), fp32_output=True)

    return make


@dataclasses.dataclass(frozen=True)
class Nlvr2(DownstreamObjective):
    """The NLVR2 objective (a step's `Objective`), one of `VARIANTS`."""

    variant: str = "pair"
    head_groups: tuple[str, ...] = ("nlvr2",)
    group_size: int = GROUP_SIZE

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown NLVR2 variant {self.variant!r}; choose from {VARIANTS}")

    @property
    def pipeline_options(self) -> dict:
        return {"group_size": self.group_size}

    def build(self, config: UniterConfig, rngs: nnx.Rngs) -> UniterWithHead:
        if config.type_vocab_size < 3:
            raise ValueError("NLVR2 needs type_vocab_size >= 3 (model_overrides)")
        head = {"pair": _linear(2), "triplet": _linear(1), "pair-attn": PairAttentionHead}
        return UniterWithHead(config, rngs, "nlvr2", head[self.variant])

    @property
    def model_overrides(self) -> dict:
        """UniterConfig fields this task changes: a segment type for the right image."""
        return {"type_vocab_size": 3}

    def fields(self, task: str) -> tuple[str, ...]:
        return (*INPUTS, "label")

    def logits(self, model: UniterWithHead, batch: dict, dropout_key) -> jax.Array:
        """`[B / 2, 2]` fp32 logits, one row per statement."""
        encoder_key, head_key = split_key(dropout_key, 2)
        if self.variant == "triplet":
            both = {k: jnp.concatenate([batch[k][0::2], batch[k][1::2]], 1) for k in _REGIONS}
            types = jnp.concatenate(
                [
                    jnp.ones_like(batch["img_mask"][0::2]),
                    2 * jnp.ones_like(batch["img_mask"][1::2]),
                ],
                axis=1,
            ).astype(jnp.int32)
            sequence = model(
                batch["input_ids"][0::2],
                batch["text_mask"][0::2],
                **both,
                img_type_ids=types,
                dropout_key=encoder_key,
            )
            return model.head(model.uniter.pool(sequence)).astype(jnp.float32)
        right = (jnp.arange(batch["img_mask"].shape[0]) % 2 == 1)[:, None]
        types = jnp.where(right, 2, 1) * jnp.ones_like(batch["img_mask"], jnp.int32)
        sequence = model(
            batch["input_ids"],
            batch["text_mask"],
            batch["img_feat"],
            batch["img_pos"],
            batch["img_mask"],
            img_type_ids=types,
            dropout_key=encoder_key,
        )
        if self.variant == "pair":
            pooled = model.uniter.pool(sequence)
            return model.head(pooled.reshape(-1, 2 * pooled.shape[-1])).astype(jnp.float32)
        mask = jnp.concatenate([batch["text_mask"], batch["img_mask"]], 1)
        return model.head(sequence[0::2], sequence[1::2], mask[0::2], mask[1::2], head_key)

    def loss(self, task, model, batch, mask_key, dropout_key):
        del task, mask_key
        logits = self.logits(model, batch, dropout_key)
        weight = batch["valid"][0::2].astype(jnp.float32)
        labels = batch["label"][0::2]
        ce = losses.cross_entropy(logits, labels, weight)
        out = {"loss": ce, "accuracy": losses.accuracy(logits, labels, weight)}
        return ce[0] / jnp.maximum(ce[1], 1), out

    def predict(self, model, batch) -> dict[str, jax.Array]:
        """Per row (both rows of a statement get its prediction)."""
        logits = self.logits(model, batch, None)
        return {"label": jnp.repeat(jnp.argmax(logits, -1), 2), "logit": jnp.repeat(logits, 2, 0)}


_REGIONS = ("img_feat", "img_pos", "img_mask")


def objective(texts: TextStore, variant: str = "pair") -> Nlvr2:
    return Nlvr2(variant=variant)


def check(texts: TextStore, train: TextStore | None = None) -> None:
    if texts.manifest.get("task") != "nlvr2":
        raise DataError(
            f"not an NLVR2 text store (task {texts.manifest.get('task')!r})", file=texts.directory
        )


def targets(texts: TextStore, text_index: np.ndarray) -> dict[str, np.ndarray]:
    return {"label": texts.arrays["label"][text_index].astype(np.int32)}


def evaluate(outputs: dict[str, np.ndarray], texts: TextStore) -> dict[str, float]:
    return {"accuracy": metrics.accuracy(outputs["label"][0::2], texts.arrays["label"][0::2])}


def _write_results(outputs: dict[str, np.ndarray], texts: TextStore, path: str) -> None:
    """`identifier,prediction` lines, as the NLVR2 evaluation script reads them."""
    lines = [
        f"{str(t).rsplit('#', 1)[0]},{'True' if p else 'False'}"
        for t, p in zip(texts.text_ids[0::2], outputs["label"][0::2], strict=True)
    ]
    epath.Path(path).write_text("\n".join(lines) + "\n")


# The module's `DownstreamTask` interface (uniter_jax/downstream/task.py).
SUBTASKS = {"nlvr2": ""}
RESULTS_FORMAT = "csv"
predict = predict_examples
score = scored_by(evaluate)
write_results = written_by(_write_results)
