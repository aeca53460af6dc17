"""The optimiser against a numpy AdamW with the original's schedule, clipping and decay mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.pretrain import get_config as pretrain_config
from uniter_jax.model.config import ConfigError
from uniter_jax.train.optimizer import (
    OptimSettings,
    clip_by_global_norm,
    decay_mask,
    learning_rate,
    make_optimizer,
    task_lr_mul,
)
from uniter_jax.train.state import pretraining_optim

SETTINGS = OptimSettings(lr=0.01, warmup_steps=3, total_steps=10, clip_norm=1.0)


def numpy_lr(update, s):
    """The original's warmup_linear, `update` counted from 1."""
    if update <= s.warmup_steps:
        return s.lr * update / s.warmup_steps
    return s.lr * max(0.0, (s.total_steps - update) / (s.total_steps - s.warmup_steps))


def params_and_grads(seed):
    rng = np.random.default_rng(seed)
    params = {
        "dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)},
        "norm": {"scale": rng.normal(size=4), "bias": rng.normal(size=4)},
        "embedding": rng.normal(size=(5, 4)),
    }
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape) * 2, params)
    return params, grads


def numpy_adamw(params, grads_seq, s, lr_mul=None):
    """Clip by global norm, Adam with bias correction, decoupled decay on masked
    leaves; leaf i's step and decay times `lr_mul[i]` (default 1)."""
    flat_p, tree = jax.tree.flatten(params)
    decays = jax.tree.leaves(decay_mask(params))
    lr_mul = lr_mul or [1.0] * len(flat_p)
    m = [np.zeros_like(p) for p in flat_p]
    v = [np.zeros_like(p) for p in flat_p]
    p = [x.copy() for x in flat_p]
    for t, grads in enumerate(grads_seq, start=1):
        g = jax.tree.leaves(grads)
        norm = np.sqrt(sum((x**2).sum() for x in g))
        g = [x * min(1.0, s.clip_norm / norm) for x in g]
        lr = numpy_lr(t, s)
        for i in range(len(p)):
            m[i] = s.b1 * m[i] + (1 - s.b1) * g[i]
            v[i] = s.b2 * v[i] + (1 - s.b2) * g[i] ** 2
            step = (m[i] / (1 - s.b1**t)) / (np.sqrt(v[i] / (1 - s.b2**t)) + s.eps)
            decay = s.weight_decay * p[i] if decays[i] else 0.0
            p[i] = p[i] - lr_mul[i] * lr * (step + decay)
    return jax.tree.unflatten(tree, p)


def run(optimizer, params, grads_seq):
    params = jax.tree.map(jnp.float32, params)
    state = optimizer.init(params)
    for grads in grads_seq:
        updates, state = optimizer.update(jax.tree.map(jnp.float32, grads), state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_schedule_is_the_originals_warmup_linear():
    schedule = learning_rate(SETTINGS)
    for count in range(12):  # optax counts from 0
        np.testing.assert_allclose(float(schedule(count)), numpy_lr(count + 1, SETTINGS), 1e-6)


def test_no_decay_on_biases_and_layernorm():
    params, _ = params_and_grads(0)
    mask = decay_mask(params)
    assert mask == {
        "dense": {"kernel": True, "bias": False},
        "norm": {"scale": False, "bias": False},
        "embedding": True,
    }


def test_updates_equal_numpy_adamw():
    params, _ = params_and_grads(0)
    grads_seq = [params_and_grads(k)[1] for k in range(1, 6)]
    got = run(make_optimizer(SETTINGS), params, grads_seq)
    want = numpy_adamw(params, grads_seq, SETTINGS)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("mul", [0.25, 0.0])
def test_image_projection_learns_at_its_multiple_of_the_rate(mul):
    rng = np.random.default_rng(7)
    params = {
        "uniter": {
            "img_embeddings": {
                "img_linear": {"kernel": rng.normal(size=(6, 4)), "bias": rng.normal(size=4)},
                "img_norm": {"scale": rng.normal(size=4), "bias": rng.normal(size=4)},
            },
            "linear": {"kernel": rng.normal(size=(4, 4))},  # not the image projection
        },
        "head": {"img_linear": {"kernel": rng.normal(size=(4, 2))}},  # nor this
    }
    grads_seq = [jax.tree.map(lambda p: rng.normal(size=p.shape), params) for _ in range(4)]
    settings = OptimSettings(**{**SETTINGS.__dict__, "image_lr_mul": mul})
    got = run(make_optimizer(settings), params, grads_seq)
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)]
    lr_mul = [mul if "['img_embeddings']['img_linear']" in k else 1.0 for k in paths]
    assert lr_mul.count(mul) == 2
    want = numpy_adamw(params, grads_seq, SETTINGS, lr_mul)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)
    if mul == 0.0:
        frozen = params["uniter"]["img_embeddings"]["img_linear"]
        kept = got["uniter"]["img_embeddings"]["img_linear"]
        assert all(np.array_equal(np.float32(frozen[k]), kept[k]) for k in frozen)


def test_accumulation_sums_micro_step_gradients():
    params, _ = params_and_grads(0)
    grads_seq = [params_and_grads(k)[1] for k in range(1, 7)]
    accumulated = OptimSettings(**{**SETTINGS.__dict__, "accumulation": 3})
    got = run(make_optimizer(accumulated), params, grads_seq)
    summed = [jax.tree.map(lambda *g: sum(g), *grads_seq[i : i + 3]) for i in (0, 3)]
    want = numpy_adamw(params, summed, SETTINGS)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_scales_by_the_global_norm(max_norm):
    """`min(1, max_norm / norm)` times the gradient, with the norm computed or
    given; below the threshold the gradient comes back unchanged, bit for bit."""
    _, grads = params_and_grads(1)
    grads = jax.tree.map(jnp.float32, grads)
    leaves = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
    norm = np.sqrt(sum((g**2).sum() for g in leaves))
    clip = clip_by_global_norm(max_norm)
    computed, _ = clip.update(grads, clip.init(grads))
    for got, g in zip(jax.tree.leaves(computed), leaves, strict=True):
        np.testing.assert_allclose(got, g * min(1.0, max_norm / norm), rtol=1e-6)
    if max_norm > norm:
        for got, g in zip(jax.tree.leaves(computed), jax.tree.leaves(grads), strict=True):
            np.testing.assert_array_equal(got, g)
    given, _ = clip.update(grads, clip.init(grads), grad_norm=jnp.float32(2 * norm))
    for got, g in zip(jax.tree.leaves(given), leaves, strict=True):
        np.testing.assert_allclose(got, g * min(1.0, max_norm / (2 * norm)), rtol=1e-6)


def test_clip_of_a_zero_or_non_finite_gradient():
    """A zero gradient stays zero (its factor is 1, not 0/0); a NaN propagates,
    so the train step's guard sees it."""
    clip = clip_by_global_norm(1.0)
    zero = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    out, _ = clip.update(zero, clip.init(zero))
    assert all(np.array_equal(x, np.zeros_like(x)) for x in jax.tree.leaves(out))
    bad = {"a": jnp.array([1.0, np.nan, 2.0]), "b": jnp.ones((2, 2))}
    out, _ = clip.update(bad, clip.init(bad))
    assert all(np.isnan(x).all() for x in jax.tree.leaves(out))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"lr": 0}, "lr must be positive"),
        ({"warmup_steps": 20}, "--config.optim.warmup_steps or --config.optim.total_steps"),
        ({"b2": 1.0}, "betas"),
        ({"accumulation": 0}, "accumulation"),
        ({"image_lr_mul": -1.0}, "image_lr_mul"),
        ({"task_lr_mul": (("itm", 1.0), ("mrc", -3.0))}, "task_lr_mul .*mrc=-3.0"),
    ],
)
def test_bad_settings_are_named(changes, named):
    with pytest.raises(ConfigError, match=f"config optim: .*{named}"):
        OptimSettings(**{**SETTINGS.__dict__, **changes})


def test_the_pretraining_config_sets_each_tasks_rate():
    config = pretrain_config("tiny")
    config.optim.task_lr_mul.mrc = 3.0
    optim = pretraining_optim(config.optim, {"coco/itm": "itm", "coco/mrc": "mrc"})
    assert dict(optim.task_lr_mul) == {
        "itm": 1.0,
        "mlm": 1.0,
        "mrfr": 1.0,
        "mrc": 3.0,
        "mrc_kl": 1.0,
    }
    assert optim.moment_tasks == ("itm", "mrc")
    assert (task_lr_mul(optim, "mrc"), task_lr_mul(optim, "itm")) == (3.0, 1.0)
