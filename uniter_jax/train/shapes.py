"""A run's batch shapes: `data.buckets` as configured, or, when it is empty,
chosen from the stores the run reads at its first start and kept in
`workdir/buckets.json`, so that a resumed run uses the same ones.

  --config.data.buckets='((16, 12, 32),)'   # a fixed list: (text_len, regions, batch)
  --config.data.buckets='()'                # chosen from the stores (the default)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from uniter_jax.data.buckets import Bucket, batch_multiple, choose_buckets, padding
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import OFFSETS, TextStore

BUCKETS_FILE = "buckets.json"


def _selection(data: ml_collections.ConfigDict) -> tuple[float, int, int]:
    return data.conf_th, data.min_bb, data.max_bb


def example_shapes(
    texts: TextStore, images: ImageStore, selection: tuple[float, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """`[N]` text lengths with [CLS]/[SEP] and `[N]` kept region counts of a
    text store's examples, regions selected by `selection` (conf_th, min_bb, max_bb)."""
    lengths = np.diff(texts.arrays["input_ids" + OFFSETS]) + 2
    kept = images.num_kept(*selection)
    return lengths, kept[images.positions(texts.image_ids)]


def run_buckets(
    data: ml_collections.ConfigDict,
    workdir: str,
    stores: Callable[[], Sequence[tuple]],
    *,
    ways: int,
    group_size: int = 1,
    remember: bool = True,
) -> tuple[Bucket, ...]:
    """The configured buckets; else the ones this workdir's run chose before;
    else buckets chosen now from every `(texts, images)` pair the run reads
    (`stores()`, opened only then: large stores are not read twice; each
    `(texts, images)`, or `(texts, images, selection)` where a dataset selects
    regions other than `data` says),
    with batch sizes divisible by `ways` (data-parallel shards times hosts)
    and `group_size`, written to `workdir/buckets.json` by process 0.
    `remember=False` (prediction) neither reads nor writes that file."""
    if len(data.buckets):
        return tuple(Bucket(*b) for b in data.buckets)
    saved = epath.Path(workdir) / BUCKETS_FILE
    if remember and saved.exists():
        chosen = tuple(Bucket(*b) for b in json.loads(saved.read_text())["buckets"])
        logging.info("buckets of this run, from %s: %s", saved, _describe(chosen))
        return chosen
    stores = stores()
    shapes = [
        example_shapes(texts, images, selection[0] if selection else _selection(data))
        for texts, images, *selection in stores
    ]
    lengths = np.concatenate([s[0] for s in shapes])
    regions = np.concatenate([s[1] for s in shapes])
    chosen = choose_buckets(
        lengths,
        regions,
        global_batch=data.batch_size,
        max_buckets=data.max_buckets,
        target_padding=data.target_padding,
        batch_multiple=batch_multiple(ways, group_size),
    )
    waste = padding(lengths, regions, [(b.text_len, b.num_regions) for b in chosen])
    logging.info(
        "buckets chosen from %d texts (lengths %d-%d, regions %d-%d): %s, %.0f%% padding; kept: %s",
        len(lengths),
        lengths.min(),
        lengths.max(),
        regions.min(),
        regions.max(),
        _describe(chosen),
        100 * waste,
        saved if remember else "this run only",
    )
    if remember and jax.process_index() == 0:
        saved.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "buckets": [[b.text_len, b.num_regions, b.batch_size] for b in chosen],
            "padding": waste,
            "texts": len(lengths),
            "stores": [entry[0].directory for entry in stores],
        }
        partial = saved.parent / f"{BUCKETS_FILE}.partial"
        partial.write_text(json.dumps(record, indent=2) + "\n")
        partial.rename(saved)
    return chosen


def with_buckets(
    config: ml_collections.ConfigDict, buckets: Sequence[Bucket]
) -> ml_collections.ConfigDict:
    """A copy of `config` whose `data.buckets` lists `buckets`."""
    copy = ml_collections.ConfigDict(config.to_dict())
    copy.data.buckets = tuple((b.text_len, b.num_regions, b.batch_size) for b in buckets)
    return copy


def _describe(buckets: Sequence[Bucket]) -> str:
    return ", ".join(f"({b.text_len}, {b.num_regions}) x {b.batch_size}" for b in buckets)
