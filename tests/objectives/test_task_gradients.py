"""Each whole task step's loss and every parameter's gradient against float64 PyTorch.

Our side is the train step's own `loss_fn` (`bind` + `TaskSettings.loss`,
then `jax.value_and_grad`) in its production numerics: fp32 throughout, as the
model, losses and WRA cast to fp32 by design. The reference is
`original_torch`, an independent float64 autograd model of the original on the
same original-layout state dict; our gradient tree is mapped to the original
names with the converter's export. Masks come from our masking functions with
the task's mask key: they are inputs here, not the computation under test.

Measure, per original tensor: `max|ours - ref| / max|ref| <= 1e-5`; where the
reference gradient is exactly zero (a head another task trains, a padding-only
embedding row, the mask embedding outside MRM) ours must be exactly zero too.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import original_torch as ref
import pytest
import torch
from batches import random_batch
from original_layout import TIED_COPIES, random_state_dict

from uniter_jax.convert import export_state_dict, import_state_dict
from uniter_jax.model import UniterConfig, abstract_params
from uniter_jax.objectives.masking import mlm_mask, mrm_mask
from uniter_jax.objectives.tasks import TASKS, TaskSettings
from uniter_jax.train.step import bind

SIZES = dict(vocab=40, hidden=16, layers=2, intermediate=32, max_pos=12, img_dim=10, labels=7)
CONFIG = UniterConfig(
    vocab_size=40,
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    intermediate_size=32,
    max_position_embeddings=12,
    img_dim=10,
    num_region_labels=7,
)
CLS, SEP, MASK = 1, 2, 3
# mask_prob 0.3: a few masked positions per example at these tiny lengths.
SETTINGS = TaskSettings(
    mask_id=MASK, special_ids=(CLS, SEP, 0), random_range=(4, 40), mask_prob=0.3
)
B, LT, NR = 4, 8, 5
TOL = 1e-5

# Parameter families by the original names' prefixes.
FAMILIES = {
    "mlm": ("cls.predictions.",),
    "mrfr": ("feat_regress.bias", "feat_regress.net."),
    "mrc": ("region_classifier.",),
    "itm": ("itm_output.",),
    "pooler": ("uniter.pooler.",),
    "mask": ("uniter.img_embeddings.mask_embedding.",),
}
# The families each task's loss never reaches (their gradient is exactly zero).
UNREACHED = {
    "itm": ("mlm", "mrfr", "mrc", "mask"),
    "mlm": ("mrfr", "mrc", "itm", "pooler", "mask"),
    "mrfr": ("mlm", "mrc", "itm", "pooler"),
    "mrc": ("mlm", "mrfr", "itm", "pooler"),
    "mrc_kl": ("mlm", "mrfr", "itm", "pooler"),
}
# Softmax ignores a logit added to every key of a query, so the key bias's
# exact gradient is zero and each side holds only rounding.
KEY_BIAS = "attention.self.key.bias"


@pytest.fixture(scope="module")
def state():
    return random_state_dict(seed=11, **SIZES)


@pytest.fixture(scope="module")
def params(state):
    params, report = import_state_dict(state, CONFIG, abstract_params(CONFIG))
    assert report.absent_groups == ()
    return params


@pytest.fixture(scope="module")
def batch():
    # The region padding holds junk; it must reach neither loss nor gradient.
    batch = random_batch(
        12,
        [8, 5, 6, 4],
        [5, 3, 4, 2],
        text=LT,
        regions=NR,
        img_dim=CONFIG.img_dim,
        ids=(4, 40),
        cls_id=CLS,
        sep_id=SEP,
        num_labels=CONFIG.num_region_labels,
    )
    soft = batch["img_soft_labels"]
    soft[:, :, 2] = 0.0  # a class with zero probability: KL's 0 log 0 terms
    soft /= soft.sum(-1, keepdims=True)
    batch["itm_label"] = np.array([1, 0, 1, 1], np.int32)
    return batch


def ours(task, params, batch, mask_key, settings=SETTINGS):
    """Loss, metrics and gradients keyed by original name (tied copies left out)."""

    def loss_fn(params, batch):
        return settings.loss(task, bind(CONFIG, params, settings), batch, mask_key, None)

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, metrics), grads = step(params, jax.tree.map(jnp.asarray, batch))
    grads = export_state_dict(grads, CONFIG, dtype="float64")
    return float(loss), metrics, {k: v for k, v in grads.items() if k not in TIED_COPIES}


def examples(batch, mask_key, task):
    """The batch as packed reference examples, with the masks our task draws."""
    ids = np.asarray(batch["input_ids"])
    masked_ids, text_chosen, region_chosen = ids, None, None
    if task == "mlm":
        masked_ids, text_chosen = mlm_mask(
            mask_key,
            ids,
            batch["text_mask"],
            mask_id=SETTINGS.mask_id,
            random_range=SETTINGS.random_range,
            special_ids=SETTINGS.special_ids,
            prob=SETTINGS.mask_prob,
        )
        masked_ids, text_chosen = np.asarray(masked_ids), np.asarray(text_chosen)
    elif task != "itm":
        region_chosen = np.asarray(mrm_mask(mask_key, batch["img_mask"], prob=SETTINGS.mask_prob))
    out = []
    for b in range(B):
        t, r = batch["text_mask"][b] == 1, batch["img_mask"][b] == 1
        out.append(
            ref.Example(
                input_ids=masked_ids[b][t],
                feat=batch["img_feat"][b][r],
                pos=batch["img_pos"][b][r],
                matched=bool(batch["itm_label"][b] == 1),
                text_targets=ids[b][t],
                text_chosen=None if text_chosen is None else text_chosen[b][t],
                region_chosen=None if region_chosen is None else region_chosen[b][r],
                soft_labels=batch["img_soft_labels"][b][r],
            )
        )
    return out


def reference(task, state, exs, settings=SETTINGS):
    """float64 loss and gradients of the independent PyTorch model."""
    p = ref.leaves(state)
    heads = CONFIG.num_heads
    if task == "itm":
        loss = ref.itm_loss(
            p,
            heads,
            exs,
            wra_weight=settings.wra_weight,
            epsilon=settings.wra_epsilon,
            iterations=settings.wra_iterations,
            wra_input_weight=settings.wra_input_weight,
        )
    else:
        loss = {
            "mlm": ref.mlm_loss,
            "mrfr": ref.mrfr_loss,
            "mrc": ref.mrc_loss,
            "mrc_kl": ref.mrc_kl_loss,
        }[task](p, heads, exs)
    loss.backward()
    return float(loss.detach()), ref.gradients(p)


def family(key):
    return next((name for name, prefixes in FAMILIES.items() if key.startswith(prefixes)), None)


# ITM again with the input alignment (`wra_input_weight`) on.
CASES = [(task, SETTINGS) for task in TASKS] + [
    ("itm", dataclasses.replace(SETTINGS, wra_input_weight=0.7))
]


@pytest.mark.parametrize("task, settings", CASES, ids=[*TASKS, "itm_with_input_alignment"])
def test_loss_and_every_gradient_match_float64_torch(task, settings, state, params, batch):
    mask_key = jax.random.key(13)
    exs = examples(batch, mask_key, task)
    if task == "mlm":
        assert sum(int(e.text_chosen.sum()) for e in exs if e.matched) >= 5
    elif task != "itm":
        assert sum(int(e.region_chosen.sum()) for e in exs if e.matched) >= 4
    want_loss, want = reference(task, state, exs, settings)
    got_loss, metrics, got = ours(task, params, batch, mask_key, settings)
    if "dropped" in metrics:
        assert float(metrics["dropped"][0]) == 0  # every chosen position scored
    assert abs(got_loss - want_loss) <= TOL * abs(want_loss), (got_loss, want_loss)

    assert sorted(got) == sorted(want)
    scale = max(np.abs(g).max() for g in want.values())
    errors = {}
    for key, w in want.items():
        g = got[key]
        assert g.shape == w.shape, key
        if key.endswith(KEY_BIAS):
            for side in (g, w):
                assert np.abs(side).max() <= TOL * scale, f"{key}: {np.abs(side).max()}, {scale}"
            continue
        unreached = family(key) in UNREACHED[task]
        assert (not w.any()) == unreached, f"{key}: reference gradient zero is {not w.any()}"
        # Exactly zero wherever no gradient reaches: unreached heads, padding-only rows.
        assert not g[w == 0].any(), f"{key}: {np.abs(g[w == 0]).max()} where the reference is 0"
        if not unreached:
            errors[key] = np.abs(g - w).max() / np.abs(w).max()
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    assert worst[0][1] <= TOL, worst


def test_reference_sinkhorn_is_balanced():
    """The reference plan's marginals are uniform after its fixed iterations."""
    rng = np.random.default_rng(14)
    cost = torch.as_tensor(rng.uniform(0.0, 2.0, (6, 4)))
    plan = ref.sinkhorn_plan(cost, SETTINGS.wra_epsilon, 500).numpy()
    np.testing.assert_allclose(plan.sum(1), np.full(6, 1 / 6), rtol=1e-9)
    np.testing.assert_allclose(plan.sum(0), np.full(4, 1 / 4), rtol=1e-9)
