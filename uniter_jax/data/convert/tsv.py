"""Tab-separated detector dumps with base64 arrays (the BUTD and LXMERT layouts).

Lines are streamed, never the whole file; lines are split on tabs rather than
parsed as CSV because no column is quoted (base64 and numbers) and a stray
quote must not swallow the following lines.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from uniter_jax.data.convert.arrays import image_id, positive_int
from uniter_jax.data.convert.common import Record
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import open_file
from uniter_jax.data.regions import ImageRegions, box_features, check_pixel_boxes, make_regions

Columns = dict[str, bytes]


def records(
    paths: Sequence[str], columns: Sequence[str], parse: Callable[[Columns], ImageRegions]
) -> Iterator[Record]:
    """One lazily parsed Record per non-blank line; an empty file raises DataError."""
    for path in paths:
        count = 0
        with open_file(path, "rb") as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                count += 1
                yield Record(
                    path, f"line {number}", functools.partial(split_columns, line, columns, parse)
                )
        if not count:
            raise DataError("empty: no records", file=path)


def split_columns(
    line: bytes, columns: Sequence[str], parse: Callable[[Columns], ImageRegions]
) -> ImageRegions:
    """One TSV line (no line ending) split on tabs, named by `columns`, then `parse`d.

    Raises DataError (field `columns`) when the line has another number of columns.
    """
    values = line.split(b"\t")
    if len(values) != len(columns):
        raise DataError(
            f"{len(values)} tab-separated columns, expected {len(columns)}: {', '.join(columns)}",
            field="columns",
        )
    return parse(dict(zip(columns, values, strict=True)))


def decode(text: bytes, dtype: str, field: str, shape: tuple[int, ...]) -> np.ndarray:
    """base64 of a little-endian array -> `shape`; a trailing -1 is inferred from the length."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise DataError(f"corrupt or truncated base64 ({e})", field=field) from None
    dtype = np.dtype(dtype).newbyteorder("<")
    known_bytes = math.prod(size for size in shape if size != -1) * dtype.itemsize
    inferred = shape[-1] == -1
    fits = (len(raw) > 0 and len(raw) % known_bytes == 0) if inferred else len(raw) == known_bytes
    if not fits:
        want = " x ".join("D" if size == -1 else str(size) for size in shape)
        raise DataError(
            f"{len(raw)} bytes do not hold [{want}] {dtype.name} values "
            f"(num_boxes {shape[0]}; truncated?)",
            field=field,
        )
    return np.frombuffer(raw, dtype).reshape(shape)


@dataclasses.dataclass(frozen=True)
class Detections:
    """The columns both layouts share, validated: one image's boxes and features."""

    image_id: str
    width: int
    height: int
    xyxy: np.ndarray  # [n, 4] float32 pixels
    features: np.ndarray  # [n, D] float32

    @classmethod
    def parse(
        cls, columns: Columns, *, id_column: str, width_column: str, height_column: str
    ) -> Detections:
        """Raises DataError naming the column for any bad value."""
        name = image_id(columns[id_column], id_column)
        width = positive_int(columns[width_column], width_column)
        height = positive_int(columns[height_column], height_column)
        num_boxes = positive_int(columns["num_boxes"], "num_boxes")
        xyxy = decode(columns["boxes"], "float32", "boxes", (num_boxes, 4))
        check_pixel_boxes(xyxy, width, height)
        features = decode(columns["features"], "float32", "features", (num_boxes, -1))
        return cls(name, width, height, xyxy, features)

    def regions(
        self,
        *,
        feature_dim: int,
        conf: np.ndarray | None = None,
        soft_labels: np.ndarray | None = None,
    ) -> ImageRegions:
        """Validated, sorted regions with 7-d box features (see `make_regions`)."""
        boxes7 = box_features(self.xyxy, self.width, self.height)
        return make_regions(
            self.image_id, self.features, boxes7, conf, soft_labels, feature_dim=feature_dim
        )
