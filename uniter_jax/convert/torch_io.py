"""Reading and writing PyTorch state dicts (`.pt`, `.bin`, `.safetensors`) as numpy.

torch is imported only here and only when a pickle-based file is touched;
`.safetensors` needs no torch. Pickle files are loaded with
`weights_only=True`: a file holding anything but tensors and plain containers
is refused, never executed.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from uniter_jax.convert.layout import CheckpointError

_SAFETENSORS = ".safetensors"
# Wrappers some training scripts put around the state dict.
_WRAPPER_KEYS = ("state_dict", "model", "module")


def _torch():
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            "reading or writing .pt/.bin checkpoints needs PyTorch, which is optional: "
            "pip install torch==2.13.0 (the CPU build), or use a .safetensors file"
        ) from None
    return torch


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a state dict into numpy arrays (bf16 tensors become fp32)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.endswith(_SAFETENSORS):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors and plain "
            f"containers, and unpickling them could run code ({str(e).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
    return _to_numpy(_unwrap(obj, path), path)


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict (a mapping), got {type(obj).__name__}"
        )
    holds_tensors = any(hasattr(v, "shape") for v in obj.values())
    for key in _WRAPPER_KEYS:
        if not holds_tensors and isinstance(obj.get(key), Mapping):
            return _unwrap(obj[key], path)
    return obj


def _to_numpy(state: Mapping[str, Any], path: str) -> dict[str, np.ndarray]:
    torch = _torch()
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        out[key] = value.numpy().copy()
    return out


def save_state_dict(state: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes `{name: array}` as a `.pt` (torch.save) or `.safetensors` file.

    Written to a temporary name and renamed, so a crash leaves no partial file.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        if path.endswith(_SAFETENSORS):
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp)
        else:
            torch = _torch()
            tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
            torch.save(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
