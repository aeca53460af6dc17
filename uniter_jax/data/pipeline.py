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
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from uniter_jax.data.buckets import Bucket, default_buckets  # noqa: F401  (re-exported)
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import IMAGES_PER_SHARD, ImageStore
from uniter_jax.data.text_store import TextStore


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
    # Evaluation: fill each bucket's last, partial batch with copies of its
    # first example, emitted with `valid` 0, instead of dropping it.
    keep_partial: bool = False
    # Grouped stores (NLVR2's two images, VCR's four candidates): the texts come
    # in consecutive groups of this size that stay together, in one batch and
    # on one host. Batch sizes must be multiples of it.
    group_size: int = 1
    # Retrieval fine-tuning: each text comes with its own image and this many
    # other images (uniform over the texts' images, drawn with replacement),
    # as consecutive rows (label 1, then 0s) that stay together.
    negatives_per_text: int = 0
    # Retrieval, the other direction: each text comes with its own image and
    # this many texts of other images (uniform over those texts), all paired
    # with that image (label 1, then 0s), as consecutive rows.
    negatives_per_image: int = 0

    @property
    def unit_width(self) -> int:
        """Rows that stay together: a group, or a text with its negatives."""
        return self.group_size * (1 + self.negatives_per_text + self.negatives_per_image)


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """The global batches of one epoch: step `s` is `rows[offsets[s]:offsets[s + 1]]`."""

    bucket: np.ndarray  # [S] bucket index of each step
    offsets: np.ndarray  # [S + 1] where each step's rows start
    rows: np.ndarray  # [M, 4] (text index, image position, itm label, valid), step after step
    dropped: int  # examples left in partial batches
    waste: dict[int, float]  # per bucket: padded fraction of its text + region positions

    @property
    def num_steps(self) -> int:
        return len(self.bucket)


def _gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices `starts[0] .. starts[0]+lengths[0]-1, starts[1] ..` without a Python loop."""
    total = int(lengths.sum())
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return shift + np.arange(total)


def plan_epoch(
    text_lens: np.ndarray,
    text_images: np.ndarray,
    kept: np.ndarray,
    config: PipelineConfig,
    epoch: int,
) -> EpochPlan:
    """Plans one epoch (pure, vectorized numpy; the same on every host).

    Args:
      text_lens: `[N]` token counts of the texts, without [CLS]/[SEP].
      text_images: `[N]` image position (in the image store) of each text.
      kept: `[num_images]` regions each image keeps after selection.
      config: buckets, negatives, seed.
      epoch: which epoch; it seeds the permutation and negatives.

    With `config.group_size` g > 1 the plan is made over groups (texts
    `g*u .. g*u + g - 1` form group `u`), each bucketed by its longest text
    and largest image, then expanded back to texts.
    """
    n, g, p = len(text_lens), config.group_size, config.negatives_per_text
    q = config.negatives_per_image
    if n % g:
        raise DataError(f"{n} texts do not split into groups of {g}")
    if (g > 1 or p or q) and config.itm_neg_prob:
        raise ValueError("ITM negatives are not drawn for grouped texts or retrieval negatives")
    if g > 1 and (p or q):
        raise ValueError("group_size and retrieval negatives cannot be combined")
    if p and q:
        raise ValueError("negatives_per_text and negatives_per_image cannot be combined")
    units = n // g
    width = config.unit_width  # rows per unit
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(units) if config.shuffle else np.arange(units)
    # Negatives: per example, uniformly one of the *other* images of these
    # texts (never an image of another split that shares the store).
    negative = rng.random(n) < config.itm_neg_prob
    pool = np.unique(text_images)
    if negative.any() and len(pool) < 2:
        raise DataError("ITM negatives need texts of at least two images")
    draw = rng.integers(0, max(len(pool) - 1, 1), n)
    draw = draw + (draw >= np.searchsorted(pool, text_images))
    images = np.where(negative, pool[np.minimum(draw, len(pool) - 1)], text_images)
    labels = (~negative).astype(np.int64)
    # Each unit's rows: a group's texts, or a text with its image and negatives.
    unit_texts = np.arange(n).reshape(units, g)
    unit_images = images.reshape(units, g)
    unit_labels = labels.reshape(units, g)
    if p:
        if len(pool) < 2:
            raise DataError("retrieval negatives need texts of at least two images")
        draw = rng.integers(0, len(pool) - 1, (n, p))
        draw = draw + (draw >= np.searchsorted(pool, text_images)[:, None])
        unit_texts = np.repeat(unit_texts, 1 + p, axis=1)
        unit_images = np.concatenate([text_images[:, None], pool[draw]], axis=1)
        unit_labels = np.concatenate([np.ones((n, 1), np.int64), np.zeros((n, p), np.int64)], 1)
    if q:
        unit_texts = np.concatenate([unit_texts, _texts_of_other_images(text_images, q, rng)], 1)
        unit_images = np.repeat(text_images[:, None], 1 + q, axis=1)
        unit_labels = np.concatenate([np.ones((n, 1), np.int64), np.zeros((n, q), np.int64)], 1)

    lengths = text_lens[unit_texts].max(1) + 2
    regions = kept[unit_images].max(1)
    cost = [b.text_len + b.num_regions for b in config.buckets]
    choice = np.full(units, -1)
    for k in np.argsort(cost, kind="stable")[::-1]:  # the cheapest fitting bucket wins
        b = config.buckets[k]
        choice[(lengths <= b.text_len) & (regions <= b.num_regions)] = k
    if (choice < 0).any():
        i = int(np.argmax(choice < 0))
        raise _fits_no_bucket(lengths[i], regions[i], config.buckets, int(i) * g)

    # Walking `order`, a bucket's queue fills at every batch_size-th member:
    # batches are consecutive runs of each bucket's members, and steps are
    # ordered by the position at which each batch became full.
    position = np.empty(units, np.int64)
    position[order] = np.arange(units)
    members, completes, step_bucket, waste, dropped = [], [], [], {}, 0
    filler: dict[int, int] = {}  # per bucket: copies appended to fill its last batch
    for k, b in enumerate(config.buckets):
        if b.batch_size % width:
            raise ValueError(
                f"bucket batch {b.batch_size} is not a multiple of the group size {width}"
            )
        size = b.batch_size // width  # units per batch
        mine = order[choice[order] == k]
        partial = len(mine) % size
        if config.keep_partial and partial:
            mine = np.concatenate([mine, np.full(size - partial, mine[len(mine) - partial])])
            filler[k] = size - partial
        full = len(mine) // size * size
        dropped += (len(mine) - full) * g
        batches = mine[:full].reshape(-1, size)
        members.append(batches)
        completes.append(position[batches[:, -1]] if full else np.zeros(0, np.int64))
        step_bucket.append(np.full(len(batches), k))
        if full:
            used = lengths[mine[:full]].sum() + regions[mine[:full]].sum()  # per group
            waste[k] = float(1.0 - used / (full * (b.text_len + b.num_regions)))
    step_order = np.argsort(np.concatenate(completes), kind="stable")
    bucket = np.concatenate(step_bucket)[step_order].astype(np.int32)
    sizes = np.array([config.buckets[k].batch_size // width for k in bucket], np.int64)
    flat = np.concatenate([m.ravel() for m in members])
    batch_starts = np.concatenate(
        [[0], np.cumsum([m.size for m in members])[:-1]]
    )  # where each bucket's batches start in `flat`
    starts = np.concatenate(
        [
            start + np.arange(len(m)) * m.shape[1]
            for start, m in zip(batch_starts, members, strict=True)
        ]
    )[step_order]
    valid = np.concatenate(
        [
            np.arange(m.size) < m.size - filler.get(k, 0)
            for k, m in enumerate(members)  # fillers are each bucket's last entries
        ]
    )
    picked = _gather_ranges(starts, sizes)
    chosen = flat[picked]  # units, step after step -> their rows
    return EpochPlan(
        bucket=bucket,
        offsets=np.concatenate([[0], np.cumsum(sizes * width)]),
        rows=np.stack(
            [
                unit_texts[chosen].ravel(),
                unit_images[chosen].ravel(),
                unit_labels[chosen].ravel(),
                np.repeat(valid[picked], width),
            ],
            axis=1,
        ),
        dropped=int(dropped),
        waste=waste,
    )


def _texts_of_other_images(
    text_images: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """`[N, count]` text indices, each drawn uniformly (with replacement) from
    the texts whose image is not that text's image."""
    order = np.argsort(text_images, kind="stable")  # texts grouped by image
    ordered = text_images[order]
    first = np.searchsorted(ordered, text_images, side="left")  # own image's block
    own = np.searchsorted(ordered, text_images, side="right") - first
    others = len(text_images) - own
    if (others < 1).any():
        raise DataError("retrieval text negatives need texts of at least two images")
    draw = (rng.random((len(text_images), count)) * others[:, None]).astype(np.int64)
    draw = np.minimum(draw, others[:, None] - 1)
    skip = draw >= first[:, None]  # past the own block: step over it
    return order[draw + skip * own[:, None]]


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
            _gather_ranges(plan.offsets[steps] + self.process_index * per_host, per_host)
        ]
        buckets = self.config.buckets
        shape_table = np.array([[b.text_len, b.num_regions] for b in buckets], np.int32)
        step_of_row = np.repeat(steps, per_host)
        offsets = self.texts.arrays["input_ids__offsets"]
        starts = offsets[rows[:, 0]]
        lengths = offsets[rows[:, 0] + 1] - starts
        tokens = tf.RaggedTensor.from_row_lengths(
            self.texts.arrays["input_ids"][_gather_ranges(starts, lengths)], lengths
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
        """`regions/SSSSS/IIIIIIII.rgn` of image position `index` (as `blob_path`)."""
        shard = tf.strings.as_string(index // IMAGES_PER_SHARD, width=5, fill="0")
        name = tf.strings.as_string(index, width=8, fill="0")
        return tf.strings.join([self.images.directory, "/regions/", shard, "/", name, ".rgn"])

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


def _fits_no_bucket(length: int, regions: int, buckets: Sequence[Bucket], record: int) -> DataError:
    return DataError(
        f"text of {length} tokens (with [CLS]/[SEP]) and {regions} regions fits no "
        f"bucket {[(b.text_len, b.num_regions) for b in buckets]}: set "
        "--config.data.buckets='()' to choose them from the stores (a resumed run keeps "
        "the ones in WORKDIR/buckets.json), or list larger ones (or lower data.max_bb)",
        record=record,
    )


def check_fit(lengths: np.ndarray, regions: np.ndarray, buckets: Sequence[Bucket]) -> None:
    """Raises DataError for the first example (text length with [CLS]/[SEP],
    region count) that no bucket holds."""
    fits = np.zeros(len(lengths), bool)
    for b in buckets:
        fits |= (lengths <= b.text_len) & (regions <= b.num_regions)
    if not fits.all():
        i = int(np.argmax(~fits))
        raise _fits_no_bucket(int(lengths[i]), int(regions[i]), buckets, i)


def padding_waste(plan: EpochPlan, buckets: Sequence[Bucket]) -> float:
    """Padded fraction of all positions (text + regions) in the plan's batches."""
    total = used = 0.0
    for k, waste in plan.waste.items():
        count = int(np.diff(plan.offsets)[plan.bucket == k].sum())
        capacity = count * (buckets[k].text_len + buckets[k].num_regions)
        total += capacity
        used += capacity * (1.0 - waste)
    return 1.0 - used / total if total else 0.0
