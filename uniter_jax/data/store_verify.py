"""Checks every checksum of a store or sharded store (`convert verify`).

The checksums form a chain: a sharded store's `shards.json` holds each shard's
record count and manifest checksum; a manifest holds the sha256 of its data
(text stores: `examples.npz`) or index (image stores: `index.npz`); an image
store's index holds each region blob's crc32 and region count, so its size.
An image shard's label file (`region_labels`) is checked against the sha256
`shards.json` lists for it and against the shard's ids and region counts.
`verify_store` reads every file of that chain once, from local disk or
gs://, and reports each store (each shard) with the first problem it found,
by file, record and field. It never stops at the first bad shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zlib

from tqdm import tqdm

from uniter_jax.data import image_store, region_labels, text_store
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import MANIFEST, map_ordered, read_bytes, read_json
from uniter_jax.data.image_store import ImageStore, blob_path
from uniter_jax.data.store_sets import KIND_OF_FORMAT, SHARDS, read_shard_index
from uniter_jax.data.text_store import TextStore


@dataclasses.dataclass
class StoreReport:
    """What verifying one store (a plain store, or one shard) found."""

    path: str  # the store's folder
    kind: str  # "text", "image", or "?" when its manifest cannot be read
    records: int = 0  # examples of a text store, images of an image store
    regions: int = 0  # image stores: regions over all images
    bytes: int = 0  # bytes of the checksummed files: data or index, blobs
    problem: DataError | None = None  # the first problem found
    num_problems: int = 0

    @property
    def ok(self) -> bool:
        return self.num_problems == 0

    def add(self, problem: DataError) -> None:
        if self.problem is None:
            self.problem = problem
        self.num_problems += 1


@dataclasses.dataclass
class _Opened:
    """A store whose manifest and data/index checksum were checked."""

    report: StoreReport
    manifest: dict | None = None  # None when unreadable
    store: TextStore | ImageStore | None = None  # None when it cannot be read


def verify_store(path: str, *, progress: bool = False, workers: int = 16) -> list[StoreReport]:
    """The reports of the store at `path`: one, or one per shard (in index order)
    of a sharded store. `progress` shows a bar over the region blobs, which are
    read on `workers` threads."""
    try:
        index = read_shard_index(path)
    except DataError as e:
        report = StoreReport(path, "?")
        report.add(e)
        return [report]
    if index is None:
        opened = [_open(path, kind=None)]
    else:
        opened = [_open(os.path.join(path, s["name"]), kind=index["kind"]) for s in index["shards"]]
        for position, (shard, entry) in enumerate(zip(opened, index["shards"], strict=True)):
            _check_entry(shard, entry, os.path.join(path, SHARDS), position)
    images = [o for o in opened if isinstance(o.store, ImageStore)]
    total = sum(len(o.store) for o in images)
    with tqdm(total=total, unit="blob", disable=not progress or not total) as bar:
        for o in images:
            _check_blobs(o.store, o.report, bar, workers)
    if index is not None:
        _check_labels(opened, index["shards"], path)
        _check_joined(opened, path)
    return [o.report for o in opened]


def _open(directory: str, *, kind: str | None) -> _Opened:
    """Reads a store's manifest and checks its data or index checksum and counts;
    `kind` is what a sharded store's index says its shards are."""
    report = StoreReport(directory, kind or "?")
    out = _Opened(report)
    manifest_path = os.path.join(directory, MANIFEST)
    try:
        manifest = read_json(manifest_path)
        found = manifest.get("format") if isinstance(manifest, dict) else None
        if found not in KIND_OF_FORMAT:
            raise DataError(f"neither a text nor an image store (format {found!r})")
        if kind is not None and KIND_OF_FORMAT[found] != kind:
            raise DataError(f"a {KIND_OF_FORMAT[found]} store in a sharded {kind} store")
    except DataError as e:
        report.add(e.located(file=manifest_path))
        return out
    report.kind, out.manifest = KIND_OF_FORMAT[found], manifest
    text = report.kind == "text"
    data = text_store.DATA if text else image_store.INDEX
    key, count = ("data_sha256", "num_examples") if text else ("index_sha256", "num_images")
    report.records = int(manifest.get(count, 0))
    report.regions = int(manifest.get("num_regions", 0))
    data_path = os.path.join(directory, data)
    try:
        blob = read_bytes(data_path)
        report.bytes += len(blob)
        if hashlib.sha256(blob).hexdigest() != manifest.get(key):
            raise DataError(f"sha256 does not match the manifest's {key}", field=key)
        # Checked above; the store reads the file once more, without checking.
        store = (
            TextStore(directory, verify=False)
            if text
            else ImageStore(directory, verify_index=False)
        )
    except DataError as e:
        report.add(e.located(file=data_path))
        return out
    except KeyError as e:
        report.add(DataError(f"manifest without {e}", file=manifest_path))
        return out
    counts = [(count, len(store), report.records)]
    if isinstance(store, ImageStore):
        regions = int(store.num_boxes.sum())
        counts += [("num_regions", regions, report.regions), ("conf", len(store.conf), regions)]
    for field, found, expected in counts:
        if found != expected:
            report.add(
                DataError(f"holds {found}, expected {expected}", file=data_path, field=field)
            )
    out.store = store
    return out


def _check_entry(shard: _Opened, entry: dict, index_path: str, position: int) -> None:
    """Compares a shard with its entry in `shards.json` (record `position`)."""
    if shard.manifest is None:
        return
    report, name = shard.report, entry["name"]
    key = "data_sha256" if report.kind == "text" else "index_sha256"
    if report.records != entry["count"]:
        report.add(
            DataError(
                f"shard {name} holds {report.records} records, the index says {entry['count']}",
                file=index_path,
                record=position,
                field="count",
            )
        )
    if shard.manifest.get(key) != entry["sha256"]:
        report.add(
            DataError(
                f"shard {name}'s manifest {key} differs from the index's: the shard was replaced",
                file=index_path,
                record=position,
                field="sha256",
            )
        )


def _check_labels(shards: list[_Opened], entries: list[dict], root: str) -> None:
    """Each image shard's label file (`region_labels`), where one is there or
    the index lists one: its sha256 as indexed (an index written before label
    checksums lists none), its ids and region counts the shard's. Label files
    for some shards and not for others are reported on those without."""
    labelled = [
        region_labels.has_labels(root, entry["name"]) or "labels_sha256" in entry
        for entry in entries
    ]
    for shard, entry, has in zip(shards, entries, labelled, strict=True):
        path = region_labels.labels_path(root, entry["name"])
        try:
            if not has:
                if any(labelled):
                    raise DataError("no label file, where other shards have one", field="labels")
                continue
            shard.report.bytes += len(read_bytes(path))
            if isinstance(shard.store, ImageStore):
                region_labels.check_shard_labels(
                    root, entry, shard.store.ids, shard.store.num_boxes
                )
        except DataError as e:
            shard.report.add(e.located(file=path))


def _check_blobs(store: ImageStore, report: StoreReport, bar: tqdm, workers: int) -> None:
    """Each region blob: present, `num_boxes x bytes per region` long, crc32 as indexed."""
    per_region = sum(f.width * f.dtype.itemsize for f in store.fields)

    def check(i: int) -> tuple[int, DataError | None]:
        path, image_id = blob_path(store.directory, i), str(store.ids[i])
        try:
            blob = read_bytes(path)
        except DataError as e:
            return 0, DataError(e.message, file=path, record=image_id)
        expected = int(store.num_boxes[i]) * per_region
        if len(blob) != expected:
            return len(blob), DataError(
                f"holds {len(blob)} bytes, {store.num_boxes[i]} regions need {expected}",
                file=path,
                record=image_id,
                field="size",
            )
        if zlib.crc32(blob) != int(store.crc32[i]):
            return len(blob), DataError(
                "crc32 does not match the index", file=path, record=image_id, field="crc32"
            )
        return len(blob), None

    for size, problem in map_ordered(check, range(len(store)), workers=workers):
        report.bytes += size
        if problem is not None:
            report.add(problem)
        bar.update()


def _check_joined(opened: list[_Opened], path: str) -> None:
    """What reading the shards as one checks besides each: ids unique across
    shards, the same vocabulary and fields (texts) or feature width (images)."""
    stores = [o.store for o in opened]
    if any(store is None for store in stores):
        return  # a bad shard is reported already; its ids may be unreadable
    join = TextStore.joined if isinstance(stores[0], TextStore) else ImageStore.joined
    try:
        join(stores, name=path)
    except DataError as e:
        owner = next((o for o in opened if o.report.path == e.file), opened[-1])
        owner.report.add(e)
