"""The exact GELU, `x Phi(x)`, against a float64 scipy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from uniter_jax.model.layers import gelu

GRID = np.linspace(-12.0, 12.0, 48_001)


def gelu64(x: np.ndarray) -> np.ndarray:
    return x * special.ndtr(x)


def gelu64_grad(x: np.ndarray) -> np.ndarray:
    return special.ndtr(x) + x * np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)


def test_values_and_gradient_match_float64():
    x = jnp.asarray(GRID, jnp.float32)
    got = np.asarray(jax.jit(gelu)(x), np.float64)
    grad = np.asarray(jax.jit(jax.vmap(jax.grad(gelu)))(x), np.float64)
    x64 = np.asarray(x, np.float64)  # the float32 grid points themselves
    assert np.abs(got - gelu64(x64)).max() < 2e-6
    assert np.abs(grad - gelu64_grad(x64)).max() < 2e-6
    # Relative accuracy where the function is not tiny. `1 + erf` cancels in
    # the negative tail: 1.8e-5 at x = -2.67, where PyTorch's float32 GELU,
    # the same formula, is 5.6e-5 off.
    big = np.abs(gelu64(x64)) > 1e-2
    assert (np.abs(got - gelu64(x64))[big] / np.abs(gelu64(x64))[big]).max() < 3e-5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_keeps_dtype(dtype):
    assert gelu(jnp.ones((2, 3), dtype)).dtype == dtype


def test_bf16_keeps_the_negative_tail():
    """Evaluated in bf16, `1 + erf` cancels: GELU(-3) came out 45% off and
    every x below -3.1 gave 0."""
    x = jnp.asarray(np.linspace(-6.0, 6.0, 4001), jnp.bfloat16)
    x64 = np.asarray(x, np.float64)
    got = np.asarray(gelu(x), np.float64)
    want = gelu64(x64)
    big = np.abs(want) > 1e-4
    assert (np.abs(got - want)[big] / np.abs(want)[big]).max() < 2**-7  # bf16's epsilon


def test_lowered_without_erfc():
    """XLA:CPU evaluates erfc through exp and range selects (7x slower forward)."""
    hlo = jax.jit(jax.grad(lambda x: gelu(x).sum())).lower(jnp.ones(8)).as_text()
    assert "erfc" not in hlo
    assert "erf" in hlo
