"""The dense layer: x W + b, with the bias's gradient summed in fp32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from uniter_jax.model import UniterConfig
from uniter_jax.model.layers import dense, linear


def layer(dtype: str):
    config = UniterConfig.preset("tiny", dtype=dtype)
    return dense(64, 48, config, nnx.Rngs(0), (None, None))


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-6), ("bfloat16", 1e-2)])
def test_forward_matches_numpy(dtype, tolerance):
    module = layer(dtype)
    module.bias[...] = jnp.asarray(np.random.default_rng(0).standard_normal(48), jnp.float32)
    x = np.random.default_rng(1).standard_normal((3, 5, 64))
    got = module(jnp.asarray(x, jnp.float32))
    assert got.dtype == jnp.dtype(dtype)
    kernel = np.asarray(module.kernel[...], np.float64)
    want = x @ kernel + np.asarray(module.bias[...], np.float64)
    error = np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)
    assert error < tolerance, error


def test_bf16_bias_gradient_over_many_positions_is_summed_in_fp32():
    """41472 positions (base's batch 256 x 162): summed in bf16, the bias's
    gradient was 4% off (measured before the change)."""
    module = layer("bfloat16")
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((256, 162, 64)), jnp.float32)
    upstream = rng.standard_normal((256, 162, 48))
    graph, params = nnx.split(module)

    def loss(params):
        out = nnx.merge(graph, params)(x)
        return jnp.sum(out.astype(jnp.float32) * jnp.asarray(upstream, jnp.float32))

    grads = jax.grad(loss)(params)
    # The output is bf16, so its gradient reaches the bias rounded to bf16.
    rounded = np.asarray(jnp.asarray(upstream, jnp.bfloat16), np.float64)
    want = rounded.sum(axis=(0, 1))
    got = np.asarray(grads["bias"][...], np.float64)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-3
    # The kernel's gradient is a bf16 matmul, accumulated in fp32 inside it.
    inputs = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64).reshape(-1, 64)
    kernel_want = inputs.T @ rounded.reshape(-1, 48)
    kernel_got = np.asarray(grads["kernel"][...], np.float64)
    assert np.linalg.norm(kernel_got - kernel_want) / np.linalg.norm(kernel_want) < 1e-2


@pytest.mark.parametrize("wide", [False, True])
def test_gradients_match_numpy(wide):
    """`linear`'s own backward: the input's and the kernel's gradients over
    3-D inputs (the kernel's is a product over the flattened positions)."""
    rng = np.random.default_rng(4)
    x, kernel = rng.standard_normal((3, 5, 64)), rng.standard_normal((64, 48))
    upstream = rng.standard_normal((3, 5, 48))

    def loss(x, kernel):
        out = linear(x, kernel, wide)
        return jnp.sum(out * jnp.asarray(upstream, jnp.float32))

    args = (jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32))
    dx, dkernel = jax.grad(loss, argnums=(0, 1))(*args)
    np.testing.assert_allclose(dx, upstream @ kernel.T, rtol=1e-5, atol=1e-5)
    want = x.reshape(-1, 64).T @ upstream.reshape(-1, 48)
    np.testing.assert_allclose(dkernel, want, rtol=1e-5, atol=1e-5)


def test_wide_bf16_output_is_fp32_and_mixed_dtypes_are_refused():
    x, kernel = jnp.ones((2, 3, 4), jnp.bfloat16), jnp.ones((4, 5), jnp.bfloat16)
    assert linear(x, kernel, True).dtype == jnp.float32
    assert linear(x, kernel, False).dtype == jnp.bfloat16
    with pytest.raises(TypeError, match="not one dtype"):
        linear(x, kernel.astype(jnp.float32), False)
