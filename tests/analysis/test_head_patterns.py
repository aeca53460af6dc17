"""The six-pattern head classifier on attention maps built to be each pattern."""

import numpy as np
import pytest

from uniter_jax.analysis import head_patterns as hp

NUM_TEXT, NUM_REGIONS = 12, 10  # [CLS] w1..w10 [SEP], then 10 regions
LENGTH = NUM_TEXT + NUM_REGIONS
SPECIAL = (0, NUM_TEXT - 1)
TEXT = np.arange(NUM_TEXT)
REGIONS = NUM_TEXT + np.arange(NUM_REGIONS)


def rows_from(weights):
    """Rows of unnormalised weights -> a stochastic attention map."""
    weights = np.asarray(weights, np.float64)
    return weights / weights.sum(axis=1, keepdims=True)


def own(q):
    return TEXT if q < NUM_TEXT else REGIONS


def other(q):
    return REGIONS if q < NUM_TEXT else TEXT


def neighbours(q):
    """q and q +- 1 inside q's own modality."""
    return [k for k in (q - 1, q, q + 1) if k in own(q)]


def build(kind, rng):
    """An attention map of `kind`, with 5% of uniform noise on every row."""
    w = np.zeros((LENGTH, LENGTH))
    for q in range(LENGTH):
        if kind == "vertical":
            w[q, list(SPECIAL)] = rng.uniform(0.5, 1.5, 2)
        elif kind == "diagonal":
            w[q, neighbours(q)] = rng.uniform(0.5, 1.5, len(neighbours(q)))
        elif kind == "vertical+diagonal":
            w[q, list(SPECIAL)] = 0.5 / 2
            w[q, neighbours(q)] += 0.5 / len(neighbours(q))
        elif kind == "block":
            w[q, own(q)] = rng.uniform(0.5, 1.5, len(own(q)))
        elif kind == "reversed block":
            w[q, other(q)] = rng.uniform(0.5, 1.5, len(other(q)))
        elif kind == "heterogeneous":
            # Sparse, input-dependent: a few random keys anywhere.
            w[q, rng.choice(LENGTH, 4, replace=False)] = rng.uniform(0.5, 1.5, 4)
    w = rows_from(w)
    return 0.95 * w + 0.05 / LENGTH


@pytest.mark.parametrize("kind", hp.PATTERNS)
def test_each_constructed_kind_is_recognised(kind):
    rng = np.random.default_rng(hp.PATTERNS.index(kind))
    maps = np.stack([build(kind, rng) for _ in range(8)])  # 8 heads of one kind
    masses = hp.part_masses(maps, NUM_TEXT, SPECIAL)
    assert masses.shape == (8, 4)
    np.testing.assert_allclose(masses.sum(-1), 1.0, rtol=1e-12)
    assert hp.classify(masses).tolist() == [kind] * 8


def test_a_layer_of_mixed_heads_is_sorted_head_by_head():
    rng = np.random.default_rng(7)
    kinds = list(hp.PATTERNS) * 2
    # Two examples, each [1 layer, 12 heads, L, L]; masses are averaged over them.
    examples = [np.stack([build(k, rng) for k in kinds])[None] for _ in range(2)]
    masses = hp.head_masses(examples, [NUM_TEXT] * 2, [SPECIAL] * 2)
    patterns = hp.classify(masses)
    assert patterns.tolist() == [kinds]
    assert hp.counts(patterns).tolist() == [[2] * 6]


def test_part_masses_equal_a_loop_over_queries_and_keys():
    rng = np.random.default_rng(0)
    maps = rows_from(rng.gamma(0.3, size=(3, LENGTH, LENGTH)).reshape(-1, LENGTH)).reshape(
        3, LENGTH, LENGTH
    )
    got = hp.part_masses(maps, NUM_TEXT, (0, -1))  # -1: [SEP] counted from the text's end
    for h in range(3):
        want = np.zeros(4)
        for q in range(LENGTH):
            for k in range(LENGTH):
                same = (q < NUM_TEXT) == (k < NUM_TEXT)
                if k in SPECIAL:
                    part = 0
                elif same and abs(q - k) <= 1:
                    part = 1
                elif same:
                    part = 2
                else:
                    part = 3
                want[part] += maps[h, q, k]
        np.testing.assert_allclose(got[h], want / LENGTH, rtol=1e-12)


def test_the_parts_tile_the_map():
    parts = hp.key_parts(5, 3, (0, 4))
    np.testing.assert_array_equal(parts.sum(axis=0), np.ones((8, 8)))
    # The last word and the first region are adjacent positions, not neighbours.
    assert not parts[1, 4, 5] and not parts[1, 3, 5]


def test_thresholds_decide_the_borderline():
    # Mass 0.5 on special tokens, 0.15 on the diagonal: vertical by default,
    # vertical+diagonal once `minor` drops to 0.1.
    masses = np.array([0.5, 0.15, 0.25, 0.10])
    assert hp.classify(masses) == "vertical"
    assert hp.classify(masses, hp.Thresholds(minor=0.1)) == "vertical+diagonal"
    # Unfocused, 70% of the rest inside the modality: heterogeneous at 0.8, block at 0.6.
    masses = np.array([0.1, 0.1, 0.56, 0.24])
    assert hp.classify(masses) == "heterogeneous"
    assert hp.classify(masses, hp.Thresholds(modal=0.6)) == "block"


def test_no_examples_is_an_error():
    with pytest.raises(ValueError, match="no examples"):
        hp.head_masses([], [], [])
