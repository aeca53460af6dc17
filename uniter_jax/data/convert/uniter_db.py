"""Reading the original UNITER LMDB databases (ChenRocks/UNITER), never unpickling.

Both kinds of db are an LMDB folder (`data.mdb`) read here read-only and
without a lock file, their records streamed in key order.

Image db: keyed by image file name (`coco_train2014_000000391895.npz`), one
value per image holding `features` `[N, D]` fp16, `norm_bb` `[N, 6]`, `conf`
`[N]` and `soft_labels` `[N, L]` (`IMAGE_KEYS`; other arrays are ignored), and
a `__keys__` entry (a JSON list of the names) that is no image. A value is
either the bytes of an `np.savez_compressed` archive (the db's compressed
variant, recognised by the zip magic `PK`) or msgpack in which msgpack_numpy
wrote each array as a map `{nd: True, type: "<f2", kind: "", shape: [...],
data: bytes}`. msgpack_numpy pickles object arrays (kind `O`): those are
refused, as are object arrays inside an archive.

Text db: `lz4.frame(msgpack(record))` keyed by text id, each record a map
(`uniter_lmdb` reads its fields).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import lmdb
import lz4.frame
import msgpack
import numpy as np

from uniter_jax.data.errors import DataError

IMAGE_KEYS = ("features", "norm_bb", "conf", "soft_labels")
# scripts/convert_imgdir.py stores the list of image names under this key.
NAMES_KEY = b"__keys__"
# msgpack_numpy writes `dtype.str`: byte order, kind, item size ("<f2", "|u1").
_NUMERIC_DTYPE = re.compile(r"[<>|=]?[biuf][0-9]{1,2}")
_MAX_NDIM = 8


# ---------------------------------------------------------------- the LMDB folder


@contextlib.contextmanager
def open_lmdb(db_dir: str) -> Iterator[lmdb.Environment]:
    """The LMDB environment in `db_dir`, read-only and without a lock file."""
    if not os.path.isdir(db_dir):
        raise DataError("LMDB folder not found", file=db_dir)
    try:
        env = lmdb.open(db_dir, readonly=True, lock=False, create=False, subdir=True)
    except lmdb.Error as e:
        # The original keeps each db in a folder next to its nbb_*.json: name it.
        inside = sorted(
            name
            for name in os.listdir(db_dir)
            if os.path.isfile(os.path.join(db_dir, name, "data.mdb"))
        )
        hint = f"; LMDB folders inside: {', '.join(inside)}" if inside else ""
        raise DataError(f"not an LMDB database ({e}){hint}", file=db_dir) from None
    try:
        yield env
    finally:
        env.close()


def count_records(env: lmdb.Environment, db_dir: str, skip: tuple[bytes, ...]) -> int:
    """The number of records, `skip` keys left out; no record at all is an error."""
    with env.begin() as txn:
        count = txn.stat()["entries"] - sum(txn.get(key) is not None for key in skip)
    if count <= 0:
        raise DataError("the database has no records", file=db_dir)
    return count


def read_entries(
    env: lmdb.Environment, db_dir: str, skip: tuple[bytes, ...]
) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) but the `skip` keys, in key order, streamed."""
    try:
        with env.begin(buffers=False) as txn:
            for key, value in txn.cursor():
                if key not in skip:
                    yield key, value
    except lmdb.Error as e:
        raise DataError(f"cannot read the LMDB database ({e})", file=db_dir) from None


def record_name(key: bytes) -> str:
    """A key as a record's location in messages (undecodable bytes escaped)."""
    return key.decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------- msgpack values


def str_keys(mapping: dict) -> dict:
    """Map keys as str: msgpack_numpy writes `b"nd"`, records written in raw mode `b"..."`."""
    return {
        key.decode("utf-8", "replace") if isinstance(key, bytes) else key: value
        for key, value in mapping.items()
    }


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def msgpack_ndarray(value: Any, field: str) -> np.ndarray:
    """A msgpack_numpy array map -> a numpy array, read with `np.frombuffer`.

    Accepts real-number and bool dtypes only; object arrays (kind `O`, which
    msgpack_numpy pickles) and structured ones (kind `V`) raise DataError.
    A numpy scalar (`nd` false) becomes a 0-d array.
    """
    if not isinstance(value, dict) or not any(key in value for key in ("nd", b"nd")):
        raise DataError(
            f"expected a msgpack_numpy array map, got {type(value).__name__}", field=field
        )
    value = str_keys(value)
    kind, dtype = _text(value.get("kind", "")), _text(value.get("type"))
    if kind == "O" or (isinstance(dtype, str) and "O" in dtype):
        raise DataError("object array: msgpack_numpy pickles these, never unpickled", field=field)
    if kind != "":
        raise DataError(f"array kind {kind!r} (structured) is not supported", field=field)
    if not isinstance(dtype, str) or not _NUMERIC_DTYPE.fullmatch(dtype):
        raise DataError(f"array type {str(dtype)[:24]!r} is not a numeric dtype", field=field)
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise DataError(f"array type {dtype!r} is not a numpy dtype", field=field) from None
    if value["nd"] is True:
        shape = value.get("shape")
        if not (
            isinstance(shape, list)
            and len(shape) <= _MAX_NDIM
            and all(type(size) is int and size >= 0 for size in shape)
        ):
            raise DataError(f"bad array shape {str(shape)[:40]}", field=field)
    elif value["nd"] is False:
        shape = []
    else:
        raise DataError("'nd' is neither true nor false", field=field)
    data = value.get("data")
    if not isinstance(data, bytes):
        raise DataError("array data is not bytes", field=field)
    if math.prod(shape) * dtype.itemsize != len(data):
        raise DataError(f"{len(data)} data bytes for a {shape} {dtype} array", field=field)
    return np.frombuffer(data, dtype).reshape(shape)


def text_record(value: bytes) -> dict[str, Any]:
    """One text-db value (`lz4.frame(msgpack(map))`) -> the map, keys as str."""
    try:
        record = msgpack.unpackb(lz4.frame.decompress(value), raw=False)
    except Exception as e:  # lz4 and msgpack raise several types for corrupt bytes
        raise DataError(
            f"not lz4-compressed msgpack ({type(e).__name__}: {e})", field="value"
        ) from None
    if not isinstance(record, dict):
        raise DataError(f"expected a msgpack map, got {type(record).__name__}", field="value")
    return str_keys(record)


# ---------------------------------------------------------------- image values


def image_arrays(value: bytes) -> dict[str, np.ndarray]:
    """One image-db value (npz archive or msgpack) -> its `IMAGE_KEYS` arrays by name."""
    return _npz_arrays(value) if value[:2] == b"PK" else _msgpack_arrays(value)


def _npz_arrays(value: bytes) -> dict[str, np.ndarray]:
    try:
        archive = np.load(io.BytesIO(value), allow_pickle=False)
    except Exception as e:  # numpy/zipfile raise many types for corrupt bytes; all are bad input
        raise DataError(
            f"not a readable npz archive ({type(e).__name__}: {e})", field="value"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError("not an npz archive", field="value")
    arrays = {}
    with archive:
        for key in IMAGE_KEYS:
            if key in archive.files:
                try:
                    arrays[key] = archive[key]
                except Exception as e:  # as above; object arrays fail here, unpickled never
                    raise DataError(
                        f"unreadable array ({type(e).__name__}: {e})", field=key
                    ) from None
    return arrays


def _msgpack_arrays(value: bytes) -> dict[str, np.ndarray]:
    try:
        # raw=True reads str and bin alike as bytes, so old (use_bin_type=False) dbs work too.
        record = msgpack.unpackb(value, raw=True)
    except Exception as e:  # msgpack raises several types for corrupt bytes
        raise DataError(
            f"neither an npz archive nor msgpack ({type(e).__name__}: {e})", field="value"
        ) from None
    if not isinstance(record, dict):
        raise DataError(f"expected a msgpack map, got {type(record).__name__}", field="value")
    record = str_keys(record)
    return {key: msgpack_ndarray(record[key], key) for key in IMAGE_KEYS if key in record}
