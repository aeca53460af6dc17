"""File access for stores: local paths or gs:// (through tf.io.gfile), atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, TypeVar

import numpy as np

from uniter_jax.data.errors import DataError

# Every store folder holds this file; it is written last.
MANIFEST = "manifest.json"

T = TypeVar("T")
R = TypeVar("R")


def is_remote(path: str) -> bool:
    return "://" in str(path)


def open_file(path: str, mode: str = "rb") -> IO:
    """`open` for local paths, `tf.io.gfile.GFile` for gs:// and other URLs."""
    if is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.GFile(path, mode)
    return open(path, mode)


def exists(path: str) -> bool:
    if is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def read_bytes(path: str) -> bytes:
    """A whole file, local or remote; a missing or unreadable one is a DataError."""
    try:
        with open_file(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        raise DataError(f"cannot read ({e.strerror or e})", file=path) from None
    except Exception as e:  # tf.errors.OpError from gs:// and other remote paths
        if type(e).__module__.startswith("tensorflow"):
            raise DataError(f"cannot read ({getattr(e, 'message', e)})", file=path) from None
        raise


def read_json(path: str) -> Any:
    try:
        return json.loads(read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON ({e})", file=path) from None


def read_manifest(directory: str, fmt: str, version: int) -> dict[str, Any]:
    """A store's manifest, checked to be of format `fmt` and `version`."""
    path = os.path.join(directory, MANIFEST)
    manifest = read_json(path)
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != fmt
        or (manifest.get("version") != version)
    ):
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"not a version-{version} {fmt} store (format {found!r})", file=path)
    return manifest


def write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` with fixed zip timestamps: the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def sha256(path: str) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest()


def joined_sha256(digests: list[str]) -> str:
    """The checksum of several stores read as one: of their checksums, in order."""
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def map_ordered(
    function: Callable[[T], R], items: Sequence[T], *, workers: int = 16, chunk: int = 1024
) -> Iterator[R]:
    """`map(function, items)` on `workers` threads, results in order, at most
    `chunk` items in flight: reads of many small files from gs:// wait on the
    network, not the CPU."""
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(items), chunk):
            yield from pool.map(function, items[start : start + chunk])


def load_npz(path: str, *, expect_sha256: str | None = None) -> dict[str, np.ndarray]:
    """All arrays of an npz (never unpickled), checked against a sha256 if given."""
    data = read_bytes(path)
    if expect_sha256 is not None and hashlib.sha256(data).hexdigest() != expect_sha256:
        raise DataError("checksum does not match the manifest", file=path)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"not a readable npz ({e})", file=path) from None


@contextlib.contextmanager
def atomic_directory(
    directory: str, *, overwrite: bool = False, marker: str = MANIFEST
) -> Iterator[str]:
    """Yields a temporary sibling folder; renames it to `directory` on success.

    On any exception the temporary folder is removed, so `directory` is either
    absent, the old one, or complete: never partial. Local paths only (convert
    locally, then copy to gs://). `overwrite` replaces only a folder holding
    `marker` (the file every complete folder of this kind holds), never
    another non-empty folder.
    """
    if is_remote(directory):
        raise DataError(
            "stores are written to local disk; copy them to gs:// afterwards", file=directory
        )
    directory = os.path.abspath(directory)
    _check_target(directory, overwrite, marker)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(directory)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
        _check_target(directory, overwrite, marker)  # again: something may have appeared meanwhile
        if os.path.exists(directory):
            old = f"{tmp}.old"
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def close_atomic(context: Any, exc_type: Any, exc: Any, tb: Any, finish: Any) -> None:
    """Ends an `atomic_directory` context from a writer's `__exit__`.

    On a clean exit `finish()` writes the last files first; if it fails, or the
    block failed, the temporary folder is removed and nothing is left behind.
    """
    if exc_type is None:
        try:
            finish()
        except BaseException as e:
            context.__exit__(type(e), e, e.__traceback__)
            raise
    context.__exit__(exc_type, exc, tb)


def _check_target(directory: str, overwrite: bool, marker: str) -> None:
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            raise DataError("exists and is not a folder", file=directory)
        if not overwrite:
            raise DataError(
                "already exists (pass overwrite / --force to replace it)", file=directory
            )
        if os.listdir(directory) and not os.path.exists(os.path.join(directory, marker)):
            raise DataError("not empty and not a store: refusing to replace it", file=directory)
