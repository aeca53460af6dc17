"""The head learning-rate multiplier of fine-tuning (`head_lr_mul`, `head_groups`)."""

import dataclasses

import jax
import numpy as np
import pytest

from uniter_jax.train.optimizer import OptimSettings, make_optimizer

LR, DECAY, EPS = 1e-3, 0.01, 1e-6
BASE = OptimSettings(
    lr=LR, warmup_steps=1, total_steps=10, weight_decay=DECAY, eps=EPS, head_groups=("vqa",)
)
DECAYED = {("uniter", "dense", "kernel"), ("vqa", "out", "kernel")}


def tree(rng, scale=1.0):
    """A small parameter-shaped tree: decayed kernels, undecayed bias and scale."""
    return {
        "uniter": {
            "dense": {"kernel": rng.normal(0, scale, (3, 4)), "bias": rng.normal(0, scale, 4)},
            "norm": {"scale": rng.normal(0, scale, 4)},
        },
        "vqa": {"out": {"kernel": rng.normal(0, scale, (4, 2)), "bias": rng.normal(0, scale, 2)}},
    }


def as_f32(t):
    return jax.tree.map(lambda x: np.asarray(x, np.float32), t)


rng = np.random.default_rng(0)
PARAMS = as_f32(tree(rng))
GRADS = [as_f32(tree(rng, 0.05)) for _ in range(2)]  # global norm well under clip_norm


def run(settings, grads):
    """Updates of each `optimizer.update` call over the given gradient list."""
    optimizer = make_optimizer(settings)
    state = optimizer.init(PARAMS)
    out = []
    for g in grads:
        updates, state = optimizer.update(g, state, PARAMS)
        out.append(jax.tree.map(np.asarray, updates))
    return out


def leaves(t):
    return {
        tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(t)
    }


def first_adamw_update(grad, param, decayed):
    """AdamW's first step with bias correction: `-lr (g / (|g| + eps) + wd p)`."""
    g = np.asarray(grad, np.float64)
    step = g / (np.abs(g) + EPS)
    if decayed:
        step = step + DECAY * np.asarray(param, np.float64)
    return -LR * step


def check_head_scaled(fast, slow, grad, mul):
    fast, slow, grad, params = leaves(fast), leaves(slow), leaves(grad), leaves(PARAMS)
    assert set(fast) == set(slow) == set(params)
    for key in params:
        want = first_adamw_update(grad[key], params[key], key in DECAYED)
        np.testing.assert_allclose(slow[key], want, rtol=1e-5, err_msg=str(key))
        if key[0] == "vqa":
            np.testing.assert_array_equal(fast[key], np.float32(mul) * slow[key], err_msg=str(key))
            np.testing.assert_allclose(fast[key], mul * want, rtol=1e-5, err_msg=str(key))
        else:
            np.testing.assert_array_equal(fast[key], slow[key], err_msg=str(key))


def test_head_updates_are_ten_times_larger():
    (fast,) = run(dataclasses.replace(BASE, head_lr_mul=10.0), GRADS[:1])
    (slow,) = run(BASE, GRADS[:1])
    check_head_scaled(fast, slow, GRADS[0], 10.0)


def test_head_updates_are_ten_times_larger_with_accumulation():
    fast = run(dataclasses.replace(BASE, head_lr_mul=10.0, accumulation=2), GRADS)
    slow = run(dataclasses.replace(BASE, accumulation=2), GRADS)
    for updates in (fast[0], slow[0]):  # the first micro-step only accumulates
        assert all(not np.any(u) for u in jax.tree.leaves(updates))
    summed = jax.tree.map(lambda a, b: a + b, *GRADS)  # summed, not averaged
    check_head_scaled(fast[1], slow[1], summed, 10.0)


def test_multiplier_without_head_groups_changes_nothing():
    (plain,) = run(dataclasses.replace(BASE, head_groups=()), GRADS[:1])
    (mul,) = run(dataclasses.replace(BASE, head_groups=(), head_lr_mul=10.0), GRADS[:1])
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(mul), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mul", [0.0, -1.0])
def test_non_positive_multiplier_is_rejected(mul):
    with pytest.raises(ValueError, match="head_lr_mul"):
        OptimSettings(head_lr_mul=mul, head_groups=("vqa",))
