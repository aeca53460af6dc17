"""`param_checkpoint.overlay` on real and hand-made trees; cross-attention against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import softmax

from uniter_jax.downstream.nlvr2 import Nlvr2
from uniter_jax.model import UniterConfig
from uniter_jax.model.layers import SelfAttention, attention_bias, dropout, uniform_bits
from uniter_jax.model.pretraining import (
    OPTIONAL_GROUPS,
    UniterForPretraining,
    get_params,
    set_params,
)
from uniter_jax.param_checkpoint import ParamCheckpointError, overlay

CONFIG = UniterConfig.preset("tiny", vocab_size=64, img_dim=16, num_region_labels=5)
PRETRAINING_HEADS = ("mlm", "mrfr", "mrc", "itm")


def as_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def flat(tree):
    """`{"a/b/c": leaf}` of a nested dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in flat(value).items()})
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------- overlay


def test_overlay_of_a_pretraining_checkpoint_onto_an_nlvr2_model():
    loaded = as_numpy(get_params(UniterForPretraining(CONFIG, nnx.Rngs(1))))
    objective = Nlvr2("pair")
    model = objective.build(CONFIG.replace(type_vocab_size=3), nnx.Rngs(2))
    fresh = as_numpy(get_params(model))
    merged, absent = overlay(
        fresh, loaded, "pretrained", optional=(*OPTIONAL_GROUPS, "nlvr2"), unused=PRETRAINING_HEADS
    )
    assert absent == ("nlvr2",)
    assert set(merged) == {"uniter", "nlvr2"}
    table = merged["uniter"]["embeddings"]["token_type"]["embedding"]
    old = loaded["uniter"]["embeddings"]["token_type"]["embedding"]
    assert old.shape == (2, CONFIG.hidden_size) and table.shape == (3, CONFIG.hidden_size)
    np.testing.assert_array_equal(table[:2], old)
    np.testing.assert_array_equal(table[2], old[1])
    assert table.dtype == np.float32
    # Every other encoder leaf is the loaded one; the head stays fresh.
    got, want, new = flat(merged), flat(loaded), flat(fresh)
    assert set(got) == set(new)
    for path, value in got.items():
        if path.startswith("nlvr2/"):
            np.testing.assert_array_equal(value, new[path], err_msg=path)
        elif path != "uniter/embeddings/token_type/embedding":
            np.testing.assert_array_equal(value, want[path], err_msg=path)
            assert value.shape == new[path].shape
    # The fresh and loaded encoders differ, so the comparisons above mean something.
    word = "uniter/embeddings/word/embedding"
    assert not np.array_equal(new[word], want[word])
    # The merged tree fits the model.
    set_params(model, merged)
    np.testing.assert_array_equal(model.uniter.embeddings.token_type.embedding[...], table)
    # Without `unused`, the pretraining heads are reported, one line each.
    with pytest.raises(ParamCheckpointError) as error:
        overlay(fresh, loaded, "pretrained", optional=(*OPTIONAL_GROUPS, "nlvr2"))
    message = str(error.value)
    assert "from pretrained" in message
    for head in PRETRAINING_HEADS:
        assert f"\n  {head}: not a parameter of the model" in message


def small_tree(seed, type_rows=2, word_rows=10, hidden=4, dtype=np.float32):
    """A hand-made tree with the groups uniter/embeddings, uniter/encoder,
    uniter/pooler and head."""
    rng = np.random.default_rng(seed)

    def leaf(*shape):
        return rng.normal(size=shape).astype(dtype)

    return {
        "uniter": {
            "embeddings": {
                "token_type": {"embedding": leaf(type_rows, hidden)},
                "word": {"embedding": leaf(word_rows, hidden)},
            },
            "encoder": {"layer": {"kernel": leaf(hidden, hidden), "bias": leaf(hidden)}},
            "pooler": {"dense": {"kernel": leaf(hidden, hidden)}},
        },
        "head": {"kernel": leaf(hidden, 2)},
    }


ALL_OPTIONAL = ("uniter/pooler", "head")


def test_overlay_replaces_every_leaf_and_casts_to_the_model_dtype():
    fresh = small_tree(0)
    loaded = small_tree(1, dtype=np.float64)
    before = flat(small_tree(0))
    merged, absent = overlay(fresh, loaded, optional=ALL_OPTIONAL)
    assert absent == ()
    for path, value in flat(merged).items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, flat(loaded)[path].astype(np.float32))
    # `fresh` itself is left as it was.
    for path, value in flat(fresh).items():
        np.testing.assert_array_equal(value, before[path])


def test_overlay_grows_only_the_token_type_table():
    fresh, loaded = small_tree(0, type_rows=4), small_tree(1, type_rows=2)
    merged, _ = overlay(fresh, loaded, optional=ALL_OPTIONAL)
    table = merged["uniter"]["embeddings"]["token_type"]["embedding"]
    old = loaded["uniter"]["embeddings"]["token_type"]["embedding"]
    np.testing.assert_array_equal(table, old[[0, 1, 1, 1]])
    # A word table with more rows, a token-type table with fewer rows or
    # another width: each still a shape mismatch.
    more_words = small_tree(0, word_rows=12)
    fewer_types = small_tree(0, type_rows=1)
    wider_types = small_tree(0, type_rows=3)
    wider_types["uniter"]["embeddings"]["token_type"]["embedding"] = np.zeros((3, 5), np.float32)
    for name, model_tree in (
        ("word", more_words),
        ("token_type", fewer_types),
        ("token_type", wider_types),
    ):
        with pytest.raises(ParamCheckpointError, match=f"uniter/embeddings/{name}/embedding"):
            overlay(model_tree, loaded, optional=ALL_OPTIONAL)


def test_overlay_reports_every_mismatch_in_one_error():
    fresh = small_tree(0)
    loaded = small_tree(1)
    loaded["uniter"]["encoder"]["layer"]["kernel"] = np.zeros((4, 3), np.float32)
    loaded["uniter"]["encoder"]["layer"]["extra"] = np.zeros(4, np.float32)
    loaded["uniter"]["pooler"]["dense"] = np.zeros((4, 4), np.float32)  # array, not subtree
    with pytest.raises(ParamCheckpointError) as error:
        overlay(fresh, loaded, "ckpt", optional=ALL_OPTIONAL)
    lines = str(error.value).splitlines()
    assert "ckpt" in lines[0]
    assert len(lines) == 4
    text = str(error.value)
    assert "uniter/encoder/layer/kernel: shape [4, 3], model expects [4, 4]" in text
    assert "uniter/encoder/layer/extra: not a parameter of the model" in text
    assert "uniter/pooler/dense" in text


def test_overlay_drops_only_unused_top_level_groups():
    fresh = small_tree(0)
    loaded = small_tree(1)
    loaded["mlm"] = {"kernel": np.ones((4, 10), np.float32)}
    merged, _ = overlay(fresh, loaded, optional=ALL_OPTIONAL, unused=("mlm",))
    assert "mlm" not in merged
    np.testing.assert_array_equal(merged["head"]["kernel"], loaded["head"]["kernel"])
    with pytest.raises(ParamCheckpointError, match="mlm: not a parameter"):
        overlay(fresh, loaded, optional=ALL_OPTIONAL)
    # Another group the model lacks is still an error.
    loaded["itm"] = {"kernel": np.ones((4, 2), np.float32)}
    with pytest.raises(ParamCheckpointError, match="itm: not a parameter") as error:
        overlay(fresh, loaded, optional=ALL_OPTIONAL, unused=("mlm",))
    assert "mlm" not in str(error.value)
    # A group named unused that the model does have is loaded as usual.
    fresh["mlm"] = {"kernel": np.zeros((4, 10), np.float32)}
    del loaded["itm"]
    merged, _ = overlay(fresh, loaded, optional=(*ALL_OPTIONAL, "mlm"), unused=("mlm",))
    np.testing.assert_array_equal(merged["mlm"]["kernel"], 1.0)


def test_overlay_keeps_absent_optional_groups_fresh():
    fresh = small_tree(0)
    loaded = small_tree(1)
    del loaded["uniter"]["pooler"], loaded["head"]
    merged, absent = overlay(fresh, loaded, optional=("head", "uniter/pooler", "uniter/encoder"))
    # In the order of `optional`, only those really absent.
    assert absent == ("head", "uniter/pooler")
    np.testing.assert_array_equal(merged["head"]["kernel"], fresh["head"]["kernel"])
    np.testing.assert_array_equal(
        merged["uniter"]["pooler"]["dense"]["kernel"], fresh["uniter"]["pooler"]["dense"]["kernel"]
    )
    np.testing.assert_array_equal(
        merged["uniter"]["encoder"]["layer"]["kernel"],
        loaded["uniter"]["encoder"]["layer"]["kernel"],
    )


def test_overlay_raises_for_absent_required_groups():
    fresh = small_tree(0)
    loaded = small_tree(1)
    del loaded["uniter"]["encoder"], loaded["head"]
    # By default only the pretrained-file groups are optional: the encoder and
    # a downstream head are required.
    assert "head" not in OPTIONAL_GROUPS and "uniter/pooler" in OPTIONAL_GROUPS
    with pytest.raises(ParamCheckpointError) as error:
        overlay(fresh, loaded, "bert")
    text = str(error.value)
    assert "uniter/encoder: required, but absent" in text
    assert "head: required, but absent" in text
    with pytest.raises(ParamCheckpointError, match="uniter/encoder: required"):
        overlay(fresh, loaded, optional=("head",))


# ---------------------------------------------------------------- attention

ATTENTION_CONFIG = UniterConfig.preset("tiny", attention_dropout=0.0)


def np_linear(layer, x):
    return np.asarray(x, np.float64) @ np.asarray(layer.kernel[...], np.float64) + np.asarray(
        layer.bias[...], np.float64
    )


def np_multi_head_attention(module, x, context, context_mask, num_heads):
    q, k, v = (
        np_linear(module.query, x),
        np_linear(module.key, context),
        np_linear(module.value, context),
    )
    rows, lq, hidden = q.shape
    d = hidden // num_heads
    out = np.zeros((rows, lq, hidden))
    for h in range(num_heads):
        part = slice(h * d, (h + 1) * d)
        scores = np.einsum("bqd,bkd->bqk", q[..., part], k[..., part]) / np.sqrt(d)
        scores = scores + np.where(context_mask[:, None, :] > 0, 0.0, -1e4)
        out[..., part] = np.einsum("bqk,bkd->bqd", softmax(scores, -1), v[..., part])
    return np_linear(module.out, out)


@pytest.fixture(scope="module")
def attention():
    module = SelfAttention(ATTENTION_CONFIG, nnx.Rngs(0))
    rng = np.random.default_rng(1)
    for layer in (module.query, module.key, module.value, module.out):
        layer.kernel[...] = rng.normal(0, 0.25, layer.kernel.shape).astype(np.float32)
        layer.bias[...] = rng.normal(0, 0.1, layer.bias.shape).astype(np.float32)
    return module


H = ATTENTION_CONFIG.hidden_size
CONTEXT_MASK = np.array([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 1, 0, 0]], np.int32)


def inputs(seed=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 5, H)).astype(np.float32)
    context = rng.normal(size=(2, 7, H)).astype(np.float32)
    return x, context


def test_attention_bias_is_minus_ten_thousand_on_padding():
    bias = np.asarray(attention_bias(CONTEXT_MASK))
    assert bias.shape == (2, 1, 1, 7) and bias.dtype == np.float32
    np.testing.assert_array_equal(bias[:, 0, 0], np.where(CONTEXT_MASK > 0, 0.0, -1e4))


def test_cross_attention_matches_numpy(attention):
    x, context = inputs()
    got = np.asarray(attention(x, attention_bias(CONTEXT_MASK), None, context=context))
    assert got.shape == x.shape
    want = np_multi_head_attention(attention, x, context, CONTEXT_MASK, ATTENTION_CONFIG.num_heads)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The reference discriminates: one head over the whole width, or no mask,
    # give other outputs.
    one_head = np_multi_head_attention(attention, x, context, CONTEXT_MASK, 1)
    unmasked = np_multi_head_attention(
        attention, x, context, np.ones_like(CONTEXT_MASK), ATTENTION_CONFIG.num_heads
    )
    assert np.abs(one_head - want).max() > 1e-2
    assert np.abs(unmasked[1] - want[1]).max() > 1e-2


def test_cross_attention_ignores_masked_context(attention):
    x, context = inputs()
    bias = attention_bias(CONTEXT_MASK)
    got = np.asarray(attention(x, bias, None, context=context))
    noisy = np.where(CONTEXT_MASK[..., None] > 0, context, 30.0 * context[::-1]).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(attention(x, bias, None, context=noisy)), got, rtol=1e-5, atol=1e-5
    )
    # A kept context position does matter.
    moved = context.copy()
    moved[1, 4] += 1.0
    assert np.abs(np.asarray(attention(x, bias, None, context=moved)) - got).max() > 1e-3


def test_self_attention_is_cross_attention_to_itself(attention):
    _, context = inputs(3)
    bias = attention_bias(CONTEXT_MASK)
    own = np.asarray(attention(context, bias, None))
    np.testing.assert_allclose(
        own, np.asarray(attention(context, bias, None, context=context)), rtol=1e-6, atol=1e-6
    )
    want = np_multi_head_attention(
        attention, context, context, CONTEXT_MASK, ATTENTION_CONFIG.num_heads
    )
    np.testing.assert_allclose(own, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_drops_at_its_rate_and_keeps_the_mean(rate):
    x = jnp.full((400, 500), 2.0, jnp.float32)
    key = jax.random.PRNGKey(3)
    out = np.asarray(dropout(x, rate, key))
    dropped = out == 0.0
    n = dropped.size
    # Binomial(n, rate): within 5 standard deviations.
    assert abs(dropped.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    kept = out[~dropped]
    np.testing.assert_allclose(kept, 2.0 / (1.0 - rate), rtol=1e-4)
    assert abs(out.mean() - 2.0) < 5 * 2.0 * np.sqrt(rate / (1 - rate) / n)
    np.testing.assert_array_equal(out, np.asarray(dropout(x, rate, key)))  # same key, same mask
    assert not np.array_equal(out, np.asarray(dropout(x, rate, jax.random.PRNGKey(4))))
    assert dropout(x, rate, None) is x and dropout(x, 0.0, key) is x


def np_lowbias32(x):
    x = x.astype(np.uint64)
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_uniform_bits_are_the_documented_hash_of_the_row_major_index():
    shape = (3, 5, 7)
    key = jax.random.PRNGKey(11)
    seed = np.asarray(jax.random.bits(key, (2,), jnp.uint32)).astype(np.uint64)
    index = np.arange(np.prod(shape), dtype=np.uint64).reshape(shape)
    want = np_lowbias32((np_lowbias32(index ^ seed[0]) + seed[1]) & 0xFFFFFFFF)
    np.testing.assert_array_equal(np.asarray(uniform_bits(key, shape)), want.astype(np.uint32))


def test_uniform_bits_look_independent_across_keys_and_neighbours():
    shape = (64, 12, 76, 76)  # about 4.4M draws, an attention mask of a batch of 64
    rate = 0.1
    threshold = round(rate * 2**32)
    first = np.asarray(uniform_bits(jax.random.PRNGKey(0), shape)) < threshold
    second = np.asarray(uniform_bits(jax.random.split(jax.random.PRNGKey(0))[1], shape)) < threshold
    n = first.size

    def within_5_sigma(observed, p, count):
        assert abs(observed - p) < 5 * np.sqrt(p * (1 - p) / count), (observed, p)

    within_5_sigma(first.mean(), rate, n)
    within_5_sigma((first & second).mean(), first.mean() * second.mean(), n)
    for axis in range(len(shape)):  # neighbours along every axis
        a = np.take(first, range(shape[axis] - 1), axis=axis)
        b = np.take(first, range(1, shape[axis]), axis=axis)
        within_5_sigma((a & b).mean(), first.mean() ** 2, a.size)
    # Uniform over the top byte: chi-square with 255 dof within 5 of its sd.
    counts = np.bincount(
        (np.asarray(uniform_bits(jax.random.PRNGKey(2), shape)) >> 24).ravel(), minlength=256
    )
    chi2 = np.sum((counts - n / 256) ** 2 / (n / 256))
    assert abs(chi2 - 255) < 5 * np.sqrt(2 * 255)


def test_uniform_bits_are_the_same_on_any_sharding():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    shape = (8, 4, 6, 10)
    key = jax.random.PRNGKey(7)
    whole = np.asarray(uniform_bits(key, shape))
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("a", "b"))
    for spec in (
        PartitionSpec("a", "b"),
        PartitionSpec(None, "b", None, "a"),
        PartitionSpec(("a", "b")),
    ):
        sharding = NamedSharding(mesh, spec)
        split = jax.jit(lambda k: uniform_bits(k, shape), out_shardings=sharding)(key)
        assert split.sharding == sharding
        np.testing.assert_array_equal(np.asarray(split), whole)
