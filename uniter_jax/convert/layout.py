"""The original UNITER / BERT state-dict layout and our parameter tree.

Pure numpy: a state dict is `{name: np.ndarray}` in PyTorch's layout (linear
weights `[out, in]`); our parameters are the nested dict of
`nnx.to_pure_dict(nnx.state(UniterForPretraining, nnx.Param))`, with the layer
stack on a leading axis. REFERENCE.md section 6 lists the names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from uniter_jax.convert import heads
from uniter_jax.model.config import UniterConfig
from uniter_jax.model.pretraining import OPTIONAL_GROUPS, param_groups

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
_HEADS = [
    ("cls.predictions.bias", "mlm/bias", PARAM),
    ("cls.predictions.transform.dense", "mlm/transform/dense", LINEAR),
    ("cls.predictions.transform.LayerNorm", "mlm/transform/norm", NORM),
    ("feat_regress.bias", "mrfr/bias", PARAM),
    ("feat_regress.net.0", "mrfr/transform/dense", LINEAR),
    ("feat_regress.net.2", "mrfr/transform/norm", NORM),
    ("region_classifier.net.0", "mrc/transform/dense", LINEAR),
    ("region_classifier.net.2", "mrc/transform/norm", NORM),
    ("region_classifier.net.3", "mrc/classifier", LINEAR),
    ("itm_output", "itm/dense", LINEAR),
]
# Copies of tied weights the original file also stores: copy -> source.
# The copy is written when its head's group is.
TIED = {
    "cls.predictions.decoder.weight": ("uniter.embeddings.word_embeddings.weight", "mlm"),
    "feat_regress.weight": ("uniter.img_embeddings.img_linear.weight", "mrfr"),
}
# HuggingFace writes the MLM bias a second time under this name.
_HF_TIED = {"cls.predictions.decoder.bias": "cls.predictions.bias"}
# In BERT files and not part of UNITER: next-sentence head, position-id buffer.
_BERT_DROPPED = ("cls.seq_relationship.", "uniter.embeddings.position_ids")

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


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What an import found beside the parameters it returned."""

    source: str  # SOURCE_UNITER or SOURCE_BERT
    absent_groups: tuple[str, ...]  # optional groups the file did not hold
    dropped_keys: tuple[str, ...]  # keys read and deliberately not used
    source_dtypes: tuple[str, ...]  # dtypes of the tensors in the file
    task: str | None = None  # the fine-tuned head the file held (heads.TABLES)

    def summary(self) -> str:
        lines = [f"source layout: {self.source}; tensor dtypes: {', '.join(self.source_dtypes)}"]
        if self.task:
            lines.append(f"fine-tuned head: {self.task}")
        if self.absent_groups:
            lines.append(
                "absent (freshly initialised when training starts): "
                + ", ".join(self.absent_groups)
            )
        if self.dropped_keys:
            lines.append(f"dropped {len(self.dropped_keys)} keys: " + ", ".join(self.dropped_keys))
        return "\n".join(lines)


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
    for name, path, kind in _HEADS:
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


def _expected_shape(entry: Entry, expected: Params) -> tuple[int, ...] | None:
    """The PyTorch-layout shape of `entry` given our expected parameter shapes
    (None for a head the expected tree lacks: the file's own shape holds)."""
    try:
        shape = tuple(_get(expected, entry.path).shape)
    except KeyError:
        return None
    if entry.layer is not None:
        shape = shape[1:]
    return shape[::-1] if entry.transpose else shape


def import_state_dict(
    state: Mapping[str, np.ndarray],
    config: UniterConfig,
    expected: Params,
    *,
    drop_unknown: bool = False,
    task: str | None = "auto",
) -> tuple[Params, ImportReport]:
    """Original (or BERT) state dict -> our (possibly partial) fp32 parameter tree.

    Args:
      state: `{name: array}` as read from the file.
      config: the model the file is meant for.
      expected: our full parameter tree (arrays or ShapeDtypeStructs), giving
        the shapes each tensor must have.
      drop_unknown: drop keys we have no place for instead of failing; they
        are listed in the report.
      task: the fine-tuned head the file holds (a key of `heads.TABLES`),
        "auto" to tell it from the keys, None for none.

    Returns:
      The parameters the file holds (optional groups it lacks are left out)
      and a report. Raises CheckpointError listing every missing key,
      unexpected key, shape mismatch and untied copy at once.
    """
    state, source = normalize_keys(state)
    if task == "auto":
        task = heads.detect(state, config.hidden_size)
    state = heads.to_ours(state, task)
    table = entries(config, task)
    present = {e.group for e in table if e.key in state}
    absent = tuple(g for g in OPTIONAL_GROUPS if g not in present)
    problems, dropped = [], []
    if "mrfr" not in absent and "uniter/img_embeddings" in absent:
        problems.append(
            "feat_regress.* is present but the image embedder it is tied to "
            "(uniter.img_embeddings.*) is not"
        )

    for entry in table:
        if entry.group in absent:
            continue
        if entry.key not in state:
            problems.append(f"missing: {entry.key}")
            continue
        want = _expected_shape(entry, expected)
        got = tuple(state[entry.key].shape)
        if want is not None and got != want:
            problems.append(f"shape mismatch: {entry.key} is {list(got)}, expected {list(want)}")

    tied = {copy: original for copy, (original, _) in TIED.items()} | _HF_TIED
    for copy, original in tied.items():
        if copy in state and original in state and not np.array_equal(state[copy], state[original]):
            problems.append(f"tied copy differs: {copy} != {original}")

    known = {e.key for e in table} | set(tied)
    for key in state:
        if key in known:
            continue
        if drop_unknown or (source == SOURCE_BERT and key.startswith(_BERT_DROPPED)):
            dropped.append(key)
        else:
            problems.append(f"unexpected: {key}")

    if problems:
        has_unexpected = any(p.startswith("unexpected") for p in problems)
        hint = (
            " (keys outside the encoder and pretraining heads, such as a downstream task's "
            "head, are skipped with drop_unknown / --drop-unknown)"
            if has_unexpected
            else ""
        )
        raise CheckpointError(
            f"{len(problems)} problem(s) reading the state dict as a {config.num_layers}-layer, "
            f"hidden-{config.hidden_size} UNITER{hint}:\n  " + "\n  ".join(problems)
        )

    params: Params = {}
    stacked: dict[tuple[str, ...], list[np.ndarray]] = {}
    for entry in table:
        if entry.group in absent:
            continue
        value = np.asarray(state[entry.key], dtype=np.float32)
        if entry.transpose:
            value = value.T
        if entry.layer is None:
            _set(params, entry.path, value)
        else:
            stacked.setdefault(entry.path, []).append(value)
    for path, layers in stacked.items():
        _set(params, path, np.stack(layers))
    _zero_unused_mask_row(params)

    dtypes = tuple(sorted({str(np.asarray(v).dtype) for v in state.values()}))
    report = ImportReport(source, absent, tuple(dropped), dtypes, task)
    return params, report


def _zero_unused_mask_row(params: Params) -> None:
    """Row 0 of the mask embedding is added to unmasked regions; the original
    zeroes it in the forward pass (files may hold any value there), so it is
    zero in ours whatever the file says, and written back as zero."""
    table = params.get("uniter", {}).get("img_embeddings", {}).get("mask_embedding")
    if table is not None:
        table[0] = 0.0


def export_state_dict(
    params: Params, config: UniterConfig, *, dtype: str = "float32", task: str | None = "auto"
) -> dict[str, np.ndarray]:
    """Our parameter tree -> the original UNITER state dict, tied copies included.

    Groups missing from `params` (a partial tree) are left out of the result.
    `task` names the fine-tuned head (`heads.TABLES`); "auto" finds it from the
    tree's groups. A group of `params` that no table writes is an error: a
    head is never dropped without a word.
    """
    params = jax.tree.map(np.array, params)
    if task == "auto":
        task = heads.task_of(params, config.hidden_size)
    _zero_unused_mask_row(params)
    out: dict[str, np.ndarray] = {}
    exported = set()
    table = entries(config, task)
    unknown = sorted(set(param_groups(params)) - {e.group for e in table})
    if unknown:
        raise CheckpointError(
            f"no original layout for the parameter groups {unknown}: export knows the "
            f"encoder, the pretraining heads and the heads {sorted(heads.TABLES)}"
        )
    for entry in table:
        try:
            value = _get(params, entry.path)
        except KeyError:
            if entry.group in OPTIONAL_GROUPS:
                continue
            raise CheckpointError(f"parameter tree lacks {'/'.join(entry.path)}") from None
        if entry.layer is not None:
            value = value[entry.layer]
        if entry.transpose:
            value = value.T
        out[entry.key] = np.ascontiguousarray(value, dtype=dtype)
        exported.add(entry.group)
    for copy, (original, group) in TIED.items():
        if group in exported and original in out:
            out[copy] = out[original].copy()
    return heads.to_original(out, task)


def _get(tree: Params, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _set(tree: Params, path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value
