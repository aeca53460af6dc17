"""Meshes, logical rules and sharded steps on 8 forced CPU devices.

The central check: one step of every task on the mesh (2,2,2), and of each
task on at least one of (8,1,1), (2,4,1) and (1,2,4) too, gives the loss and
updated parameters of the same step on one device. Dropout is on, so the
check also covers sharding-invariant random bits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from batches import random_batch
from jax.sharding import PartitionSpec as P
from trees import assert_trees_close

from configs.pretrain import get_config
from uniter_jax import sharding
from uniter_jax.model import UniterConfig
from uniter_jax.objectives.tasks import PRETRAINING, TaskSettings
from uniter_jax.train.optimizer import OptimSettings
from uniter_jax.train.step import (
    StepSettings,
    abstract_state,
    batch_fields,
    init_params,
    init_state,
    train_step,
)

RULES = tuple(tuple(rule) for rule in get_config("tiny").mesh.rules)
MODEL = UniterConfig.preset(
    "tiny",
    vocab_size=160,
    img_dim=24,
    num_region_labels=9,
    hidden_dropout=0.1,
    attention_dropout=0.1,
)
# A warm-up-free step, so the compared parameters move by about lr. (Adam's
# first update is lr * g / (|g| + eps): for the few weights whose gradient is
# near eps it amplifies reassociation noise, in proportion to lr.)
SETTINGS = StepSettings(
    model=MODEL,
    tasks=TaskSettings(mask_id=103, special_ids=(101, 102, 0), random_range=(104, 160)),
    optim=OptimSettings(lr=1e-3, warmup_steps=0, total_steps=10, eps=1e-6),
)
MESHES = {"8x1x1": (8, 1, 1), "2x4x1": (2, 4, 1), "2x2x2": (2, 2, 2), "1x2x4": (1, 2, 4)}

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced) devices")


def layout(shape, rules=RULES):
    devices = jax.devices()[: int(np.prod(shape))]
    return sharding.Layout(
        sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape, strict=True)), devices), rules
    )


def make_batch(seed=0, b=16, lt=10, nr=7):
    """Every pretraining field, rows of random lengths, float16 as the pipeline's."""
    rng = np.random.default_rng(seed)
    batch = random_batch(
        rng,
        rng.integers(4, lt + 1, b),
        rng.integers(2, nr + 1, b),
        text=lt,
        regions=nr,
        img_dim=MODEL.img_dim,
        ids=(104, 160),
        cls_id=101,
        sep_id=102,
        num_labels=MODEL.num_region_labels,
        dtype=np.float16,
    )
    batch["itm_label"] = (rng.uniform(size=b) < 0.6).astype(np.int32)
    return batch


# ---- mesh and rules ----------------------------------------------------------


@needs_8
def test_make_mesh_fills_in_the_rest_and_rejects_bad_shapes():
    mesh = sharding.make_mesh({"data": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="needs 6 devices, there are 8"):
        sharding.make_mesh({"data": 3, "fsdp": 2})
    with pytest.raises(ValueError, match="not divisible by 3"):
        sharding.make_mesh({"data": -1, "fsdp": 3})
    with pytest.raises(ValueError, match=r"unknown mesh axes \['model'\]"):
        sharding.make_mesh({"model": 8})


@needs_8
def test_rules_give_each_mesh_axis_to_one_dimension():
    lay = layout((2, 2, 2))
    # Activations: the batch takes data and fsdp, so embed (-> fsdp) stays whole.
    assert lay.spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
    # Weights: embed over fsdp, heads over tensor.
    assert lay.spec(("layers", "embed", "heads")) == P(None, "fsdp", "tensor")
    assert lay.batch_shards == 4


def test_every_parameter_dimension_has_a_name_the_rules_know():
    from uniter_jax.sharding import logical_specs
    from uniter_jax.train.step import _abstract_model

    known = {name for name, _ in RULES}
    abstract = jax.eval_shape(lambda: init_params(MODEL, 0, objective=PRETRAINING))
    specs = logical_specs(_abstract_model(MODEL, PRETRAINING))
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    for leaf, spec in zip(jax.tree.leaves(abstract), flat_specs, strict=True):
        assert len(spec) == leaf.ndim
        assert {name for name in spec if name is not None} <= known


@needs_8
def test_state_is_created_in_its_shards_with_moments_beside_their_parameters():
    lay = layout((1, 2, 4))
    state = init_state(init_params(MODEL, 0, lay, objective=PRETRAINING), SETTINGS, lay)
    query = state["params"]["uniter"]["encoder"]["layers"]["attention"]["query"]["kernel"]
    assert query.sharding.spec == P(None, "fsdp", "tensor")
    assert len(query.addressable_shards) == 8
    assert query.addressable_shards[0].data.shape == (2, 32, 16)  # [layers, 64/2, 64/4]
    adam = state["opt_state"][1][0]  # clip, then AdamW's scale_by_adam state
    mu = adam.mu["uniter"]["encoder"]["layers"]["attention"]["query"]["kernel"]
    assert mu.sharding == query.sharding
    assert state["step"].sharding.is_fully_replicated
    # The abstract restore target carries the same shardings.
    target = abstract_state(SETTINGS, lay)
    flat = zip(jax.tree.leaves(target), jax.tree.leaves(state), strict=True)
    assert all(t.sharding == a.sharding for t, a in flat)


@needs_8
def test_indivisible_dimensions_are_named():
    odd = MODEL.replace(vocab_size=150)
    target = abstract_state(StepSettings(odd, SETTINGS.tasks, SETTINGS.optim), layout((1, 2, 4)))
    with pytest.raises(ValueError, match=r"uniter/embeddings/word/embedding dim 0 \(150\)"):
        sharding.check_divisible(target, jax.tree.map(lambda a: a.sharding, target))


def test_constraints_are_inert_without_a_layout():
    x = jnp.arange(6.0).reshape(2, 3)
    assert sharding.constrain(x, "batch", "embed") is x
    assert sharding.per_example(lambda a: a * 2)(x).tolist() == (x * 2).tolist()


@needs_8
def test_global_batch_splits_rows_over_the_batch_shards():
    lay = layout((2, 2, 2))
    rows = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    array = lay.global_batch({"x": rows})["x"]
    assert array.shape == (8, 3)
    for shard in array.addressable_shards:
        np.testing.assert_array_equal(shard.data, rows[shard.index])
        assert shard.data.shape == (2, 3)  # 8 rows over data x fsdp = 4
    np.testing.assert_array_equal(sharding.to_host(array), rows)


# ---- one step of every task: sharded == one device --------------------------


@pytest.fixture(scope="module")
def single_device():
    """Per task, computed once: the one-device loss and updated parameters."""
    params = jax.device_get(init_params(MODEL, 0, objective=PRETRAINING))
    batch, key = make_batch(), jax.random.PRNGKey(3)
    done = {}

    def result(task):
        if task not in done:
            fields = {k: batch[k] for k in batch_fields(task, PRETRAINING)}
            state = init_state(params, SETTINGS)
            state, out = train_step(state, fields, key, task=task, settings=SETTINGS)
            metrics = out["metrics"]
            done[task] = jax.device_get(
                (state["params"], metrics["objective"][0], metrics["grad_norm"][0])
            )
        return done[task]

    return params, batch, key, result


def _sharded_matches_single_device(single_device, mesh, tasks):
    params, batch, key, expected = single_device
    lay = layout(MESHES[mesh])
    for task in tasks:
        state = init_state(params, SETTINGS, lay)
        fields = lay.global_batch({k: batch[k] for k in batch_fields(task, PRETRAINING)})
        state, result = train_step(state, fields, key, task=task, settings=SETTINGS, layout=lay)
        assert result["finite"]
        want_params, want_loss, want_grad_norm = expected(task)
        loss = sharding.to_host(result["metrics"]["objective"][0])
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg=f"{mesh} {task} loss")
        # Adam's first step hardly depends on the gradient's scale; its norm does.
        grad_norm = sharding.to_host(result["metrics"]["grad_norm"][0])
        np.testing.assert_allclose(grad_norm, want_grad_norm, rtol=1e-5, err_msg=f"{mesh} {task}")
        assert_trees_close(
            sharding.to_host(state["params"]), want_params, atol=1e-5, rtol=0, what=f"{mesh} {task}"
        )
        moved = jax.tree.map(lambda new, old: np.abs(new - old).max(), want_params, params)
        assert max(jax.tree.leaves(moved)) > 5e-4, f"{task}: the step hardly changed the params"


# The default suite: ITM (+ WRA under shard_map) and MLM (vocabulary-parallel
# logits) on the mesh that uses all three axes. The slow checks: the other
# tasks there too, and each task on at least one more mesh, each mesh with at
# least two tasks (every sharded step is its own compile, 10-20 s on two
# cores; the whole matrix of 20 took over six minutes).
ON_OTHER_MESHES = {
    "2x2x2": ("mrfr", "mrc", "mrc_kl"),
    "8x1x1": ("itm", "mrc"),
    "1x2x4": ("mlm", "mrc_kl", "itm"),
    "2x4x1": ("mrfr", "mlm"),
}


@needs_8
def test_itm_and_mlm_steps_on_a_2x2x2_mesh_match_one_device(single_device):
    _sharded_matches_single_device(single_device, "2x2x2", ("itm", "mlm"))


@needs_8
@pytest.mark.slow
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_one_step_of_each_task_on_each_mesh_matches_one_device(single_device, mesh):
    _sharded_matches_single_device(single_device, mesh, ON_OTHER_MESHES[mesh])


@needs_8
def test_a_non_finite_step_on_a_mesh_keeps_the_sharded_state():
    """The guard's branch on a 2x2x2 mesh, the state donated: a NaN in one valid
    region leaves every parameter and moment shard as it was."""
    lay = layout(MESHES["2x2x2"])
    state = init_state(jax.device_get(init_params(MODEL, 0, objective=PRETRAINING)), SETTINGS, lay)
    batch, key = make_batch(), jax.random.PRNGKey(3)

    def fields(b):
        return lay.global_batch({k: b[k] for k in batch_fields("mlm", PRETRAINING)})

    state, out = train_step(state, fields(batch), key, task="mlm", settings=SETTINGS, layout=lay)
    assert bool(sharding.to_host(out["finite"]))
    before = sharding.to_host((state["params"], state["opt_state"]))
    poisoned = make_batch(1)
    valid = np.argwhere(poisoned["img_mask"])[5]
    poisoned["img_feat"][valid[0], valid[1], 0] = np.nan
    state, out = train_step(state, fields(poisoned), key, task="mlm", settings=SETTINGS, layout=lay)
    assert not bool(sharding.to_host(out["finite"]))
    assert int(sharding.to_host(state["step"])) == 2
    after = sharding.to_host((state["params"], state["opt_state"]))
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(a, b)
