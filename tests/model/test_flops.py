"""The analytic FLOP counts against XLA's own count of the compiled programs."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from uniter_jax.model import UniterConfig, UniterForPretraining
from uniter_jax.model import flops as fl

# Wide enough that matmuls dominate (as at base), small enough to compile fast.
CONFIG = UniterConfig(
    vocab_size=3000,
    hidden_size=256,
    num_layers=2,
    num_heads=4,
    intermediate_size=1024,
    img_dim=512,
    num_region_labels=301,
)
BATCH, TEXT, REGIONS = 4, 20, 16


def xla_flops(fn, *args) -> float:
    """FLOPs XLA's cost analysis counts for `fn(*args)` (every op, not only matmuls)."""
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float(analysis["flops"])


@pytest.fixture(scope="module")
def model():
    return UniterForPretraining(CONFIG, nnx.Rngs(0))


def test_encoder_flops_match_xla(model):
    graphdef, state = nnx.split(model)

    def forward(state, ids, feat, pos):
        m = nnx.merge(graphdef, state)
        return m(
            ids,
            jnp.ones_like(ids),
            feat,
            pos,
            jnp.ones(feat.shape[:2], jnp.int32),
        )

    args = (
        state,
        jnp.ones((BATCH, TEXT), jnp.int32),
        jnp.ones((BATCH, REGIONS, CONFIG.img_dim)),
        jnp.ones((BATCH, REGIONS, 7)),
    )
    counted = xla_flops(forward, *args)
    ours = fl.encoder_flops(CONFIG, BATCH, TEXT, REGIONS)
    # XLA also counts LayerNorm, softmax, GELU and the adds: a few percent here.
    assert ours <= counted <= 1.08 * ours, (ours, counted)


@pytest.mark.parametrize("task", ["mlm", "mrfr", "mrc"])
def test_masked_head_flops_match_xla(model, task):
    graphdef, state = nnx.split(model)
    masked = 10
    head = {"mlm": "mlm_logits", "mrfr": "mrfr_features", "mrc": "mrc_logits"}[task]

    def forward(state, hidden):
        return getattr(nnx.merge(graphdef, state), head)(hidden)

    counted = xla_flops(forward, state, jnp.ones((masked, CONFIG.hidden_size)))
    # head_flops counts mask_prob of the positions: ask for exactly `masked`.
    positions = BATCH * ((TEXT - 2) if task == "mlm" else REGIONS)
    ours = fl.head_flops(CONFIG, task, BATCH, TEXT, REGIONS, mask_prob=masked / positions)
    assert ours <= counted <= 1.08 * ours, (ours, counted)


def test_a_train_step_is_three_forwards():
    forward = fl.encoder_flops(CONFIG, BATCH, TEXT, REGIONS) + fl.head_flops(
        CONFIG, "itm", BATCH, TEXT, REGIONS, mask_prob=0.15
    )
    assert fl.train_step_flops(CONFIG, "itm", BATCH, TEXT, REGIONS, mask_prob=0.15) == 3 * forward
    with pytest.raises(ValueError, match="unknown pretraining task"):
        fl.head_flops(CONFIG, "vqa", BATCH, TEXT, REGIONS, mask_prob=0.15)
