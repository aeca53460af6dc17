"""What flows between the pipelines' steps: records in input order, bad records, the plan.

Every record carries its `order`, a tuple of ints that sorts as the
in-process converter reads: `(file, block, index...)`, where `block` is the
input range or chunk a worker read it from. Blocks are contiguous in input
order, so `order[:2]` names one and sorting orders gives input order whatever
worker or bundle produced them.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from uniter_jax.data.convert.common import Skipped
from uniter_jax.data.errors import DataError

Order = tuple[int, ...]
# Input-level errors found while listing: they come before every record.
BEFORE_RECORDS: Order = (-1,)
# Input-level errors found from the counts of all records: after every record.
AFTER_RECORDS: Order = (sys.maxsize,)


def block_of(order: Order) -> tuple[int, int]:
    """The input range or chunk a record was read from."""
    return order[0], order[1]


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A good record: what its store writer adds, and the id duplicates are decided on."""

    order: Order
    file: str
    where: str  # "line 12", "annotation 3": as the in-process converter names it
    key: str  # text id or image id
    value: Any  # text: (text_id, image_id, token ids, fields); image: ImageRegions


@dataclasses.dataclass(frozen=True)
class Bad:
    """A bad record (skippable with skip_bad) or, `fatal`, a bad input (never skipped)."""

    order: Order
    skipped: Skipped
    fatal: bool = False

    @classmethod
    def of(cls, order: Order, error: DataError, *, fatal: bool = False) -> Bad:
        skipped = Skipped(error.file, error.record, error.field, error.message)
        return cls(order, skipped, fatal)


def data_error(skipped: Skipped) -> DataError:
    """The DataError a skipped record stands for (the one the in-process converter raises)."""
    return DataError(skipped.reason, file=skipped.file, record=skipped.record, field=skipped.field)


def count_total(counts: dict[tuple[str, int], int], name: str) -> int:
    """A count summed over the input files. `counts` maps `(name, file index)` to a
    number: "records" (records read) or "unmapped" (web captions whose URL the
    map lacks)."""
    return sum(n for (counted, _), n in counts.items() if counted == name)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the conversion does once every record is checked: fail with `error`,
    or write `total` good records into `num_shards` shards."""

    error: Skipped | None
    total: int
    num_shards: int
    unmapped: int  # web captions whose URL is not in the URL map


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """One written shard: its folder name and what it holds."""

    name: str
    count: int  # texts or images
    extra: int  # texts cut to the maximum length, or regions
