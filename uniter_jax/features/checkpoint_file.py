"""Reading a detector checkpoint file into `{key: numpy array}`, safely.

`.pkl` (py-bottom-up-attention's detectron2 pickle) goes through an unpickler
that builds only plain containers and numpy arrays, so nothing in the file
runs and no torch is needed; `.pth` / `.bin` / `.safetensors` go through
`uniter_jax.convert.torch_io` (`torch.load(..., weights_only=True)`).
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from uniter_jax.convert.layout import CheckpointError
from uniter_jax.convert.torch_io import load_state_dict
from uniter_jax.data.errors import DataError


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], str, str | None]:
    """`{key: array}`, the file format ("torch" or "pickle") and a pickle's author.

    `.pkl`: detectron2's pickle through an unpickler that builds only plain
    containers and numpy arrays (no torch needed). Anything else: torch
    (`torch.load(..., weights_only=True)`) or safetensors, via
    `uniter_jax.convert.torch_io`.
    """
    if not os.path.isfile(path):
        raise DataError("checkpoint file not found", file=path)
    if path.endswith(".pkl"):
        state, author = _read_detectron2_pickle(path)
        return state, "pickle", author
    try:
        state = load_state_dict(path)
    except CheckpointError as error:
        raise DataError(str(error).removeprefix(f"{path}: "), file=path) from None
    return state, "torch", None


# The globals a detectron2 pickle of numpy arrays needs, nothing else: array and
# dtype reconstruction (numpy 1 and 2 module names), numpy scalars, OrderedDict,
# and `_codecs.encode`, which protocol 2 uses to rebuild `bytes`.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers and numpy arrays; any other global is refused
    before it is looked up, so nothing in the file runs."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _read_detectron2_pickle(path: str) -> tuple[dict[str, np.ndarray], str | None]:
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as error:
        raise DataError(
            f"refused to unpickle: the file asks for the global {error}, and only numpy "
            "arrays and plain containers are allowed (unpickling anything else can run code)",
            file=path,
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DataError(f"not a readable detectron2 pickle ({error})", file=path) from None
    if not isinstance(data, Mapping):
        raise DataError(f"expected a dict, got {type(data).__name__}", file=path)
    if "blobs" in data:
        raise DataError(
            "a Caffe2 / Detectron1 blob dict: its names are not detectron2's; "
            "use py-bottom-up-attention's converted .pkl",
            file=path,
        )
    model = data.get("model", data)
    if not isinstance(model, Mapping):
        raise DataError(f'"model" is a {type(model).__name__}, not a dict', file=path)
    state = {}
    for key, value in model.items():
        if not isinstance(value, np.ndarray | np.generic):
            raise DataError(f"entry {key!r} is a {type(value).__name__}, not an array", file=path)
        state[str(key)] = np.asarray(value)
    author = data.get("__author__")
    return state, None if author is None else str(author)
