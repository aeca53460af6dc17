"""Independent test fixtures: original-layout state dicts and a numpy forward pass.

Written from docs/original.md (Model, Pretraining heads, Checkpoint layout) and
the original PyTorch code's structure, sharing no code with `uniter_jax` so the tests compare two
separate implementations.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def original_shapes(
    *,
    vocab: int,
    hidden: int,
    layers: int,
    intermediate: int,
    max_pos: int = 512,
    types: int = 2,
    img_dim: int = 2048,
    labels: int = 1601,
) -> dict[str, tuple[int, ...]]:
    """Every key of an original UNITER pretraining state dict and its shape."""
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name, n_in, n_out):
        shapes[f"{name}.weight"] = (n_out, n_in)
        shapes[f"{name}.bias"] = (n_out,)

    def norm(name, n):
        shapes[f"{name}.weight"] = (n,)
        shapes[f"{name}.bias"] = (n,)

    e = "uniter.embeddings"
    shapes[f"{e}.word_embeddings.weight"] = (vocab, hidden)
    shapes[f"{e}.position_embeddings.weight"] = (max_pos, hidden)
    shapes[f"{e}.token_type_embeddings.weight"] = (types, hidden)
    norm(f"{e}.LayerNorm", hidden)
    i = "uniter.img_embeddings"
    linear(f"{i}.img_linear", img_dim, hidden)
    norm(f"{i}.img_layer_norm", hidden)
    norm(f"{i}.pos_layer_norm", hidden)
    linear(f"{i}.pos_linear", 7, hidden)
    shapes[f"{i}.mask_embedding.weight"] = (2, img_dim)
    norm(f"{i}.LayerNorm", hidden)
    for n in range(layers):
        p = f"uniter.encoder.layer.{n}"
        for qkv in ("query", "key", "value"):
            linear(f"{p}.attention.self.{qkv}", hidden, hidden)
        linear(f"{p}.attention.output.dense", hidden, hidden)
        norm(f"{p}.attention.output.LayerNorm", hidden)
        linear(f"{p}.intermediate.dense", hidden, intermediate)
        linear(f"{p}.output.dense", intermediate, hidden)
        norm(f"{p}.output.LayerNorm", hidden)
    linear("uniter.pooler.dense", hidden, hidden)
    shapes["cls.predictions.bias"] = (vocab,)
    linear("cls.predictions.transform.dense", hidden, hidden)
    norm("cls.predictions.transform.LayerNorm", hidden)
    shapes["cls.predictions.decoder.weight"] = (vocab, hidden)
    shapes["feat_regress.weight"] = (hidden, img_dim)
    shapes["feat_regress.bias"] = (img_dim,)
    linear("feat_regress.net.0", hidden, hidden)
    norm("feat_regress.net.2", hidden)
    linear("region_classifier.net.0", hidden, hidden)
    norm("region_classifier.net.2", hidden)
    linear("region_classifier.net.3", hidden, labels)
    linear("itm_output", hidden, 2)
    return shapes


TIED_COPIES = {
    "cls.predictions.decoder.weight": "uniter.embeddings.word_embeddings.weight",
    "feat_regress.weight": "uniter.img_embeddings.img_linear.weight",
}


def random_state_dict(seed: int = 0, **sizes) -> dict[str, np.ndarray]:
    """A random fp32 original state dict: weights, biases and LayerNorms all perturbed."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in original_shapes(**sizes).items():
        if key in TIED_COPIES:
            continue
        if "LayerNorm" in key or "layer_norm" in key or ".net.2." in key:
            base = 1.0 if key.endswith(".weight") else 0.0
            value = base + 0.1 * rng.standard_normal(shape)
        else:
            value = 0.05 * rng.standard_normal(shape)
        state[key] = value.astype(np.float32)
    state["uniter.img_embeddings.mask_embedding.weight"][0] = 0.0
    for copy, original in TIED_COPIES.items():
        state[copy] = state[original].copy()
    return state


# ---------------------------------------------------------------- forward pass


def _linear(sd, name, x):
    return x @ sd[f"{name}.weight"].T.astype(np.float64) + sd[f"{name}.bias"]


def _norm(sd, name, x, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def forward(sd, num_heads, input_ids, feat=None, pos=None, masked=None):
    """One example, no padding (the original's packed form), float64.

    `input_ids` `[Lt]`, `feat` `[Nr, D]`, `pos` `[Nr, 7]`, `masked` `[Nr]` bool.
    Returns (sequence `[Lt + Nr, H]`, pooled `[H]`).
    """
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("uniter.encoder.layer."))
    e = "uniter.embeddings"
    types = sd[f"{e}.token_type_embeddings.weight"]
    x = (
        sd[f"{e}.word_embeddings.weight"][input_ids]
        + sd[f"{e}.position_embeddings.weight"][np.arange(len(input_ids))]
        + types[0]
    )
    x = _norm(sd, f"{e}.LayerNorm", x)
    if feat is not None:
        i = "uniter.img_embeddings"
        f = np.asarray(feat, np.float64).copy()
        if masked is not None:
            # The original zeroes masked features, then adds the table row; it
            # forces row 0 to zero before every use.
            table = sd[f"{i}.mask_embedding.weight"].copy()
            table[0] = 0.0
            f[masked] = 0.0
            f = f + table[masked.astype(int)]
        img = _norm(sd, f"{i}.img_layer_norm", _linear(sd, f"{i}.img_linear", f))
        img = img + _norm(sd, f"{i}.pos_layer_norm", _linear(sd, f"{i}.pos_linear", pos))
        img = _norm(sd, f"{i}.LayerNorm", img + types[1])
        x = np.concatenate([x, img])
    length, hidden = x.shape
    head_dim = hidden // num_heads
    for n in range(layers):
        p = f"uniter.encoder.layer.{n}"

        def heads(y):
            return y.reshape(length, num_heads, head_dim).transpose(1, 0, 2)

        q = heads(_linear(sd, f"{p}.attention.self.query", x))
        k = heads(_linear(sd, f"{p}.attention.self.key", x))
        v = heads(_linear(sd, f"{p}.attention.self.value", x))
        probs = _softmax(q @ k.transpose(0, 2, 1) / np.sqrt(head_dim))
        ctx = (probs @ v).transpose(1, 0, 2).reshape(length, hidden)
        x = _norm(
            sd,
            f"{p}.attention.output.LayerNorm",
            x + _linear(sd, f"{p}.attention.output.dense", ctx),
        )
        ffn = _linear(sd, f"{p}.output.dense", _gelu(_linear(sd, f"{p}.intermediate.dense", x)))
        x = _norm(sd, f"{p}.output.LayerNorm", x + ffn)
    pooled = np.tanh(_linear(sd, "uniter.pooler.dense", x[0]))
    return x, pooled


def mlm(sd, h):
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    t = _norm(
        sd,
        "cls.predictions.transform.LayerNorm",
        _gelu(_linear(sd, "cls.predictions.transform.dense", h)),
    )
    return t @ sd["cls.predictions.decoder.weight"].T + sd["cls.predictions.bias"]


def mrfr(sd, h):
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    t = _norm(sd, "feat_regress.net.2", _gelu(_linear(sd, "feat_regress.net.0", h)))
    # F.linear(t, W.t(), b) with W = feat_regress.weight [H, D]
    return t @ sd["feat_regress.weight"] + sd["feat_regress.bias"]


def mrc(sd, h):
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    t = _norm(sd, "region_classifier.net.2", _gelu(_linear(sd, "region_classifier.net.0", h)))
    return _linear(sd, "region_classifier.net.3", t)


def itm(sd, pooled):
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    return _linear(sd, "itm_output", pooled)
