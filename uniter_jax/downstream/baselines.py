"""Trivial baselines of each downstream task on a split: what a fine-tuned model
must beat to have learned anything from the images.

  python -m uniter_jax.downstream.baselines --world WORKDIR/synthetic

  vqa        the most frequent training answer, always (prior); and that of
             each question type (`vqa_type_prior`, the learning check's)
  ve         the most frequent training label, always (majority)
  refexp     a uniformly random kept region: expected accuracy (IoU >= 0.5)
             and expected target accuracy (1 / regions)
  nlvr2      the most frequent training label, always
  vcr        chance: 1/4 for Q->A and QA->R, 1/16 for Q->AR
  retrieval  a random ranking: expected Recall@K = K / #candidates
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.regions import box_iou
from uniter_jax.data.text_store import TextStore
from uniter_jax.downstream import metrics, vqa


def _majority(train: TextStore, val: TextStore, step: int = 1) -> float:
    labels = train.arrays["label"][::step]
    common = np.bincount(labels[labels >= 0]).argmax()
    return metrics.accuracy(np.full(len(val) // step, common), val.arrays["label"][::step])


def vqa_prior(train: TextStore, val: TextStore) -> dict[str, float]:
    counts = np.bincount(train.arrays["answers"], weights=train.arrays["scores"])
    best = int(np.argmax(counts))
    return {"accuracy": metrics.vqa_accuracy(np.full(len(val), best), *vqa.answer_credits(val))}


def vqa_type_prior(train: TextStore, val: TextStore, words: int = 2) -> float:
    """VQA accuracy of the most frequent (score-weighted) training answer of each
    question type, the question's first `words` word pieces ("how many"); the
    overall prior for a type the training split lacks."""

    def kind(store: TextStore, i: int) -> tuple[int, ...]:
        return tuple(store.input_ids(i)[:words].tolist())

    totals: dict[tuple, np.ndarray] = {}
    size = int(train.arrays["answers"].max()) + 1
    for i in range(len(train)):
        counts = totals.setdefault(kind(train, i), np.zeros(size))
        np.add.at(counts, train.field("answers", i), train.field("scores", i))
    overall = int(np.argmax(sum(totals.values())))
    best = {k: int(np.argmax(v)) for k, v in totals.items()}
    n = len(val)
    guesses = np.asarray([best.get(kind(val, i), overall) for i in range(n)])
    return metrics.vqa_accuracy(guesses, *vqa.answer_credits(val))


def refexp_chance(
    val: TextStore, images: ImageStore, conf_th: float, min_bb: int, max_bb: int
) -> dict[str, float]:
    kept = images.num_kept(conf_th, min_bb, max_bb)
    hits, targets = [], []
    for i, image_id in enumerate(val.image_ids):
        position = images.position(str(image_id))
        boxes = images.get(str(image_id)).boxes[: kept[position], :4]
        hits.append(np.mean(box_iou(boxes, val.arrays["gt_box"][i]) >= 0.5))
        targets.append(1.0 / kept[position])
    return {"accuracy": float(np.mean(hits)), "target_accuracy": float(np.mean(targets))}


def retrieval_chance(val: TextStore, ks=(1, 5, 10)) -> dict[str, float]:
    images = len(set(val.image_ids))
    texts = len(val)
    out = {f"t2i_r{k}": min(k / images, 1.0) for k in ks}
    # An image's texts: each of its c texts among t candidates; at least one in the top k.
    per_image = np.unique(val.image_ids, return_counts=True)[1]
    for k in ks:
        miss = [np.prod([(texts - c - j) / (texts - j) for j in range(k)]) for c in per_image]
        out[f"i2t_r{k}"] = float(1 - np.mean(miss))
    return out


def world_baselines(world: str, conf_th=0.2, min_bb=10, max_bb=100) -> dict[str, dict]:
    def texts(name):
        return TextStore(os.path.join(world, "texts", name))

    images = ImageStore(os.path.join(world, "images"))
    vqa.check(texts("vqa_val"), texts("vqa_train"))
    return {
        "vqa": {
            **vqa_prior(texts("vqa_train"), texts("vqa_val")),
            "type_prior": vqa_type_prior(texts("vqa_train"), texts("vqa_val")),
        },
        "ve": {"accuracy": _majority(texts("ve_train"), texts("ve_val"))},
        "refexp": refexp_chance(texts("refexp_val"), images, conf_th, min_bb, max_bb),
        "nlvr2": {"accuracy": _majority(texts("nlvr2_train"), texts("nlvr2_val"), 2)},
        "vcr": {"qa_accuracy": 0.25, "qar_accuracy": 0.25, "q_ar_accuracy": 1 / 16},
        "retrieval": retrieval_chance(texts("retrieval_val")),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", required=True, help="a synthetic world folder")
    args = parser.parse_args(argv)
    print(json.dumps(world_baselines(args.world), indent=2))


if __name__ == "__main__":
    main()
