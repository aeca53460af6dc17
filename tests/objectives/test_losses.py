"""Losses against numpy/scipy written from the original's definitions
(docs/original.md, Pretraining tasks)."""

import numpy as np
from scipy.special import log_softmax, xlogy

from uniter_jax.objectives import losses

rng = np.random.default_rng(0)
K, C, D = 11, 1601, 64
logits = rng.normal(0, 3, (K, C)).astype(np.float32)
weights = (rng.random(K) < 0.7).astype(np.float32)
soft = rng.dirichlet(np.full(C, 0.05), K).astype(np.float32)


def test_cross_entropy_and_accuracy():
    labels = rng.integers(0, C, K)
    total, count = losses.cross_entropy(logits, labels, weights)
    want = -(log_softmax(logits.astype(np.float64), -1)[np.arange(K), labels] * weights).sum()
    np.testing.assert_allclose(total, want, rtol=1e-5)
    assert count == weights.sum()
    correct, n = losses.accuracy(logits, labels, weights)
    assert correct == ((logits.argmax(-1) == labels) * weights).sum() and n == weights.sum()


def test_mrfr_is_mean_over_regions_and_dims():
    pred, target = rng.normal(size=(K, D)), rng.normal(size=(K, D))
    total, count = losses.mrfr(pred, target, weights)
    chosen = weights.astype(bool)
    np.testing.assert_allclose(total / count, ((pred - target) ** 2)[chosen].mean(), rtol=1e-5)


def test_mrc_targets_skip_background():
    soft_bg = soft.copy()
    soft_bg[:, 0] = 10.0  # background most likely: still never the target
    total, _ = losses.mrc(logits, soft_bg, weights)
    labels = soft[:, 1:].argmax(-1) + 1
    want = -(log_softmax(logits.astype(np.float64), -1)[np.arange(K), labels] * weights).sum()
    np.testing.assert_allclose(total, want, rtol=1e-5)


def test_mrc_kl_training_loss_and_metric():
    soft_z = soft.copy()
    soft_z[:, 5:50] = 0.0  # zero-probability classes contribute nothing
    soft_z /= soft_z.sum(-1, keepdims=True)
    total, count = losses.mrc_kl(logits, soft_z, weights)
    kl = xlogy(soft_z, soft_z) - soft_z * log_softmax(logits.astype(np.float64), -1)
    chosen = weights.astype(bool)
    np.testing.assert_allclose(total / count, kl[chosen].mean(), rtol=1e-4)
    np.testing.assert_allclose(total / weights.sum(), kl[chosen].sum(-1).mean(), rtol=1e-4)
