"""Pretraining losses as pure `(prediction, target, weights) -> (sum, count)` functions.

Returning sums and counts lets steps, devices and accumulation add them up
before the one division; a task's loss is `sum / count` (docs/original.md,
Pretraining tasks, defines each mean). All math is fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SumCount = tuple[jax.Array, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> SumCount:
    """Softmax cross-entropy: `logits [K, C]`, int `labels [K]`, `weights [K]` (0 = ignore)."""
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    # An ignored row adds nothing, even where its label is out of range (NaN).
    return -jnp.sum(jnp.where(weights > 0, picked * weights, 0.0)), jnp.sum(weights)


def accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> SumCount:
    """Correct arg-max predictions, as `(sum, count)`."""
    weights = weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(correct * weights), jnp.sum(weights)


def mrfr(prediction: jax.Array, target: jax.Array, weights: jax.Array) -> SumCount:
    """Squared error of regressed features `[K, D]`; mean over regions x dims."""
    diff = prediction.astype(jnp.float32) - target.astype(jnp.float32)
    w = weights.astype(jnp.float32)
    return jnp.sum(jnp.square(diff) * w[:, None]), jnp.sum(w) * diff.shape[-1]


def mrc(logits: jax.Array, soft_labels: jax.Array, weights: jax.Array) -> SumCount:
    """Cross-entropy against the detector's most likely object class.

    The target is `argmax(soft_labels[1:]) + 1`: background is never a target.
    """
    labels = jnp.argmax(soft_labels[:, 1:], axis=-1) + 1
    return cross_entropy(logits, labels, weights)


def mrc_kl(logits: jax.Array, soft_labels: jax.Array, weights: jax.Array) -> SumCount:
    """KL(soft_labels || softmax(logits)) per class; mean over regions x classes.

    `sum / count` is the original's training loss; `sum / weights.sum()` its
    validation metric (summed over classes, averaged over regions).
    """
    p = soft_labels.astype(jnp.float32)
    log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # xlogy: classes with zero target probability contribute zero.
    elementwise = jax.scipy.special.xlogy(p, p) - p * log_q
    w = weights.astype(jnp.float32)
    return jnp.sum(elementwise * w[:, None]), jnp.sum(w) * p.shape[-1]
