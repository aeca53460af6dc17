"""Whole-file conversions: a PyTorch checkpoint <-> our parameter tree."""

from __future__ import annotations

import os

from uniter_jax.convert.layout import region_sizes
from uniter_jax.convert.state_dict import ImportReport, export_state_dict, import_state_dict
from uniter_jax.convert.torch_io import load_state_dict, save_state_dict
from uniter_jax.model.config import UniterConfig
from uniter_jax.model.pretraining import abstract_params


def import_checkpoint(
    path: str | os.PathLike,
    config: UniterConfig,
    *,
    drop_unknown: bool = False,
    sizes_from_file: bool = False,
) -> tuple[dict, UniterConfig, ImportReport]:
    """Reads an original UNITER `.pt` or a BERT `.bin`/`.safetensors` file.

    With `sizes_from_file`, `img_dim` and `num_region_labels` (absent from
    the original JSON configs) are taken from the file's tensors.

    Returns our (possibly partial) fp32 parameter tree, the config it fits and
    the import report.
    """
    state = load_state_dict(path)
    try:
        if sizes_from_file:
            config = config.replace(**region_sizes(state))
        params, report = import_state_dict(
            state, config, abstract_params(config), drop_unknown=drop_unknown
        )
    except ValueError as e:
        raise type(e)(f"{os.fspath(path)}: {e}") from None
    return params, config, report


def export_checkpoint(
    params: dict, config: UniterConfig, path: str | os.PathLike, *, dtype: str = "float32"
) -> int:
    """Writes `params` as an original-layout `.pt` (or `.safetensors`); returns tensor count."""
    state = export_state_dict(params, config, dtype=dtype)
    save_state_dict(state, path)
    return len(state)
