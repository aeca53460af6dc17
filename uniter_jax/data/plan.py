"""Planning the epochs of the input pipeline, in numpy alone (no TensorFlow):
which examples form which global batch, in which bucket shape, with which
ITM or retrieval negatives.

Each epoch is planned on the host, identically on every host: a seeded
permutation of the examples (or of groups of texts that stay together), the
negatives, and each example's bucket, the cheapest of a few static
`(text_len, num_regions)` shapes that holds it. Walking the permutation fills
one queue per bucket; a full queue is one global batch, and steps come in the
order in which their batches filled. `data/pipeline.py` reads the planned
rows with tf.data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from uniter_jax.data.buckets import Bucket
from uniter_jax.data.errors import DataError


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


def gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
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
    _check_options(len(text_lens), config)
    units = len(text_lens) // config.group_size
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(units) if config.shuffle else np.arange(units)
    unit_rows = _unit_rows(text_images, config, rng)  # (texts, images, labels), [U, width]
    lengths = text_lens[unit_rows[0]].max(1) + 2
    regions = kept[unit_rows[1]].max(1)
    choice = _bucket_choice(lengths, regions, config.buckets, config.group_size)
    return _batches(order, choice, lengths, regions, unit_rows, config)


def _check_options(n: int, config: PipelineConfig) -> None:
    g, p, q = config.group_size, config.negatives_per_text, config.negatives_per_image
    if n % g:
        raise DataError(f"{n} texts do not split into groups of {g}")
    if (g > 1 or p or q) and config.itm_neg_prob:
        raise ValueError("ITM negatives are not drawn for grouped texts or retrieval negatives")
    if g > 1 and (p or q):
        raise ValueError("group_size and retrieval negatives cannot be combined")
    if p and q:
        raise ValueError("negatives_per_text and negatives_per_image cannot be combined")
    for b in config.buckets:
        if b.batch_size % config.unit_width:
            raise ValueError(
                f"bucket batch {b.batch_size} is not a multiple of the group size "
                f"{config.unit_width}"
            )


def _unit_rows(
    text_images: np.ndarray, config: PipelineConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(texts, images, labels)`, each `[U, width]`: the rows of each unit, a
    group's texts or a text with its image and its negatives."""
    n, g = len(text_images), config.group_size
    p, q = config.negatives_per_text, config.negatives_per_image
    # ITM negatives: per example, uniformly one of the *other* images of these
    # texts (never an image of another split that shares the store).
    negative = rng.random(n) < config.itm_neg_prob
    pool = np.unique(text_images)
    if negative.any() and len(pool) < 2:
        raise DataError("ITM negatives need texts of at least two images")
    draw = rng.integers(0, max(len(pool) - 1, 1), n)
    draw = draw + (draw >= np.searchsorted(pool, text_images))
    images = np.where(negative, pool[np.minimum(draw, len(pool) - 1)], text_images)
    labels = (~negative).astype(np.int64)
    unit_texts = np.arange(n).reshape(n // g, g)
    unit_images = images.reshape(n // g, g)
    unit_labels = labels.reshape(n // g, g)
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
    return unit_texts, unit_images, unit_labels


def _bucket_choice(
    lengths: np.ndarray, regions: np.ndarray, buckets: Sequence[Bucket], group_size: int
) -> np.ndarray:
    """`[U]` the cheapest bucket (text + region positions) that holds each unit."""
    cost = [b.text_len + b.num_regions for b in buckets]
    choice = np.full(len(lengths), -1)
    for k in np.argsort(cost, kind="stable")[::-1]:  # the cheapest fitting bucket wins
        b = buckets[k]
        choice[(lengths <= b.text_len) & (regions <= b.num_regions)] = k
    if (choice < 0).any():
        i = int(np.argmax(choice < 0))
        raise _fits_no_bucket(lengths[i], regions[i], buckets, int(i) * group_size)
    return choice


def _batches(
    order: np.ndarray,
    choice: np.ndarray,
    lengths: np.ndarray,
    regions: np.ndarray,
    unit_rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    config: PipelineConfig,
) -> EpochPlan:
    """The plan of units visited in `order`, each in its bucket `choice`.

    Walking `order`, a bucket's queue fills at every batch_size-th member:
    batches are consecutive runs of each bucket's members, and steps are
    ordered by the position at which each batch became full.
    """
    units, width = len(order), config.unit_width
    position = np.empty(units, np.int64)
    position[order] = np.arange(units)
    members, completes, step_bucket, waste, dropped = [], [], [], {}, 0
    filler: dict[int, int] = {}  # per bucket: copies appended to fill its last batch
    for k, b in enumerate(config.buckets):
        size = b.batch_size // width  # units per batch
        mine = order[choice[order] == k]
        partial = len(mine) % size
        if config.keep_partial and partial:
            mine = np.concatenate([mine, np.full(size - partial, mine[len(mine) - partial])])
            filler[k] = size - partial
        full = len(mine) // size * size
        dropped += (len(mine) - full) * config.group_size
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
    # Where each bucket's batches start in the flattened members, then each step's.
    batch_starts = np.concatenate([[0], np.cumsum([m.size for m in members])[:-1]])
    starts = np.concatenate(
        [s + np.arange(len(m)) * m.shape[1] for s, m in zip(batch_starts, members, strict=True)]
    )[step_order]
    # Fillers are each bucket's last entries.
    valid = np.concatenate(
        [np.arange(m.size) < m.size - filler.get(k, 0) for k, m in enumerate(members)]
    )
    picked = gather_ranges(starts, sizes)
    chosen = np.concatenate([m.ravel() for m in members])[picked]  # units, step after step
    rows = [r[chosen].ravel() for r in unit_rows] + [np.repeat(valid[picked], width)]
    return EpochPlan(
        bucket=bucket,
        offsets=np.concatenate([[0], np.cumsum(sizes * width)]),
        rows=np.stack(rows, axis=1),
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
