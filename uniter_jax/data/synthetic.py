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
import os
import shutil
import time

import numpy as np

from uniter_jax.data.convert.coco_captions import convert_coco_captions
from uniter_jax.data.convert.npz_dir import convert_npz_dir
from uniter_jax.data.convert.vqa import answer_vocab_from, convert_vqa
from uniter_jax.data.files import write_json
from uniter_jax.data.text_store import TextStoreWriter
from uniter_jax.data.tokenizer import Tokenizer, build_vocab

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
    words += ["colour", "how", "many", "yes", "no"]
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
    caption converter, questions through the VQA v2 converter. Referring
    expressions are written to their store directly (their public format, the
    refer toolkit's, arrives with the downstream work). `keep_raw` keeps the
    public-format files.
    """
    os.makedirs(out, exist_ok=True)
    vocab_path = build_vocab(corpus(config), os.path.join(out, "vocab.txt"), vocab_size=400)
    raw = os.path.join(out, "raw")
    shutil.rmtree(raw, ignore_errors=True)
    os.makedirs(os.path.join(raw, "regions"))
    splits = ("train", "val")
    coco = {split: {"images": [], "annotations": []} for split in splits}
    vqa_questions = {split: [] for split in splits}
    vqa_answers = {split: [] for split in splits}
    refexp: list[tuple[str, str, str, int]] = []
    num_val = max(1, config.num_images // 10)
    for i, (image_id, objects, feats, boxes, soft) in enumerate(generate(config)):
        split = "val" if i < num_val else "train"
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
        for text in captions(objects, rng, config.captions_per_image):
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
        # The store sorts regions by confidence: find each object's row there.
        row = {int(old): new for new, old in enumerate(np.argsort(-conf, kind="stable"))}
        for expression, index in referring(objects):  # the object's own (first) box
            refexp.append((split, image_id, expression, row[index * config.regions_per_object]))

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
        paths[f"refexp_{split}"] = _write_refexp(
            [r for r in refexp if r[0] == split],
            os.path.join(out, "texts", f"refexp_{split}"),
            vocab_path,
            max_txt_len,
            overwrite,
            config,
        )
    if not keep_raw:
        shutil.rmtree(raw)
    return paths


def _write_refexp(rows, path, vocab_path, max_txt_len, overwrite, config) -> str:
    tokenizer = Tokenizer(vocab_path)
    source = {"generator": "uniter_jax.data.synthetic", **dataclasses.asdict(config)}
    with TextStoreWriter(
        path,
        task="refexp",
        vocab=tokenizer.vocab.to_json(),
        max_txt_len=max_txt_len,
        source=source,
        overwrite=overwrite,
    ) as writer:
        encoded = tokenizer.encode_batch([r[2] for r in rows])
        for n, ((split, image_id, _, target), ids) in enumerate(zip(rows, encoded, strict=True)):
            writer.add(f"refexp-{split}-{n}", image_id, ids, target=target)
    return path


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
