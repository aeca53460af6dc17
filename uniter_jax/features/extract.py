"""Image files -> a sharded image store of region features (`-m uniter_jax.features extract`).

    images = list_images("data/coco/val2014")
    detector, config, _ = weights.load_detector("bua-caffe-frcn-r101_with_attributes.pth")
    summary = extract_images(images, "data/coco_val2014_img", detector,
                             cell_anchors=config.cell_anchors())

For each batch of images that share a size bucket (`preprocess.BUCKETS`):

  host:   decode, BGR minus the means, resize (`preprocess.prepare_image`), pad
          into the bucket (`pad_batch`), blank images up to the fixed batch;
  device: `extract_step.py`, one image at a time per device: `Detector` ->
          `proposals.propose` (300) -> `Detector.regions` on them ->
          `detections.select_regions` (max_conf >= 0.2, 10..100 or a fixed count)
          -> the kept rows' 2048-d features;
  host:   per image, the boxes (original pixels) as our 7-d box features, the
          fp32 features (fp16 in the store), `conf` = the max class confidence
          and soft labels = the full 1601-way class distribution (MRC-kl's
          target), through `ImageStoreWriter`.

The argmax object class and attribute of each region (and their probabilities)
have no field in the image store: they go to a label file per shard
(`extract_output.read_labels`), in the store's region order.

The output (`extract_output.py`): shards of `shard_size` images (fewer where
images were bad), each a complete image store written atomically; a report of
bad images per process; `shards.json` once every image is stored or reported,
which makes the folder a sharded store (`store_sets.open_images`).

Resuming: a run first reads the ids of the complete shards and extracts only
the other images, into new shards (a finished shard is never touched). A kill
leaves at most a hidden temporary folder. Bad images (`DataError` from
`preprocess.read_image`, or no region at all) are never stored, so every run
retries them: without `skip_bad` the first one stops the run, naming the file
(finished shards stay); with it they are listed. `shards.json` is rewritten at
the end of every run that completes the list, so a rerun over a longer image
list grows the store; a reader of the old index keeps a consistent, smaller
store until then.

Determinism: an image's stored bytes do not depend on the batch size, on the
images beside it or on the number of devices (`extract_step.py` says how;
`tests/features/test_extract.py` compares blobs). A shard stores its images by
bucket, then id, and its manifest leaves out the batch size, so the whole shard
depends only on which images it holds.

Several hosts: each process takes a contiguous slice of the sorted image list
(`jax.process_index()` of `jax.process_count()`) and writes its own shards and
report into the shared output folder; process 0 writes `shards.json` after a
barrier. Each process runs on its own devices; nothing is communicated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image
from tqdm import tqdm

from uniter_jax.data import store_sets
from uniter_jax.data.convert.common import Skipped, skipped_lines
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStoreWriter
from uniter_jax.data.regions import box_features, make_regions
from uniter_jax.features import extract_output as output
from uniter_jax.features import preprocess
from uniter_jax.features.detector import Detector
from uniter_jax.features.extract_config import ExtractConfig
from uniter_jax.features.extract_step import make_step
from uniter_jax.features.image_files import ImageFile, process_slice


@dataclasses.dataclass
class Summary:
    """What an extraction run did (this process)."""

    out_dir: str
    images: int = 0  # stored by this run
    regions: int = 0
    already_done: int = 0  # found in finished shards and left alone
    shards: list[str] = dataclasses.field(default_factory=list)  # written by this run
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    index_written: bool = False  # shards.json
    process_index: int = 0  # process 0 writes shards.json, after every process is done

    def report(self, max_listed: int = 20) -> str:
        lines = [
            f"stored {self.images} images, {self.regions} regions in {len(self.shards)} new "
            f"shards of {self.out_dir}; {self.already_done} were done before"
        ]
        if self.index_written:
            lines.append(f"wrote {os.path.join(self.out_dir, store_sets.SHARDS)}")
        elif self.process_index != 0:
            lines.append(f"process 0 writes {store_sets.SHARDS} once every process is done")
        else:
            lines.append(f"{store_sets.SHARDS} not written: not every image is done (yet)")
        return "\n".join([*lines, *skipped_lines(self.skipped, max_listed)])


def _image_bucket(image: ImageFile, config: ExtractConfig) -> tuple[int, int] | None:
    """The bucket of an image from its header alone; None where decoding is
    certain to fail (then `read_image` says why)."""
    try:
        with Image.open(image.path) as opened:
            width, height = opened.size
    except Exception:  # any failure: read_image raises the located DataError
        return None
    if (
        min(width, height) < preprocess.MIN_IMAGE_SIDE
        or max(width, height) > preprocess.MAX_IMAGE_SIDE
    ):
        return None
    new_height, new_width, _ = preprocess.resized_size(
        height, width, config.short_side, config.max_side
    )
    return preprocess.choose_bucket(new_height, new_width, config.buckets)


def _prefetch(
    function: Callable[[Any], Any], items: Sequence[Any], pool: ThreadPoolExecutor, ahead: int
) -> Iterator[Future]:
    """Futures of `function(item)` in order, at most `ahead` running ahead."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) > ahead:
            yield pending.popleft()
    yield from pending


def _regions_of(
    image: ImageFile, prepared: preprocess.PreparedImage, out: dict, row: int, labels: int
):
    """One image's rows of a step's output -> (ImageRegions, its label arrays)."""
    n = int(out["count"][row])
    if n == 0:
        raise DataError("no region: the RPN proposed no box of 16 px or more", file=image.path)
    order = np.argsort(-out["confidence"][row, :n], kind="stable")  # as make_regions sorts
    take = {k: v[row, :n][order] for k, v in out.items() if k != "count"}
    height, width = prepared.original_size
    try:
        regions = make_regions(
            image.image_id,
            take["features"],
            box_features(take["boxes"], width, height),
            take["confidence"],
            take["class_probs"],
            num_labels=labels,
        )
    except DataError as error:
        raise error.located(file=image.path) from None
    return regions, {k: take[k] for k in output.LABEL_FIELDS if k in take}


def write_shard(
    chunk: Sequence[ImageFile],
    folder: str,
    labels_path: str,
    step: Callable,
    batch: int,
    *,
    config: ExtractConfig,
    feature_dim: int,
    num_labels: int,
    source: dict[str, Any],
    on_bad: Callable[[DataError, ImageFile], None],
    bar: tqdm,
    pool: ThreadPoolExecutor,
) -> tuple[int, int]:
    """Extracts `chunk` into the store `folder` (atomically: complete or absent)
    and its labels; returns (images, regions) stored."""
    order = [(_image_bucket(image, config), image) for image in chunk]
    rank = {bucket: i for i, bucket in enumerate([None, *config.buckets])}
    order.sort(key=lambda pair: rank[pair[0]])  # stable: by bucket, then id
    blank = preprocess.PreparedImage(np.zeros((1, 1, 3), np.float32), 1.0, (1, 1))
    label_parts: list[dict[str, np.ndarray]] = []
    stored_ids: list[str] = []
    num_regions = 0

    def prepare(pair):
        return preprocess.prepare_image(pair[1].path, config.short_side, config.max_side)

    with contextlib.ExitStack() as stack:
        writer: ImageStoreWriter | None = None
        waiting: list[tuple[ImageFile, preprocess.PreparedImage]] = []

        def run(bucket):
            nonlocal writer, num_regions
            images = [p for _, p in waiting] + [blank] * (batch - len(waiting))
            out = step(preprocess.pad_batch(images, bucket), len(waiting))
            for row, (image, prepared) in enumerate(waiting):
                try:
                    regions, labels = _regions_of(image, prepared, out, row, num_labels)
                except DataError as error:
                    on_bad(error, image)
                    continue
                if writer is None:
                    writer = stack.enter_context(
                        ImageStoreWriter(
                            folder, feature_dim=feature_dim, num_labels=num_labels, source=source
                        )
                    )
                writer.add(regions)
                label_parts.append(labels)
                stored_ids.append(image.image_id)
                num_regions += regions.num_boxes
            bar.update(len(waiting))
            waiting.clear()

        current = None
        futures = _prefetch(prepare, order, pool, ahead=2 * batch)
        for (bucket, image), future in zip(order, futures, strict=True):
            try:
                prepared = future.result()
            except DataError as error:
                on_bad(error.located(file=image.path), image)
                bar.update()
                continue
            bucket = preprocess.choose_bucket(*prepared.pixels.shape[:2], config.buckets)
            if waiting and (bucket != current or len(waiting) == batch):
                run(current)
            current = bucket
            waiting.append((image, prepared))
        if waiting:
            run(current)
        if writer is not None:  # before the shard: a finished shard has its labels
            output.write_labels(labels_path, stored_ids, label_parts)
    return len(stored_ids), num_regions


def extract_images(
    images: Sequence[ImageFile],
    out_dir: str,
    detector: Detector,
    *,
    config: ExtractConfig | None = None,
    cell_anchors: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    devices: Sequence[jax.Device] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Summary:
    """Extracts `images` (`list_images`) into the sharded store `out_dir`,
    resuming where an earlier run stopped (module doc). Raises DataError for
    the first bad image unless `skip_bad`."""
    config = ExtractConfig() if config is None else config
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    out_dir = os.path.abspath(os.fspath(out_dir))
    output.check_output(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    output.clean_leftovers(out_dir, process_index)
    summary = Summary(out_dir, process_index=process_index)
    mine = process_slice(images, process_index, process_count)
    done = output.stored_ids(out_dir, output.finished_shards(out_dir))
    pending = [image for image in mine if image.image_id not in done]
    summary.already_done = len(mine) - len(pending)
    serial = output.next_serial(out_dir, process_index)
    dims = detector.roi_heads.box_predictor
    feature_dim = dims.cls_score.kernel.shape[0]
    num_labels = dims.cls_score.kernel.shape[1]
    # Not the batch, shard size or threads: a shard's bytes do not depend on them.
    settings = dataclasses.asdict(config)
    for name in ("batch_size", "shard_size", "workers"):
        settings.pop(name)
    settings["box_convention"] = detector.box_convention  # how proposals were made
    shard_source = {"extractor": __name__, **(source or {}), "extraction": settings}
    output.check_resumable(out_dir, output.finished_shards(out_dir), shard_source)

    def on_bad(error: DataError, image: ImageFile) -> None:
        if not skip_bad:
            raise error
        summary.skipped.append(
            Skipped(error.file or image.path, image.image_id, error.field, error.message)
        )

    if pending:
        step, batch = make_step(detector, config, cell_anchors=cell_anchors, devices=devices)
        bar = tqdm(
            total=len(mine), initial=summary.already_done, unit="image", disable=not progress
        )
        with bar, ThreadPoolExecutor(config.workers) as pool:
            for start in range(0, len(pending), config.shard_size):
                name = output.shard_folder_name(process_index, serial)
                stored, regions = write_shard(
                    pending[start : start + config.shard_size],
                    os.path.join(out_dir, name),
                    output.labels_path(out_dir, name),
                    step,
                    batch,
                    config=config,
                    feature_dim=feature_dim,
                    num_labels=num_labels,
                    source=shard_source,
                    on_bad=on_bad,
                    bar=bar,
                    pool=pool,
                )
                if stored:
                    summary.shards.append(name)
                    serial += 1
                summary.images += stored
                summary.regions += regions
    output.write_report(out_dir, process_index, summary.skipped)
    if process_count > 1 and jax.process_count() > 1:
        multihost_utils.sync_global_devices("uniter_jax.features.extract: shards written")
    if process_index == 0:
        summary.index_written = output.write_index(out_dir, images)
    return summary
