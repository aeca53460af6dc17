"""The decisions the in-process converters take while reading in input order,
taken in parallel and so that no worker, bundle or retry can change them.

- Duplicates: records are grouped by id; in each group the first good record
  in input order is kept, every later one is a duplicate, as the in-process
  writer (which only holds the good records before it) decides.
- Ranks: a kept record's position among all kept records, from the kept
  count of every earlier block (a small side input) and its place in its own
  block.
- Shards: rank r of K kept records goes to shard `r * N // K`, so shards are
  contiguous ranges of the input, in order, of K/N records give or take one.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam

from uniter_jax.data.beam.elements import Bad, Order, Parsed, block_of
from uniter_jax.data.errors import DataError


def duplicate_error(kind: str, key: str, first: str, file: str, where: str) -> DataError:
    """The in-process error for a later record with the id of the good record at `first`."""
    if kind == "text":
        return DataError("duplicate text id", file=file, record=where, field="text_id")
    return DataError(
        f"duplicate image id {key!r} (first at {first})", file=file, record=where, field="image_id"
    )


class Deduplicate(beam.PTransform):
    """Good records -> the orders of those kept (main output) and `Bad` duplicates ("bad")."""

    def __init__(self, kind: str):
        super().__init__()
        self._kind = kind

    def expand(self, parsed):
        return (
            parsed
            | "ById" >> beam.Map(_by_key)
            | "Group" >> beam.GroupByKey()
            | "FirstWins" >> beam.ParDo(_FirstWins(self._kind)).with_outputs("bad", main="kept")
        )


def _by_key(parsed: Parsed) -> tuple[str, tuple[Order, str, str]]:
    return parsed.key, (parsed.order, parsed.file, parsed.where)


class _FirstWins(beam.DoFn):
    def __init__(self, kind: str):
        self._kind = kind

    def process(self, element):
        key, seen = element
        (order, file, where), *later = sorted(seen)
        yield order
        for later_order, later_file, later_where in later:
            error = duplicate_error(self._kind, key, f"{file} {where}", later_file, later_where)
            yield beam.pvalue.TaggedOutput("bad", Bad.of(later_order, error))


@dataclasses.dataclass(frozen=True)
class Ranks:
    first: dict[tuple[int, int], int]  # block -> rank of its first kept record
    total: int  # kept records


def ranks(counts: list[tuple[tuple[int, int], int]]) -> Ranks:
    """Ranks from the kept count of each block."""
    first, total = {}, 0
    for block, count in sorted(counts):
        first[block] = total
        total += count
    return Ranks(first, total)


def shard_of(rank: int, total: int, num_shards: int) -> int:
    """The shard of the record of rank `rank`: contiguous ranges in input order."""
    return rank * num_shards // total


class Place(beam.PTransform):
    """`(good records, kept orders)` -> `(shard, (rank, value))` for each kept record,
    and the `Ranks` (a single element)."""

    def __init__(self, num_shards: int):
        super().__init__()
        self._num_shards = num_shards

    def expand(self, pcolls):
        parsed, kept = pcolls
        counted = (
            kept
            | "KeptPerBlock" >> beam.Map(lambda order: (block_of(order), 1))
            | "Count" >> beam.CombinePerKey(sum)
            | "AllCounts" >> beam.combiners.ToList()
            | "Ranks" >> beam.Map(ranks)
        )
        grouped = {
            "parsed": parsed | "ParsedByBlock" >> beam.Map(lambda p: (block_of(p.order), p)),
            "kept": kept | "KeptByBlock" >> beam.Map(lambda order: (block_of(order), order)),
        } | "Join" >> beam.CoGroupByKey()
        placed = grouped | "Assign" >> beam.FlatMap(
            _assign, beam.pvalue.AsSingleton(counted), self._num_shards
        )
        return placed, counted


def _assign(element, ranks: Ranks, num_shards: int):
    block, grouped = element
    kept = set(grouped["kept"])
    records = sorted((p for p in grouped["parsed"] if p.order in kept), key=lambda p: p.order)
    for i, parsed in enumerate(records):
        rank = ranks.first[block] + i
        yield shard_of(rank, ranks.total, num_shards), (rank, parsed.value)
