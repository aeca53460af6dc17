"""The mimetic start of the attention's query and key kernels (`config.attention_init`)."""

import jax
import numpy as np
import pytest

from configs.pretrain import get_config
from uniter_jax.model import UniterConfig
from uniter_jax.model.config import ConfigError
from uniter_jax.objectives.tasks import PRETRAINING
from uniter_jax.sharding import Layout, to_host
from uniter_jax.train.attention_init import ALPHA, BETA, with_mimetic_attention
from uniter_jax.train.pretrain import pretraining_job
from uniter_jax.train.state import initial_params

CONFIG = UniterConfig.preset("tiny", vocab_size=64, img_dim=32, num_region_labels=16)


def attention(params: dict) -> dict:
    return params["uniter"]["encoder"]["layers"]["attention"]


@pytest.fixture(scope="module")
def starts():
    random = to_host(initial_params(CONFIG, 0, "", objective=PRETRAINING))
    mimetic = to_host(initial_params(CONFIG, 0, "", objective=PRETRAINING, mimetic_attention=True))
    return random, mimetic


def test_each_layer_starts_with_query_key_product_alpha_noise_plus_beta_identity(starts):
    _, mimetic = starts
    query, key = attention(mimetic)["query"]["kernel"], attention(mimetic)["key"]["kernel"]
    hidden = CONFIG.hidden_size
    assert query.shape == key.shape == (CONFIG.num_layers, hidden, hidden)
    for layer in range(CONFIG.num_layers):
        product = query[layer].astype(np.float64) @ key[layer].T.astype(np.float64)
        noise = product - BETA * np.eye(hidden)
        # The identity part: the diagonal's mean is beta (the noise adds
        # alpha / hidden to its standard error).
        assert abs(np.diag(product).mean() - BETA) < 5 * ALPHA / hidden
        # The random part: entries with standard deviation alpha / sqrt(hidden),
        # no structure left (its mean is zero).
        assert noise.std() == pytest.approx(ALPHA / np.sqrt(hidden), rel=0.1)
        assert abs(noise.mean()) < 5 * ALPHA / hidden
    assert not np.allclose(query[0], query[1])


def test_tokens_attend_to_what_resembles_them_from_the_start(starts):
    # The heads as the model splits them (head h: columns h*d to (h+1)*d),
    # scored in numpy on layer-normed random tokens: with the mimetic start a
    # token puts far more than 1/L of its attention on itself; at random, 1/L.
    rng = np.random.default_rng(1)
    length, heads = 24, CONFIG.num_heads
    tokens = rng.normal(size=(length, CONFIG.hidden_size))
    tokens = (tokens - tokens.mean(1, keepdims=True)) / tokens.std(1, keepdims=True)
    head_dim = CONFIG.hidden_size // heads

    def self_weight(params):
        q = (tokens @ attention(params)["query"]["kernel"][0]).reshape(length, heads, head_dim)
        k = (tokens @ attention(params)["key"]["kernel"][0]).reshape(length, heads, head_dim)
        logits = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return np.diagonal(probs, axis1=1, axis2=2).mean()

    random, mimetic = starts
    assert self_weight(random) == pytest.approx(1 / length, rel=0.2)
    assert self_weight(mimetic) > 5 / length


def test_only_query_and_key_kernels_change_and_the_seed_draws_them(starts):
    random, mimetic = starts
    changed = {"query", "key"}
    for name, block in attention(mimetic).items():
        for leaf, value in block.items():
            same = np.array_equal(value, attention(random)[name][leaf])
            assert same == (name not in changed or leaf != "kernel"), (name, leaf)
    rest = {**mimetic["uniter"], "encoder": None}
    jax.tree.map(np.testing.assert_array_equal, rest, {**random["uniter"], "encoder": None})
    again = with_mimetic_attention(random, 0)
    other = with_mimetic_attention(random, 1)
    np.testing.assert_array_equal(
        attention(again)["query"]["kernel"], attention(mimetic)["query"]["kernel"]
    )
    assert not np.allclose(attention(other)["query"]["kernel"], attention(again)["query"]["kernel"])


def test_an_unknown_start_is_a_config_error_before_any_work(tmp_path):
    config = get_config("tiny")
    config.attention_init = "identity"
    with pytest.raises(
        ConfigError, match="attention_init is 'identity': choose one of random, mimetic"
    ):
        pretraining_job(config, str(tmp_path), Layout.single_device())
    assert not any(tmp_path.iterdir())
