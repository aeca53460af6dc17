"""`extract.py`'s step as an Apache Beam transform, for image sets that need a cluster.

    images = list_images("gs-fuse/photos")
    with beam.Pipeline(options=...) as p:
        _ = p | ExtractShards(images, "/shared/my_img", weights="frcn.pkl")

The driver plans the shards as `extract_images` does for one process: the
images not in a finished shard, sorted by id, cut into `shard_size` chunks
named `p0000-<serial>` from the next free serial. Each chunk is one element;
`WriteShardFn` loads the detector once per worker (`setup`) and writes the
chunk's shard and labels with `extract.write_shard`, the same code as the
command line, so a shard's bytes are the same as `extract`'s for the same
images (the per-image program makes them independent of the worker's devices
and batch). A retried element rewrites its shard atomically; a chunk whose
shard already exists is skipped. A last step writes the bad-images report and
`shards.json`.

Unlike `extract`, a chunk holding bad images leaves its serial's shard short
rather than moving on; with `skip_bad` off the first bad image fails the
element (and the runner's retries, then the pipeline).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apache_beam as beam
from tqdm import tqdm

from uniter_jax.data.convert.common import Skipped
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import MANIFEST
from uniter_jax.features import extract, extract_output
from uniter_jax.features.detector_config import DetectorConfig
from uniter_jax.features.extract_config import ExtractConfig
from uniter_jax.features.extract_step import make_step
from uniter_jax.features.image_files import ImageFile
from uniter_jax.features.random_weights import RANDOM_WEIGHTS, random_detector
from uniter_jax.features.weights import load_detector

_PROCESS = 0  # shard names p0000-*: one logical writer, the pipeline


def plan_chunks(
    images: Sequence[ImageFile], out_dir: str, shard_size: int
) -> list[tuple[str, list[ImageFile]]]:
    """`(shard name, images)` for every image not in a finished shard, as
    `extract_images` cuts them for process 0 of 1."""
    done = extract_output.stored_ids(out_dir, extract_output.finished_shards(out_dir))
    pending = [
        image for image in sorted(images, key=lambda i: i.image_id) if image.image_id not in done
    ]
    serial = extract_output.next_serial(out_dir, _PROCESS)
    return [
        (
            extract_output.shard_folder_name(_PROCESS, serial + k),
            pending[start : start + shard_size],
        )
        for k, start in enumerate(range(0, len(pending), shard_size))
    ]


class WriteShardFn(beam.DoFn):
    """`(shard name, images)` -> the shard and its labels in `out_dir`; yields
    `("stored", (images, regions))` and `("bad", Skipped)` elements.

    The detector: `weights` (a checkpoint, `load_detector`) or, without, a
    random one of `detector_config` and `seed`. Loaded once per worker."""

    def __init__(
        self,
        out_dir: str,
        config: ExtractConfig,
        *,
        weights: str | None = None,
        detector_config: DetectorConfig | None = None,
        seed: int = 0,
        skip_bad: bool = False,
    ):
        self._out_dir = out_dir
        self._config = config
        self._weights = weights
        self._detector_config = detector_config or DetectorConfig()
        self._seed = seed
        self._skip_bad = skip_bad

    def setup(self) -> None:
        if self._weights:
            detector, detector_config, info = load_detector(self._weights)
            source = {"weights": self._weights, "layout": info.layout}
        else:
            detector_config = self._detector_config
            detector = random_detector(detector_config, self._seed)
            source = {"weights": f"{RANDOM_WEIGHTS} (seed {self._seed})"}
        source["detector"] = dataclasses.asdict(detector_config)
        settings = dataclasses.asdict(self._config)
        for name in ("batch_size", "shard_size", "workers"):
            settings.pop(name)
        settings["box_convention"] = detector.box_convention
        # The manifest's source as `extract_images` writes it.
        self._source = {"extractor": extract.__name__, **source, "extraction": settings}
        self._step, self._batch = make_step(
            detector, self._config, cell_anchors=detector_config.cell_anchors()
        )
        predictor = detector.roi_heads.box_predictor
        self._dims = dict(
            feature_dim=predictor.cls_score.kernel.shape[0],
            num_labels=predictor.cls_score.kernel.shape[1],
        )
        self._pool = ThreadPoolExecutor(self._config.workers)

    def teardown(self) -> None:
        self._pool.shutdown()

    def process(self, element: tuple[str, list[ImageFile]]):
        name, chunk = element
        folder = os.path.join(self._out_dir, name)
        if os.path.isfile(os.path.join(folder, MANIFEST)):  # a retried element
            return
        bad: list[Skipped] = []

        def on_bad(error: DataError, image: ImageFile) -> None:
            if not self._skip_bad:
                raise error
            bad.append(
                Skipped(error.file or image.path, image.image_id, error.field, error.message)
            )

        with tqdm(disable=True) as bar:
            stored, regions = extract.write_shard(
                chunk,
                folder,
                extract_output.labels_path(self._out_dir, name),
                self._step,
                self._batch,
                config=self._config,
                source=self._source,
                on_bad=on_bad,
                bar=bar,
                pool=self._pool,
                **self._dims,
            )
        yield "stored", (stored, regions)
        for skipped in bad:
            yield "bad", skipped


def _finish(results: list[tuple[str, Any]], out_dir: str, images: Sequence[ImageFile]) -> bool:
    """The bad-images report and `shards.json` (once every image is accounted for)."""
    bad = sorted((r for kind, r in results if kind == "bad"), key=lambda s: s.record)
    extract_output.write_report(out_dir, _PROCESS, bad)
    return extract_output.write_index(out_dir, images)


class ExtractShards(beam.PTransform):
    """Images -> the sharded store `out_dir` (module doc); the output is one
    bool: whether `shards.json` was written."""

    def __init__(
        self,
        images: Sequence[ImageFile],
        out_dir: str,
        *,
        config: ExtractConfig | None = None,
        **detector: Any,
    ):
        super().__init__()
        self._images = list(images)
        self._out_dir = os.path.abspath(os.fspath(out_dir))
        self._config = config or ExtractConfig()
        self._detector = detector  # WriteShardFn's keywords

    def expand(self, pbegin):
        extract_output.check_output(self._out_dir)
        os.makedirs(self._out_dir, exist_ok=True)
        extract_output.clean_leftovers(self._out_dir, _PROCESS)
        chunks = plan_chunks(self._images, self._out_dir, self._config.shard_size)
        results = (
            pbegin
            | "Chunks" >> beam.Create(chunks)
            | "Reshuffle" >> beam.Reshuffle()  # spread the chunks over workers
            | "WriteShards"
            >> beam.ParDo(WriteShardFn(self._out_dir, self._config, **self._detector))
        )
        return (
            results
            | "All" >> beam.combiners.ToList()
            | "Finish" >> beam.Map(_finish, self._out_dir, self._images)
        )
