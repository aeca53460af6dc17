"""Splits a text or image store into a sharded store (`convert shard`).

The shards hold contiguous runs of the source's records, in order, as even as
can be, so `open_texts` / `open_images` on the sharded store read exactly
the source's records in the source's order (an image store's blobs byte for
byte: they are decoded and encoded with the same dtypes). The source may
itself be sharded or remote; the sharded store is written locally and
atomically, like every store, with `shards.json` last. A sharded image store
whose shards have label files (`region_labels`, as extraction writes them)
gets them split the same way.
"""

from __future__ import annotations

import dataclasses
import os

from tqdm import tqdm

from uniter_jax.data import region_labels
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import atomic_directory, map_ordered
from uniter_jax.data.image_store import ImageStore, ImageStoreWriter
from uniter_jax.data.store_sets import (
    SHARDS,
    open_images,
    open_texts,
    read_shard_index,
    shard_name,
    store_kind,
    write_shard_index,
)
from uniter_jax.data.text_store import TextStore, TextStoreWriter


@dataclasses.dataclass(frozen=True)
class ShardSummary:
    """What `split_store` wrote."""

    out_dir: str
    kind: str  # "text" or "image"
    records: int  # texts or images over all shards
    shards: int

    def report(self) -> str:
        what = "texts" if self.kind == "text" else "images"
        return f"wrote {self.records} {what} in {self.shards} shards to {self.out_dir}"


def shard_bounds(count: int, num_shards: int) -> list[int]:
    """`[num_shards + 1]` record positions: shard `i` holds `bounds[i]:bounds[i + 1]`."""
    return [count * i // num_shards for i in range(num_shards + 1)]


def split_store(
    source: str,
    out_dir: str,
    *,
    num_shards: int,
    overwrite: bool = False,
    progress: bool = True,
) -> ShardSummary:
    """Writes the store (or sharded store) `source` as a sharded store of
    `num_shards` non-empty shards at `out_dir`; nothing is left there on failure."""
    kind = store_kind(source)
    store = open_texts(source) if kind == "text" else open_images(source)
    if not 1 <= num_shards <= len(store):
        raise DataError(
            f"cannot split {len(store)} records into {num_shards} non-empty shards", file=source
        )
    bounds = shard_bounds(len(store), num_shards)
    names = [shard_name(i, num_shards) for i in range(num_shards)]
    labels = _source_labels(source) if kind == "image" else None
    with (
        atomic_directory(out_dir, overwrite=overwrite, marker=SHARDS) as root,
        tqdm(total=len(store), unit=kind, disable=not progress) as bar,
    ):
        for name, start, stop in zip(names, bounds[:-1], bounds[1:], strict=True):
            about = {"sharded_from": source, "shard": name, "source": store.manifest["source"]}
            path = os.path.join(root, name)
            if isinstance(store, TextStore):
                _copy_texts(store, range(start, stop), path, about, bar)
            else:
                _copy_images(store, range(start, stop), path, about, bar)
                if labels is not None:
                    ids = [str(store.ids[i]) for i in range(start, stop)]
                    parts = [labels[i] for i in ids]
                    region_labels.write_labels(region_labels.labels_path(root, name), ids, parts)
        write_shard_index(root, kind, names)
    return ShardSummary(out_dir, kind, len(store), num_shards)


def _copy_texts(texts: TextStore, index: range, path: str, source: dict, bar: tqdm) -> None:
    manifest = texts.manifest
    with TextStoreWriter(
        path,
        task=manifest["task"],
        vocab=manifest["vocab"],
        max_txt_len=manifest["max_txt_len"],
        ragged=manifest["ragged"],
        source=source,
    ) as writer:
        for i in index:
            fields = {name: texts.field(name, i) for name in texts.fields}
            writer.add(
                str(texts.text_ids[i]), str(texts.image_ids[i]), texts.input_ids(i), **fields
            )
            bar.update()


def _copy_images(images: ImageStore, index: range, path: str, source: dict, bar: tqdm) -> None:
    # Blobs are read on threads (the source may be on gs://), each crc32-checked.
    images.position(str(images.ids[0]))  # builds the id lookup once, before the threads
    with ImageStoreWriter(
        path, feature_dim=images.feature_dim, num_labels=images.num_labels, source=source
    ) as writer:
        for regions in map_ordered(lambda i: images.get(str(images.ids[i])), index):
            writer.add(regions)
            bar.update()


def _source_labels(source: str) -> dict[str, dict] | None:
    """Image id -> region labels of a sharded image store whose shards all have
    label files, each checked (`region_labels.check_shard_labels`) before it is
    copied; None when none has (a store of another origin)."""
    index = read_shard_index(source)
    if index is None:
        return None
    names = [shard["name"] for shard in index["shards"]]
    have = [region_labels.has_labels(source, name) for name in names]
    if not any(have):
        return None
    if not all(have):
        missing = names[have.index(False)]
        raise DataError(
            f"shard {missing} has no label file while others have: the labels would be lost",
            file=region_labels.labels_path(source, missing),
        )
    for entry in index["shards"]:
        shard = ImageStore(os.path.join(source, entry["name"]), verify_index=False)
        region_labels.check_shard_labels(source, entry, shard.ids, shard.num_boxes)
    return region_labels.read_labels(source, names)
