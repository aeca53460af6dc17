"""Buckets chosen from the data's shapes, against brute-force padding counts and
the pipeline planner's own padding."""

import numpy as np
import pytest

from uniter_jax.data.buckets import batch_multiple, choose_buckets, padding
from uniter_jax.data.pipeline import PipelineConfig, padding_waste, plan_epoch


def brute_padding(lengths, regions, shapes):
    """Each example in its cheapest holding shape, by a plain loop."""
    used = capacity = 0
    for t, r in zip(lengths, regions, strict=True):
        cost = min(a + b for a, b in shapes if t <= a and r <= b)
        used, capacity = used + t + r, capacity + cost
    return 1 - used / capacity


def test_two_modes_get_two_tight_buckets_and_no_more():
    lengths = np.array([10] * 500 + [40] * 500)
    regions = np.array([10] * 500 + [90] * 500)
    buckets = choose_buckets(lengths, regions, global_batch=64, max_buckets=4, target_padding=0.15)
    assert [(b.text_len, b.num_regions) for b in buckets] == [(16, 12), (40, 92)]
    # One bucket would pad 43%; the pair pads 6%, within the 15% target: it stops.
    assert padding(lengths, regions, [(40, 92)]) == pytest.approx(1 - 75_000 / 132_000)
    assert padding(lengths, regions, [(16, 12), (40, 92)]) == pytest.approx(1 - 75_000 / 80_000)
    # Position budget: 64 examples of the largest shape, multiples of 8.
    assert [b.batch_size for b in buckets] == [64 * 132 // 28 // 8 * 8, 64]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chosen_buckets_hold_every_example_and_pad_as_the_planner_counts(seed):
    rng = np.random.default_rng(seed)
    n, num_images = 20_000, 4_000
    text_lens = rng.integers(6, 50, n)  # without [CLS]/[SEP]
    text_images = rng.integers(0, num_images, n)
    kept = rng.integers(10, 101, num_images).astype(np.int32)
    lengths, regions = text_lens + 2, kept[text_images]
    for max_buckets in (1, 3, 8):
        buckets = choose_buckets(
            lengths, regions, global_batch=64, max_buckets=max_buckets, target_padding=0.15
        )
        shapes = [(b.text_len, b.num_regions) for b in buckets]
        assert len(buckets) <= max_buckets
        got = padding(lengths, regions, shapes)
        assert got == pytest.approx(brute_padding(lengths[:3000], regions[:3000], shapes), abs=0.02)
        assert got <= 0.15 or len(buckets) == max_buckets
        plan = plan_epoch(text_lens, text_images, kept, PipelineConfig(buckets=buckets), 0)
        assert padding_waste(plan, buckets) == pytest.approx(got, abs=0.02)
        assert all(b.batch_size % 8 == 0 for b in buckets)
    # More shapes, less padding.
    few = choose_buckets(lengths, regions, global_batch=64, max_buckets=2, target_padding=0.15)
    many = choose_buckets(lengths, regions, global_batch=64, max_buckets=8, target_padding=0)
    pad = [padding(lengths, regions, [(b.text_len, b.num_regions) for b in x]) for x in (few, many)]
    assert pad[1] < pad[0]


def test_batch_multiples_and_bad_input():
    assert batch_multiple(3) == 24 and batch_multiple(16, 2) == 16 and batch_multiple(1) == 8
    buckets = choose_buckets(
        [12, 30], [20, 50], global_batch=48, max_buckets=4, target_padding=0.15, batch_multiple=24
    )
    assert all(b.batch_size % 24 == 0 for b in buckets)
    with pytest.raises(ValueError, match="at least one"):
        choose_buckets([], [], global_batch=8, max_buckets=4, target_padding=0.15)
    with pytest.raises(ValueError, match="max_buckets"):
        choose_buckets([3], [4], global_batch=8, max_buckets=0, target_padding=0.15)
