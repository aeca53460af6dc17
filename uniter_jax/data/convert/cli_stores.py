"""The subcommands on stores already written: `verify` checks them, `shard` splits one.

Each `_add_<command>(subparsers)` registers one subcommand whose `convert`
returns a summary with `report()`, as the converters do; `ADDERS` lists them.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from uniter_jax.data.errors import DataError
from uniter_jax.data.store_split import split_store
from uniter_jax.data.store_verify import StoreReport, verify_store

_COLUMNS = ("store", "kind", "records", "regions", "bytes", "status")


@dataclasses.dataclass(frozen=True)
class _Verified:
    stores: int
    records: int

    def report(self) -> str:
        return f"all {self.stores} stores OK ({self.records} records)"


def status(report: StoreReport) -> str:
    """OK, or BAD with the first problem (its file, record and field)."""
    if report.ok:
        return "OK"
    more = f" (and {report.num_problems - 1} more)" if report.num_problems > 1 else ""
    return f"BAD: {report.problem}{more}"


def table(reports: list[StoreReport]) -> str:
    """One row per store or shard: kind, records, regions (images), bytes, status."""
    rows = [_COLUMNS] + [
        (
            r.path,
            r.kind,
            str(r.records),
            str(r.regions) if r.kind == "image" else "-",
            f"{r.bytes:,}",
            status(r),
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:5], widths[2:], strict=True)]
        lines.append("  ".join([*cells, row[5]]))
    return "\n".join(lines)


def _verify(args: argparse.Namespace) -> _Verified:
    reports = [r for path in args.paths for r in verify_store(path, progress=not args.no_progress)]
    print(table(reports), flush=True)
    bad = sum(not r.ok for r in reports)
    if bad:
        raise DataError(f"{bad} of {len(reports)} stores are BAD")
    return _Verified(len(reports), sum(r.records for r in reports))


def _add_verify(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify", help="check every checksum of text, image or sharded stores (exit 2 if bad)"
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="stores or sharded stores, or gs://")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(convert=_verify)


def _add_shard(subparsers: Any) -> None:
    p = subparsers.add_parser("shard", help="split a text or image store into N sharded stores")
    p.add_argument("store", help="a text or image store (or a sharded one, to reshard)")
    p.add_argument("--num-shards", type=int, required=True, help="shards, contiguous, in order")
    p.add_argument("--out", required=True, help="the sharded store folder to write")
    p.add_argument("--force", action="store_true", help="replace an existing sharded store")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(
        convert=lambda a: split_store(
            a.store,
            a.out,
            num_shards=a.num_shards,
            overwrite=a.force,
            progress=not a.no_progress,
        )
    )


ADDERS = (_add_verify, _add_shard)
