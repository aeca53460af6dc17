"""Comparing parameter trees from runs that differ only in how work was split."""

import jax
import numpy as np

# The attention key bias adds the same logit to every key of a query, which
# softmax ignores: its exact gradient is zero, so what it receives is rounding
# noise, and Adam scales that noise up to steps of about the learning rate.
# Differently split reductions give different noise, hence different values.
ZERO_GRADIENT = "['attention']['key']['bias']"


def assert_trees_close(actual, expected, *, atol=1e-5, rtol=1e-5, what=""):
    """Every leaf close, except parameters whose exact gradient is zero."""
    compared = 0
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True
    ):
        name = jax.tree_util.keystr(path)
        if ZERO_GRADIENT in name:
            continue
        np.testing.assert_allclose(x, y, atol=atol, rtol=rtol, err_msg=f"{what} {name}")
        compared += 1
    assert compared > 0


def assert_trees_equal(actual, expected):
    """Bit for bit: the same leaves in the same order, every value equal."""
    leaves_a, leaves_b = jax.tree.leaves(actual), jax.tree.leaves(expected)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)
