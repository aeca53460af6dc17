"""Static batch shapes (buckets): fixed lists, or chosen from the stores.

Every batch has one of a few `(text_len, num_regions)` shapes, each compiled
once, so the number of buckets bounds compilation and their fit to the data
bounds the padding. `choose_buckets` picks them from the text lengths and
region counts a run will read, measured once at its start: greedily, the
shape whose addition saves the most padded positions, until the padding is
within the target or the number of shapes is at its bound. Batch sizes
follow a position budget (as many positions per step in every bucket).

No TensorFlow here: configs import this module.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One static batch shape: padded text length (with [CLS]/[SEP]), regions, global batch."""

    text_len: int
    num_regions: int
    batch_size: int


def default_buckets(
    global_batch: int, max_text_len: int = 62, max_regions: int = 100, *, multiple: int = 8
) -> tuple[Bucket, ...]:
    """Shapes for COCO-like data (captions 8-30 tokens, 10-100 regions).

    Two text lengths times six region counts, plus the largest shape for long
    texts, within the 15% padding target on that mix (measured by
    `benchmarks/input_pipeline.py`, docs/benchmarks.md).
    Batch sizes follow a position budget, `global_batch` examples of the
    largest shape, rounded down to a `multiple` (make it divisible by the number
    of hosts and data-parallel devices): each step costs about the same.
    """
    shapes = {(t, r) for t in (20, 32) for r in (20, 35, 50, 65, 80, max_regions)}
    shapes.add((max_text_len, max_regions))
    return _with_batches(sorted(shapes), global_batch, multiple)


def _with_batches(
    shapes: list[tuple[int, int]], global_batch: int, multiple: int
) -> tuple[Bucket, ...]:
    """Buckets of `shapes` holding `global_batch` examples' positions of the largest."""
    budget = global_batch * max(t + r for t, r in shapes)
    return tuple(
        Bucket(t, r, max(multiple, int(budget / (t + r)) // multiple * multiple))
        for t, r in sorted(shapes)
    )


def _round_up(values: np.ndarray, multiple: int) -> np.ndarray:
    return -(-np.asarray(values, np.int64) // multiple) * multiple


def padding(lengths: np.ndarray, regions: np.ndarray, shapes: list[tuple[int, int]]) -> float:
    """Padded fraction of all positions when each example (text length with
    [CLS]/[SEP], region count) takes the cheapest shape that holds it."""
    cost = _cheapest(np.asarray(lengths), np.asarray(regions), shapes)
    return float(1.0 - (np.sum(lengths) + np.sum(regions)) / cost.sum())


def _cheapest(lengths: np.ndarray, regions: np.ndarray, shapes: list[tuple[int, int]]):
    cost = np.full(len(lengths), np.inf)
    for t, r in shapes:
        fits = (lengths <= t) & (regions <= r)
        cost = np.where(fits, np.minimum(cost, t + r), cost)
    if np.isinf(cost).any():
        raise ValueError("an example fits no shape")
    return cost


def choose_buckets(
    lengths: np.ndarray,
    regions: np.ndarray,
    *,
    global_batch: int,
    max_buckets: int,
    target_padding: float,
    text_multiple: int = 8,
    region_multiple: int = 4,
    batch_multiple: int = 8,
) -> tuple[Bucket, ...]:
    """Buckets for examples of these text lengths (with [CLS]/[SEP]) and region counts.

    The first is the largest shape (every example fits it); each next one is
    the candidate that lowers the padded positions most, candidates being the
    rounded-up lengths and region counts seen. It stops at `max_buckets` or
    once the padding is at most `target_padding`. Batch sizes hold
    `global_batch` examples' positions of the largest shape, rounded down to
    `batch_multiple` (a multiple of the data-parallel ways and hosts).
    """
    lengths, regions = np.asarray(lengths), np.asarray(regions)
    if not len(lengths) or len(lengths) != len(regions):
        raise ValueError("need one text length and one region count per example, at least one")
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be at least 1, got {max_buckets}")
    t_round, r_round = _round_up(lengths, text_multiple), _round_up(regions, region_multiple)
    # Distinct (length, regions) cells with their counts: the search runs on
    # these, whatever the number of examples.
    cells, weight = np.unique(np.stack([t_round, r_round], 1), axis=0, return_counts=True)
    shapes = [(int(t_round.max()), int(r_round.max()))]
    candidates = sorted({(int(t), int(r)) for t in np.unique(t_round) for r in np.unique(r_round)})

    def positions(shapes_: list[tuple[int, int]]) -> float:
        return float(np.sum(_cheapest(cells[:, 0], cells[:, 1], shapes_) * weight))

    used = float(np.sum(lengths) + np.sum(regions))
    while len(shapes) < max_buckets and 1.0 - used / positions(shapes) > target_padding:
        best = min(
            (c for c in candidates if c not in shapes),
            key=lambda c: (positions([*shapes, c]), c),
            default=None,
        )
        if best is None or positions([*shapes, best]) >= positions(shapes):
            break
        shapes.append(best)
    return _with_batches(sorted(shapes), global_batch, batch_multiple)


def batch_multiple(*divisors: int) -> int:
    """The least multiple of 8 and every divisor (shards, hosts, group size)."""
    return math.lcm(8, *divisors)
