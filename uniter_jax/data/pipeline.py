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
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from uniter_jax.data.buckets import Bucket, default_buckets  # noqa: F401  (re-exported)
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import IMAGES_PER_SHARD, ImageStore
from uniter_jax.data.plan import (  # noqa: F401  (re-exported)
    EpochPlan,
    PipelineConfig,
    check_fit,
    gather_ranges,
    padding_waste,
    plan_epoch,
)
from uniter_jax.data.text_store import TextStore


class Pipeline:
    """Batches of one text store joined with one image store, for one host.

    Iterate for dicts of numpy arrays (this host's rows of each global batch):
      input_ids `[b, L]` int32 ([CLS] text [SEP], 0-padded), text_mask `[b, L]`,
      img_feat `[b, N, D]` float16, img_pos `[b, N, 7]` float32, img_mask `[b, N]`,
      itm_label `[b]` (1 = the text's own image), valid `[b]` (0 = a filler of a
      partial batch, `keep_partial`), text_index / image_index `[b]`,
      step `[b]`, and img_soft_labels `[b, N, L]` float16 when configured.
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
            width = config.unit_width
            if b.batch_size % (process_count * width):
                raise ValueError(
                    f"bucket batch {b.batch_size} not divisible by {process_count} hosts x "
                    f"groups of {width}"
                )
        if config.group_size > 1:
            check_groups(texts, config.group_size)
        if config.soft_labels and not images.num_labels:
            raise DataError(
                "soft_labels requested but the image store has none", file=images.directory
            )
        vocab = texts.manifest["vocab"]
        self.cls_id, self.sep_id, self.pad_id = vocab["cls_id"], vocab["sep_id"], vocab["pad_id"]
        self.text_lens = np.diff(texts.arrays["input_ids__offsets"])
        self.text_images = images.positions(texts.image_ids)
        self.kept = images.num_kept(config.conf_th, config.min_bb, config.max_bb)
        # Before any epoch is planned: every text fits a bucket with its own
        # image and, where random other images are drawn, with the fullest one.
        lengths, own = self.text_lens + 2, self.kept[self.text_images]
        try:
            check_fit(lengths, own, config.buckets)
            if len(own) and (config.itm_neg_prob or config.negatives_per_text):
                check_fit(lengths, np.full_like(own, self.kept.max()), config.buckets)
        except DataError as error:
            raise error.located(file=texts.directory) from None
        self.fingerprint = _fingerprint(config, texts, images)
        self._epoch, self._step = 0, 0
        self._iterator: Iterator | None = None

    # -- state ------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "step": self._step, "fingerprint": self.fingerprint}

    def restore(self, state: dict[str, Any]) -> None:
        """Continues where `state` was taken. The stores and config (host count aside)
        must be the ones it was taken with."""
        if state.get("fingerprint") != self.fingerprint:
            raise DataError(
                "the saved data state belongs to other stores or another pipeline config"
            )
        epoch, step = int(state["epoch"]), int(state["step"])
        if not 0 <= step <= self.plan(epoch).num_steps:
            raise DataError(f"saved step {step} is outside epoch {epoch}")
        self._epoch, self._step, self._iterator = epoch, step, None

    def plan(self, epoch: int) -> EpochPlan:
        try:
            return plan_epoch(self.text_lens, self.text_images, self.kept, self.config, epoch)
        except DataError as error:
            raise error.located(file=self.texts.directory) from None

    def close(self) -> None:
        """Stops the background reads (also before the store folder goes away)."""
        self._iterator = None

    def batches(self, plan: EpochPlan) -> Iterator[dict[str, np.ndarray]]:
        """This host's batches of any `plan` (e.g. `plan_pairs`), outside the
        pipeline's own position (which `state()` keeps)."""
        try:
            yield from self._dataset(plan, 0).as_numpy_iterator()
        except tf.errors.OpError as e:
            raise DataError(
                f"reading region blobs failed: {e.message}", file=self.images.directory
            ) from None

    def plan_pairs(self, texts: np.ndarray, images: np.ndarray) -> EpochPlan:
        """A plan that reads exactly the `(text index, image position)` pairs given
        (`[M]` each; e.g. every text against every image for ranking), bucketed,
        in order, partial batches filled (`valid` 0)."""
        config = dataclasses.replace(
            self.config,
            shuffle=False,
            keep_partial=True,
            itm_neg_prob=0.0,
            group_size=1,
            negatives_per_text=0,
            negatives_per_image=0,
        )
        plan = plan_epoch(self.text_lens[texts], images, self.kept, config, 0)
        rows = plan.rows.copy()
        rows[:, 0] = texts[rows[:, 0]]  # pair index -> text index
        return dataclasses.replace(plan, rows=rows)

    # -- iteration --------------------------------------------------------
    def __iter__(self) -> Pipeline:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self._iterator is None:
                plan = self.plan(self._epoch)
                if plan.num_steps == 0:
                    raise DataError("an epoch holds no full batch: lower the bucket batch sizes")
                self._iterator = self._dataset(plan, self._step).as_numpy_iterator()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._epoch, self._step, self._iterator = self._epoch + 1, 0, None
                continue
            except tf.errors.OpError as e:
                raise DataError(
                    f"reading region blobs failed: {e.message}", file=self.images.directory
                ) from None
            self._step += 1
            return batch

    def _dataset(self, plan: EpochPlan, start: int) -> tf.data.Dataset:
        """This host's examples of steps `start..` as a batched tf.data pipeline."""
        steps = np.arange(start, plan.num_steps)
        if not len(steps):
            return tf.data.Dataset.from_tensor_slices({"step": np.zeros(0, np.int64)}).batch(1)
        per_host = np.diff(plan.offsets)[steps] // self.process_count
        rows = plan.rows[
            gather_ranges(plan.offsets[steps] + self.process_index * per_host, per_host)
        ]
        buckets = self.config.buckets
        shape_table = np.array([[b.text_len, b.num_regions] for b in buckets], np.int32)
        step_of_row = np.repeat(steps, per_host)
        offsets = self.texts.arrays["input_ids__offsets"]
        starts = offsets[rows[:, 0]]
        lengths = offsets[rows[:, 0] + 1] - starts
        tokens = tf.RaggedTensor.from_row_lengths(
            self.texts.arrays["input_ids"][gather_ranges(starts, lengths)], lengths
        )
        num_boxes = self.images.num_boxes[rows[:, 1]].astype(np.int64)
        examples = tf.data.Dataset.from_tensor_slices(
            {
                "step": step_of_row.astype(np.int64),
                "text_index": rows[:, 0],
                "image_index": rows[:, 1],
                "itm_label": rows[:, 2].astype(np.int32),
                "valid": rows[:, 3].astype(np.int32),
                "num_boxes": num_boxes,
                "kept": self.kept[rows[:, 1]],
                "shape": shape_table[plan.bucket[step_of_row]],
                "tokens": tokens,
            }
        )
        examples = examples.map(self._load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        host_batch = np.zeros(plan.num_steps, np.int64)
        host_batch[steps] = per_host
        largest = int(per_host.max())
        batched = examples.group_by_window(
            key_func=lambda e: e["step"],
            reduce_func=lambda _, window: window.batch(largest),
            window_size_func=lambda step: tf.gather(tf.constant(host_batch), step),
        )
        options = tf.data.Options()
        # No autotuning (AUTOTUNE then means one parallel read per core): its
        # model thread sleeps for up to a minute between rounds, and dropping
        # an iterator (a restore, the end of validation) waited for it.
        options.autotune.enabled = False
        return batched.prefetch(self.config.prefetch).with_options(options)

    def _blob_path(self, index: tf.Tensor) -> tf.Tensor:
        """`<store>/regions/SSSSS/IIIIIIII.rgn` of image position `index` (as
        `ImageStore.path`, also for several stores read as one)."""
        directories = tf.constant([directory for directory, _ in self.images.parts])
        starts = tf.constant([start for _, start in self.images.parts], tf.int64)
        part = tf.searchsorted(starts, tf.reshape(index, [1]), side="right")[0] - 1
        index = index - starts[part]
        shard = tf.strings.as_string(index // IMAGES_PER_SHARD, width=5, fill="0")
        name = tf.strings.as_string(index, width=8, fill="0")
        return tf.strings.join([directories[part], "/regions/", shard, "/", name, ".rgn"])

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
            "valid": e["valid"],
            "text_index": e["text_index"],
            "image_index": e["image_index"],
        }
        path = self._blob_path(e["image_index"])
        blob = tf.io.read_file(path)
        n, k = e["num_boxes"], tf.cast(e["kept"], tf.int64)
        per_region = sum(f.width * f.dtype.itemsize for f in self.images.fields)
        check = tf.debugging.Assert(
            tf.equal(tf.cast(tf.strings.length(blob), tf.int64), n * per_region),
            ["region blob has the wrong size (truncated or replaced?):", path],
        )
        region_pad = [[0, tf.cast(num_regions, tf.int64) - k], [0, 0]]
        offset = tf.constant(0, tf.int64)
        with tf.control_dependencies([check]):
            for field in self.images.fields:
                if field.name == "soft_labels" and not self.config.soft_labels:
                    break
                size = n * field.width * field.dtype.itemsize
                raw = tf.io.decode_raw(tf.strings.substr(blob, offset, size), _TF[field.dtype.str])
                offset += size
                if field.name == "conf":
                    continue
                value = tf.reshape(raw, [n, field.width])[:k]
                out[_OUTPUT_NAMES[field.name]] = tf.pad(value, region_pad)
        out["img_mask"] = tf.cast(tf.range(num_regions, dtype=tf.int64) < k, tf.int32)
        return out


def check_groups(texts: TextStore, group_size: int) -> None:
    """Raises DataError unless the store holds consecutive groups of `group_size`
    (its `group` and `slot` fields, as the NLVR2 and VCR converters write them)."""
    missing = sorted({"group", "slot"} - set(texts.fields))
    if missing:
        raise DataError(f"a grouped store needs fields {missing}", file=texts.directory)
    n = len(texts)
    recorded = (texts.manifest.get("source") or {}).get("group_size")
    if recorded is not None and recorded != group_size:
        raise DataError(
            f"the store holds groups of {recorded}, the pipeline expects {group_size}",
            file=texts.directory,
        )
    index = np.arange(n)
    bad = (texts.arrays["group"] != index // group_size) | (
        texts.arrays["slot"] != index % group_size
    )
    if n % group_size or bad.any():
        first = int(np.argmax(bad)) if bad.any() else n - 1
        raise DataError(
            f"texts are not in consecutive groups of {group_size}",
            file=texts.directory,
            record=str(texts.text_ids[first]),
            field="group",
        )


_LATER_FIELDS = ("negatives_per_image",)


def _fingerprint(config: PipelineConfig, texts: TextStore, images: ImageStore) -> str:
    """What a saved position depends on: the config and both stores' checksums."""
    fields = dataclasses.asdict(config)
    # Fields added later count only when set, so checkpoints saved before
    # they existed still resume.
    for name in _LATER_FIELDS:
        if fields[name] == 0:
            del fields[name]
    described = json.dumps(
        [
            fields,
            texts.manifest["data_sha256"],
            images.manifest["index_sha256"],
        ],
        sort_keys=True,
    )
    return hashlib.sha256(described.encode()).hexdigest()[:16]


_OUTPUT_NAMES = {"features": "img_feat", "boxes": "img_pos", "soft_labels": "img_soft_labels"}
_TF = {"<f2": tf.float16, "<f4": tf.float32}
