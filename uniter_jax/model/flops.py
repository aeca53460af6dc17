"""Analytic matmul FLOPs of UNITER, for throughput and MFU figures.

Counted: every matrix product (2 FLOPs per multiply-add) of the image
embedder, the encoder layers (projections, feed-forward, attention scores
and context) and the heads. Not counted: embedding lookups, LayerNorm,
softmax, GELU and the optimiser, which are a few percent at base size. A
train step costs three forwards (the backward computes two products per
forward product).
"""

from __future__ import annotations

from uniter_jax.model.config import UniterConfig

# Width of each pretraining head's output layer.
_HEAD_OUT = {
    "mlm": lambda c: c.vocab_size,
    "mrfr": lambda c: c.img_dim,
    "mrc": lambda c: c.num_region_labels,
    "mrc_kl": lambda c: c.num_region_labels,
}


def encoder_flops(config: UniterConfig, batch: int, text: int, regions: int) -> float:
    """Forward FLOPs of the image embedder and the layer stack for `batch`
    examples of `text` + `regions` positions."""
    hidden, length = config.hidden_size, text + regions
    tokens = batch * length
    layer = 2 * tokens * (4 * hidden**2 + 2 * hidden * config.intermediate_size)
    layer += 2 * 2 * batch * length**2 * hidden  # attention scores and context
    image = 2 * batch * regions * (config.img_dim + 7) * hidden
    return float(config.num_layers * layer + image)


def head_flops(
    config: UniterConfig,
    task: str,
    batch: int,
    text: int,
    regions: int,
    mask_prob: float,
) -> float:
    """Forward FLOPs of a pretraining task's head. ITM: the pooler, the 2-way
    classifier and the WRA cosine cost; the masked tasks: the transform and
    output layer over the expected number of masked positions (`mask_prob` of
    the text tokens without [CLS]/[SEP], or of the regions)."""
    hidden = config.hidden_size
    if task == "itm":
        return float(2 * batch * (hidden**2 + 2 * hidden) + 2 * batch * text * regions * hidden)
    if task not in _HEAD_OUT:
        raise ValueError(f"unknown pretraining task {task!r}; known: itm, {sorted(_HEAD_OUT)}")
    masked = mask_prob * batch * ((text - 2) if task == "mlm" else regions)
    return float(2 * masked * hidden * (hidden + _HEAD_OUT[task](config)))


def train_step_flops(
    config: UniterConfig,
    task: str,
    batch: int,
    text: int,
    regions: int,
    mask_prob: float,
) -> float:
    """FLOPs of one train step of `task`: three forwards."""
    forward = encoder_flops(config, batch, text, regions)
    return 3.0 * (forward + head_flops(config, task, batch, text, regions, mask_prob))
