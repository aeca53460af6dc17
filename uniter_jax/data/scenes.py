"""Scenes of the synthetic worlds and the detector output they yield.

A world is a parameterised family (`WorldConfig`): how many objects an image
holds, whether a detector fires several overlapping boxes on one object,
how many background "stuff" regions surround them, whether rows come in
object order or shuffled, how much of an object's class a single region's
feature carries, how often the detector's class distribution is wrong, and
which caption forms describe the scene (`uniter_jax.data.claims`).
`WORLDS` names the members the learning check uses.

Each object has a shape, a colour and a size. A region's feature is a fixed
random embedding of its object's attributes (or of its stuff class), scaled
by `feature_signal`, plus Gaussian noise of std `feature_noise`, through a
ReLU as pooled detector features are. The soft label peaks on the object's
class (one per shape and colour, background first) or, with probability
`detector_error`, on a confusable wrong class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

SHAPES = ("cube", "sphere", "cylinder", "cone", "ring", "star", "pyramid", "disc")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
# Background classes; the first half lie in the upper half of an image, the
# second half in the lower half (sky above, floor below), as in photographs.
STUFF = ("sky", "wall", "ceiling", "window", "floor", "grass", "road", "table")
WIDTH, HEIGHT = 640, 480
# Small objects are under 60 pixels wide, large ones over 100.
SIZE_THRESHOLD = 80.0
CAPTION_KINDS = ("pair", "side", "count", "relation")
OBJECT_CLASSES = len(SHAPES) * len(COLOURS)


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: int
    colour: int
    size: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 pixels

    @property
    def words(self) -> str:
        return f"{SIZES[self.size]} {COLOURS[self.colour]} {SHAPES[self.shape]}"

    @property
    def centre(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def side(self) -> str:
        return "left" if self.centre < WIDTH / 2 else "right"


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """One member of the family. The defaults are `make run`'s world."""

    num_images: int = 200
    feature_dim: int = 2048
    num_labels: int = 1601  # background + object classes, as the BUTD detector
    min_objects: int = 2
    max_objects: int = 4
    # A detector fires several overlapping boxes on one object: the first box
    # is the object's, the others are jittered copies with their own noise.
    # 1: one region per object (no sibling to copy a masked region's class from).
    regions_per_object: int = 3
    # Regions on no object, a count drawn uniformly from [min, max] per image.
    background_regions: tuple[int, int] = (0, 0)
    # 0: background regions are label 0 with one shared feature; k > 0: each
    # is one of k STUFF classes, k/2 of the upper ones or k/2 of the lower
    # ones by its vertical position, with its own feature embedding.
    stuff_classes: int = 0
    shuffle_rows: bool = False  # rows in random order instead of object order
    feature_signal: float = 1.0  # scale of the attribute embeddings
    feature_noise: float = 0.3  # std of the per-region Gaussian noise
    detector_error: float = 0.0  # chance the soft label peaks on a wrong class
    caption_kinds: tuple[str, ...] = ("pair", "side", "count")
    captions_per_image: int = 5
    questions_per_image: int = 3
    statements_per_image: int = 3  # SNLI-VE
    nlvr2_pairs_per_image: float = 0.1  # NLVR2 image pairs (each copies two images)
    nlvr2_statements_per_pair: int = 6
    seed: int = 0

    def __post_init__(self):
        needed = 1 + OBJECT_CLASSES + (len(STUFF) if self.stuff_classes else 0)
        if self.num_labels < needed:
            raise ValueError(
                f"num_labels must be at least {needed} (background, one per shape and "
                f"colour, the {len(STUFF)} stuff classes)"
            )
        if self.min_objects < 2 or self.max_objects < self.min_objects:
            raise ValueError("need 2 <= min_objects <= max_objects")
        if self.regions_per_object < 1:
            raise ValueError("regions_per_object must be at least 1")
        low, high = self.background_regions
        if not 0 <= low <= high:
            raise ValueError(f"background_regions {self.background_regions}: need 0 <= min <= max")
        if not 0 <= self.stuff_classes <= len(STUFF) or self.stuff_classes % 2:
            raise ValueError(f"stuff_classes must be even and at most {len(STUFF)}")
        if not 0.0 <= self.detector_error < 1.0:
            raise ValueError("detector_error must lie in [0, 1)")
        unknown = set(self.caption_kinds) - set(CAPTION_KINDS)
        if unknown or not self.caption_kinds:
            raise ValueError(f"caption_kinds {self.caption_kinds}: choose from {CAPTION_KINDS}")


# The worlds of the learning check (`benchmarks/learning_table.py`). `siblings`
# is `make run`'s; `clutter` is the hardest: one region per object among
# mostly background, shuffled rows, a thin class signal in each feature
# (about 2.5% of its variance) and a detector wrong one time in ten. It is
# `middle` with one region per object and more objects, background, noise
# and caption kinds.
_MIDDLE = WorldConfig(
    num_images=2000,
    min_objects=2,
    max_objects=5,
    regions_per_object=2,
    background_regions=(4, 12),
    stuff_classes=8,
    shuffle_rows=True,
    feature_noise=3.0,
    detector_error=0.1,
    caption_kinds=("pair", "side", "relation"),
)
WORLDS = {
    "siblings": WorldConfig(num_images=2000),
    "middle": _MIDDLE,
    "clutter": dataclasses.replace(
        _MIDDLE,
        max_objects=6,
        regions_per_object=1,
        background_regions=(8, 30),
        feature_noise=8.0,
        caption_kinds=CAPTION_KINDS,
    ),
}


def class_label(obj: SceneObject) -> int:
    """The 1601-way label of an object: one class per (shape, colour)."""
    return 1 + obj.shape * len(COLOURS) + obj.colour


def stuff_label(k: int) -> int:
    return 1 + OBJECT_CLASSES + k


def object_class(label: int) -> tuple[int, int] | None:
    """(shape, colour) of an object class label; None for background and stuff."""
    if not 1 <= label <= OBJECT_CLASSES:
        return None
    return divmod(label - 1, len(COLOURS))


def label_names(num_labels: int = 1601) -> list[str]:
    """Names of the world's detector classes ("red cube"), background first;
    classes no object uses are "class k"."""
    names = ["background"] + [f"class {k}" for k in range(1, num_labels)]
    for shape, shape_name in enumerate(SHAPES):
        for colour, colour_name in enumerate(COLOURS):
            obj = SceneObject(shape, colour, 0, (0.0, 0.0, 1.0, 1.0))
            names[class_label(obj)] = f"{colour_name} {shape_name}"
    for k, name in enumerate(STUFF):
        if stuff_label(k) < num_labels:
            names[stuff_label(k)] = name
    return names


def make_scene(rng: np.random.Generator, config: WorldConfig) -> list[SceneObject]:
    objects = []
    for _ in range(rng.integers(config.min_objects, config.max_objects + 1)):
        size = int(rng.integers(len(SIZES)))
        # Sizes do not overlap: small is under 60 pixels, large over 100.
        extent = rng.uniform(100, 160) if size else rng.uniform(30, 60)
        x1 = rng.uniform(0, WIDTH - extent)
        y1 = rng.uniform(0, HEIGHT - extent)
        box = (float(x1), float(y1), float(x1 + extent), float(y1 + extent))
        objects.append(
            SceneObject(int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS))), size, box)
        )
    return objects


class _Projections:
    """Fixed random attribute embeddings, the same for every image of a world."""

    def __init__(self, config: WorldConfig):
        rng = np.random.default_rng([config.seed, 1])
        d = config.feature_dim
        self.shape = rng.standard_normal((len(SHAPES), d))
        self.colour = rng.standard_normal((len(COLOURS), d))
        self.size = rng.standard_normal((len(SIZES), d))
        self.background = rng.standard_normal(d)
        self.stuff = np.random.default_rng([config.seed, 6]).standard_normal((len(STUFF), d))


def _background(rng: np.random.Generator, config: WorldConfig, proj: _Projections):
    """(feature, pixel box, label) of one background region."""
    x1, y1 = rng.uniform(0, WIDTH - 100), rng.uniform(0, HEIGHT - 100)
    box = (x1, y1, x1 + rng.uniform(20, 100), y1 + rng.uniform(20, 100))
    if not config.stuff_classes:
        return proj.background, box, 0
    # The first `stuff_classes / 2` classes of each half of STUFF.
    band = 0 if (box[1] + box[3]) / 2 < HEIGHT / 2 else len(STUFF) // 2
    k = band + int(rng.integers(config.stuff_classes // 2))
    return proj.stuff[k], box, stuff_label(k)


def _confusable(label: int, rng: np.random.Generator, config: WorldConfig) -> int:
    """A wrong class a detector could give: another stuff class for stuff, an
    object class sharing the shape or the colour for objects."""
    parts = object_class(label)
    if parts is None:
        used = [k + band for band in (0, len(STUFF) // 2) for k in range(config.stuff_classes // 2)]
        others = [stuff_label(k) for k in used if stuff_label(k) != label]
        return others[rng.integers(len(others))] if others else label
    shape, colour = parts
    others = [1 + s * len(COLOURS) + colour for s in range(len(SHAPES)) if s != shape]
    others += [1 + shape * len(COLOURS) + c for c in range(len(COLOURS)) if c != colour]
    return others[rng.integers(len(others))]


def _soft_labels(labels: list[int], rng: np.random.Generator, config: WorldConfig) -> np.ndarray:
    soft = np.full((len(labels), config.num_labels), 0.0)
    for i, label in enumerate(labels):
        # Detector-like: most mass on the (detected) class, some on a
        # confusable neighbour and on background, a little everywhere.
        peak = rng.uniform(0.6, 0.9)
        top, second = label, (label % (config.num_labels - 1)) + 1
        if config.detector_error and rng.random() < config.detector_error:
            top, second = _confusable(label, rng, config), label
        soft[i] = (1.0 - peak) * 0.2 / config.num_labels
        soft[i, top] += peak
        soft[i, second] += (1.0 - peak) * 0.5
        soft[i, 0] += (1.0 - peak) * 0.3
        soft[i] /= soft[i].sum()
    return soft


def region_arrays(
    objects: list[SceneObject],
    rng: np.random.Generator,
    config: WorldConfig,
    proj: _Projections,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features [n, D], pixel boxes [n, 4], soft labels [n, L], true labels [n]):
    each object's `regions_per_object` regions in object order, then the
    background regions; all rows permuted when `shuffle_rows`."""
    feats, boxes, labels = [], [], []
    for obj in objects:
        f = proj.shape[obj.shape] + proj.colour[obj.colour] + 0.5 * proj.size[obj.size]
        extent = obj.box[2] - obj.box[0]
        for copy in range(config.regions_per_object):
            shift = rng.uniform(-0.05, 0.05, 4) * extent if copy else np.zeros(4)
            box = np.clip(np.asarray(obj.box) + shift, 0, [WIDTH, HEIGHT, WIDTH, HEIGHT])
            feats.append(f)
            boxes.append(tuple(box))
            labels.append(class_label(obj))
    low, high = config.background_regions
    for _ in range(low if low == high else int(rng.integers(low, high + 1))):
        feature, box, label = _background(rng, config, proj)
        feats.append(feature)
        boxes.append(box)
        labels.append(label)
    signal = config.feature_signal * np.stack(feats)
    noise = config.feature_noise * rng.standard_normal((len(feats), config.feature_dim))
    features = np.maximum(signal + noise, 0.0)
    soft = _soft_labels(labels, rng, config)
    boxes, labels = np.asarray(boxes), np.asarray(labels)
    if config.shuffle_rows:
        order = rng.permutation(len(labels))
        features, boxes, soft, labels = features[order], boxes[order], soft[order], labels[order]
    return features, boxes, soft, labels


def generate(config: WorldConfig) -> Iterator[tuple]:
    """Yields `(image_id, objects, features, pixel_boxes, soft_labels, true_labels)`."""
    proj = _Projections(config)
    for i in range(config.num_images):
        rng = np.random.default_rng([config.seed, 2, i])
        objects = make_scene(rng, config)
        yield (f"synth{i:06d}", objects, *region_arrays(objects, rng, config, proj))
