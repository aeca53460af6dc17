"""The encoder and heads against an independent numpy forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from batches import random_batch
from flax import nnx
from original_layout import forward, itm, mlm, mrc, mrfr, random_state_dict

from uniter_jax.convert import import_state_dict
from uniter_jax.model import (
    UniterConfig,
    UniterForPretraining,
    abstract_params,
    get_params,
    set_params,
)
from uniter_jax.param_checkpoint import overlay

SIZES = dict(vocab=120, hidden=32, layers=2, intermediate=64, max_pos=40, img_dim=24, labels=11)
CONFIG = UniterConfig(
    vocab_size=120,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    img_dim=24,
    num_region_labels=11,
)


def model_from_state(state, config=CONFIG):
    params, _ = import_state_dict(state, config, abstract_params(config))
    model = UniterForPretraining(config, nnx.Rngs(0))
    merged, absent = overlay(get_params(model), params)
    assert absent == ()
    set_params(model, merged)
    return model


def padded_batch(seed=0):
    """The model's positional inputs: 2 rows of 9 tokens (7 and 4 valid) and 6
    regions (5 and 2 valid); the padding, token ids too, filled with junk."""
    batch = random_batch(
        seed, (7, 4), (5, 2), text=9, regions=6, img_dim=24, ids=(1, 120), pad_id=None
    )
    return tuple(batch[k] for k in ("input_ids", "text_mask", "img_feat", "img_pos", "img_mask"))


@pytest.fixture(scope="module")
def state():
    state = random_state_dict(seed=1, **SIZES)
    # Row 0 of the mask table is never used: the original zeroes it before use.
    state["uniter.img_embeddings.mask_embedding.weight"][0] = 1.0
    return state


@pytest.fixture(scope="module")
def model(state):
    return model_from_state(state)


def valid_rows(out, b, text_len, region_count, lt):
    return np.concatenate([out[b, :text_len], out[b, lt : lt + region_count]])


def test_encoder_matches_numpy_on_padded_batch(state, model):
    ids, tm, feat, pos, im = padded_batch()
    masked = np.zeros(im.shape, bool)
    masked[0, [1, 3]] = True
    masked[1, 0] = True
    out = np.asarray(model(ids, tm, feat, pos, im, img_masked=masked))
    pooled = np.asarray(model.uniter.pool(jnp.asarray(out)))
    for b, (lt_b, nr_b) in enumerate([(7, 5), (4, 2)]):
        want, want_pooled = forward(
            state, 4, ids[b, :lt_b], feat[b, :nr_b], pos[b, :nr_b], masked[b, :nr_b]
        )
        got = valid_rows(out, b, lt_b, nr_b, ids.shape[1])
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
        np.testing.assert_allclose(pooled[b], want_pooled, atol=2e-5, rtol=0)


def test_text_only_matches_numpy(state, model):
    ids, tm, *_ = padded_batch()
    out = np.asarray(model(ids, tm))
    want, _ = forward(state, 4, ids[1, :4])
    np.testing.assert_allclose(out[1, :4], want, atol=2e-5, rtol=0)


def test_every_head_matches_numpy(state, model):
    rng = np.random.default_rng(3)
    hidden = rng.standard_normal((3, 5, 32)).astype(np.float32)
    np.testing.assert_allclose(model.mlm_logits(hidden), mlm(state, hidden), atol=2e-5)
    np.testing.assert_allclose(model.mrfr_features(hidden), mrfr(state, hidden), atol=2e-5)
    np.testing.assert_allclose(model.mrc_logits(hidden), mrc(state, hidden), atol=2e-5)
    _, pooled = forward(state, 4, np.array([5, 6, 7]))
    seq = model(jnp.array([[5, 6, 7]]), jnp.ones((1, 3)))
    np.testing.assert_allclose(model.itm_logits(seq)[0], itm(state, pooled), atol=2e-5)


def test_image_embedder_matches_numpy(state, model):
    """The image embedder alone (encoder bypassed) against the state dict."""
    from original_layout import _linear, _norm  # the same formulas (docs/original.md, Model)

    rng = np.random.default_rng(4)
    feat = rng.standard_normal((2, 3, 24)).astype(np.float32)
    pos = rng.uniform(0, 1, (2, 3, 7)).astype(np.float32)
    masked = np.array([[True, False, False], [False, False, True]])
    types = model.uniter.embeddings.type_rows(jnp.ones((2, 3), jnp.int32))
    got = model.uniter.img_embeddings(feat, pos, types, jnp.asarray(masked))
    sd = {k: np.asarray(v, np.float64) for k, v in state.items()}
    f = np.where(masked[..., None], sd["uniter.img_embeddings.mask_embedding.weight"][1], feat)
    i = "uniter.img_embeddings"
    want = _norm(sd, f"{i}.img_layer_norm", _linear(sd, f"{i}.img_linear", f))
    want += _norm(sd, f"{i}.pos_layer_norm", _linear(sd, f"{i}.pos_linear", pos))
    want = _norm(
        sd, f"{i}.LayerNorm", want + sd["uniter.embeddings.token_type_embeddings.weight"][1]
    )
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_padding_never_changes_valid_outputs(model):
    ids, tm, feat, pos, im = padded_batch(seed=5)
    rng = np.random.default_rng(6)
    ids2, feat2, pos2 = ids.copy(), feat.copy(), pos.copy()
    ids2[tm == 0] = rng.integers(1, 120, (tm == 0).sum())
    feat2[im == 0] = 100.0 * rng.standard_normal(((im == 0).sum(), 24))
    pos2[im == 0] = rng.uniform(-5, 5, ((im == 0).sum(), 7))
    out1 = np.asarray(model(ids, tm, feat, pos, im))
    out2 = np.asarray(model(ids2, tm, feat2, pos2, im))
    valid = np.concatenate([tm, im], axis=1).astype(bool)
    assert not np.allclose(out1[~valid], out2[~valid])  # the change reached the padding
    np.testing.assert_array_equal(out1[valid], out2[valid])


def test_without_cross_modal_attention_each_modality_is_encoded_alone(state):
    """The ablation: text rows are the numpy text-only forward, region rows the
    numpy regions-only forward, with the same weights."""
    model = model_from_state(state, CONFIG.replace(cross_modal_attention=False))
    ids, tm, feat, pos, im = padded_batch(seed=10)
    out = np.asarray(model(ids, tm, feat, pos, im))
    lt = ids.shape[1]
    for b, (lt_b, nr_b) in enumerate([(7, 5), (4, 2)]):
        text, pooled = forward(state, 4, ids[b, :lt_b])
        regions, _ = forward(state, 4, np.zeros(0, int), feat[b, :nr_b], pos[b, :nr_b])
        np.testing.assert_allclose(out[b, :lt_b], text, atol=2e-5, rtol=0)
        np.testing.assert_allclose(out[b, lt : lt + nr_b], regions, atol=2e-5, rtol=0)
        np.testing.assert_allclose(model.uniter.pool(out)[b], pooled, atol=2e-5, rtol=0)
    # With UNITER's attention the text rows do read the regions.
    crossed = np.asarray(model_from_state(state)(ids, tm, feat, pos, im))
    assert np.abs(crossed[0, :7] - out[0, :7]).max() > 1e-2


STACK_CONFIG = CONFIG.replace(num_layers=3)


def _stack_outputs(config):
    """Eval output, train output and parameter gradients of a seed-7 model."""
    model = UniterForPretraining(config, nnx.Rngs(7))
    ids, tm, feat, pos, im = padded_batch(seed=8)
    key = jax.random.key(9)

    @nnx.jit
    def run(model, key):
        return model(ids, tm, feat, pos, im, dropout_key=key)

    valid = np.concatenate([tm, im], axis=1).astype(bool)[..., None]

    def loss(model):
        # Losses read valid positions only, as training does.
        seq = model(ids, tm, feat, pos, im, dropout_key=key)
        return jnp.sum(jnp.where(valid, seq, 0.0) ** 2) + jnp.sum(model.itm_logits(seq))

    return run(model, None), run(model, key), nnx.jit(nnx.grad(loss))(model)


@pytest.fixture(scope="module")
def plain_stack():
    return _stack_outputs(STACK_CONFIG)


@pytest.mark.parametrize(
    "variant",
    [
        dict(scan_layers=True),
        dict(remat="full"),
        dict(scan_layers=True, remat="dots_with_no_batch_dims_saveable"),
    ],
)
def test_scan_and_remat_match_plain_stack(plain_stack, variant):
    eval_a, train_a, grads_a = plain_stack
    eval_b, train_b, grads_b = _stack_outputs(STACK_CONFIG.replace(**variant))
    np.testing.assert_allclose(eval_a, eval_b, atol=1e-6, rtol=0)
    np.testing.assert_allclose(train_a, train_b, atol=1e-6, rtol=0)
    # Summation order differs between the stacks: allow fp32 rounding.
    leaves_a, leaves_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
    scale = max(float(np.abs(g).max()) for g in leaves_a)
    for ga, gb in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(ga, gb, atol=1e-5 * scale, rtol=0)
    # Every layer of the stack receives gradient (none is cut off).
    for name, g in grads_b["uniter"]["encoder"]["layers"]["output"].items():
        per_layer = np.abs(np.asarray(g)).reshape(STACK_CONFIG.num_layers, -1).max(axis=1)
        assert (per_layer > 0).all(), name


def test_non_finite_padding_stays_out_of_outputs_and_gradients(model):
    ids, tm, feat, pos, im = padded_batch(seed=11)
    feat[im == 0] = np.nan
    pos[im == 0] = np.inf

    def loss(model):
        seq = model(ids, tm, feat, pos, im)
        valid = np.concatenate([tm, im], axis=1).astype(bool)
        return jnp.sum(jnp.where(valid[..., None], seq, 0.0) ** 2)

    value, grads = nnx.value_and_grad(loss)(model)
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_dropout_is_active_with_a_key_and_deterministic_without(model):
    ids, tm, feat, pos, im = padded_batch()
    a = model(ids, tm, feat, pos, im)
    b = model(ids, tm, feat, pos, im)
    c = model(ids, tm, feat, pos, im, dropout_key=jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32(state):
    fp32 = model_from_state(state)
    bf16 = model_from_state(state, CONFIG.replace(dtype="bfloat16"))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(get_params(bf16)))
    ids, tm, feat, pos, im = padded_batch()
    a = np.asarray(fp32(ids, tm, feat, pos, im))
    seq = bf16(ids, tm, feat, pos, im)
    assert seq.dtype == jnp.bfloat16
    assert bf16.itm_logits(seq).dtype == jnp.float32
    valid = np.concatenate([tm, im], axis=1).astype(bool)
    err = np.abs(np.asarray(seq, np.float32) - a)[valid]
    assert err.mean() < 0.02 and err.max() < 0.2, (err.mean(), err.max())
    # Heads accumulate in fp32: given the same hidden states, bf16 and fp32
    # models differ only by bf16 rounding of their inputs and weights.
    hidden = jnp.asarray(a[:, :3], jnp.bfloat16)
    for head in ("mlm_logits", "mrfr_features", "mrc_logits"):
        got = getattr(bf16, head)(hidden)
        want = getattr(fp32, head)(hidden.astype(jnp.float32))
        assert got.dtype == jnp.float32
        assert np.abs(np.asarray(got) - np.asarray(want)).max() < 0.05, head


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda b: (b[0].astype(np.float32), *b[1:]), "input_ids"),
        (lambda b: (b[0], b[1][:, :3], *b[2:]), "text_mask"),
        (lambda b: (*b[:2], b[2][..., :10], *b[3:]), "img_feat"),
        (lambda b: (*b[:3], b[3][..., :4], b[4]), "img_pos"),
        (lambda b: (*b[:4], b[4][:, :2]), "img_mask"),
        (lambda b: (np.ones((2, 41), np.int32), np.ones((2, 41)), *b[2:]), "max_position"),
    ],
)
def test_bad_input_shapes_name_the_field(model, change, field):
    with pytest.raises(ValueError, match=field):
        model(*change(padded_batch()))
