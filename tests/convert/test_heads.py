"""The original's fine-tuned heads: imported heads compute what numpy computes
from the original's own tensors (written here from the original's module
layout, not from ours), and files round-trip exactly."""

import numpy as np
import pytest
from flax import nnx
from original_layout import random_state_dict
from scipy.special import erf

from uniter_jax import param_checkpoint
from uniter_jax.convert import CheckpointError
from uniter_jax.convert.layout import region_sizes
from uniter_jax.convert.state_dict import export_state_dict, import_state_dict
from uniter_jax.downstream import nlvr2, refexp, retrieval, vcr, ve, vqa
from uniter_jax.model import UniterConfig, abstract_params, get_params, set_params

H = 16
SIZES = dict(vocab=50, hidden=H, layers=2, intermediate=24, max_pos=20, img_dim=12, labels=7)
CONFIG = UniterConfig(
    vocab_size=50,
    hidden_size=H,
    num_layers=2,
    num_heads=2,
    intermediate_size=24,
    max_position_embeddings=20,
    img_dim=12,
    num_region_labels=7,
)
PRETRAINING = ("cls.", "feat_regress.", "region_classifier.", "itm_output.")


def head_shapes(task):
    """The original's head tensors of `task`: name -> shape."""
    linear = lambda name, n_in, n_out: {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}
    norm = lambda name, n: {f"{name}.weight": (n,), f"{name}.bias": (n,)}
    classifier = lambda name, n: {
        **linear(f"{name}.0", H, 2 * H),
        **norm(f"{name}.2", 2 * H),
        **linear(f"{name}.3", 2 * H, n),
    }
    if task in ("vqa", "ve"):
        return classifier("vqa_output", 5 if task == "vqa" else 3)
    if task == "vcr":
        return classifier("vcr_output", 2)
    if task == "refexp":
        return linear("re_output", H, 1)
    if task == "retrieval":
        return {**linear("itm_output", H, 2), **linear("rank_output", H, 1)}
    if task == "nlvr2-pair":
        return linear("nlvr2_output", 2 * H, 2)
    if task == "nlvr2-triplet":
        return linear("nlvr2_output", H, 2)
    shapes = {**linear("fc.0", 2 * H, H), **linear("attn_pool.fc.0", H, 1)}
    shapes.update(linear("nlvr2_output", 2 * H, 2))
    for attn in ("attn1", "attn2"):
        shapes.update({f"{attn}.in_proj_weight": (3 * H, H), f"{attn}.in_proj_bias": (3 * H,)})
        shapes.update(linear(f"{attn}.out_proj", H, H))
    return shapes


def finetuned(task, seed=0):
    """A fine-tuned original file: the encoder (with the task's token types) and its head."""
    rng = np.random.default_rng(seed)
    state = {
        k: v for k, v in random_state_dict(seed, **SIZES).items() if not k.startswith(PRETRAINING)
    }
    types = {"vcr": 4}.get(task, 3 if task.startswith("nlvr2") else 2)
    state["uniter.embeddings.token_type_embeddings.weight"] = rng.normal(
        0, 0.05, (types, H)
    ).astype(np.float32)
    for key, shape in head_shapes(task).items():
        base = 1.0 if key.endswith(".2.weight") else 0.0
        state[key] = (base + 0.3 * rng.standard_normal(shape)).astype(np.float32)
    return state


def read(state):
    config = CONFIG.replace(**region_sizes(state))
    params, report = import_state_dict(state, config, abstract_params(config))
    return params, config, report


OBJECTIVES = {
    "vqa": lambda: vqa.Vqa(num_answers=5),
    "ve": ve.VisualEntailment,
    "vcr": vcr.Vcr,
    "refexp": refexp.ReferringExpressions,
    "retrieval": retrieval.Retrieval,
    "nlvr2-pair": lambda: nlvr2.Nlvr2(variant="pair"),
    "nlvr2-triplet": lambda: nlvr2.Nlvr2(variant="triplet"),
    "nlvr2-pair-attn": lambda: nlvr2.Nlvr2(variant="pair-attn"),
}


def our_model(task, params, config):
    model = OBJECTIVES[task]().build(config, nnx.Rngs(0))
    merged, _ = param_checkpoint.overlay(get_params(model), params)
    set_params(model, merged)
    return model


# -- the original's heads in numpy, from its state dict ------------------------
def lin(sd, name, x):
    return x @ sd[f"{name}.weight"].T.astype(np.float64) + sd[f"{name}.bias"]


def layer_norm(sd, name, x):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def gelu(x):
    return x * 0.5 * (1.0 + erf(x / np.sqrt(2.0)))


def classifier(sd, name, x, act):
    return lin(sd, f"{name}.3", layer_norm(sd, f"{name}.2", act(lin(sd, f"{name}.0", x))))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mha(sd, name, query, kv, kv_mask, heads):
    """torch-style multi-head attention with a joint in_proj."""
    w, b = sd[f"{name}.in_proj_weight"], sd[f"{name}.in_proj_bias"]
    q = query @ w[:H].T + b[:H]  # rows: query, key, value
    k, v = kv @ w[H : 2 * H].T + b[H : 2 * H], kv @ w[2 * H :].T + b[2 * H :]
    d = H // heads
    split = lambda y: y.reshape(y.shape[0], -1, heads, d).transpose(0, 2, 1, 3)
    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d)
    scores = scores + np.where(kv_mask, 0.0, -1e4)[:, None, None, :]
    mixed = (softmax(scores) @ split(v)).transpose(0, 2, 1, 3).reshape(query.shape)
    return lin(sd, f"{name}.out_proj", mixed)


def pair_attn(sd, left, right, left_mask, right_mask, heads):
    def side(attended, own, mask):
        fused = np.maximum(lin(sd, "fc.0", np.concatenate([attended, own], -1)), 0)
        score = np.maximum(lin(sd, "attn_pool.fc.0", fused)[..., 0], 0) + np.where(mask, 0, -1e4)
        return np.einsum("bl,blh->bh", softmax(score), fused)

    l2r = mha(sd, "attn1", left, right, right_mask, heads)
    r2l = mha(sd, "attn2", right, left, left_mask, heads)
    pooled = np.concatenate([side(l2r, left, left_mask), side(r2l, right, right_mask)], -1)
    return lin(sd, "nlvr2_output", pooled)


@pytest.mark.parametrize("task", sorted(OBJECTIVES))
def test_imported_heads_compute_the_originals_outputs(task):
    state = finetuned(task)
    params, config, report = read(state)
    assert report.task == task
    model = our_model(task, params, config)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, H)).astype(np.float32)
    sd = {k: v.astype(np.float64) for k, v in state.items()}
    if task in ("vqa", "ve", "vcr"):
        act = (lambda y: np.maximum(y, 0)) if task == "vcr" else gelu
        want = classifier(sd, "vqa_output" if task != "vcr" else "vcr_output", x, act)
        if task == "ve":  # ours: entailment, neutral, contradiction
            want = want[:, [1, 2, 0]]
        got = model.head(x)
    elif task == "refexp":
        regions = rng.standard_normal((3, 5, H)).astype(np.float32)
        want, got = lin(sd, "re_output", regions)[..., 0], model.head(regions)
    elif task == "retrieval":
        want, got = lin(sd, "rank_output", x)[:, 0], model.head(x)[:, 1]
    elif task == "nlvr2-pair":
        pair = rng.standard_normal((3, 2 * H)).astype(np.float32)
        want, got = lin(sd, "nlvr2_output", pair), model.head(pair)
    elif task == "nlvr2-triplet":
        want, got = lin(sd, "nlvr2_output", x), model.head(x)
    else:
        left, right = (rng.standard_normal((3, 6, H)).astype(np.float32) for _ in range(2))
        masks = [np.arange(6)[None] < np.array([[6], [4], [2]]) for _ in range(2)]
        want = pair_attn(sd, left, right, *masks, CONFIG.num_heads)
        got = model.head(left, right, *(m.astype(np.int32) for m in masks), None)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", sorted(OBJECTIVES))
def test_fine_tuned_files_round_trip(task):
    state = finetuned(task)
    params, config, _ = read(state)
    back = export_state_dict(params, config)
    want = dict(state)
    if task == "retrieval":  # itm_output's match row is rank_output's (documented)
        want["itm_output.weight"] = np.concatenate(
            [state["itm_output.weight"][:1], state["rank_output.weight"]]
        )
        want["itm_output.bias"] = np.concatenate(
            [state["itm_output.bias"][:1], state["rank_output.bias"]]
        )
    assert set(back) == set(want), set(back) ^ set(want)
    for key in want:
        np.testing.assert_array_equal(back[key], want[key], err_msg=key)
    # And ours -> file -> ours.
    again, _, _ = read(back)
    for (path, a), b in zip(_leaves(params), (leaf for _, leaf in _leaves(again)), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=path)


def _leaves(tree, prefix=""):
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", np.asarray(value)


def test_mask_row_zero_is_zeroed_on_import_and_export():
    state = finetuned("vqa")
    state["uniter.img_embeddings.mask_embedding.weight"][0] = 0.5
    params, config, _ = read(state)
    assert not params["uniter"]["img_embeddings"]["mask_embedding"][0].any()
    params["uniter"]["img_embeddings"]["mask_embedding"][0] = 1.0
    back = export_state_dict(params, config)
    assert not back["uniter.img_embeddings.mask_embedding.weight"][0].any()


def test_unsupported_heads_and_groups_are_named():
    state = finetuned("refexp")
    for key in ("re_output.weight", "re_output.bias"):
        del state[key]
    state["re_output.0.weight"] = np.zeros((H, H), np.float32)
    with pytest.raises(ValueError, match="--mlp 2"):
        read(state)
    params, config, _ = read(finetuned("vqa"))
    params["mystery"] = {"kernel": np.zeros((H, 2), np.float32)}
    with pytest.raises(
        CheckpointError, match=r"no original layout for the parameter groups \['mystery'\]"
    ):
        export_state_dict(params, config)
