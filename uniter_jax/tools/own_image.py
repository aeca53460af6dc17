"""One's own image through the whole path: detector -> regions with labels ->
UNITER's ITM score, attention and word-region alignment for a sentence.

`detect_regions` runs the extractor's step (`extract_step.make_step`) on one
image file and returns its regions as the extractor would store them (sorted
by confidence); `write_store` puts them into a one-image store, so that the
analysis code (`analysis.example`, `analysis.itm_scores`) reads them like any
stored image. This glue lives in `tools/` because `analysis` and `features`
share a layer and do not import each other.

Labels: the detector predicts 1600 Visual Genome object classes; their names
are not in this repository. Pass the `objects_vocab.txt` of bottom-up-attention
(`data/genome/1600-400-20/objects_vocab.txt` in peteanderson80/bottom-up-attention,
one name per line, without background) to get them; without it a region is
labelled `class k`. A detector with random weights (`random_detector`) makes
boxes and labels that mean nothing: everything it draws says so.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import numpy as np
from matplotlib.figure import Figure

from uniter_jax.analysis import plots
from uniter_jax.analysis.example import label_names
from uniter_jax.data.image_store import ImageStore, ImageStoreWriter
from uniter_jax.data.regions import box_features, make_regions
from uniter_jax.features import preprocess
from uniter_jax.features.detector import Detector
from uniter_jax.features.detector_config import DetectorConfig
from uniter_jax.features.extract_config import ExtractConfig
from uniter_jax.features.extract_step import make_step

RANDOM_NOTE = "random detector weights: labels are meaningless"


@dataclasses.dataclass(frozen=True)
class DetectedRegions:
    """One image's regions, sorted by confidence (as the extractor stores them)."""

    image_id: str
    size: tuple[int, int]  # (height, width) of the image, pixels
    boxes: np.ndarray  # [N, 4] float32 (x1, y1, x2, y2) in image pixels
    confidence: np.ndarray  # [N] float32 max class confidence
    object_class: np.ndarray  # [N] int32, 1.. (0 is background)
    class_probs: np.ndarray  # [N, C] float32 softmax, background at 0
    features: np.ndarray  # [N, D] float32
    labels: tuple[str, ...]  # [N] "i: name" (or "i: class k" without names)
    note: str = ""  # RANDOM_NOTE for a random detector

    @property
    def box_features(self) -> np.ndarray:
        """`[N, 7]` normalised box features, as the stores hold them."""
        height, width = self.size
        return box_features(self.boxes, width, height)


def detect_regions(
    path: str | os.PathLike,
    detector: Detector,
    detector_config: DetectorConfig,
    extract_config: ExtractConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    note: str = "",
) -> DetectedRegions:
    """The regions of one image file, by the extractor's step on one device.

    `names`: the detector's class names, background first (`label_names`);
    None labels a region `class k`."""
    config = dataclasses.replace(extract_config or ExtractConfig(), batch_size=1)
    prepared = preprocess.prepare_image(path, config.short_side, config.max_side)
    bucket = preprocess.choose_bucket(*prepared.pixels.shape[:2], config.buckets)
    step, _ = make_step(
        detector, config, cell_anchors=detector_config.cell_anchors(), devices=jax.devices()[:1]
    )
    out = step(preprocess.pad_batch([prepared], bucket), 1)
    count = int(out["count"][0])
    order = np.argsort(-out["confidence"][0, :count], kind="stable")
    take = {k: v[0, :count][order] for k, v in out.items() if k != "count"}
    names = names or label_names(detector_config.num_classes)
    classes = take["object_class"].astype(np.int32)
    return DetectedRegions(
        image_id=os.path.splitext(os.path.basename(path))[0],
        size=prepared.original_size,
        boxes=take["boxes"].astype(np.float32),
        confidence=take["confidence"].astype(np.float32),
        object_class=classes,
        class_probs=take["class_probs"].astype(np.float32),
        features=take["features"].astype(np.float32),
        labels=tuple(f"{i}: {names[c]}" for i, c in enumerate(classes)),
        note=note,
    )


def write_store(regions: DetectedRegions, folder: str) -> ImageStore:
    """A one-image store of `regions` (features, box features, confidences and
    class probabilities as soft labels), opened for reading."""
    dim, num_labels = regions.features.shape[1], regions.class_probs.shape[1]
    stored = make_regions(
        regions.image_id,
        regions.features,
        regions.box_features,
        regions.confidence,
        regions.class_probs,
        feature_dim=dim,
        num_labels=num_labels,
    )
    source = {"tool": "uniter_jax.tools.own_image", "note": regions.note}
    with ImageStoreWriter(
        folder, feature_dim=dim, num_labels=num_labels, source=source, overwrite=True
    ) as writer:
        writer.add(stored)
    return ImageStore(folder)


REGIONS_SIZE = (8.0, 6.5)


def regions_figure(regions: DetectedRegions, picture: np.ndarray, title: str = "") -> Figure:
    """The image `[H, W, 3]` with every region's box and label, line width by
    confidence; the title carries `regions.note`."""
    fig = Figure(figsize=REGIONS_SIZE, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    count = len(regions.labels)
    plots.draw_regions(
        ax, regions.box_features, regions.confidence, regions.labels, picture, top=count
    )
    lines = [title or f"{count} regions of {regions.image_id}"]
    if regions.note:
        lines.append(regions.note.upper())
    ax.set_title("\n".join(lines), fontsize=10, color="darkred" if regions.note else "black")
    return fig
