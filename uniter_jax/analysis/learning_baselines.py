"""Baselines of the learning check, computed per synthetic world without
learning anything from region features.

  itm_rule     hard-negative ITM by a rule: read the objects off the
               detector's argmax labels and boxes, check each caption's claim
               on them, prefer the caption that holds (a tie counts half)
  itm_bag      the same with each claim checked as a bag of attributes
               (`attributes_present`): every shape, colour and size it names
               is on some object, not necessarily the one it names. Not a
               bar: what a model that perceives attributes but binds none
               could get per kind (binding and side swaps leave it at 0.5)
  mlm_ngram    the best text-only n-gram predictor fitted on the training
               captions: the most frequent token in the same caption
               context (the whole caption but the masked token), backing
               off to its two neighbours, its left neighbour, then the most
               frequent token. Scored with each token masked alone (the
               rest of the caption visible), which favours it over the
               model's 15% masking
  mrc_copy     the class of the most overlapping other region (the
               prior's class where none overlaps)
  mrc_prior    the most frequent class of the training images' regions
  mrc_box      the most frequent training class of regions whose box falls in
               the same coarse bin (centre in a 4 x 4 grid, width in 8 bins):
               what the box alone tells, such as sky above and floor below
  mrc_copy_box the two rules joined: the class of the most overlapping other
               region where it overlaps by IoU over COPY_IOU (a second box on
               the same object), else the box prior: the strongest of the
               MRC rules where sibling boxes are some of the regions
  probe        nearest-class-mean accuracy of one object region's feature
               (fitted on half the objects, scored on the other half) and
               the share of the feature variance that the class explains:
               how much of the class a single region carries (a world property)
Region targets are the detector's argmax over non-background classes, the
target of the MRC task's accuracy.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from uniter_jax.analysis.example import RegionSelection
from uniter_jax.data import scenes
from uniter_jax.data.claims import NEGATIVE_KINDS, Claim
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.regions import ImageRegions, box_iou, num_kept
from uniter_jax.data.text_store import TextStore


def read_hard_negatives(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def pairwise_accuracy(true_scores: np.ndarray, negative_scores: np.ndarray) -> np.ndarray:
    """Per pair: 1 where the true caption scores higher, 0.5 on a tie, else 0."""
    return (np.sign(np.asarray(true_scores) - np.asarray(negative_scores)) + 1) / 2


def by_kind(records: list[dict], correct: np.ndarray) -> dict[str, float]:
    """Mean of `correct` over all pairs (`all`) and per kind of swap."""
    out = {"all": float(np.mean(correct))}
    for kind in NEGATIVE_KINDS:
        picked = [c for r, c in zip(records, correct, strict=True) if r["kind"] == kind]
        if picked:
            out[kind] = float(np.mean(picked))
    return out


def _kept(regions: ImageRegions, selection: RegionSelection) -> int:
    return num_kept(regions.conf, selection.conf_th, selection.min_bb, selection.max_bb)


def detected_objects(regions: ImageRegions, selection: RegionSelection) -> list:
    """The scene as the detector's argmax labels and boxes tell it: one object
    per object-class region, duplicates (same class, IoU > 0.5) merged."""
    n = _kept(regions, selection)
    labels = np.argmax(regions.soft_labels[:n].astype(np.float32), axis=-1)
    xyxy = regions.boxes[:n, :4].astype(np.float64) * np.tile([scenes.WIDTH, scenes.HEIGHT], 2)
    out: list[scenes.SceneObject] = []
    for label, box in zip(labels, xyxy, strict=True):
        parts = scenes.object_class(int(label))
        if parts is None or any(
            (o.shape, o.colour) == parts and box_iou(box, o.box) > 0.5 for o in out
        ):
            continue
        size = int(box[2] - box[0] > scenes.SIZE_THRESHOLD)
        out.append(scenes.SceneObject(*parts, size, tuple(float(v) for v in box)))
    return out


def attributes_present(claim: Claim, objects: Sequence[scenes.SceneObject]) -> bool:
    """Whether each shape, colour and size `claim` names is on some object of
    `objects`, each checked on its own (and, for a count, whether that many
    objects have the shape): the claim as a model that binds no attribute to
    an object, nor an object to a side, can check it."""
    for mention in claim.mentions:
        for attribute in ("shape", "colour", "size"):
            value = getattr(mention, attribute)
            if value is not None and all(getattr(o, attribute) != value for o in objects):
                return False
    if claim.kind == "count":
        return sum(o.shape == claim.mentions[0].shape for o in objects) == claim.count
    return True


def itm_rule(
    records: list[dict],
    images: ImageStore,
    selection: RegionSelection,
    check: Callable[[Claim, Sequence[scenes.SceneObject]], bool] = Claim.holds,
) -> dict[str, float]:
    """Pairwise accuracy of `check` (by default the claim itself) on the
    detected objects, over all pairs and per kind of swap."""
    cache: dict[str, list] = {}
    correct = []
    for r in records:
        if r["image_id"] not in cache:
            cache[r["image_id"]] = detected_objects(images.get(r["image_id"]), selection)
        objects = cache[r["image_id"]]
        truth = check(Claim.from_json(r["claim"]), objects)
        negative = check(Claim.from_json(r["negative_claim"]), objects)
        correct.append(pairwise_accuracy(float(truth), float(negative)))
    return by_kind(records, np.asarray(correct))


def _sequences(store: TextStore) -> list[list[int]]:
    # Boundaries stand for [CLS] / [SEP]: ids no word piece takes.
    return [[-1, *store.input_ids(i).tolist(), -2] for i in range(len(store))]


def mlm_ngram(train: TextStore, val: TextStore) -> float:
    # Contexts from the longest to the shortest: the whole caption but the
    # masked token (templates repeat, so this is the strongest text-only
    # guess), both neighbours, the left neighbour; then the commonest token.
    def contexts(seq: list[int], i: int) -> tuple:
        return (("all", *seq[:i], None, *seq[i + 1 :]), (seq[i - 1], seq[i + 1]), seq[i - 1])

    tables: dict = collections.defaultdict(collections.Counter)
    unigram: collections.Counter = collections.Counter()
    for seq in _sequences(train):
        for i in range(1, len(seq) - 1):
            for context in contexts(seq, i):
                tables[context][seq[i]] += 1
            unigram[seq[i]] += 1
    top = unigram.most_common(1)[0][0]
    hits = total = 0
    for seq in _sequences(val):
        for i in range(1, len(seq) - 1):
            found = next((tables[c] for c in contexts(seq, i) if c in tables), None)
            hits += (found.most_common(1)[0][0] if found else top) == seq[i]
            total += 1
    return hits / total


# Overlap above which another box is taken for the same object (mrc_copy_box).
COPY_IOU = 0.5


def _targets(regions: ImageRegions, n: int) -> np.ndarray:
    return np.argmax(regions.soft_labels[:n, 1:].astype(np.float32), axis=-1) + 1


def mrc_baselines(
    train_ids, val_ids, images: ImageStore, selection: RegionSelection
) -> dict[str, float]:
    counts: collections.Counter = collections.Counter()
    by_box: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    for image_id in sorted(set(train_ids)):
        regions = images.get(image_id)
        n = _kept(regions, selection)
        targets = _targets(regions, n).tolist()
        counts.update(targets)
        for key, target in zip(_box_bins(regions.boxes[:n]), targets, strict=True):
            by_box[key][target] += 1
    prior = counts.most_common(1)[0][0]
    box_prior = {key: c.most_common(1)[0][0] for key, c in by_box.items()}
    hits: dict[str, list] = {
        name: [] for name in ("mrc_copy", "mrc_prior", "mrc_box", "mrc_copy_box")
    }
    for image_id in val_ids:  # once per caption, as validation masks each caption's image
        regions = images.get(image_id)
        n = _kept(regions, selection)
        targets = _targets(regions, n)
        iou = box_iou(regions.boxes[:n, None, :4], regions.boxes[None, :n, :4])
        np.fill_diagonal(iou, 0.0)
        nearest = np.argmax(iou, axis=1)
        copied = np.where(iou.max(axis=1) > 0, targets[nearest], prior)
        boxed = np.asarray([box_prior.get(k, prior) for k in _box_bins(regions.boxes[:n])])
        hits["mrc_copy"] += (copied == targets).tolist()
        hits["mrc_prior"] += (targets == prior).tolist()
        hits["mrc_box"] += (boxed == targets).tolist()
        joined = np.where(iou.max(axis=1) > COPY_IOU, targets[nearest], boxed)
        hits["mrc_copy_box"] += (joined == targets).tolist()
    return {name: float(np.mean(values)) for name, values in hits.items()}


def _box_bins(boxes7: np.ndarray) -> list[tuple[int, int, int]]:
    """A region's box, coarsely: its centre's row and column in a 4 x 4 grid and
    its width in 8 bins, the key of the box-only class prior."""
    boxes7 = np.asarray(boxes7, np.float64)
    row = np.clip(((boxes7[:, 1] + boxes7[:, 3]) / 2 * 4).astype(int), 0, 3)
    column = np.clip(((boxes7[:, 0] + boxes7[:, 2]) / 2 * 4).astype(int), 0, 3)
    width = np.clip((boxes7[:, 4] * 8).astype(int), 0, 7)
    return list(zip(row.tolist(), column.tolist(), width.tolist(), strict=True))


def feature_probe(config: scenes.WorldConfig, num_images: int = 2000) -> dict[str, float]:
    """Nearest-class-mean accuracy on one object region's feature (class means
    from every other object row, scored on the rest), and the share of the
    object regions' feature variance between classes. Class means from few
    objects overstate the share by about (classes - 1) / objects: 2,000
    images of 2-6 objects keep that under 0.01."""
    feats, labels = [], []
    small = scenes.WorldConfig(**{**vars(config), "num_images": num_images})
    for _, _, features, _, _, true in scenes.generate(small):
        keep = np.asarray([scenes.object_class(int(t)) is not None for t in true])
        feats.append(features[keep])
        labels.append(true[keep])
    x, y = np.concatenate(feats), np.concatenate(labels)
    half = np.arange(len(y)) % 2 == 0
    classes = np.unique(y[half])
    means = np.stack([x[half][y[half] == c].mean(0) for c in classes])
    test = x[~half]
    distance = (test**2).sum(1)[:, None] - 2 * test @ means.T + (means**2).sum(1)[None]
    accuracy = float(np.mean(classes[np.argmin(distance, axis=1)] == y[~half]))
    every = np.unique(y)
    class_means = np.stack([x[y == c].mean(0) for c in every])[np.searchsorted(every, y)]
    between = float(((class_means - x.mean(0)) ** 2).sum(1).mean())
    total = float(((x - x.mean(0)) ** 2).sum(1).mean())
    return {"probe_accuracy": accuracy, "class_variance_share": between / total}


def world_baselines(
    world: str, selection: RegionSelection | None = None
) -> dict[str, float | dict]:
    """Every baseline above (but the probe) of a world folder written by
    `uniter_jax.data.synthetic.write_world`; `selection` defaults to the pipeline's."""
    selection = selection or RegionSelection()
    images = ImageStore(os.path.join(world, "images"))
    train = TextStore(os.path.join(world, "texts", "captions_train"))
    val = TextStore(os.path.join(world, "texts", "captions_val"))
    records = read_hard_negatives(os.path.join(world, "itm_hard_val.jsonl"))
    train_ids = [str(i) for i in train.image_ids]
    val_ids = [str(i) for i in val.image_ids]
    return {
        "itm_rule": itm_rule(records, images, selection),
        "itm_bag": itm_rule(records, images, selection, attributes_present),
        "mlm_ngram": mlm_ngram(train, val),
        **mrc_baselines(train_ids, val_ids, images, selection),
    }
