"""fp32-output products whose gradient matmuls run in the inputs' dtype."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from uniter_jax.model import UniterConfig
from uniter_jax.model.heads import MLMHead
from uniter_jax.model.layers import SelfAttention, attention_bias, dense, wide_einsum

SPEC = "bqnd,bknd->bnqk"


def operands(seed: int):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal((2, 7, 3, 16)) for _ in range(2))
    return a, b, rng.standard_normal((2, 3, 7, 7))


def gradients(fn, a, b, upstream, dtype):
    a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    out, pullback = jax.vjp(fn, a, b)
    return out, pullback(jnp.asarray(upstream, out.dtype))


def test_fp32_value_and_gradients_match_numpy():
    a, b, upstream = operands(0)
    out, (da, db) = gradients(lambda x, y: wide_einsum(SPEC, x, y), a, b, upstream, jnp.float32)
    np.testing.assert_allclose(out, np.einsum(SPEC, a, b), rtol=1e-5, atol=1e-5)
    # d/da of sum(upstream * einsum(a, b)), by hand.
    np.testing.assert_allclose(da, np.einsum("bnqk,bknd->bqnd", upstream, b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, np.einsum("bnqk,bqnd->bknd", upstream, a), rtol=1e-5, atol=1e-5)


def test_bf16_value_is_fp32_and_gradients_match_float64_to_bf16_precision():
    a, b, upstream = operands(1)
    out, (da, db) = gradients(lambda x, y: wide_einsum(SPEC, x, y), a, b, upstream, jnp.bfloat16)
    assert out.dtype == jnp.float32 and da.dtype == db.dtype == jnp.bfloat16
    a16, b16 = (np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64) for x in (a, b))
    np.testing.assert_allclose(out, np.einsum(SPEC, a16, b16), rtol=1e-4, atol=1e-4)
    for got, want in (
        (da, np.einsum("bnqk,bknd->bqnd", upstream, b16)),
        (db, np.einsum("bnqk,bqnd->bknd", upstream, a16)),
    ):
        error = np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)
        assert error < 1e-2, error


def test_mixed_dtypes_are_refused():
    with pytest.raises(TypeError, match="bfloat16 and float32"):
        wide_einsum(SPEC, jnp.ones((1, 2, 1, 4), jnp.bfloat16), jnp.ones((1, 2, 1, 4)))


def dot_operand_types(fn, *args) -> list[str]:
    """The element types of every dot's operands in `fn`'s lowered program."""
    text = jax.jit(fn).lower(*args).as_text()
    found = []
    for line in text.splitlines():
        if "dot_general" in line:
            signature = line.rsplit(": (", 1)[1].split(") ->")[0]
            found += re.findall(r"tensor<(?:\d+x)*(\w+)>", signature)
    return found


@pytest.mark.parametrize("module", ["attention", "mlm_head", "fp32_output_dense"])
def test_bf16_backward_has_no_fp32_matmul(module):
    """Before `wide_einsum`, the fp32 cotangent of the attention logits and of
    the MLM logits made JAX run their gradient matmuls in fp32."""
    config = UniterConfig.preset("tiny", dtype="bfloat16", vocab_size=300)
    rngs, hidden = nnx.Rngs(0), config.hidden_size
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 9, hidden)), jnp.float32)
    if module == "attention":
        layer, extra = SelfAttention(config, rngs), (attention_bias(jnp.ones((2, 9))),)
    elif module == "fp32_output_dense":  # layers.linear rounds its cotangent the same way
        layer, extra = dense(hidden, 7, config, rngs, (None, None), fp32_output=True), ()
    else:
        table = jnp.asarray(np.random.default_rng(3).standard_normal((300, hidden)), jnp.float32)
        layer, extra = MLMHead(config, rngs), (table,)
    graph, params = nnx.split(layer)

    def loss(params, x, *extra):
        out = nnx.merge(graph, params)(x.astype(jnp.bfloat16), *extra)
        return jnp.sum(out.astype(jnp.float32) ** 2)

    types = dot_operand_types(jax.grad(loss, argnums=(0, 1)), params, x, *extra)
    assert len(types) >= 6 and set(types) == {"bf16"}, types
