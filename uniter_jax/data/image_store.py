"""The image store: region features, boxes, confidences and soft labels by image id.

Layout of a store folder (written atomically, readable locally or from gs://):

  manifest.json              format, dims, counts, sha256 of index.npz, source
  index.npz                  per image: id, num_boxes, crc32 of its blob; and every
                             region's confidence (flat, fp32), so the pipeline can
                             plan region counts without reading blobs
  regions/SSSSS/IIIIIIII.rgn one blob per image (shard SSSSS, image index I)

A blob is the raw little-endian concatenation of `features` float16 `[n, D]`,
`boxes` float32 `[n, 7]`, `conf` float32 `[n]` and, when the store has them,
`soft_labels` float16 `[n, L]`. One file per image gives random access by id
(ITM negatives, joins with text) through `tf.io.read_file`, from local disk
or gs://, with nothing else to parse.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from uniter_jax.data.errors import DataError, check_unique
from uniter_jax.data.files import (
    MANIFEST,
    atomic_directory,
    close_atomic,
    joined_sha256,
    load_npz,
    read_bytes,
    read_manifest,
    sha256,
    write_json,
    write_npz,
)
from uniter_jax.data.regions import BOX_DIM, ImageRegions

FORMAT = "uniter_jax.image_store"
VERSION = 1
INDEX = "index.npz"
IMAGES_PER_SHARD = 1000


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    dtype: np.dtype
    width: int  # values per region; 1 means a `[n]` vector


def blob_fields(feature_dim: int, num_labels: int | None) -> list[Field]:
    """The arrays of a blob, in order."""
    fields = [
        Field("features", np.dtype("<f2"), feature_dim),
        Field("boxes", np.dtype("<f4"), BOX_DIM),
        Field("conf", np.dtype("<f4"), 1),
    ]
    if num_labels:
        fields.append(Field("soft_labels", np.dtype("<f2"), num_labels))
    return fields


def encode(regions: ImageRegions, fields: list[Field]) -> bytes:
    """One image -> blob bytes."""
    parts = []
    for field in fields:
        value = getattr(regions, field.name)
        parts.append(np.ascontiguousarray(value, field.dtype).tobytes())
    return b"".join(parts)


def decode(blob: bytes, image_id: str, num_boxes: int, fields: list[Field]) -> ImageRegions:
    """Blob bytes -> one image's arrays (numpy)."""
    arrays: dict[str, Any] = {"soft_labels": None}
    offset = 0
    for field in fields:
        count = num_boxes * field.width
        value = np.frombuffer(blob, field.dtype, count, offset)
        shape = (num_boxes,) if field.width == 1 else (num_boxes, field.width)
        arrays[field.name] = value.reshape(shape)
        offset += count * field.dtype.itemsize
    if offset != len(blob):
        raise DataError(f"blob holds {len(blob)} bytes, expected {offset}", record=image_id)
    return ImageRegions(image_id=image_id, **arrays)


_INDEX_ARRAYS = ("num_boxes", "crc32", "conf")


def blob_path(root: str, index: int) -> str:
    return os.path.join(root, "regions", f"{index // IMAGES_PER_SHARD:05d}", f"{index:08d}.rgn")


class ImageStoreWriter:
    """Writes a store; use as a context manager so a failure leaves nothing behind.

    with ImageStoreWriter(out, feature_dim=2048, num_labels=1601) as w:
        w.add(regions)
    """

    def __init__(
        self,
        directory: str,
        *,
        feature_dim: int,
        num_labels: int | None = None,
        source: dict[str, Any] | None = None,
        overwrite: bool = False,
    ):
        self.directory = directory
        self.fields = blob_fields(feature_dim, num_labels)
        self.feature_dim, self.num_labels = feature_dim, num_labels
        self.source = source or {}
        self._overwrite = overwrite
        self._ids: dict[str, int] = {}
        self._num_boxes: list[int] = []
        self._crc: list[int] = []
        self._conf: list[np.ndarray] = []

    def __enter__(self) -> ImageStoreWriter:
        self._context = atomic_directory(self.directory, overwrite=self._overwrite)
        self._root = self._context.__enter__()
        return self

    def add(self, regions: ImageRegions) -> None:
        """Adds one image. Raises DataError for a duplicate id or mismatched dims."""
        if regions.image_id in self._ids:
            raise DataError("duplicate image id", record=regions.image_id)
        if regions.features.shape[1] != self.feature_dim:
            raise DataError(
                f"feature dimension {regions.features.shape[1]}, store has {self.feature_dim}",
                record=regions.image_id,
                field="features",
            )
        if (regions.soft_labels is None) != (not self.num_labels):
            want = "needs" if self.num_labels else "has no"
            raise DataError(
                f"the store {want} soft labels", record=regions.image_id, field="soft_labels"
            )
        index = len(self._num_boxes)
        blob = encode(regions, self.fields)
        path = blob_path(self._root, index)
        if index % IMAGES_PER_SHARD == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(blob)
        self._ids[regions.image_id] = index
        self._num_boxes.append(regions.num_boxes)
        self._crc.append(zlib.crc32(blob))
        self._conf.append(np.asarray(regions.conf, np.float32))

    def __len__(self) -> int:
        return len(self._num_boxes)

    def __exit__(self, exc_type, exc, tb) -> None:
        close_atomic(self._context, exc_type, exc, tb, self._finish)

    def _finish(self) -> None:
        if not self._num_boxes:
            raise DataError("no images to write", file=self.directory)
        index_path = os.path.join(self._root, INDEX)
        ids = np.array(list(self._ids), dtype=np.str_)
        write_npz(
            index_path,
            {
                "ids": ids,
                "num_boxes": np.array(self._num_boxes, np.int32),
                "crc32": np.array(self._crc, np.uint32),
                "conf": np.concatenate(self._conf),
            },
        )
        write_json(
            os.path.join(self._root, MANIFEST),
            {
                "format": FORMAT,
                "version": VERSION,
                "feature_dim": self.feature_dim,
                "num_labels": self.num_labels,
                "num_images": len(ids),
                "num_regions": int(sum(self._num_boxes)),
                "images_per_shard": IMAGES_PER_SHARD,
                "index_sha256": sha256(index_path),
                "source": self.source,
            },
        )


class ImageStore:
    """Reads a store written by ImageStoreWriter."""

    def __init__(self, directory: str, *, verify_index: bool = True):
        manifest = read_manifest(directory, FORMAT, VERSION)
        index_path = os.path.join(directory, INDEX)
        index = load_npz(
            index_path, expect_sha256=manifest["index_sha256"] if verify_index else None
        )
        self._set(directory, manifest, index, parts=((directory, 0),))

    def _set(
        self,
        directory: str,
        manifest: dict[str, Any],
        index: dict[str, np.ndarray],
        parts: tuple[tuple[str, int], ...],
    ) -> None:
        self.directory = directory  # a folder, or a name for several (`joined`)
        self.manifest = manifest
        self.feature_dim: int = manifest["feature_dim"]
        self.num_labels: int | None = manifest["num_labels"]
        self.fields = blob_fields(self.feature_dim, self.num_labels)
        self.ids = index["ids"]
        self.num_boxes = index["num_boxes"]
        self.crc32 = index["crc32"]
        self.conf = index["conf"]  # flat, image after image
        self.conf_offsets = np.concatenate([[0], np.cumsum(self.num_boxes)]).astype(np.int64)
        # `(folder, first position)` of each store this one reads: one, or several.
        self.parts = parts
        self._position: dict[str, int] | None = None  # built on first use

    @classmethod
    def joined(cls, stores: Sequence[ImageStore], *, name: str) -> ImageStore:
        """Several stores read as one: positions run through them in order.

        They must agree on feature width and soft labels; an image id in two of
        them is a DataError (a text could not say which it means)."""
        if len(stores) == 1:
            return stores[0]
        first = stores[0]
        for store in stores[1:]:
            for key in ("feature_dim", "num_labels"):
                if store.manifest[key] != first.manifest[key]:
                    raise DataError(
                        f"{key} {store.manifest[key]}, but {first.directory} has "
                        f"{first.manifest[key]}: the stores of {name} must agree",
                        file=store.directory,
                    )
        ids = np.concatenate([s.ids for s in stores])
        check_unique(ids, [s.directory for s in stores], [len(s) for s in stores], "image")
        starts = np.cumsum([0] + [len(s) for s in stores[:-1]])
        manifest = {
            **first.manifest,
            "num_images": len(ids),
            "num_regions": sum(s.manifest["num_regions"] for s in stores),
            "index_sha256": joined_sha256([s.manifest["index_sha256"] for s in stores]),
            "parts": [s.directory for s in stores],
        }
        index = {
            "ids": ids,
            **{k: np.concatenate([getattr(s, k) for s in stores]) for k in _INDEX_ARRAYS},
        }
        out = cls.__new__(cls)
        parts = tuple(
            (directory, int(start) + offset)
            for store, start in zip(stores, starts, strict=True)
            for directory, offset in store.parts
        )
        out._set(name, manifest, index, parts)
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def _positions_by_id(self) -> dict[str, int]:
        if self._position is None:
            self._position = {str(image_id): i for i, image_id in enumerate(self.ids)}
        return self._position

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._positions_by_id()

    def position(self, image_id: str) -> int:
        try:
            return self._positions_by_id()[image_id]
        except KeyError:
            raise DataError(
                "image id not in the store", file=self.directory, record=image_id
            ) from None

    def num_kept(self, conf_th: float, min_bb: int, max_bb: int) -> np.ndarray:
        """`[num_images]` region counts the original's selection rule keeps."""
        above = np.add.reduceat((self.conf > conf_th).astype(np.int64), self.conf_offsets[:-1])
        return np.minimum(self.num_boxes, np.clip(above, min_bb, max_bb)).astype(np.int32)

    def positions(self, image_ids: np.ndarray) -> np.ndarray:
        """`[N]` store positions of `image_ids` (vectorized); DataError names a missing id."""
        image_ids = np.asarray(image_ids, dtype=np.str_)
        sorter = np.argsort(self.ids, kind="stable")
        found = np.searchsorted(self.ids, image_ids, sorter=sorter)
        found = sorter[np.minimum(found, len(sorter) - 1)]
        missing = self.ids[found] != image_ids
        if missing.any():
            raise DataError(
                f"{int(missing.sum())} image ids are not in the store, e.g. "
                f"{str(image_ids[np.argmax(missing)])!r}",
                file=self.directory,
            )
        return found

    def path(self, position: int) -> str:
        starts = [start for _, start in self.parts]
        part = int(np.searchsorted(starts, position, side="right")) - 1
        directory, start = self.parts[part]
        return blob_path(directory, position - start)

    def get(self, image_id: str, *, verify: bool = True) -> ImageRegions:
        """One image's arrays; `verify` checks the blob's crc32."""
        i = self.position(image_id)
        path = self.path(i)
        blob = read_bytes(path)
        if verify and zlib.crc32(blob) != int(self.crc32[i]):
            raise DataError("checksum mismatch: the blob is corrupt", file=path, record=image_id)
        return decode(blob, image_id, int(self.num_boxes[i]), self.fields)
