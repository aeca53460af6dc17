"""Writing one shard: its records, in rank order, through the ordinary store writers.

A shard is written into the run's staging folder by `TextStoreWriter` or
`ImageStoreWriter`, which write into a temporary sibling and rename it
whole, so a failed attempt leaves no partial shard, and a retried attempt
(or a second one a runner started speculatively) replaces the first's
complete, identical shard. A shard holds exactly the bytes of a store
written in-process from the same records in the same order.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import apache_beam as beam

from uniter_jax.data.beam.elements import Plan, ShardResult
from uniter_jax.data.image_store import ImageStoreWriter
from uniter_jax.data.store_sets import shard_name
from uniter_jax.data.text_store import TextStoreWriter


@dataclasses.dataclass(frozen=True)
class TextStoreSpec:
    """What a text store is written with (`TextStoreWriter`'s settings)."""

    kind: ClassVar[str] = "text"
    task: str
    vocab: dict[str, Any]  # `Vocab.to_json()`
    max_txt_len: int
    source: dict[str, Any]
    count_unmapped: bool = False  # web captions: the source counts the unmapped URLs

    def write(self, directory: str, values: list[tuple], plan: Plan) -> tuple[int, int]:
        """Writes `(text_id, image_id, token ids, fields)` values; returns (texts, truncated)."""
        source = {**self.source, "unmapped": plan.unmapped} if self.count_unmapped else self.source
        truncated = 0
        writer = TextStoreWriter(
            directory,
            task=self.task,
            vocab=self.vocab,
            max_txt_len=self.max_txt_len,
            source=source,
            overwrite=True,
        )
        with writer:
            for text_id, image_id, ids, fields in values:
                truncated += writer.add(text_id, image_id, ids, **fields)
        return len(values), truncated


@dataclasses.dataclass(frozen=True)
class ImageStoreSpec:
    """What an image store is written with (`ImageStoreWriter`'s settings)."""

    kind: ClassVar[str] = "image"
    feature_dim: int
    num_labels: int | None
    source: dict[str, Any]

    def write(self, directory: str, values: list, plan: Plan) -> tuple[int, int]:
        """Writes `ImageRegions` values; returns (images, regions)."""
        del plan
        writer = ImageStoreWriter(
            directory,
            feature_dim=self.feature_dim,
            num_labels=self.num_labels,
            source=self.source,
            overwrite=True,
        )
        with writer:
            for regions in values:
                writer.add(regions)
        return len(values), sum(regions.num_boxes for regions in values)


def write_shard(
    spec: TextStoreSpec | ImageStoreSpec,
    staging: str,
    shard: int,
    items: list[tuple[int, Any]],
    plan: Plan,
) -> ShardResult:
    """Writes the `(rank, value)` items of shard `shard` as `staging/<shard name>`."""
    name = shard_name(shard, plan.num_shards)
    values = [value for _, value in sorted(items, key=lambda item: item[0])]
    count, extra = spec.write(os.path.join(staging, name), values, plan)
    return ShardResult(name, count, extra)


class WriteShard(beam.DoFn):
    """`(shard, [(rank, value)])` -> `ShardResult`; writes nothing when the plan fails."""

    def __init__(self, spec: TextStoreSpec | ImageStoreSpec, staging: str):
        self._spec, self._staging = spec, staging

    def process(self, element, plan: Plan):
        if plan.error is not None:
            return
        shard, items = element
        yield write_shard(self._spec, self._staging, shard, list(items), plan)
