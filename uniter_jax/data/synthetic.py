"""A deterministic, learnable scene world: the built-in data of demos and tests.

It is written in the public formats (a folder of per-image npz, COCO caption
JSON, VQA v2 JSON) and converted by the same converters users run.

Each image holds a few objects (shape, colour, size, position). A region's
feature is a fixed random projection of its object's attributes plus noise,
its soft label peaks on the object's class (detector-like, background first),
and its box is the object's. Captions, VQA questions and referring
expressions are generated from templates over the same objects, so text and
regions carry the same facts: image-text matching, masked words and region
classes are all learnable.

  python -m uniter_jax.data.synthetic --out data/synthetic   # seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import shutil
import time

import numpy as np

from uniter_jax.data.convert.coco_captions import convert_coco_captions
from uniter_jax.data.convert.karpathy import convert_karpathy
from uniter_jax.data.convert.nlvr2 import convert_nlvr2
from uniter_jax.data.convert.npz_dir import convert_npz_dir
from uniter_jax.data.convert.refcoco import convert_refcoco
from uniter_jax.data.convert.snli_ve import convert_snli_ve
from uniter_jax.data.convert.vcr import convert_vcr
from uniter_jax.data.convert.vqa import answer_vocab_from, convert_vqa
from uniter_jax.data.files import write_json
from uniter_jax.data.tokenizer import build_vocab

# Bumped whenever the world gains stores or changes: runs rewrite older worlds.
WORLD_VERSION = 3
SHAPES = ("cube", "sphere", "cylinder", "cone", "ring", "star", "pyramid", "disc")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
WIDTH, HEIGHT = 640, 480


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
    def side(self) -> str:
        centre = (self.box[0] + self.box[2]) / 2
        return "left" if centre < WIDTH / 2 else "right"


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    num_images: int = 200
    feature_dim: int = 2048
    num_labels: int = 1601  # background + object classes, as the BUTD detector
    min_objects: int = 2
    max_objects: int = 4
    # A detector fires several overlapping boxes on one object: the first box
    # is the object's, the others are jittered copies with their own noise.
    regions_per_object: int = 3
    background_regions: int = 0  # regions on no object (label 0, low confidence)
    captions_per_image: int = 5
    questions_per_image: int = 3
    statements_per_image: int = 3  # SNLI-VE
    nlvr2_pairs_per_image: float = 0.1  # NLVR2 image pairs (each copies two images)
    nlvr2_statements_per_pair: int = 6
    feature_noise: float = 0.3
    seed: int = 0

    def __post_init__(self):
        needed = 1 + len(SHAPES) * len(COLOURS)
        if self.num_labels < needed:
            raise ValueError(f"num_labels must be at least {needed} (one per shape and colour)")
        if self.min_objects < 2 or self.max_objects < self.min_objects:
            raise ValueError("need 2 <= min_objects <= max_objects")
        if self.regions_per_object < 1:
            raise ValueError("regions_per_object must be at least 1")


def class_label(obj: SceneObject) -> int:
    """The 1601-way label of an object: one class per (shape, colour)."""
    return 1 + obj.shape * len(COLOURS) + obj.colour


def label_names(num_labels: int = 1601) -> list[str]:
    """Names of the world's detector classes ("red cube"), background first;
    classes no object uses are "class k"."""
    names = ["background"] + [f"class {k}" for k in range(1, num_labels)]
    for shape, shape_name in enumerate(SHAPES):
        for colour, colour_name in enumerate(COLOURS):
            obj = SceneObject(shape, colour, 0, (0.0, 0.0, 1.0, 1.0))
            names[class_label(obj)] = f"{colour_name} {shape_name}"
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


def region_arrays(
    objects: list[SceneObject],
    rng: np.random.Generator,
    config: WorldConfig,
    proj: _Projections,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [n, D], pixel boxes [n, 4], soft labels [n, L]): each object's
    `regions_per_object` regions in object order, then the background regions."""
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
    for _ in range(config.background_regions):
        feats.append(proj.background)
        x1, y1 = rng.uniform(0, WIDTH - 100), rng.uniform(0, HEIGHT - 100)
        boxes.append((x1, y1, x1 + rng.uniform(20, 100), y1 + rng.uniform(20, 100)))
        labels.append(0)
    features = np.maximum(
        np.stack(feats)
        + config.feature_noise * rng.standard_normal((len(feats), config.feature_dim)),
        0.0,
    )
    soft = np.full((len(labels), config.num_labels), 0.0)
    for i, label in enumerate(labels):
        # Detector-like: most mass on the true class, some on a confusable
        # neighbour and on background, a little everywhere.
        peak = rng.uniform(0.6, 0.9)
        soft[i] = (1.0 - peak) * 0.2 / config.num_labels
        soft[i, label] += peak
        soft[i, (label % (config.num_labels - 1)) + 1] += (1.0 - peak) * 0.5
        soft[i, 0] += (1.0 - peak) * 0.3
        soft[i] /= soft[i].sum()
    return features, np.asarray(boxes), soft


def captions(objects: list[SceneObject], rng: np.random.Generator, count: int) -> list[str]:
    out = []
    for _ in range(count):
        a, b = (objects[i] for i in rng.choice(len(objects), 2, replace=False))
        kind = rng.integers(3)
        if kind == 0:
            out.append(f"a {a.words} and a {b.words}.")
        elif kind == 1:
            out.append(f"a {a.words} on the {a.side}.")
        else:
            n = sum(o.shape == a.shape for o in objects)
            verb, noun = ("are", SHAPES[a.shape] + "s") if n > 1 else ("is", SHAPES[a.shape])
            out.append(f"there {verb} {n} {noun} and a {COLOURS[b.colour]} {SHAPES[b.shape]}.")
    return out


def questions(
    objects: list[SceneObject], rng: np.random.Generator, count: int
) -> list[tuple[str, str]]:
    """(question, answer) pairs: colour, count and existence questions."""
    out = []
    for _ in range(count):
        obj = objects[rng.integers(len(objects))]
        kind = rng.integers(3)
        if kind == 0:
            out.append(
                (f"what colour is the {SIZES[obj.size]} {SHAPES[obj.shape]}?", COLOURS[obj.colour])
            )
        elif kind == 1:
            n = sum(o.shape == obj.shape for o in objects)
            out.append((f"how many {SHAPES[obj.shape]}s are there?", str(n)))
        else:
            colour = int(rng.integers(len(COLOURS)))
            present = any(o.shape == obj.shape and o.colour == colour for o in objects)
            out.append(
                (f"is there a {COLOURS[colour]} {SHAPES[obj.shape]}?", "yes" if present else "no")
            )
    return out


NEUTRAL_WORDS = ("heavy", "new", "old", "wet")  # what the pixels cannot tell


def entailment(
    objects: list[SceneObject], rng: np.random.Generator, count: int
) -> list[tuple[str, str]]:
    """(statement, SNLI-VE label): entailed by a present object, contradicted by an
    absent (shape, colour), or neutral (an attribute the picture cannot show)."""
    present = {(o.shape, o.colour) for o in objects}
    absent = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
    absent = [sc for sc in absent if sc not in present]
    out = []
    for _ in range(count):
        kind = rng.integers(3)
        obj = objects[rng.integers(len(objects))]
        if kind == 0:
            out.append(
                (f"a {COLOURS[obj.colour]} {SHAPES[obj.shape]} is in the picture.", "entailment")
            )
        elif kind == 1:
            shape, colour = absent[rng.integers(len(absent))]
            out.append((f"a {COLOURS[colour]} {SHAPES[shape]} is in the picture.", "contradiction"))
        else:
            word = NEUTRAL_WORDS[rng.integers(len(NEUTRAL_WORDS))]
            out.append((f"the {COLOURS[obj.colour]} {SHAPES[obj.shape]} is {word}.", "neutral"))
    return out


def referring(objects: list[SceneObject]) -> list[tuple[str, int]]:
    """(expression, region index) for each object its words single out."""
    out = []
    for i, obj in enumerate(objects):
        if sum(o.words == obj.words for o in objects) == 1:
            out.append((f"the {obj.words}", i))
    return out


def generate(config: WorldConfig):
    """Yields `(image_id, objects, features, pixel_boxes, soft_labels)` per image."""
    proj = _Projections(config)
    for i in range(config.num_images):
        rng = np.random.default_rng([config.seed, 2, i])
        objects = make_scene(rng, config)
        yield (f"synth{i:06d}", objects, *region_arrays(objects, rng, config, proj))


def corpus(config: WorldConfig) -> list[str]:
    """Every word the templates can produce, for building the vocabulary."""
    words = [*SHAPES, *(s + "s" for s in SHAPES), *COLOURS, *SIZES]
    words += ["a", "and", "on", "the", "left", "right", "there", "is", "are", "what"]
    words += ["colour", "how", "many", "yes", "no", "in", "picture", *NEUTRAL_WORDS]
    # NLVR2 and VCR templates.
    words += ["image", "images", "both", "contain", "has", "more", "than", "it", "because"]
    words += [str(n) for n in range(config.max_objects + 1)] + [".", "?"]
    return [" ".join(words)] * 3


def write_world(
    out: str,
    config: WorldConfig = WorldConfig(),
    *,
    max_txt_len: int = 60,
    overwrite: bool = False,
    keep_raw: bool = False,
) -> dict[str, str]:
    """Writes the world in public formats under `out/raw`, converts it with the
    converters users run, and returns the paths of the vocabulary and stores.

    Regions go through the npz-folder converter, captions through the COCO
    caption converter, questions through the VQA v2 converter, statements
    through the SNLI-VE converter and referring expressions through the
    RefCOCO converter (refer toolkit pickle + instances JSON). `keep_raw`
    keeps the public-format files.
    """
    from uniter_jax.data import synthetic_downstream as downstream  # it imports this module

    os.makedirs(out, exist_ok=True)
    vocab_path = build_vocab(corpus(config), os.path.join(out, "vocab.txt"), vocab_size=400)
    raw = os.path.join(out, "raw")
    shutil.rmtree(raw, ignore_errors=True)
    os.makedirs(os.path.join(raw, "regions"))
    splits = ("train", "val")
    coco = {split: {"images": [], "annotations": []} for split in splits}
    vqa_questions = {split: [] for split in splits}
    vqa_answers = {split: [] for split in splits}
    ve_lines: dict[str, list[str]] = {split: [] for split in splits}
    refs: list[dict] = []
    instances: dict[str, list] = {"images": [], "annotations": [], "categories": []}
    scenes: list = []
    captions_of: dict[str, list[str]] = {}
    num_val = max(1, config.num_images // 10)
    for i, (image_id, objects, feats, boxes, soft) in enumerate(generate(config)):
        split = "val" if i < num_val else "train"
        scenes.append(downstream.Scene(image_id, objects, split))
        conf = soft[:, 1:].max(axis=1)
        np.savez(
            os.path.join(raw, "regions", f"{image_id}.npz"),
            features=feats.astype(np.float16),
            boxes=boxes.astype(np.float32),
            image_w=WIDTH,
            image_h=HEIGHT,
            conf=conf.astype(np.float32),
            soft_labels=soft.astype(np.float32),
        )
        coco[split]["images"].append({"id": i, "width": WIDTH, "height": HEIGHT})
        rng = np.random.default_rng([config.seed, 3, i])
        captions_of[image_id] = captions(objects, rng, config.captions_per_image)
        for text in captions_of[image_id]:
            n = len(coco["train"]["annotations"]) + len(coco["val"]["annotations"])
            coco[split]["annotations"].append({"id": n, "image_id": i, "caption": text})
        for question, answer in questions(objects, rng, config.questions_per_image):
            n = len(vqa_questions["train"]) + len(vqa_questions["val"])
            vqa_questions[split].append({"question_id": n, "image_id": i, "question": question})
            vqa_answers[split].append(
                {
                    "question_id": n,
                    "image_id": i,
                    "multiple_choice_answer": answer,
                    "answers": [{"answer": answer, "answer_id": k} for k in range(10)],
                }
            )
        for statement, label in entailment(objects, rng, config.statements_per_image):
            n = len(ve_lines["train"]) + len(ve_lines["val"])
            record = {
                "pairID": f"ve{n}",
                "Flikr30kID": f"{image_id}.jpg",
                "sentence2": statement,
                "gold_label": label,
            }
            ve_lines[split].append(json.dumps(record))
        # Referring expressions, in the refer toolkit's layout: one annotation
        # per object (its true box), one ref per object its words single out.
        instances["images"].append({"id": i, "width": WIDTH, "height": HEIGHT})
        first_ann = len(instances["annotations"])
        for k, obj in enumerate(objects):
            x1, y1, x2, y2 = obj.box
            instances["annotations"].append(
                {
                    "id": first_ann + k,
                    "image_id": i,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "category_id": class_label(obj),
                }
            )
        for expression, index in referring(objects):
            ref_id = len(refs)
            refs.append(
                {
                    "ref_id": ref_id,
                    "ann_id": first_ann + index,
                    "image_id": i,
                    "split": split,
                    "category_id": class_label(objects[index]),
                    "file_name": f"{image_id}.jpg",
                    "sent_ids": [ref_id],
                    "sentences": [
                        {
                            "sent": expression,
                            "raw": expression,
                            "tokens": expression.split(),
                            "sent_id": ref_id,
                        }
                    ],
                }
            )

    # NLVR2 names its two images after the statement: copy the scenes' regions.
    nlvr2 = {}
    for split in splits:
        pairs = max(1, int(config.nlvr2_pairs_per_image * sum(s.split == split for s in scenes)))
        rng = np.random.default_rng([config.seed, 4, splits.index(split)])
        nlvr2[split], copies = downstream.nlvr2_lines(
            scenes, split, pairs, config.nlvr2_statements_per_pair, rng
        )
        for name, source in copies:
            shutil.copyfile(
                os.path.join(raw, "regions", f"{source}.npz"),
                os.path.join(raw, "regions", f"{name}.npz"),
            )
    paths = {"vocab": vocab_path, "images": os.path.join(out, "images")}
    quiet = {"overwrite": overwrite, "progress": False}
    convert_npz_dir(
        os.path.join(raw, "regions"),
        paths["images"],
        soft_labels=True,
        num_labels=config.num_labels,
        feature_dim=config.feature_dim,
        **quiet,
    )
    write_json(
        os.path.join(raw, "dataset_synthetic.json"), downstream.karpathy(scenes, captions_of)
    )
    ids = {"image_id_format": "synth{id:06d}", "images": paths["images"]}
    text = {"vocab": vocab_path, "max_txt_len": max_txt_len, **ids, **quiet}
    for split in splits:
        for name, value in (
            (f"captions_{split}.json", coco[split]),
            (f"vqa_{split}_questions.json", {"questions": vqa_questions[split]}),
            (f"vqa_{split}_annotations.json", {"annotations": vqa_answers[split]}),
        ):
            write_json(os.path.join(raw, name), value)
        paths[f"captions_{split}"] = os.path.join(out, "texts", f"captions_{split}")
        convert_coco_captions(
            os.path.join(raw, f"captions_{split}.json"), paths[f"captions_{split}"], **text
        )
        paths[f"vqa_{split}"] = os.path.join(out, "texts", f"vqa_{split}")
        convert_vqa(
            os.path.join(raw, f"vqa_{split}_questions.json"),
            paths[f"vqa_{split}"],
            annotations_path=os.path.join(raw, f"vqa_{split}_annotations.json"),
            # One answer vocabulary for both splits: the train store's.
            answer_vocab=answer_vocab_from(paths["vqa_train"]) if split == "val" else None,
            num_answers=len(COLOURS) + 2 + config.max_objects + 1,
            **text,
        )
        write_lines(os.path.join(raw, f"snli_ve_{split}.jsonl"), ve_lines[split])
        paths[f"ve_{split}"] = os.path.join(out, "texts", f"ve_{split}")
        convert_snli_ve(
            os.path.join(raw, f"snli_ve_{split}.jsonl"),
            paths[f"ve_{split}"],
            **{**text, "image_id_format": "{id}"},
        )
        write_lines(os.path.join(raw, f"nlvr2_{split}.json"), nlvr2[split])
        paths[f"nlvr2_{split}"] = os.path.join(out, "texts", f"nlvr2_{split}")
        convert_nlvr2(
            os.path.join(raw, f"nlvr2_{split}.json"),
            paths[f"nlvr2_{split}"],
            **{**text, "image_id_format": "{id}"},
        )
        rng = np.random.default_rng([config.seed, 5, splits.index(split)])
        write_lines(
            os.path.join(raw, f"vcr_{split}.jsonl"), downstream.vcr_lines(scenes, split, rng)
        )
        for mode in ("qa", "qar"):
            paths[f"vcr_{mode}_{split}"] = os.path.join(out, "texts", f"vcr_{mode}_{split}")
            convert_vcr(
                os.path.join(raw, f"vcr_{split}.jsonl"),
                paths[f"vcr_{mode}_{split}"],
                mode=mode,
                **{**text, "image_id_format": "{id}"},
            )
        paths[f"retrieval_{split}"] = os.path.join(out, "texts", f"retrieval_{split}")
        convert_karpathy(
            os.path.join(raw, "dataset_synthetic.json"),
            paths[f"retrieval_{split}"],
            split=split,
            **{**text, "image_id_format": "{id}"},
        )
    with open(os.path.join(raw, "refs(synthetic).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)
    write_json(os.path.join(raw, "instances.json"), instances)
    for split in splits:
        paths[f"refexp_{split}"] = os.path.join(out, "texts", f"refexp_{split}")
        convert_refcoco(
            os.path.join(raw, "refs(synthetic).p"),
            os.path.join(raw, "instances.json"),
            paths[f"refexp_{split}"],
            split=split,
            boxes="gt",  # every object's first region is its true box
            **text,
        )
    if not keep_raw:
        shutil.rmtree(raw)
    return paths


def write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic scene world.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-images", type=int, default=WorldConfig.num_images)
    parser.add_argument("--feature-dim", type=int, default=WorldConfig.feature_dim)
    parser.add_argument("--num-labels", type=int, default=WorldConfig.num_labels)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    config = WorldConfig(
        num_images=args.num_images,
        feature_dim=args.feature_dim,
        num_labels=args.num_labels,
        seed=args.seed,
    )
    paths = write_world(args.out, config, overwrite=args.force)
    print(f"wrote {len(paths)} stores/files under {args.out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
