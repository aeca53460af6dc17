"""One conversion as one Beam pipeline: read, check, decide, place, write, commit.

    Read ─> CheckRecords ─┬─ good ─> Deduplicate ─> kept ─┐
      │                   │  good ────────────────────────┴─> Place ─> ByShard ─> Write ─┐
      │                   ├─ bad ─────┐                                                  │
      └─ fatal ───────────┼───────────┴─> Plan (first error, totals) ─> Write, Commit ───┤
                          └─ counts ──┘                                     Commit <─────┘

Everything but Plan and Commit (one element each) runs in parallel; see the
package docstring for what runs where.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from uniter_jax.data.beam.checks import CheckRecords, RegionCheck, TextCheck
from uniter_jax.data.beam.commit import Commit, Target, discard, read_outcome
from uniter_jax.data.beam.elements import Bad, data_error
from uniter_jax.data.beam.ordering import Deduplicate, Place
from uniter_jax.data.beam.plan import decide
from uniter_jax.data.beam.shards import ImageStoreSpec, TextStoreSpec, WriteShard
from uniter_jax.data.beam.sources import Records, no_input_errors


@dataclasses.dataclass(frozen=True)
class Conversion:
    """What differs between formats; the rest of the pipeline is shared."""

    read: beam.PTransform  # pipeline -> ((order, item) elements, fatal Bad)
    records: Records  # makes each item's records, on the workers
    check: TextCheck | RegionCheck
    store: TextStoreSpec | ImageStoreSpec
    input_errors: Callable[[dict], list[Bad]] = no_input_errors


def run(
    conversion: Conversion,
    target: Target,
    *,
    num_shards: int,
    skip_bad: bool,
    options: PipelineOptions | Sequence[str] | None,
) -> dict:
    """Runs the conversion; returns its outcome (see `commit.read_outcome`).

    A bad record without `skip_bad`, or a bad input, raises its DataError and
    leaves nothing at the target. So does any other failure of the job, with
    the runner's own error.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be positive, got {num_shards}")
    if not isinstance(options, PipelineOptions):
        options = PipelineOptions(list(options or []))
    pipeline = beam.Pipeline(options=options)
    with _quiet_beam():
        _build(pipeline, conversion, target, num_shards=num_shards, skip_bad=skip_bad)
    try:
        with _quiet_beam():
            state = pipeline.run().wait_until_finish()
        if state != PipelineState.DONE:
            raise RuntimeError(f"the pipeline ended {state}")
        outcome = read_outcome(target)
        if outcome is None:
            raise RuntimeError(
                f"the pipeline finished, but its outcome {target.outcome} is not here: --out "
                "must be on a file system that the workers and this machine share"
            )
    except Exception:
        outcome = read_outcome(target)
        discard(target)
        if outcome is not None and "error" in outcome:
            raise data_error(outcome["error"]) from None
        raise
    discard(target)
    return outcome


@contextlib.contextmanager
def _quiet_beam() -> Iterator[None]:
    """Beam's INFO lines while a pipeline is built and run locally (a line per
    type hint it cannot resolve, the runner's start-up) bury the converter's
    own; its warnings and errors still show."""
    beam_logger = logging.getLogger("apache_beam")
    level = beam_logger.level
    beam_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        beam_logger.setLevel(level)


def _build(pipeline, conversion: Conversion, target: Target, *, num_shards, skip_bad) -> None:
    items, fatal = pipeline | "Read" >> conversion.read
    checked = items | "Check" >> beam.ParDo(
        CheckRecords(conversion.records, conversion.check)
    ).with_outputs("bad", "counts", main="good")
    counts = checked.counts | "Counts" >> beam.CombinePerKey(sum)
    kind = conversion.store.kind
    deduplicated = checked.good | "Deduplicate" >> Deduplicate(kind)
    placed, ranks = (checked.good, deduplicated.kept) | "Place" >> Place(num_shards)
    bad = (fatal, checked.bad, deduplicated.bad) | "AllBad" >> beam.Flatten()
    settings = {
        "kind": kind,
        "out_dir": target.out_dir,
        "num_shards": num_shards,
        "skip_bad": skip_bad,
        "input_errors": conversion.input_errors,
    }
    plan = (
        pipeline
        | "PlanOnce" >> beam.Create([None])
        | "Plan"
        >> beam.Map(
            _plan,
            beam.pvalue.AsList(bad),
            beam.pvalue.AsDict(counts),
            beam.pvalue.AsSingleton(ranks),
            settings,
        )
    )
    written = (
        placed
        | "ByShard" >> beam.GroupByKey()
        | "Write"
        >> beam.ParDo(WriteShard(conversion.store, target.staging), beam.pvalue.AsSingleton(plan))
    )
    _ = (
        pipeline
        | "CommitOnce" >> beam.Create([None])
        | "Commit"
        >> beam.ParDo(
            Commit(target, kind),
            beam.pvalue.AsSingleton(plan),
            beam.pvalue.AsList(written),
            beam.pvalue.AsList(bad),
        )
    )


def _plan(_, bad: list[Bad], counts: dict, ranks, settings: dict):
    return decide(bad, counts, ranks, **settings)
