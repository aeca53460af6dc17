"""Original (or BERT) state dict <-> our parameter tree, every tensor checked.

The two layouts and the names that map them are in `layout`; import checks
the whole file against them and reports every problem at once, export
writes the original layout back, tied copies included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from uniter_jax.convert import heads
from uniter_jax.convert.layout import (
    BERT_DROPPED,
    HF_TIED,
    SOURCE_BERT,
    TIED,
    CheckpointError,
    Entry,
    Params,
    entries,
    normalize_keys,
)
from uniter_jax.model.config import UniterConfig
from uniter_jax.model.pretraining import OPTIONAL_GROUPS, param_groups


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
    kept = [e for e in table if e.group not in absent]
    problems = _missing_or_misshapen(state, kept, absent, expected)
    problems += _untied_copies(state)
    unexpected, dropped = _unknown_keys(state, table, source, drop_unknown)
    problems += unexpected
    if problems:
        raise _import_error(problems, config)
    params = _gather(state, kept)
    dtypes = tuple(sorted({str(np.asarray(v).dtype) for v in state.values()}))
    report = ImportReport(source, absent, tuple(dropped), dtypes, task)
    return params, report


def _missing_or_misshapen(
    state: Mapping[str, np.ndarray], kept: list[Entry], absent: tuple[str, ...], expected: Params
) -> list[str]:
    """Problems with the tensors of the groups the file holds (`kept`)."""
    problems = []
    if "mrfr" not in absent and "uniter/img_embeddings" in absent:
        problems.append(
            "feat_regress.* is present but the image embedder it is tied to "
            "(uniter.img_embeddings.*) is not"
        )
    for entry in kept:
        if entry.key not in state:
            problems.append(f"missing: {entry.key}")
            continue
        want = _expected_shape(entry, expected)
        got = tuple(state[entry.key].shape)
        if want is not None and got != want:
            problems.append(f"shape mismatch: {entry.key} is {list(got)}, expected {list(want)}")
    return problems


def _tied_pairs() -> dict[str, str]:
    """Every tied copy the original or HuggingFace writes -> the tensor it copies."""
    return {copy: original for copy, (original, _) in TIED.items()} | HF_TIED


def _untied_copies(state: Mapping[str, np.ndarray]) -> list[str]:
    """A tied copy must equal its source: only the source is read."""
    return [
        f"tied copy differs: {copy} != {original}"
        for copy, original in _tied_pairs().items()
        if copy in state and original in state and not np.array_equal(state[copy], state[original])
    ]


def _unknown_keys(
    state: Mapping[str, np.ndarray], table: list[Entry], source: str, drop_unknown: bool
) -> tuple[list[str], list[str]]:
    """(problems, dropped keys) for the keys no entry or tied copy names.

    BERT's own extras (`BERT_DROPPED`) are always dropped; other keys only
    with `drop_unknown`.
    """
    known = {e.key for e in table} | set(_tied_pairs())
    problems, dropped = [], []
    for key in state:
        if key in known:
            continue
        if drop_unknown or (source == SOURCE_BERT and key.startswith(BERT_DROPPED)):
            dropped.append(key)
        else:
            problems.append(f"unexpected: {key}")
    return problems, dropped


def _import_error(problems: list[str], config: UniterConfig) -> CheckpointError:
    has_unexpected = any(p.startswith("unexpected") for p in problems)
    hint = (
        " (keys outside the encoder and pretraining heads, such as a downstream task's "
        "head, are skipped with drop_unknown / --drop-unknown)"
        if has_unexpected
        else ""
    )
    return CheckpointError(
        f"{len(problems)} problem(s) reading the state dict as a {config.num_layers}-layer, "
        f"hidden-{config.hidden_size} UNITER{hint}:\n  " + "\n  ".join(problems)
    )


def _gather(state: Mapping[str, np.ndarray], kept: list[Entry]) -> Params:
    """The `kept` tensors as our fp32 tree: transposed, layers stacked on axis 0."""
    params: Params = {}
    stacked: dict[tuple[str, ...], list[np.ndarray]] = {}
    for entry in kept:
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
    return params


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
