"""The original UNITER's pretraining losses in float64 PyTorch, for gradient checks.

An independent re-implementation (it shares no code with `uniter_jax`): the
model is written out in `torch.nn.functional` calls on the leaves of an
original-layout state dict (`original_layout.random_state_dict`), one example
at a time in the original's packed form (valid text tokens, then valid
regions, no padding), so `torch.autograd` gives the gradient of every
original tensor. The word-region alignment runs its own log-domain Sinkhorn.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from original_layout import TIED_COPIES

DTYPE = torch.float64
LAYER_NORM_EPS = 1e-12


@dataclasses.dataclass
class Example:
    """One example, packed: only its valid tokens and regions.

    `input_ids` `[Lt]` (after any MLM replacement), `feat` `[Nr, D]`, `pos`
    `[Nr, 7]`; `text_targets` `[Lt]` and `text_chosen`/`region_chosen` bool
    masks say which positions a masked task scores; `soft_labels` `[Nr, C]`.
    """

    input_ids: np.ndarray
    feat: np.ndarray
    pos: np.ndarray
    matched: bool
    text_targets: np.ndarray | None = None
    text_chosen: np.ndarray | None = None
    region_chosen: np.ndarray | None = None
    soft_labels: np.ndarray | None = None


def leaves(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """One float64 leaf tensor (requires grad) per original key.

    A tied copy (the MLM decoder, the MRFR projection) is the same leaf as its
    source, so the source's `.grad` sums both uses, as in the original model.
    """
    out = {
        k: torch.tensor(np.asarray(v, np.float64), requires_grad=True)
        for k, v in state.items()
        if k not in TIED_COPIES
    }
    for copy, source in TIED_COPIES.items():
        out[copy] = out[source]
    return out


def gradients(p: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """`.grad` of every leaf as numpy (zeros for leaves the loss did not reach)."""
    return {
        k: np.zeros(tuple(v.shape)) if v.grad is None else v.grad.numpy().copy()
        for k, v in p.items()
        if k not in TIED_COPIES
    }


# ---------------------------------------------------------------- the model


def _linear(p, name, x):
    return F.linear(x, p[f"{name}.weight"], p[f"{name}.bias"])


def _norm(p, name, x):
    return F.layer_norm(x, x.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"], eps=LAYER_NORM_EPS)


def _num_layers(p) -> int:
    prefix = "uniter.encoder.layer."
    return 1 + max(int(k[len(prefix) :].split(".")[0]) for k in p if k.startswith(prefix))


def encode(
    p, num_heads: int, ex: Example, masked: np.ndarray | None = None, with_input: bool = False
):
    """(sequence `[Lt + Nr, H]`, pooled `[H]`) for one packed example; with
    `with_input`, also the first layer's input (the embeddings) third.

    `masked` `[Nr]` bool: regions whose feature is zeroed, then the mask
    embedding's row 1 added. Row 0 (added to every other region) is a constant
    zero here, so it gets no gradient: the original zeroes it before every
    forward pass, so whatever gradient it collects there is never used.
    """
    e, i = "uniter.embeddings", "uniter.img_embeddings"
    ids = torch.as_tensor(ex.input_ids, dtype=torch.long)
    types = p[f"{e}.token_type_embeddings.weight"]
    text = (
        F.embedding(ids, p[f"{e}.word_embeddings.weight"])
        + F.embedding(torch.arange(len(ids)), p[f"{e}.position_embeddings.weight"])
        + types[0]
    )
    text = _norm(p, f"{e}.LayerNorm", text)

    feat = torch.as_tensor(np.asarray(ex.feat, np.float64))
    if masked is not None:
        flags = torch.as_tensor(masked, dtype=torch.long)
        table = p[f"{i}.mask_embedding.weight"]
        table = torch.cat([torch.zeros_like(table[:1]), table[1:]])
        feat = feat.masked_fill(flags[:, None].bool(), 0.0) + F.embedding(flags, table)
    pos = torch.as_tensor(np.asarray(ex.pos, np.float64))
    img = _norm(p, f"{i}.img_layer_norm", _linear(p, f"{i}.img_linear", feat))
    img = img + _norm(p, f"{i}.pos_layer_norm", _linear(p, f"{i}.pos_linear", pos))
    img = _norm(p, f"{i}.LayerNorm", img + types[1])

    x = embedded = torch.cat([text, img])
    length, hidden = x.shape
    head_dim = hidden // num_heads
    for n in range(_num_layers(p)):
        layer = f"uniter.encoder.layer.{n}"

        def split(y):
            return y.view(length, num_heads, head_dim).transpose(0, 1)

        q = split(_linear(p, f"{layer}.attention.self.query", x))
        k = split(_linear(p, f"{layer}.attention.self.key", x))
        v = split(_linear(p, f"{layer}.attention.self.value", x))
        probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(head_dim), dim=-1)
        context = (probs @ v).transpose(0, 1).reshape(length, hidden)
        attended = _linear(p, f"{layer}.attention.output.dense", context)
        x = _norm(p, f"{layer}.attention.output.LayerNorm", x + attended)
        inner = F.gelu(_linear(p, f"{layer}.intermediate.dense", x))
        x = _norm(p, f"{layer}.output.LayerNorm", x + _linear(p, f"{layer}.output.dense", inner))
    pooled = torch.tanh(_linear(p, "uniter.pooler.dense", x[0]))
    return (x, pooled, embedded) if with_input else (x, pooled)


def _transform(p, prefix, h, dense, norm):
    return _norm(p, f"{prefix}.{norm}", F.gelu(_linear(p, f"{prefix}.{dense}", h)))


def mlm_logits(p, h):
    t = _transform(p, "cls.predictions", h, "transform.dense", "transform.LayerNorm")
    return F.linear(t, p["cls.predictions.decoder.weight"], p["cls.predictions.bias"])


def mrfr_features(p, h):
    t = _transform(p, "feat_regress", h, "net.0", "net.2")
    return F.linear(t, p["feat_regress.weight"].t(), p["feat_regress.bias"])


def mrc_logits(p, h):
    t = _transform(p, "region_classifier", h, "net.0", "net.2")
    return _linear(p, "region_classifier.net.3", t)


# ---------------------------------------------------------------- the losses


def sinkhorn_plan(cost: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Entropic OT plan for uniform marginals, log-domain alternating updates.

    Potentials start at zero; each iteration updates the column potential `g`
    and then the row potential `f` from the new `g`.
    """
    rows, cols = cost.shape
    log_a, log_b = -math.log(rows), -math.log(cols)
    f = torch.zeros(rows, dtype=cost.dtype)
    g = torch.zeros(cols, dtype=cost.dtype)
    for _ in range(iterations):
        g = epsilon * log_b - epsilon * torch.logsumexp((f[:, None] - cost) / epsilon, dim=0)
        f = epsilon * log_a - epsilon * torch.logsumexp((g[None, :] - cost) / epsilon, dim=1)
    return torch.exp((f[:, None] + g[None, :] - cost) / epsilon)


def wra_distance(text, regions, epsilon: float, iterations: int) -> torch.Tensor:
    """`sum_ij C_ij T_ij`, cosine cost `C`, plan `T` computed on a detached `C`."""
    cost = 1.0 - F.normalize(text, dim=-1, eps=1e-12) @ F.normalize(regions, dim=-1, eps=1e-12).T
    plan = sinkhorn_plan(cost.detach(), epsilon, iterations)
    return (cost * plan).sum()


def itm_loss(p, num_heads, examples, *, wra_weight, epsilon, iterations, wra_input_weight=0.0):
    """Mean 2-way cross-entropy on the pooled output plus `wra_weight` x WRA,
    WRA = (sum of matched distances - sum of mismatched distances) / batch,
    plus `wra_input_weight` x the same between the embeddings of words and regions."""
    logits, signed, signed_input = [], [], []
    for ex in examples:
        sequence, pooled, embedded = encode(p, num_heads, ex, with_input=True)
        logits.append(_linear(p, "itm_output", pooled))
        lt = len(ex.input_ids)
        sign = 1.0 if ex.matched else -1.0
        signed.append(sign * wra_distance(sequence[:lt], sequence[lt:], epsilon, iterations))
        signed_input.append(sign * wra_distance(embedded[:lt], embedded[lt:], epsilon, iterations))
    labels = torch.tensor([int(ex.matched) for ex in examples])
    ce = F.cross_entropy(torch.stack(logits), labels)
    loss = ce + wra_weight * torch.stack(signed).sum() / len(examples)
    if wra_input_weight:
        loss = loss + wra_input_weight * torch.stack(signed_input).sum() / len(examples)
    return loss


def mlm_loss(p, num_heads, examples):
    """Cross-entropy on the chosen tokens of matched pairs, mean over those tokens."""
    logits, targets = [], []
    for ex in examples:
        if not ex.matched:
            continue
        sequence, _ = encode(p, num_heads, ex)
        chosen = torch.as_tensor(ex.text_chosen)
        logits.append(mlm_logits(p, sequence[: len(ex.input_ids)][chosen]))
        targets.append(torch.as_tensor(ex.text_targets, dtype=torch.long)[chosen])
    return F.cross_entropy(torch.cat(logits), torch.cat(targets))


def _masked_region_states(p, num_heads, examples):
    """Hidden states of the chosen regions of matched pairs and their examples' rows."""
    hidden, feats, soft = [], [], []
    for ex in examples:
        if not ex.matched:
            continue
        sequence, _ = encode(p, num_heads, ex, masked=ex.region_chosen)
        chosen = torch.as_tensor(ex.region_chosen)
        hidden.append(sequence[len(ex.input_ids) :][chosen])
        feats.append(torch.as_tensor(np.asarray(ex.feat, np.float64))[chosen])
        if ex.soft_labels is not None:
            soft.append(torch.as_tensor(np.asarray(ex.soft_labels, np.float64))[chosen])
    return torch.cat(hidden), torch.cat(feats), torch.cat(soft) if soft else None


def mrfr_loss(p, num_heads, examples):
    """Squared error to the unmasked feature, mean over chosen regions x dims."""
    hidden, feats, _ = _masked_region_states(p, num_heads, examples)
    return F.mse_loss(mrfr_features(p, hidden), feats)


def mrc_loss(p, num_heads, examples):
    """Cross-entropy to `argmax(soft[1:]) + 1`, mean over chosen regions."""
    hidden, _, soft = _masked_region_states(p, num_heads, examples)
    return F.cross_entropy(mrc_logits(p, hidden), soft[:, 1:].argmax(-1) + 1)


def mrc_kl_loss(p, num_heads, examples):
    """KL(soft || softmax(logits)), mean over chosen regions x classes."""
    hidden, _, soft = _masked_region_states(p, num_heads, examples)
    log_q = F.log_softmax(mrc_logits(p, hidden), dim=-1)
    return F.kl_div(log_q, soft, reduction="none").mean()
