"""Whether to write, decided once every record is checked: the error the
in-process converter would raise, or the totals to write."""

from __future__ import annotations

from collections.abc import Callable

from uniter_jax.data.beam.elements import Bad, Plan, count_total
from uniter_jax.data.beam.ordering import Ranks
from uniter_jax.data.convert.common import Skipped


def decide(
    bad: list[Bad],
    counts: dict,
    ranks: Ranks,
    *,
    kind: str,
    out_dir: str,
    num_shards: int,
    skip_bad: bool,
    input_errors: Callable[[dict], list[Bad]],
) -> Plan:
    """The plan from every bad record, the record counts and the kept total.

    Without `skip_bad` the error is the first bad record or bad input in input
    order, the one the in-process converter stops at; with it, the first bad
    input (a bad record is then only listed). Then come the checks that need
    every record: nothing to write, fewer records than shards.
    """
    errors = sorted([*bad, *input_errors(counts)], key=lambda b: b.order)
    fatal = [b for b in errors if b.fatal]
    first = errors[0] if errors and not skip_bad else (fatal[0] if fatal else None)
    error = first.skipped if first is not None else None
    if error is None and not ranks.total:
        error = _nothing_to_write(kind, out_dir, [b.skipped for b in errors])
    if error is None and ranks.total < num_shards:
        error = Skipped(
            out_dir, None, None, f"too few good {kind}s ({ranks.total}) for {num_shards} shards"
        )
    return Plan(error, ranks.total, num_shards, count_total(counts, "unmapped"))


def _nothing_to_write(kind: str, out_dir: str, skipped: list[Skipped]) -> Skipped:
    if kind == "text":
        return Skipped(out_dir, None, None, "no good texts to write")
    first = f", the first: {skipped[0]}" if skipped else ""
    return Skipped(
        out_dir, None, None, f"no good images: all {len(skipped)} records are bad{first}"
    )
