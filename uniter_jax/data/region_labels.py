"""Label files beside a sharded image store: each region's object and attribute.

The detector's extraction (`uniter_jax.features`) writes, beside each shard
`<root>/<shard>/` of its sharded image store, the file
`<root>/labels/<shard>.npz`: `ids` (the shard's image ids, in store order),
`num_boxes` `[N]`, and per region, flat over the images, `object_class` /
`attribute` (int16, 0 is background / no attribute) and `object_conf` /
`attribute_conf` (float32), the attribute pair only when the detector has the
attribute head. The store's blobs hold what training reads; these files are
for people (drawing regions with their names) and are carried along when the
store is re-sharded (`store_split`) and checked by `store_verify`: against the
shard's ids and region counts, and against the sha256 that `shards.json`
records for them (`store_sets.write_shard_index`).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence

import numpy as np

from uniter_jax.data.errors import DataError
from uniter_jax.data.files import exists, read_bytes, sha256, write_npz

LABELS = "labels"
LABEL_FIELDS = ("object_class", "object_conf", "attribute", "attribute_conf")
_DTYPES = {
    "object_class": np.int16,
    "object_conf": np.float32,
    "attribute": np.int16,
    "attribute_conf": np.float32,
}


def labels_path(root: str, shard: str) -> str:
    """The label file of shard `shard` of the sharded store at `root`."""
    return os.path.join(root, LABELS, f"{shard}.npz")


def has_labels(root: str, shard: str) -> bool:
    return exists(labels_path(root, shard))


def write_labels(path: str, ids: Sequence[str], parts: Sequence[dict[str, np.ndarray]]) -> None:
    """Writes one shard's label file whole, then renames it into place. `parts`
    holds, per image of `ids` (store order), its regions' `LABEL_FIELDS` arrays
    (those present; the same fields for every image)."""
    if len(ids) != len(parts) or not parts:
        raise ValueError(f"{len(ids)} ids and {len(parts)} label parts: need as many, >= 1")
    arrays = {
        "ids": np.array(ids, np.str_),
        "num_boxes": np.array([len(part["object_class"]) for part in parts], np.int32),
    }
    for key in LABEL_FIELDS:
        if key in parts[0]:
            arrays[key] = np.concatenate([part[key] for part in parts]).astype(_DTYPES[key])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_npz(f"{path}.tmp", arrays)
    os.replace(f"{path}.tmp", path)


def read_label_file(path: str) -> dict[str, np.ndarray]:
    """A label file's arrays, checked for their fields, dtypes and lengths."""
    blob = read_bytes(path)  # local or gs://
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"not a readable label file ({error})", file=path) from None
    for key in ("ids", "num_boxes", "object_class", "object_conf"):
        if key not in arrays:
            raise DataError("label file without this array", file=path, field=key)
    if len(arrays["ids"]) != len(arrays["num_boxes"]):
        raise DataError(
            f"{len(arrays['ids'])} ids but {len(arrays['num_boxes'])} counts",
            file=path,
            field="num_boxes",
        )
    counts = arrays["num_boxes"]
    if counts.dtype.kind not in "iu" or (counts < 0).any():
        raise DataError(
            f"region counts must be non-negative integers, got {counts.dtype}",
            file=path,
            field="num_boxes",
        )
    if ("attribute" in arrays) != ("attribute_conf" in arrays):
        raise DataError("attribute and attribute_conf come together", file=path, field="attribute")
    regions = int(counts.sum())
    for key in LABEL_FIELDS:
        if key not in arrays:
            continue
        if arrays[key].dtype != _DTYPES[key] or arrays[key].shape != (regions,):
            raise DataError(
                f"{arrays[key].dtype}{list(arrays[key].shape)}, expected "
                f"{np.dtype(_DTYPES[key])}[{regions}] (one per region)",
                file=path,
                field=key,
            )
    return arrays


def split_by_image(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Image id -> its regions' label arrays, from one label file's arrays."""
    offsets = np.concatenate([[0], np.cumsum(arrays["num_boxes"])])
    return {
        str(image_id): {
            k: arrays[k][offsets[i] : offsets[i + 1]] for k in LABEL_FIELDS if k in arrays
        }
        for i, image_id in enumerate(arrays["ids"])
    }


def check_shard_labels(root: str, entry: dict, ids: Sequence[str], num_boxes: np.ndarray) -> None:
    """Raises DataError unless shard `entry` (of `shards.json`) of the sharded
    store at `root` has a sound label file: its sha256 the one the entry lists
    (indexes written before label checksums list none: then only the rest is
    checked), its ids and region counts the shard's."""
    path = labels_path(root, entry["name"])
    if "labels_sha256" in entry and sha256(path) != entry["labels_sha256"]:
        raise DataError(
            "sha256 does not match the labels_sha256 of shards.json", file=path, field="sha256"
        )
    check_labels(path, ids, num_boxes)


def read_labels(root: str, shards: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Image id -> its regions' labels (store order), over `shards` of `root`."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for shard in shards:
        out.update(split_by_image(read_label_file(labels_path(root, shard))))
    return out


def check_labels(path: str, ids: Sequence[str], num_boxes: np.ndarray) -> None:
    """Raises DataError unless the label file at `path` describes exactly the
    images `ids` (in order) with `num_boxes` regions each."""
    arrays = read_label_file(path)
    found = [str(i) for i in arrays["ids"]]
    expected = [str(i) for i in ids]
    if found != expected:
        first = next(
            (p for p, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b),
            min(len(found), len(expected)),
        )
        raise DataError(
            f"holds {len(found)} images, the shard {len(expected)}; they first differ at "
            f"position {first}",
            file=path,
            field="ids",
        )
    counts = np.asarray(num_boxes, np.int64)
    differ = np.flatnonzero(arrays["num_boxes"].astype(np.int64) != counts)
    if differ.size:
        i = int(differ[0])
        raise DataError(
            f"{int(arrays['num_boxes'][i])} regions, the shard's store {int(counts[i])}",
            file=path,
            record=expected[i],
            field="num_boxes",
        )
