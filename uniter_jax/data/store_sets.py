"""Stores read as one: a dataset's several text or image stores, and sharded stores.

A dataset of the pretraining mix names one or more text stores and one or more
image stores (COCO's train and restval captions over its train2014 and
val2014 features, as the original's configs list them). Each entry may also
be a *sharded store*: a folder holding `shards.json` and one complete store
per shard, so that a corpus of millions of images can be written by many
workers and read from local disk or gs://:

  shards.json        {"format": "uniter_jax.shards", "version": 1, "kind": "text" | "image",
                      "shards": [{"name": "00000-of-00004", "count": N, "sha256": ...}, ...]}
  00000-of-00004/    a text or image store (`manifest.json`, ...)

`count` is the shard's examples or images; `sha256` its manifest's data or
index checksum; `labels_sha256`, on image shards that have one, the checksum
of the shard's `labels/<name>.npz` (regions' object and attribute labels,
`region_labels`). Positions run through the stores in the order given (and
shards in their index's order); ids must be unique across them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from uniter_jax.data import image_store, region_labels, text_store
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import MANIFEST, exists, read_json, sha256, write_json
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore

SHARDS = "shards.json"
FORMAT = "uniter_jax.shards"
VERSION = 1
KINDS = ("text", "image")
# A plain store's kind, by its manifest's format.
KIND_OF_FORMAT = {text_store.FORMAT: "text", image_store.FORMAT: "image"}


def shard_name(index: int, count: int) -> str:
    return f"{index:05d}-of-{count:05d}"


def read_shard_index(directory: str) -> dict | None:
    """The shard index of a sharded store, or None for a plain store."""
    path = os.path.join(directory, SHARDS)
    if not exists(path):
        return None
    index = read_json(path)
    if not isinstance(index, dict) or (index.get("format"), index.get("version")) != (
        FORMAT,
        VERSION,
    ):
        raise DataError(f"not a version-{VERSION} {FORMAT} index", file=path)
    if index.get("kind") not in KINDS or not index.get("shards"):
        raise DataError(f"kind must be one of {KINDS} and shards non-empty", file=path)
    for position, shard in enumerate(index["shards"]):
        missing = sorted({"name", "count", "sha256"} - set(shard))
        if missing:
            raise DataError(f"shard entry without {missing}", file=path, record=position)
    return index


def store_kind(path: str) -> str:
    """What the store or sharded store at `path` holds: "text" or "image"."""
    index = read_shard_index(path)
    if index is not None:
        return index["kind"]
    manifest_path = os.path.join(path, MANIFEST)
    manifest = read_json(manifest_path)
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found not in KIND_OF_FORMAT:
        raise DataError(
            f"neither a text nor an image store, nor a sharded store (format {found!r})",
            file=manifest_path,
        )
    return KIND_OF_FORMAT[found]


def store_folders(paths: str | Sequence[str], kind: str) -> list[tuple[str, dict | None]]:
    """The store folders that `paths` (one or several, each a store or a
    sharded store of `kind`) stand for, in order, each with its shard entry
    (None for a plain store)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise DataError(f"no {kind} store given")
    out = []
    for path in paths:
        index = read_shard_index(path)
        if index is None:
            out.append((path, None))
            continue
        if index["kind"] != kind:
            raise DataError(
                f"a sharded {index['kind']} store where a {kind} store is expected",
                file=os.path.join(path, SHARDS),
            )
        out.extend((os.path.join(path, shard["name"]), shard) for shard in index["shards"])
    return out


def checksum(store: TextStore | ImageStore) -> str:
    """What a shard entry's `sha256` holds: the store's data or index checksum."""
    manifest = store.manifest
    return manifest["data_sha256"] if "data_sha256" in manifest else manifest["index_sha256"]


def _check_shard(store: TextStore | ImageStore, entry: dict | None) -> None:
    """Raises DataError when a shard does not match its entry in `shards.json`."""
    if entry is None:
        return
    if checksum(store) != entry["sha256"] or len(store) != entry["count"]:
        raise DataError(
            f"holds {len(store)} records with checksum {checksum(store)[:12]}, the shard index "
            f"says {entry['count']} with {entry['sha256'][:12]}: the shard was replaced",
            file=store.directory,
        )


def open_texts(paths: str | Sequence[str], *, name: str | None = None) -> TextStore:
    """One text store over `paths` (see the module docstring)."""
    stores = []
    for folder, entry in store_folders(paths, "text"):
        stores.append(TextStore(folder))
        _check_shard(stores[-1], entry)
    return TextStore.joined(stores, name=name or _name(paths))


def open_images(paths: str | Sequence[str], *, name: str | None = None) -> ImageStore:
    """One image store over `paths` (see the module docstring)."""
    stores = []
    for folder, entry in store_folders(paths, "image"):
        stores.append(ImageStore(folder))
        _check_shard(stores[-1], entry)
    return ImageStore.joined(stores, name=name or _name(paths))


def _name(paths: str | Sequence[str]) -> str:
    return paths if isinstance(paths, str) else " + ".join(paths)


def write_shard_index(directory: str, kind: str, names: Sequence[str]) -> dict:
    """Writes `directory/shards.json` over the complete stores `names` in it
    (in that order), with the sha256 of each image shard's label file where it
    has one (`region_labels`); returns the index."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    read = TextStore if kind == "text" else ImageStore
    shards = []
    for name in names:
        store = read(os.path.join(directory, name))
        entry = {"name": name, "count": len(store), "sha256": checksum(store)}
        if region_labels.has_labels(directory, name):
            entry["labels_sha256"] = sha256(region_labels.labels_path(directory, name))
        shards.append(entry)
    index = {"format": FORMAT, "version": VERSION, "kind": kind, "shards": shards}
    # Replaced in one step: a reader sees the old index or the new, never half of one.
    tmp = os.path.join(directory, f".{SHARDS}.tmp")
    write_json(tmp, index)
    os.replace(tmp, os.path.join(directory, SHARDS))
    return index
