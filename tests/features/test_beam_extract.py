"""`beam_extract.ExtractShards` on the DirectRunner: the same shards, labels and
index bytes as `extract_images` on the same images, and a rerun that does nothing."""

from __future__ import annotations

import dataclasses
import os

import apache_beam as beam
import pytest
from test_extract import CONFIG, TINY, write_good

from uniter_jax.features.beam_extract import ExtractShards
from uniter_jax.features.extract import extract_images
from uniter_jax.features.image_files import list_images
from uniter_jax.features.random_weights import RANDOM_WEIGHTS, random_detector


def tree_bytes(folder: str) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.mark.slow
def test_beam_shards_match_extract(tmp_path):
    images = list_images([write_good(tmp_path / "images")])
    config = dataclasses.replace(CONFIG, batch_size=2)
    extract_images(
        images,
        tmp_path / "cli",
        random_detector(TINY, 5),
        config=config,
        cell_anchors=TINY.cell_anchors(),
        # The source the command line writes for a random detector.
        source={"weights": f"{RANDOM_WEIGHTS} (seed 5)", "detector": dataclasses.asdict(TINY)},
        progress=False,
    )
    beam_config = dataclasses.replace(config, batch_size=1)  # the bytes do not depend on it
    for _ in range(2):  # the second run finds every shard done
        with beam.Pipeline("DirectRunner") as p:
            _ = p | ExtractShards(
                images, tmp_path / "beam", config=beam_config, detector_config=TINY, seed=5
            )
    cli, ours = tree_bytes(str(tmp_path / "cli")), tree_bytes(str(tmp_path / "beam"))
    assert sorted(ours) == sorted(cli) and "shards.json" in ours
    assert [k for k in cli if cli[k] != ours[k]] == []
