"""Reading untrusted values: ids, sizes, numeric arrays, `.npy`/`.npz` without pickle.

Every failure is a DataError naming the field; nothing here unpickles.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from uniter_jax.data.errors import DataError

# docs/original.md, Region features: the BUTD detector's classes, background (0) first.
NUM_LABELS = 1601
# Sizes and counts are int32 downstream; larger values are corrupt input.
_MAX_INT = 2**31 - 1


def image_id(value: str | bytes, field: str = "image_id") -> str:
    """A non-empty, printable id without surrounding spaces (ids become file names)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError("image id is not UTF-8", field=field) from None
    if not value or not value.isprintable() or value != value.strip() or "/" in value:
        raise DataError(f"bad image id {value!r}", field=field)
    return value


def positive_int(value: bytes | np.ndarray, field: str) -> int:
    """A positive int32 from TSV text (`b"640"`) or a size-1 numeric array."""
    if isinstance(value, bytes):
        number = int(value) if value.isdigit() else 0
    else:
        array = np.asarray(value)
        if array.size != 1 or array.dtype.kind not in "iuf":
            raise DataError(
                f"expected one number, got {array.dtype} {list(array.shape)}", field=field
            )
        number = array.reshape(()).item()
        number = int(number) if np.isfinite(number) and number == int(number) else 0
    if not 0 < number <= _MAX_INT:
        raise DataError(f"{str(value)[:24]} is not a positive integer below 2**31", field=field)
    return number


def numeric(value: Any, field: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """`value` as a finite real array of `shape` (None: any size); dtype kept."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise DataError(f"dtype {array.dtype} is not a real number type", field=field)
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
    ):
        want = ["*" if size is None else size for size in shape]
        raise DataError(f"shape {list(array.shape)}, expected {want}", field=field)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError("NaN or inf values", field=field)
    return array


def probabilities(value: Any, field: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """Like `numeric`, and every value in [0, 1]."""
    array = numeric(value, field, shape)
    if array.size and (array.min() < 0 or array.max() > 1):
        raise DataError("values outside [0, 1]", field=field)
    return array


def soft_label_conf(
    soft_labels: Any, num_boxes: int, num_labels: int = NUM_LABELS
) -> tuple[np.ndarray, np.ndarray]:
    """Validates `[n, num_labels]` class probabilities; returns them and the `[n]` confidence.

    The confidence is the highest non-background probability, the quantity the
    BUTD extractor thresholds (docs/original.md, Region features).
    """
    soft_labels = probabilities(soft_labels, "soft_labels", (num_boxes, num_labels))
    return soft_labels, soft_labels[:, 1:].max(axis=1).astype(np.float32)


def load_npy(path: str, field: str) -> np.ndarray:
    """One `.npy` array, memory-mapped first so a lying header cannot force a huge allocation."""
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(mapped, np.ndarray):
            mapped.close()
            raise DataError("not an .npy array", file=path, field=field)
        return np.array(mapped)
    except FileNotFoundError:
        raise DataError("file not found", file=path, field=field) from None
    except DataError:
        raise
    except Exception as e:  # numpy/zipfile raise many types for corrupt bytes; all are bad input
        raise DataError(
            f"not a readable .npy array ({type(e).__name__}: {e})", file=path, field=field
        ) from None


def load_npz(path: str, keys: Iterable[str] | None) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` archive named in `keys` that it holds (others
    ignored); every array when `keys` is None."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError("not an .npz archive", file=path)
        with archive:
            names = archive.files if keys is None else keys
            return {key: archive[key] for key in names if key in archive.files}
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except DataError:
        raise
    except Exception as e:  # as in load_npy: any failure to parse untrusted bytes is bad input
        raise DataError(
            f"not a readable .npz archive ({type(e).__name__}: {e})", file=path
        ) from None
