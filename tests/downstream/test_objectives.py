"""Downstream objectives (VQA, SNLI-VE, referring expressions) against numpy."""

import jax
import numpy as np
import pytest
from batches import random_batch
from flax import nnx
from scipy.special import expit, log_softmax
from tiny_model import tiny_config

from uniter_jax.downstream.refexp import ReferringExpressions
from uniter_jax.downstream.ve import VisualEntailment
from uniter_jax.downstream.vqa import Vqa

CONFIG = tiny_config()
B, LT, NR, NUM_ANSWERS = 6, 7, 8, 9
TEXT_LEN = np.array([7, 5, 4, 7, 3, 6])
NUM_REGIONS = np.array([8, 5, 3, 8, 6, 2])  # rows 1, 2, 4, 5 have padded regions
VALID = np.array([1, 1, 0, 1, 1, 1], np.int32)  # row 2 is a padding row


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    inputs = random_batch(
        rng,
        TEXT_LEN,
        NUM_REGIONS,
        text=LT,
        regions=NR,
        img_dim=CONFIG.img_dim,
        ids=(4, CONFIG.vocab_size),
        cls_id=1,
    )
    targets = np.zeros((B, NUM_ANSWERS), np.float32)
    for row in range(B):
        answers = rng.choice(NUM_ANSWERS, 3, replace=False)
        targets[row, answers] = rng.choice([1 / 3, 2 / 3, 1.0], 3)
    # Referring-expression targets: rows 0, 3 and 4 name a kept region, row 1
    # names a padded one (region 6 >= its 5 kept), row 2 is invalid.
    target = np.array([3, 6, 1, 7, 0, 1], np.int32)
    return {
        **inputs,
        "valid": VALID.copy(),
        "targets": targets,
        "label": rng.integers(0, 3, B).astype(np.int32),
        "target": target,
    }


def repad(batch, seed=1):
    """The same batch with different (even non-finite) padded-region inputs."""
    rng = np.random.default_rng(seed)
    out = dict(batch)
    padded = batch["img_mask"] == 0
    feat, pos = batch["img_feat"].copy(), batch["img_pos"].copy()
    feat[padded] = rng.normal(0, 100, (padded.sum(), CONFIG.img_dim))
    pos[padded] = rng.uniform(-5, 5, (padded.sum(), 7))
    feat[1, -1, 0] = np.nan
    out["img_feat"], out["img_pos"] = feat, pos
    return out


def numpy_bce(logits, targets):
    """`-z log s(x) - (1 - z) log(1 - s(x))`, the overflow-free form."""
    x = logits.astype(np.float64)
    return np.maximum(x, 0) - x * targets + np.log1p(np.exp(-np.abs(x)))


BATCH = make_batch()


@pytest.fixture(scope="module")
def vqa():
    objective = Vqa(num_answers=NUM_ANSWERS)
    return objective, objective.build(CONFIG, nnx.Rngs(0))


def test_vqa_loss_and_accuracy_match_numpy(vqa):
    objective, model = vqa
    loss, metrics = objective.loss("vqa", model, BATCH, None, None)
    logits = np.asarray(objective.logits(model, BATCH, None), np.float64)
    assert logits.shape == (B, NUM_ANSWERS)
    valid = VALID.astype(bool)
    per_question = numpy_bce(logits, BATCH["targets"]).sum(-1)
    want = per_question[valid].sum() / valid.sum()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"][0], per_question[valid].sum(), rtol=1e-5)
    assert metrics["loss"][1] == valid.sum() == metrics["accuracy"][1]
    best = logits.argmax(-1)
    score = sum(BATCH["targets"][row, best[row]] for row in range(B) if valid[row])
    np.testing.assert_allclose(metrics["accuracy"][0], score, rtol=1e-6)
    predicted = objective.predict(model, BATCH)
    np.testing.assert_array_equal(predicted["answer"], best)
    np.testing.assert_allclose(predicted["confidence"], expit(logits.max(-1)), rtol=1e-5)


def test_vqa_accuracy_counts_the_soft_score_of_the_argmax(vqa):
    objective, model = vqa
    logits = np.asarray(objective.logits(model, BATCH, None))
    # Targets that give the predicted answer of each row a distinct score.
    batch = dict(BATCH, targets=np.zeros_like(BATCH["targets"]))
    credit = np.array([1.0, 2 / 3, 1.0, 1 / 3, 0.0, 1.0], np.float32)
    batch["targets"][np.arange(B), logits.argmax(-1)] = credit
    _, metrics = objective.loss("vqa", model, batch, None, None)
    np.testing.assert_allclose(metrics["accuracy"][0], credit[VALID > 0].sum(), rtol=1e-6)


def test_vqa_loss_of_an_all_invalid_batch_is_zero(vqa):
    objective, model = vqa
    loss, metrics = objective.loss(
        "vqa", model, dict(BATCH, valid=np.zeros(B, np.int32)), None, None
    )
    assert float(loss) == 0.0 and metrics["loss"] == (0.0, 0.0)


def test_vqa_head_gradient_is_finite_non_zero_and_matches_the_bias_derivative(vqa):
    objective, model = vqa
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_of(p):
        return objective.loss("vqa", nnx.merge(graphdef, p, rest), BATCH, None, None)[0]

    grads = nnx.to_pure_dict(jax.grad(loss_of)(params))
    head = jax.tree.leaves(grads["vqa"])
    assert head and all(np.isfinite(g).all() for g in head)
    assert all(np.abs(g).max() > 0 for g in head)
    # d loss / d output bias = sum over valid rows of (sigmoid(x) - z) / count.
    logits = np.asarray(objective.logits(model, BATCH, None), np.float64)
    residual = (expit(logits) - BATCH["targets"]) * VALID[:, None]
    np.testing.assert_allclose(
        grads["vqa"]["out"]["bias"], residual.sum(0) / VALID.sum(), rtol=1e-4, atol=1e-7
    )
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads["uniter"]))


def test_ve_cross_entropy_and_accuracy_match_numpy():
    objective = VisualEntailment()
    model = objective.build(CONFIG, nnx.Rngs(1))
    loss, metrics = objective.loss("ve", model, BATCH, None, None)
    logits = np.asarray(objective.logits(model, BATCH, None), np.float64)
    assert logits.shape == (B, 3)
    valid = VALID.astype(bool)
    nll = -log_softmax(logits, -1)[np.arange(B), BATCH["label"]]
    np.testing.assert_allclose(loss, nll[valid].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"][0], nll[valid].sum(), rtol=1e-5)
    assert metrics["loss"][1] == valid.sum()
    correct = (logits.argmax(-1) == BATCH["label"])[valid].sum()
    assert metrics["accuracy"] == (correct, valid.sum())
    np.testing.assert_array_equal(objective.predict(model, BATCH)["label"], logits.argmax(-1))
    # The invalid row's label does not matter.
    other = dict(BATCH, label=np.where(valid, BATCH["label"], (BATCH["label"] + 1) % 3))
    np.testing.assert_allclose(objective.loss("ve", model, other, None, None)[0], loss, rtol=1e-6)


@pytest.fixture(scope="module")
def refexp():
    objective = ReferringExpressions()
    return objective, objective.build(CONFIG, nnx.Rngs(2))


def raw_region_scores(model, batch):
    sequence = model(
        input_ids=batch["input_ids"],
        text_mask=batch["text_mask"],
        img_feat=batch["img_feat"],
        img_pos=batch["img_pos"],
        img_mask=batch["img_mask"],
    )
    return np.asarray(model.head(sequence[:, LT:]), np.float64)


def test_refexp_scores_mask_padded_regions(refexp):
    objective, model = refexp
    scores = np.asarray(objective.scores(model, BATCH, None))
    raw = raw_region_scores(model, BATCH)
    kept = BATCH["img_mask"] > 0
    assert scores.shape == (B, NR)
    np.testing.assert_array_equal(scores[~kept], -1e9)
    np.testing.assert_allclose(scores[kept], raw[kept], rtol=1e-5, atol=1e-6)


def test_refexp_loss_is_softmax_over_kept_regions_and_skips_cut_targets(refexp):
    objective, model = refexp
    loss, metrics = objective.loss("refexp", model, BATCH, None, None)
    raw = raw_region_scores(model, BATCH)
    total, count, correct = 0.0, 0, 0
    for row in range(B):
        kept = np.flatnonzero(BATCH["img_mask"][row])
        target = BATCH["target"][row]
        if not VALID[row] or target not in kept:
            continue  # rows 1 (target cut) and 2 (invalid)
        log_p = log_softmax(raw[row, kept])
        total -= log_p[list(kept).index(target)]
        count += 1
        correct += kept[raw[row, kept].argmax()] == target
    assert count == 4
    np.testing.assert_allclose(loss, total / count, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"][0], total, rtol=1e-5)
    assert metrics["loss"][1] == count and metrics["accuracy"] == (correct, count)
    predicted = objective.predict(model, BATCH)
    for row in range(B):
        kept = np.flatnonzero(BATCH["img_mask"][row])
        region = kept[raw[row, kept].argmax()]
        assert predicted["region"][row] == region
        np.testing.assert_array_equal(predicted["box"][row], BATCH["img_pos"][row, region, :4])


def test_padded_regions_change_no_loss_or_prediction(vqa, refexp):
    changed = repad(BATCH)
    ve = VisualEntailment()
    ve_model = ve.build(CONFIG, nnx.Rngs(1))
    for name, (objective, model) in (("vqa", vqa), ("ve", (ve, ve_model)), ("refexp", refexp)):
        loss, metrics = objective.loss(name, model, BATCH, None, None)
        loss2, metrics2 = objective.loss(name, model, changed, None, None)
        assert np.isfinite(loss2)
        np.testing.assert_allclose(loss2, loss, rtol=1e-6, err_msg=name)
        for key in metrics:
            np.testing.assert_allclose(metrics2[key], metrics[key], rtol=1e-6, err_msg=name)
        before, after = objective.predict(model, BATCH), objective.predict(model, changed)
        for key in before:
            np.testing.assert_allclose(after[key], before[key], rtol=1e-6, err_msg=name)
    # The padded features really were changed, and a kept-region change is seen.
    assert not np.array_equal(changed["img_feat"], BATCH["img_feat"], equal_nan=True)
    objective, model = refexp
    kept_change = dict(BATCH, img_feat=BATCH["img_feat"] + 1.0)
    assert objective.loss("refexp", model, kept_change, None, None)[0] != pytest.approx(
        float(objective.loss("refexp", model, BATCH, None, None)[0]), rel=1e-6
    )


def test_refexp_target_past_the_padded_regions_is_skipped_not_nan(refexp):
    """A target cut by region selection can index past the batch's padded
    region count (max_bb below the store's boxes); that row has weight 0 and
    must leave the loss and its gradient finite and unchanged."""
    objective, model = refexp
    reference = objective.loss("refexp", model, BATCH, None, None)
    for index in (NR, NR + 4, 100):
        far = dict(
            BATCH, target=np.where(np.arange(B) == 1, index, BATCH["target"]).astype(np.int32)
        )
        loss, metrics = objective.loss("refexp", model, far, None, None)
        np.testing.assert_allclose(loss, reference[0], rtol=1e-6)
        assert metrics["loss"][1] == reference[1]["loss"][1] == 4

        def value(m, batch=far):
            return objective.loss("refexp", m, batch, None, None)[0]

        grads = nnx.grad(value)(model)
        leaves = jax.tree_util.tree_leaves(nnx.state(grads))
        assert all(np.isfinite(np.asarray(g)).all() for g in leaves), index
