"""Where a run writes, and the last step that puts its store at `--out`, or nothing.

A run writes its shards into a staging folder beside `--out`
(`.<name>.beam-<run id>`). Once every shard is written, `Commit`, one
element on one worker, writes `shards.json` (several shards) and renames the
staging folder (or, for one shard, the shard itself) to `--out`, replacing
an old store only with `overwrite`. When the plan fails it removes the
staging folder instead and raises the plan's DataError, so the job fails on
every runner and `--out` is left as it was.

Either way it first writes the run's outcome (`.<name>.beam-<run id>.json`:
the error, or the counts and skipped records) for the launching process,
which reads it and removes it. A commit retried after it renamed finds that
outcome and does nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid

import apache_beam as beam

from uniter_jax.data.beam.elements import Bad, Plan, ShardResult, data_error
from uniter_jax.data.convert.common import Skipped
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import MANIFEST, is_remote, write_json
from uniter_jax.data.store_sets import SHARDS, shard_name, write_shard_index


@dataclasses.dataclass(frozen=True)
class Target:
    """The store folder a run writes, and the run's own paths beside it."""

    out_dir: str  # as given: reports and errors name it so
    path: str  # absolute
    run_id: str
    overwrite: bool

    @classmethod
    def create(cls, out_dir: str, *, overwrite: bool) -> Target:
        """Checks `out_dir` can be written (on the launching machine) and names a new run."""
        if is_remote(out_dir):
            raise DataError(
                "stores are written to a local or shared file system; copy them to gs:// "
                "afterwards",
                file=out_dir,
            )
        path = os.path.abspath(out_dir)
        check_target(path, overwrite)
        return cls(out_dir, path, uuid.uuid4().hex[:12], overwrite)

    @property
    def staging(self) -> str:
        parent, name = os.path.split(self.path)
        return os.path.join(parent, f".{name}.beam-{self.run_id}")

    @property
    def outcome(self) -> str:
        return f"{self.staging}.json"


def check_target(path: str, overwrite: bool) -> None:
    """Raises DataError unless a store may be put at `path`: absent, or, with
    `overwrite`, a store, a sharded store or an empty folder."""
    if not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise DataError("exists and is not a folder", file=path)
    if not overwrite:
        raise DataError("already exists (pass overwrite / --force to replace it)", file=path)
    marked = any(os.path.exists(os.path.join(path, name)) for name in (MANIFEST, SHARDS))
    if os.listdir(path) and not marked:
        raise DataError("not empty and not a store: refusing to replace it", file=path)


class Commit(beam.DoFn):
    """One element -> the store at the target, or the plan's DataError raised."""

    def __init__(self, target: Target, kind: str):
        self._target, self._kind = target, kind

    def process(self, _, plan: Plan, written: list[ShardResult], bad: list[Bad]):
        target = self._target
        if plan.error is not None:
            shutil.rmtree(target.staging, ignore_errors=True)
            _write_outcome(target, {"error": _as_list(plan.error)})
            raise data_error(plan.error)
        names = [shard_name(i, plan.num_shards) for i in range(plan.num_shards)]
        whole = target.staging if plan.num_shards > 1 else os.path.join(target.staging, names[0])
        if not os.path.exists(whole) and os.path.exists(target.outcome):
            return  # a retry: an earlier attempt renamed it
        if sorted(result.name for result in written) != names:
            raise RuntimeError(f"shards written: {sorted(r.name for r in written)}, want {names}")
        for entry in set(os.listdir(target.staging)) - set(names):  # a killed attempt's temp
            _remove(os.path.join(target.staging, entry))
        if plan.num_shards > 1:
            write_shard_index(target.staging, self._kind, names)
        skipped = sorted((b for b in bad if not b.fatal), key=lambda b: b.order)
        _write_outcome(
            target,
            {
                "count": sum(result.count for result in written),
                "extra": sum(result.extra for result in written),
                "unmapped": plan.unmapped,
                "skipped": [_as_list(b.skipped) for b in skipped],
            },
        )
        _replace(whole, target)
        shutil.rmtree(target.staging, ignore_errors=True)


def _replace(folder: str, target: Target) -> None:
    """Renames `folder` to the target, replacing an old store there (checked again)."""
    check_target(target.path, target.overwrite)
    if not os.path.exists(target.path):
        os.replace(folder, target.path)
        return
    old = f"{target.staging}.old"
    os.replace(target.path, old)
    os.replace(folder, target.path)
    shutil.rmtree(old)


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _as_list(skipped: Skipped) -> list:
    return [skipped.file, skipped.record, skipped.field, skipped.reason]


def _write_outcome(target: Target, outcome: dict) -> None:
    tmp = f"{target.outcome}.tmp-{uuid.uuid4().hex[:8]}"
    write_json(tmp, outcome)
    os.replace(tmp, target.outcome)


def read_outcome(target: Target) -> dict | None:
    """The run's outcome (`skipped` as `Skipped`), or None when the commit never ran
    or wrote it where this machine cannot see it."""
    if not os.path.exists(target.outcome):
        return None
    with open(target.outcome) as f:
        outcome = json.load(f)
    if "error" in outcome:
        outcome["error"] = Skipped(*outcome["error"])
    outcome["skipped"] = [Skipped(*s) for s in outcome.get("skipped", [])]
    return outcome


def discard(target: Target) -> None:
    """Removes what the run left beside the target (the launcher's last step)."""
    shutil.rmtree(target.staging, ignore_errors=True)
    shutil.rmtree(f"{target.staging}.old", ignore_errors=True)
    if os.path.exists(target.outcome):
        os.remove(target.outcome)
