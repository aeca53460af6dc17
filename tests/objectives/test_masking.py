"""MLM / MRM masking: rules exactly, frequencies statistically."""

import jax
import jax.numpy as jnp
import numpy as np
from batches import random_text

from uniter_jax.objectives.masking import gather_chosen, mlm_mask, mrm_mask

CLS, SEP, MASK = 101, 102, 103
RANGE = (999, 28996)
PROB = 0.15  # the selection probability the tests count on


@jax.jit
def run_mlm(key, ids, mask):
    return mlm_mask(
        key, ids, mask, mask_id=MASK, random_range=RANGE, special_ids=(CLS, SEP, 0), prob=PROB
    )


def test_mlm_rules_and_frequencies():
    rng = np.random.default_rng(0)
    ids, mask = random_text(rng, rng.integers(3, 25, 4096), 24, ids=RANGE, cls_id=CLS, sep_id=SEP)
    masked, chosen = map(np.asarray, run_mlm(jax.random.key(0), ids, mask))
    eligible = mask.astype(bool) & (ids != CLS) & (ids != SEP)
    assert not (chosen & ~eligible).any()  # specials and padding never chosen
    has = eligible.any(1)
    assert chosen[has].any(1).all()  # at least one per example
    np.testing.assert_array_equal(masked[~chosen], ids[~chosen])  # the rest untouched
    # Expected count: 0.15 per eligible token, plus one forced token where none was drawn.
    n = eligible.sum(1)
    expected = (0.15 * n + 0.85**n).sum()
    sd = np.sqrt((n * 0.15 * 0.85).sum())
    assert abs(chosen.sum() - expected) < 4 * sd
    # 80 / 10 / 10 among chosen tokens.
    became_mask = (masked == MASK)[chosen].mean()
    kept = (masked == ids)[chosen].mean()
    random = 1 - became_mask - kept
    forced_share = (0.85**n).sum() / expected  # forced ones are always [MASK]
    assert abs(became_mask - (0.8 * (1 - forced_share) + forced_share)) < 0.01
    assert abs(kept - 0.1 * (1 - forced_share)) < 0.01
    assert abs(random - 0.1 * (1 - forced_share)) < 0.01
    replaced = masked[chosen & (masked != MASK) & (masked != ids)]
    assert replaced.min() >= RANGE[0] and replaced.max() < RANGE[1]


def test_mlm_forced_token_is_the_first_eligible_and_masked():
    rows = 20000
    ids = np.tile(np.array([[CLS, 2000, 2001, SEP, 0]], np.int32), (rows, 1))
    mask = np.tile(np.array([[1, 1, 1, 1, 0]], np.int32), (rows, 1))
    masked, chosen = map(np.asarray, run_mlm(jax.random.key(5), ids, mask))
    assert chosen.any(1).all() and not chosen[:, [0, 3, 4]].any()
    only_first = chosen[:, 1] & ~chosen[:, 2]
    only_second = chosen[:, 2] & ~chosen[:, 1]
    # No draw (0.85^2): the first eligible token, always [MASK]; drawn alone
    # (0.15 * 0.85): [MASK] 80% of the time.
    share = (only_first & (masked[:, 1] == MASK)).mean()
    assert abs(share - (0.85**2 + 0.15 * 0.85 * 0.8)) < 0.015
    assert abs(only_second.mean() - 0.15 * 0.85) < 0.015


def test_mrm_frequency_and_uniform_forced_region():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 37, 4096)
    img_mask = (np.arange(36)[None] < counts[:, None]).astype(np.int32)
    chosen = np.asarray(
        jax.jit(lambda k, m: mrm_mask(k, m, prob=PROB))(jax.random.key(2), img_mask)
    )
    assert not (chosen & ~img_mask.astype(bool)).any()
    assert chosen.any(1).all()
    expected = (0.15 * counts + 0.85**counts).sum()
    assert abs(chosen.sum() - expected) < 4 * np.sqrt((counts * 0.1275).sum())
    # Three regions: the forced pick is uniform over them.
    three = np.tile(np.array([[1, 1, 1, 0]], np.int32), (30000, 1))
    picks = np.asarray(mrm_mask(jax.random.key(3), three, prob=PROB))
    single = picks.sum(1) == 1
    share = picks[single].mean(0)[:3]
    assert np.abs(share - 1 / 3).max() < 0.02


def test_gather_chosen_matches_numpy():
    rng = np.random.default_rng(4)
    chosen = rng.random((6, 9)) < 0.2
    index, valid = gather_chosen(jnp.asarray(chosen), 20)
    want = np.flatnonzero(chosen)
    np.testing.assert_array_equal(np.asarray(index)[: len(want)], want)
    assert np.asarray(valid).sum() == len(want)
    index, valid = gather_chosen(jnp.asarray(chosen), 3)  # overflow: first three kept
    np.testing.assert_array_equal(np.asarray(index), want[:3])
    assert np.asarray(valid).all()
