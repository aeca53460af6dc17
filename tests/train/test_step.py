"""The jitted train step: one compilation per task, the non-finite guard, bf16 compute."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from batches import random_batch
from flax import nnx

from uniter_jax.model import UniterConfig, UniterForPretraining, get_params
from uniter_jax.model.config import ConfigError
from uniter_jax.objectives.tasks import TaskSettings
from uniter_jax.train.optimizer import OptimSettings, decay_mask, make_optimizer
from uniter_jax.train.step import TRACES, StepSettings, bind, init_state, train_step

MODEL = UniterConfig.preset("tiny", vocab_size=150, img_dim=12, num_region_labels=9)
SETTINGS = StepSettings(
    model=MODEL,
    tasks=TaskSettings(mask_id=103, special_ids=(101, 102, 0), random_range=(104, 150)),
    optim=OptimSettings(lr=1e-3, warmup_steps=1, total_steps=10),
)


def make_batch(seed=0):
    """4 matched pairs of 8 tokens and 5 regions, all of them valid."""
    batch = random_batch(
        seed,
        [8] * 4,
        [5] * 4,
        text=8,
        regions=5,
        img_dim=MODEL.img_dim,
        ids=(104, 150),
        cls_id=101,
        sep_id=102,
    )
    batch["itm_label"] = np.ones(4, np.int32)
    return batch


def fresh_state(settings=SETTINGS):
    params = get_params(UniterForPretraining(settings.model, nnx.Rngs(0)))
    return init_state(params, settings)


def copy(tree):
    return jax.tree.map(np.array, tree)


def test_steps_learn_and_compile_once_per_task():
    state, key = fresh_state(), jax.random.PRNGKey(0)
    before = TRACES["train", "mlm"]
    losses = []
    for step in range(6):
        state, out = train_step(state, make_batch(step % 2), key, task="mlm", settings=SETTINGS)
        assert bool(out["finite"])
        losses.append(float(out["metrics"]["objective"][0]))
    assert TRACES["train", "mlm"] - before <= 1  # 0 when an earlier test compiled it
    assert int(state["step"]) == 6
    assert np.mean(losses[-2:]) < np.mean(losses[:2])


@pytest.mark.parametrize("accumulation", [1, 2])
def test_step_applies_the_optimiser_to_its_gradient(accumulation):
    """The step hands its gradient norm to the clip (without accumulation); the
    result must be the optimiser's own update, whose clip computes the norm of
    the (summed) gradient itself. The clip is active: the norm is far above 0.05.

    Adam hardly sees a gradient's scale, only through `eps`: the clipped
    gradient's elements (about 1e-4 here) must stay well above `eps`, pinned to
    1e-6, for a wrong clip factor to change the result."""
    settings = StepSettings(
        model=MODEL,
        tasks=SETTINGS.tasks,
        optim=OptimSettings(
            lr=1e-2,
            warmup_steps=1,
            total_steps=10,
            clip_norm=0.05,
            eps=1e-6,
            accumulation=accumulation,
        ),
    )
    state, key = fresh_state(settings), jax.random.PRNGKey(3)
    optimizer = make_optimizer(settings.optim)
    params, opt_state = copy(state["params"]), copy(state["opt_state"])
    initial = params

    def loss(p, batch, mask_key, dropout_key):
        model = bind(MODEL, p, settings.tasks)
        return settings.tasks.loss("mlm", model, batch, mask_key, dropout_key)[0]

    gradient = jax.jit(jax.grad(loss))  # compiled once, for every step
    for step in range(2 * accumulation):
        batch = jax.tree.map(jnp.asarray, make_batch(step))
        mask_key, dropout_key = jax.random.split(jax.random.fold_in(key, step))
        grads = gradient(params, batch, mask_key, dropout_key)
        assert float(optax.tree.norm(grads)) > 10 * settings.optim.clip_norm
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        state, out = train_step(state, batch, key, task="mlm", settings=settings)
        assert bool(out["finite"])
    moved = 0.0
    for got, want, first in zip(
        jax.tree.leaves(state["params"]),
        jax.tree.leaves(params),
        jax.tree.leaves(initial),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        moved = max(moved, float(np.abs(np.asarray(want) - first).max()))
    assert moved > 1e-3  # the comparison is not between two unchanged states


@pytest.mark.parametrize("accumulation", [1, 2])
def test_non_finite_step_keeps_the_state(accumulation):
    """Parameters and the whole optimiser state (with accumulation: the summed
    gradients and the micro-step counters too) stay as they were."""
    settings = StepSettings(
        model=MODEL,
        tasks=SETTINGS.tasks,
        optim=OptimSettings(lr=1e-3, warmup_steps=1, total_steps=10, accumulation=accumulation),
    )
    state, key = fresh_state(settings), jax.random.PRNGKey(0)
    state, _ = train_step(state, make_batch(), key, task="mlm", settings=settings)
    before = copy(state)
    poisoned = make_batch(1)
    poisoned["img_feat"][2, 1, 0] = np.nan  # a valid region
    state, out = train_step(state, poisoned, key, task="mlm", settings=settings)
    assert not bool(out["finite"])
    assert not np.isfinite(float(out["metrics"]["objective"][0]))
    for a, b in zip(
        jax.tree.leaves((before["params"], before["opt_state"])),
        jax.tree.leaves((state["params"], state["opt_state"])),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_low_precision_compute_keeps_fp32_state_and_losses(dtype):
    settings = StepSettings(
        model=MODEL.replace(dtype=dtype), tasks=SETTINGS.tasks, optim=SETTINGS.optim
    )
    state = fresh_state(settings)
    state, out = train_step(
        state, make_batch(), jax.random.PRNGKey(0), task="mlm", settings=settings
    )
    assert bool(out["finite"])
    assert out["metrics"]["objective"][0].dtype == jnp.float32
    dtypes = {x.dtype for x in jax.tree.leaves((state["params"], state["opt_state"]))}
    assert dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}


@pytest.mark.parametrize("per_task", [True, False])
def test_per_task_moments_are_adamw_per_task_on_the_runs_schedule(per_task):
    """With `per_task_moments` each task's AdamW moments and bias correction
    see only that task's gradients, and the learning rate follows the run's
    update count: against a numpy AdamW holding one (m, v, count) per task
    (or one for all). `task_lr_mul` scales its task's whole update: ITM's
    steps at 3 times the rate, MLM's at 1."""
    itm_mul = 3.0
    optim = OptimSettings(
        lr=1e-2,
        warmup_steps=2,
        total_steps=10,
        clip_norm=0.0,
        per_task_moments=per_task,
        moment_tasks=("itm", "mlm") if per_task else (),
        task_lr_mul=(("itm", itm_mul),),
    )
    settings = StepSettings(model=MODEL, tasks=SETTINGS.tasks, optim=optim)
    state, key = fresh_state(settings), jax.random.PRNGKey(5)
    if per_task:
        assert set(state["opt_state"]) == {"itm", "mlm"}
    flat, tree = jax.tree.flatten(copy(state["params"]))
    flat = [x.astype(np.float64) for x in flat]
    decays = jax.tree.leaves(decay_mask(state["params"]))
    moments = {
        t: ([np.zeros_like(x) for x in flat], [np.zeros_like(x) for x in flat], 0)
        for t in ("itm", "mlm")
    }

    def loss(p, batch, keys, task):
        return settings.tasks.loss(task, bind(MODEL, p, settings.tasks), batch, *keys)[0]

    grad = jax.jit(jax.grad(loss), static_argnums=3)  # eager, it took a minute more

    for step, task in enumerate(("mlm", "itm", "mlm", "mlm", "itm")):
        batch = jax.tree.map(jnp.asarray, make_batch(step))
        keys = jax.random.split(jax.random.fold_in(key, step))  # the step's mask, dropout
        params = jax.tree.unflatten(tree, [jnp.float32(x) for x in flat])
        grads = [np.float64(g) for g in jax.tree.leaves(grad(params, batch, keys, task))]
        owner = task if per_task else "itm"  # one state for all: kept under "itm"
        m, v, count = moments[owner]
        count += 1
        t = step + 1  # the run's update number: the schedule's, not the task's
        lr = optim.lr * (t / 2 if t <= 2 else (10 - t) / 8) * (itm_mul if task == "itm" else 1)
        for i, g in enumerate(grads):
            m[i] = optim.b1 * m[i] + (1 - optim.b1) * g
            v[i] = optim.b2 * v[i] + (1 - optim.b2) * g**2
            adam = (m[i] / (1 - optim.b1**count)) / (
                np.sqrt(v[i] / (1 - optim.b2**count)) + optim.eps
            )
            flat[i] = flat[i] - lr * (adam + (optim.weight_decay * flat[i] if decays[i] else 0.0))
        moments[owner] = (m, v, count)
        state, out = train_step(state, batch, key, task=task, settings=settings)
        assert bool(out["finite"])
    # float32 against float64: Adam divides by the root of tiny second moments,
    # so a few elements differ by ~5e-6 (times the multiplier); a wrong moment
    # or rate moves them ~1e-3.
    for got, want in zip(jax.tree.leaves(state["params"]), flat, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * itm_mul)
    if per_task:
        for task, (_, _v, count) in moments.items():
            assert int(jax.tree.leaves(state["opt_state"][task])[0]) == count  # its own count


def test_per_task_moments_need_the_tasks():
    with pytest.raises(ConfigError, match="per_task_moments needs"):
        OptimSettings(per_task_moments=True)
