"""The tf.data input pipeline: deterministic, bucketed, multi-host, exactly resumable.

Each epoch is first *planned* on the host in numpy, identically on every host:
a seeded permutation of the examples, the ITM negatives (a random other image
per chosen example), and each example's bucket, the smallest of a few static
`(text_len, num_regions)` shapes that holds it. Walking the permutation fills
one queue per bucket; a full queue is one global batch. Every host computes the
same plan, takes its contiguous slice of each global batch, and so every step
has the same shapes on every host, as `jax.make_array_from_process_local_data`
needs. tf.data then only reads and pads: region blobs by `tf.io.read_file`
(local disk or gs://) in parallel, tokens from the plan.

The iterator's state is `(epoch, step)`: restoring it rebuilds that epoch's plan
and continues at that step, so a resumed run sees exactly the batches it would
have seen. Partial batches at the end of an epoch are dropped (and counted).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One static batch shape: padded text length (with [CLS]/[SEP]), regions, global batch."""

    text_len: int
    num_regions: int
    batch_size: int


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    buckets: tuple[Bucket, ...]
    conf_th: float = 0.2  # regions kept: clip(#(conf > conf_th), min_bb, max_bb)
    min_bb: int = 10
    max_bb: int = 100
    itm_neg_prob: float = 0.0  # probability of pairing a text with a random other image
    shuffle: bool = True
    seed: int = 0
    soft_labels: bool = False  # also emit `img_soft_labels` (MRC / MRC-kl)
    prefetch: int = 2


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """Global batches of one epoch. Arrays over steps `[S]` and examples `[S, B_s]`."""

    bucket: np.ndarray  # [S] bucket index of each step
    batches: list[np.ndarray]  # per step: [B, 3] (text index, image position, itm label)
    dropped: int  # examples left in partial batches
    waste: dict[int, float]  # per bucket: padded fraction of its text + region positions


def plan_epoch(
    text_lens: np.ndarray,
    text_images: np.ndarray,
    kept: np.ndarray,
    config: PipelineConfig,
    epoch: int,
) -> EpochPlan:
    """Plans one epoch (pure numpy, the same on every host).

    Args:
      text_lens: `[N]` token counts of the texts, without [CLS]/[SEP].
      text_images: `[N]` image position (in the image store) of each text.
      kept: `[num_images]` regions each image keeps after selection.
      config: buckets, negatives, seed.
      epoch: which epoch; it seeds the permutation and negatives.
    """
    n = len(text_lens)
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(n) if config.shuffle else np.arange(n)
    # Negatives are drawn per example (not per position), uniformly over the
    # *other* images.
    negative = rng.random(n) < config.itm_neg_prob
    other = rng.integers(0, max(len(kept) - 1, 1), n)
    other = other + (other >= text_images)
    images = np.where(negative, other, text_images)
    labels = (~negative).astype(np.int64)

    lengths, regions = text_lens + 2, kept[images]
    fits = [(lengths <= b.text_len) & (regions <= b.num_regions) for b in config.buckets]
    cost = [b.text_len + b.num_regions for b in config.buckets]
    choice = np.full(n, -1)
    for k in np.argsort(cost, kind="stable")[::-1]:  # cheapest fitting bucket wins
        choice[fits[k]] = k
    if (choice < 0).any():
        i = int(np.argmax(choice < 0))
        raise DataError(
            f"text of {lengths[i]} tokens with {regions[i]} regions fits no bucket "
            f"{[(b.text_len, b.num_regions) for b in config.buckets]}",
            record=int(i),
        )

    queues: list[list[int]] = [[] for _ in config.buckets]
    steps, batches = [], []
    for i in order:
        k = choice[i]
        queues[k].append(i)
        if len(queues[k]) == config.buckets[k].batch_size:
            members = np.array(queues[k])
            steps.append(k)
            batches.append(np.stack([members, images[members], labels[members]], axis=1))
            queues[k] = []
    waste = {}
    for k, b in enumerate(config.buckets):
        rows = np.concatenate(
            [x[:, 0] for s, x in zip(steps, batches, strict=True) if s == k] or [np.zeros(0, int)]
        )
        if rows.size:
            used = lengths[rows].sum() + regions[rows].sum()
            waste[k] = float(1.0 - used / (rows.size * (b.text_len + b.num_regions)))
    return EpochPlan(
        bucket=np.array(steps, np.int64),
        batches=batches,
        dropped=int(sum(len(q) for q in queues)),
        waste=waste,
    )


class Pipeline:
    """Batches of one text store joined with one image store, for one host.

    Iterate for dicts of numpy arrays (this host's rows of each global batch):
      input_ids `[b, L]` int32 ([CLS] text [SEP], 0-padded), text_mask `[b, L]`,
      img_feat `[b, N, D]` float16, img_pos `[b, N, 7]` float32, img_mask `[b, N]`,
      itm_label `[b]` (1 = the text's own image), text_index / image_index `[b]`,
      and img_soft_labels `[b, N, L]` float16 when configured.
    `state()` / `restore(state)` carry the position for checkpoints.
    """

    def __init__(
        self,
        texts: TextStore,
        images: ImageStore,
        config: PipelineConfig,
        *,
        process_index: int = 0,
        process_count: int = 1,
    ):
        self.texts, self.images, self.config = texts, images, config
        self.process_index, self.process_count = process_index, process_count
        for b in config.buckets:
            if b.batch_size % process_count:
                raise ValueError(f"bucket batch {b.batch_size} not divisible by {process_count}")
        vocab = texts.manifest["vocab"]
        self.cls_id, self.sep_id, self.pad_id = vocab["cls_id"], vocab["sep_id"], vocab["pad_id"]
        offsets = texts.arrays["input_ids__offsets"]
        self.text_lens = np.diff(offsets)
        self.text_images = np.array([images.position(str(i)) for i in texts.image_ids])
        self.kept = images.num_kept(config.conf_th, config.min_bb, config.max_bb)
        self.paths = np.array([images.path(i) for i in range(len(images))])
        self._epoch, self._step = 0, 0
        self._plan: EpochPlan | None = None
        self._iterator: Iterator | None = None

    # -- state ------------------------------------------------------------
    def state(self) -> dict[str, int]:
        return {"epoch": self._epoch, "step": self._step}

    def restore(self, state: dict[str, Any]) -> None:
        self._epoch, self._step = int(state["epoch"]), int(state["step"])
        self._plan, self._iterator = None, None

    def plan(self, epoch: int) -> EpochPlan:
        return plan_epoch(self.text_lens, self.text_images, self.kept, self.config, epoch)

    def close(self) -> None:
        """Stops the background reads (also before the store folder goes away)."""
        self._iterator = None

    # -- iteration --------------------------------------------------------
    def __iter__(self) -> Pipeline:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self._iterator is None:
                self._plan = self.plan(self._epoch)
                if len(self._plan.bucket) == 0:
                    raise DataError("an epoch holds no full batch: lower the bucket batch sizes")
                self._iterator = self._dataset(self._plan, self._step).as_numpy_iterator()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._epoch, self._step, self._iterator = self._epoch + 1, 0, None
                continue
            self._step += 1
            return batch

    def _dataset(self, plan: EpochPlan, start: int) -> tf.data.Dataset:
        """This host's examples of steps `start..` as a batched tf.data pipeline."""
        rows, steps, shapes = [], [], []
        for s in range(start, len(plan.bucket)):
            batch = plan.batches[s]
            per_host = len(batch) // self.process_count
            mine = batch[self.process_index * per_host : (self.process_index + 1) * per_host]
            rows.append(mine)
            steps.append(np.full(len(mine), s))
            b = self.config.buckets[plan.bucket[s]]
            shapes.append(np.tile([b.text_len, b.num_regions, per_host], (len(mine), 1)))
        if not rows:
            return tf.data.Dataset.from_tensor_slices({"step": np.zeros(0, np.int64)}).batch(1)
        rows, steps, shapes = np.concatenate(rows), np.concatenate(steps), np.concatenate(shapes)
        offsets = self.texts.arrays["input_ids__offsets"]
        starts, ends = offsets[rows[:, 0]], offsets[rows[:, 0] + 1]
        tokens = tf.RaggedTensor.from_row_lengths(
            np.concatenate(
                [self.texts.arrays["input_ids"][a:b] for a, b in zip(starts, ends, strict=True)]
            ),
            ends - starts,
        )
        examples = tf.data.Dataset.from_tensor_slices(
            {
                "step": steps.astype(np.int64),
                "text_index": rows[:, 0],
                "image_index": rows[:, 1],
                "itm_label": rows[:, 2].astype(np.int32),
                "path": self.paths[rows[:, 1]],
                "num_boxes": self.images.num_boxes[rows[:, 1]].astype(np.int32),
                "kept": self.kept[rows[:, 1]],
                "shape": shapes.astype(np.int32),
                "tokens": tokens,
            }
        )
        examples = examples.map(self._load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        host_batch = np.array([len(b) // self.process_count for b in plan.batches], np.int64)
        largest = int(host_batch.max())
        batched = examples.group_by_window(
            key_func=lambda e: e["step"],
            reduce_func=lambda _, window: window.batch(largest),
            window_size_func=lambda step: tf.gather(tf.constant(host_batch), step),
        )
        return batched.prefetch(self.config.prefetch)

    def _load(self, e: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        text_len, num_regions = e["shape"][0], e["shape"][1]
        tokens = tf.cast(e["tokens"][: text_len - 2], tf.int32)
        ids = tf.concat([[self.cls_id], tokens, [self.sep_id]], axis=0)
        text_pad = text_len - tf.shape(ids)[0]
        out = {
            "step": e["step"],
            "input_ids": tf.pad(ids, [[0, text_pad]], constant_values=self.pad_id),
            "text_mask": tf.pad(tf.ones_like(ids), [[0, text_pad]]),
            "itm_label": e["itm_label"],
            "text_index": e["text_index"],
            "image_index": e["image_index"],
        }
        blob = tf.io.read_file(e["path"])
        n, k = e["num_boxes"], e["kept"]
        region_pad = [[0, num_regions - k], [0, 0]]
        offset = tf.constant(0, tf.int32)
        for field in self.images.fields:
            if field.name == "soft_labels" and not self.config.soft_labels:
                break
            size = n * field.width * field.dtype.itemsize
            raw = tf.io.decode_raw(tf.strings.substr(blob, offset, size), _TF[field.dtype.str])
            value = tf.reshape(raw, [n, field.width])[:k]
            offset += size
            if field.name == "conf":
                continue
            key = {"features": "img_feat", "boxes": "img_pos", "soft_labels": "img_soft_labels"}
            out[key[field.name]] = tf.pad(value, region_pad)
        out["img_mask"] = tf.cast(tf.range(num_regions) < k, tf.int32)
        return out


_TF = {"<f2": tf.float16, "<f4": tf.float32}


def default_buckets(
    global_batch: int, max_text_len: int = 62, max_regions: int = 100
) -> tuple[Bucket, ...]:
    """Shapes for COCO-like data (captions 8-30 tokens, 10-100 regions).

    Two text lengths times six region counts, plus the largest shape for long
    texts: about 14% padding on that mix (`benchmarks/input_pipeline.py`).
    Batch sizes follow a position budget, `global_batch` examples of the
    largest shape, rounded down to multiples of 8: each step costs about the same.
    """
    shapes = {(t, r) for t in (20, 32) for r in (20, 35, 50, 65, 80, max_regions)}
    shapes.add((max_text_len, max_regions))
    budget = global_batch * (max_text_len + max_regions)
    return tuple(Bucket(t, r, max(8, int(budget / (t + r)) // 8 * 8)) for t, r in sorted(shapes))


def padding_waste(plan: EpochPlan, buckets: Sequence[Bucket]) -> float:
    """Padded fraction of all positions (text + regions) in the plan's batches."""
    total = used = 0.0
    for k, waste in plan.waste.items():
        count = sum(len(b) for s, b in zip(plan.bucket, plan.batches, strict=True) if s == k)
        capacity = count * (buckets[k].text_len + buckets[k].num_regions)
        total += capacity
        used += capacity * (1.0 - waste)
    return 1.0 - used / total if total else 0.0
