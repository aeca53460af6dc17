"""Token-type rows: the same values as indexing the table, and a gradient summed in fp32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from uniter_jax.model import UniterConfig
from uniter_jax.model.embeddings import TextEmbeddings


def embeddings(dtype: str) -> TextEmbeddings:
    config = UniterConfig.preset("tiny", dtype=dtype, type_vocab_size=3)
    return TextEmbeddings(config, nnx.Rngs(0))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rows_equal_indexing_the_table(dtype):
    module = embeddings(dtype)
    ids = np.random.default_rng(0).integers(0, 3, (4, 7))
    table = np.asarray(module.token_type.embedding[...])
    got = module.type_rows(jnp.asarray(ids))
    assert got.dtype == jnp.dtype(dtype)
    want = jnp.asarray(table[ids]).astype(dtype)  # the table cast like the compute dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_bf16_gradient_of_many_positions_is_summed_in_fp32():
    """8192 positions share 3 rows. The gradient of each row is the sum of its
    positions' upstream gradients (numpy, float64); summed in bf16 that sum
    would be off by about 5% (measured before the change)."""
    module = embeddings("bfloat16")
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 3, (64, 128))
    upstream = rng.standard_normal((64, 128, module.token_type.embedding.shape[1]))
    graph, params = nnx.split(module)

    def loss(params):
        rows = nnx.merge(graph, params).type_rows(jnp.asarray(ids))
        return jnp.sum(rows.astype(jnp.float32) * jnp.asarray(upstream, jnp.float32))

    grad = jax.grad(loss)(params)["token_type"]["embedding"][...]
    # The upstream gradient reaches the table through the bf16 rows, so it is
    # rounded to bf16 first; the sum over positions is what is checked.
    rounded = np.asarray(jnp.asarray(upstream, jnp.bfloat16), np.float64)
    want = np.stack([rounded[ids == t].sum(0) for t in range(3)])
    error = np.linalg.norm(np.asarray(grad, np.float64) - want) / np.linalg.norm(want)
    assert error < 1e-3, error
