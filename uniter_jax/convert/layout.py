"""The original UNITER / BERT state-dict layout and our parameter tree.

Pure numpy: a state dict is `{name: np.ndarray}` in PyTorch's layout (linear
weights `[out, in]`); our parameters are the nested dict of
`nnx.to_pure_dict(nnx.state(UniterForPretraining, nnx.Param))`, with the layer
stack on a leading axis. docs/original.md, Checkpoint layout, lists the names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from uniter_jax.convert import heads
from uniter_jax.model.config import UniterConfig

Params = dict[str, Any]

# Kinds of parameter family: a linear layer (weight transposed into our
# kernel, plus bias), a LayerNorm (weight/gamma -> scale, bias/beta -> bias), an
# embedding table, and a bare parameter.
LINEAR, NORM, EMBED, PARAM = "linear", "norm", "embed", "param"

# (original name without the `uniter.` prefix, our path, kind), in the order
# the original module registers them.
_ENCODER = [
    ("embeddings.word_embeddings", "uniter/embeddings/word", EMBED),
    ("embeddings.position_embeddings", "uniter/embeddings/position", EMBED),
    ("embeddings.token_type_embeddings", "uniter/embeddings/token_type", EMBED),
    ("embeddings.LayerNorm", "uniter/embeddings/norm", NORM),
    ("img_embeddings.img_linear", "uniter/img_embeddings/img_linear", LINEAR),
    ("img_embeddings.img_layer_norm", "uniter/img_embeddings/img_norm", NORM),
    ("img_embeddings.pos_layer_norm", "uniter/img_embeddings/pos_norm", NORM),
    ("img_embeddings.pos_linear", "uniter/img_embeddings/pos_linear", LINEAR),
    ("img_embeddings.mask_embedding.weight", "uniter/img_embeddings/mask_embedding", PARAM),
    ("img_embeddings.LayerNorm", "uniter/img_embeddings/norm", NORM),
]
# Per layer: `encoder.layer.{i}.<name>` <-> `uniter/encoder/layers/<path>[i]`.
_LAYER = [
    ("attention.self.query", "attention/query", LINEAR),
    ("attention.self.key", "attention/key", LINEAR),
    ("attention.self.value", "attention/value", LINEAR),
    ("attention.output.dense", "attention/out", LINEAR),
    ("attention.output.LayerNorm", "attention_norm", NORM),
    ("intermediate.dense", "intermediate", LINEAR),
    ("output.dense", "output", LINEAR),
    ("output.LayerNorm", "output_norm", NORM),
]
_POOLER = [("pooler.dense", "uniter/pooler/dense", LINEAR)]
# The pretraining heads, each an optional group, in the original's order.
_HEADS = {
    "mlm": [
        ("cls.predictions.bias", "mlm/bias", PARAM),
        ("cls.predictions.transform.dense", "mlm/transform/dense", LINEAR),
        ("cls.predictions.transform.LayerNorm", "mlm/transform/norm", NORM),
    ],
    "mrfr": [
        ("feat_regress.bias", "mrfr/bias", PARAM),
        ("feat_regress.net.0", "mrfr/transform/dense", LINEAR),
        ("feat_regress.net.2", "mrfr/transform/norm", NORM),
    ],
    "mrc": [
        ("region_classifier.net.0", "mrc/transform/dense", LINEAR),
        ("region_classifier.net.2", "mrc/transform/norm", NORM),
        ("region_classifier.net.3", "mrc/classifier", LINEAR),
    ],
    "itm": [("itm_output", "itm/dense", LINEAR)],
}
# Copies of tied weights the original file also stores: copy -> source.
# The copy is written when its head's group is.
TIED = {
    "cls.predictions.decoder.weight": ("uniter.embeddings.word_embeddings.weight", "mlm"),
    "feat_regress.weight": ("uniter.img_embeddings.img_linear.weight", "mrfr"),
}
# HuggingFace writes the MLM bias a second time under this name.
HF_TIED = {"cls.predictions.decoder.bias": "cls.predictions.bias"}
# In BERT files and not part of UNITER: next-sentence head, position-id buffer.
BERT_DROPPED = ("cls.seq_relationship.", "uniter.embeddings.position_ids")

SOURCE_UNITER, SOURCE_BERT = "uniter", "bert"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read into (or written from) our parameters."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of the original layout."""

    key: str  # original name, e.g. `uniter.encoder.layer.3.output.dense.weight`
    path: tuple[str, ...]  # our path, e.g. ("uniter", "encoder", "layers", "output", "kernel")
    layer: int | None  # index into the stacked layer axis, None outside the stack
    transpose: bool  # PyTorch `[out, in]` vs our `[in, out]`

    @property
    def group(self) -> str:
        """The parameter group this tensor belongs to (see OPTIONAL_GROUPS)."""
        return "/".join(self.path[:2]) if self.path[0] == "uniter" else self.path[0]


def _expand(prefix: str, path: str, kind: str, layer: int | None) -> Iterator[Entry]:
    parts = tuple(path.split("/"))
    if kind == LINEAR:
        yield Entry(f"{prefix}.weight", (*parts, "kernel"), layer, True)
        yield Entry(f"{prefix}.bias", (*parts, "bias"), layer, False)
    elif kind == NORM:
        yield Entry(f"{prefix}.weight", (*parts, "scale"), layer, False)
        yield Entry(f"{prefix}.bias", (*parts, "bias"), layer, False)
    elif kind == EMBED:
        yield Entry(f"{prefix}.weight", (*parts, "embedding"), layer, False)
    else:
        yield Entry(prefix, parts, layer, False)


def entries(config: UniterConfig, task: str | None = None) -> list[Entry]:
    """Every tensor of an original pretraining checkpoint, tied copies excluded,
    plus those of `task`'s fine-tuned head (a key of `heads.TABLES`)."""
    out = []
    for name, path, kind in _ENCODER:
        out += _expand(f"uniter.{name}", path, kind, None)
    for i in range(config.num_layers):
        for name, path, kind in _LAYER:
            out += _expand(
                f"uniter.encoder.layer.{i}.{name}", f"uniter/encoder/layers/{path}", kind, i
            )
    for name, path, kind in _POOLER:
        out += _expand(f"uniter.{name}", path, kind, None)
    for name, path, kind in (row for head in _HEADS.values() for row in head):
        out += _expand(name, path, kind, None)
    for name, path, kind in heads.TABLES[task] if task else ():
        out += _expand(name, path, kind, None)
    return out


def normalize_keys(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """Renames a UNITER, `bert.`-prefixed or bare HuggingFace BERT state dict
    into UNITER names (`uniter.` prefix, LayerNorm `weight`/`bias`)."""
    keys = list(state)
    if any(k.startswith("uniter.") for k in keys):
        source, rename = SOURCE_UNITER, lambda k: k
    elif any(k.startswith("bert.") for k in keys):
        source = SOURCE_BERT
        rename = lambda k: "uniter." + k[len("bert.") :] if k.startswith("bert.") else k
    elif any(k.startswith(("embeddings.", "encoder.")) for k in keys):
        source = SOURCE_BERT
        rename = lambda k: k if k.startswith("cls.") else "uniter." + k
    else:
        raise CheckpointError(
            "not a UNITER or BERT state dict: no key starts with 'uniter.', 'bert.', "
            f"'embeddings.' or 'encoder.' (first keys: {keys[:5]})"
        )
    out = {}
    for key, value in state.items():
        new = rename(key)
        if new.endswith(".gamma"):
            new = new[: -len(".gamma")] + ".weight"
        elif new.endswith(".beta"):
            new = new[: -len(".beta")] + ".bias"
        if new in out:
            raise CheckpointError(
                f"key {key!r} collides with another key after renaming to {new!r}"
            )
        out[new] = value
    return out, source


def region_sizes(state: Mapping[str, np.ndarray]) -> dict[str, int]:
    """`img_dim` / `num_region_labels` as a UNITER state dict holds them.

    The original JSON config files do not record them (the code fixed 2048 and
    1601), so a converter reads them off the tensors.
    """
    state, _ = normalize_keys(state)
    sizes = {}
    img = state.get("uniter.img_embeddings.img_linear.weight")
    if img is not None and img.ndim == 2:
        sizes["img_dim"] = int(img.shape[1])
    labels = state.get("region_classifier.net.3.weight")
    if labels is not None and labels.ndim == 2:
        sizes["num_region_labels"] = int(labels.shape[0])
    # Fine-tuned files may have more: NLVR2 3 token types, VCR 4 and 81 more words.
    for key, name in (
        ("uniter.embeddings.word_embeddings.weight", "vocab_size"),
        ("uniter.embeddings.token_type_embeddings.weight", "type_vocab_size"),
    ):
        table = state.get(key)
        if table is not None and table.ndim == 2:
            sizes[name] = int(table.shape[0])
    return sizes
