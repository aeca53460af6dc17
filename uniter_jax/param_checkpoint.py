"""A parameters-only checkpoint directory: what `convert` writes and `init_from` reads.

Layout (local path or gs://):
  DIR/model_config.json   UniterConfig fields
  DIR/source.json         where the parameters came from (import report)
  DIR/params/             orbax checkpoint of the (possibly partial) tree

The tree may lack optional groups (a BERT file has no image embedder or
pretraining heads); `overlay` fills them from a freshly initialised model.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from uniter_jax.model.config import UniterConfig
from uniter_jax.model.pretraining import OPTIONAL_GROUPS, param_groups

PARAMS_DIR = "params"
CONFIG_FILE = "model_config.json"
SOURCE_FILE = "source.json"


class ParamCheckpointError(ValueError):
    """A parameter checkpoint directory that is missing, incomplete or mismatched."""


def save(
    directory: str,
    params: dict,
    config: UniterConfig,
    *,
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Writes `params` (nested dict of arrays) with its config to `directory`.

    In a multi-process run every process calls it with the same (replicated)
    `params`: process 0 prepares the folder and writes the JSON files, then
    all take part in orbax's save, which writes once.
    """
    path = epath.Path(directory)
    if jax.process_index() == 0:
        _prepare(path, config, source, overwrite)
    if jax.process_count() > 1:
        # Nobody may write into the folder before process 0 has replaced it
        # (before this barrier, a late peer could remove what others wrote).
        multihost_utils.sync_global_devices(f"parameter checkpoint {directory} prepared")
    # Written last: orbax commits the directory atomically, so a readable
    # params/ means the checkpoint is complete.
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((path / PARAMS_DIR).resolve(), jax.tree.map(np.asarray, params))
        checkpointer.wait_until_finished()


def _prepare(
    path: epath.Path, config: UniterConfig, source: dict[str, Any] | None, overwrite: bool
) -> None:
    if path.exists():
        if not overwrite:
            raise ParamCheckpointError(f"{path} already exists (pass overwrite / --force)")
        if any(path.iterdir()) and not (path / CONFIG_FILE).exists():
            raise ParamCheckpointError(
                f"{path} is not empty and not a parameter checkpoint: refusing to replace it"
            )
        path.rmtree()
    path.mkdir(parents=True)
    (path / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2))
    (path / SOURCE_FILE).write_text(json.dumps(source or {}, indent=2))


def load(directory: str) -> tuple[dict, UniterConfig, dict[str, Any]]:
    """Reads `(params as numpy, config, source info)` from `directory`."""
    path = epath.Path(directory)
    for name in (CONFIG_FILE, PARAMS_DIR):
        if not (path / name).exists():
            raise ParamCheckpointError(
                f"{directory} is not a parameter checkpoint: {name} is missing"
            )
    config = UniterConfig.from_mapping(json.loads((path / CONFIG_FILE).read_text()))
    source_file = path / SOURCE_FILE
    source = json.loads(source_file.read_text()) if source_file.exists() else {}
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore((path / PARAMS_DIR).resolve())
    return params, config, source


def overlay(
    fresh: dict,
    loaded: dict,
    where: str = "",
    *,
    optional: tuple[str, ...] = OPTIONAL_GROUPS,
    unused: tuple[str, ...] = (),
) -> tuple[dict, tuple[str, ...]]:
    """`fresh` with every leaf that `loaded` holds replaced by the loaded value.

    Returns the merged tree and the groups kept from `fresh` (absent from
    `loaded`; only the `optional` groups may be). Top-level `unused` groups of
    `loaded` that the model lacks (pretraining heads, when fine-tuning) are
    dropped. Raises ParamCheckpointError naming every required group that is
    absent, every other loaded path the model lacks and every shape that differs.
    """
    problems: list[str] = []
    loaded = {k: v for k, v in loaded.items() if k in fresh or k not in unused}
    missing = set(param_groups(fresh)) - set(param_groups(loaded))
    problems += [f"{g}: required, but absent" for g in sorted(missing - set(optional))]
    absent = tuple(g for g in optional if g in missing)
    merged = _overlay(fresh, loaded, (), problems)
    if problems:
        raise ParamCheckpointError(
            f"parameters{' from ' + where if where else ''} do not fit the model:\n  "
            + "\n  ".join(problems)
        )
    return merged, absent


def _overlay(fresh: Any, loaded: Any, path: tuple[str, ...], problems: list[str]) -> Any:
    name = "/".join(path)
    if isinstance(loaded, dict):
        if not isinstance(fresh, dict):
            problems.append(f"{name}: the model has an array here, the checkpoint a subtree")
            return fresh
        out = dict(fresh)
        for key, value in loaded.items():
            if key not in fresh:
                problems.append(f"{'/'.join((*path, str(key)))}: not a parameter of the model")
                continue
            out[key] = _overlay(fresh[key], value, (*path, str(key)), problems)
        return out
    if isinstance(fresh, dict):
        problems.append(f"{name}: the model has a subtree here, the checkpoint an array")
        return fresh
    if path[-2:] == ("token_type", "embedding") and _more_rows(fresh, loaded):
        # A downstream model with more segment types (NLVR2's second image):
        # the new rows start as copies of the last pretrained type (image), as
        # the original's `init_type_embedding` does.
        extra = np.repeat(np.asarray(loaded)[-1:], fresh.shape[0] - loaded.shape[0], axis=0)
        return np.concatenate([np.asarray(loaded), extra]).astype(fresh.dtype)
    if tuple(fresh.shape) != tuple(loaded.shape):
        problems.append(f"{name}: shape {list(loaded.shape)}, model expects {list(fresh.shape)}")
        return fresh
    return np.asarray(loaded, dtype=fresh.dtype)


def _more_rows(fresh: Any, loaded: Any) -> bool:
    return (
        len(fresh.shape) == len(loaded.shape) == 2
        and fresh.shape[1] == loaded.shape[1]
        and fresh.shape[0] > loaded.shape[0]
    )
