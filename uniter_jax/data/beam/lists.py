"""Inputs that only a whole read can list (a JSON document, two line-aligned
files, a folder): loaded on one worker, cut into chunks that a Reshuffle
spreads over the workers, where the records are parsed.

The load itself does not scale out: a JSON list is parsed whole, in one
worker's memory (Visual Genome's region descriptions, 0.7 GB of JSON, need a
worker with several GB). Everything after it does.
"""

from __future__ import annotations

from collections.abc import Callable

import apache_beam as beam

from uniter_jax.data.beam.elements import BEFORE_RECORDS, Bad
from uniter_jax.data.errors import DataError

# Items per chunk: JSON annotations, VG images, SBU lines or .npz files.
CHUNK_SIZE = 1000


class ReadList(beam.PTransform):
    """`load()` -> `((0, chunk, n), item)` for the n-th item of the list it returns.

    A DataError from `load` (a missing file, the wrong JSON layout) is a fatal
    error. Returns `(items, fatal)`.
    """

    def __init__(self, load: Callable[[], list], *, chunk_size: int = CHUNK_SIZE):
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self._load, self._chunk_size = load, chunk_size

    def expand(self, pbegin):
        loaded = (
            pbegin
            | "Once" >> beam.Create([None])
            | "Load"
            >> beam.ParDo(_Load(self._load, self._chunk_size)).with_outputs("fatal", main="chunks")
        )
        items = loaded.chunks | "Spread" >> beam.Reshuffle() | "Items" >> beam.FlatMap(_items)
        return items, loaded.fatal


class _Load(beam.DoFn):
    def __init__(self, load: Callable[[], list], chunk_size: int):
        self._load, self._chunk_size = load, chunk_size

    def process(self, _):
        try:
            items = self._load()
        except DataError as e:
            yield beam.pvalue.TaggedOutput("fatal", Bad.of(BEFORE_RECORDS, e, fatal=True))
            return
        for chunk, start in enumerate(range(0, len(items), self._chunk_size)):
            yield chunk, start, items[start : start + self._chunk_size]


def _items(chunk: tuple[int, int, list]):
    index, start, items = chunk
    for n, item in enumerate(items, start):
        yield (0, index, n), item
