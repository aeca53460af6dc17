"""Deterministic, learnable scene worlds: the built-in data of demos and tests.

It is written in the public formats (a folder of per-image npz, COCO caption
JSON, VQA v2 JSON) and converted by the same converters users run.

Each image holds a few objects (shape, colour, size, position), drawn as
one member of a parameterised family describes (`uniter_jax.data.scenes`).
Captions (`uniter_jax.data.claims`), VQA questions and referring expressions
are generated from templates over the same objects, so text and regions
carry the same facts. The validation captions come with hard negatives (one
attribute swapped, false in the scene) in `itm_hard_val.jsonl`.

  python -m uniter_jax.data.synthetic --out data/synthetic   # seconds
  python -m uniter_jax.data.synthetic --out data/clutter --world clutter
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

from uniter_jax.data import synthetic_downstream as downstream
from uniter_jax.data.claims import captions, hard_negatives
from uniter_jax.data.convert.coco_captions import convert_coco_captions
from uniter_jax.data.convert.karpathy import convert_karpathy
from uniter_jax.data.convert.nlvr2 import convert_nlvr2
from uniter_jax.data.convert.npz_dir import convert_npz_dir
from uniter_jax.data.convert.refcoco import convert_refcoco
from uniter_jax.data.convert.snli_ve import convert_snli_ve
from uniter_jax.data.convert.vcr import convert_vcr
from uniter_jax.data.convert.vqa import answer_vocab_from, convert_vqa
from uniter_jax.data.files import write_json
from uniter_jax.data.scenes import (  # noqa: F401  (the world's names, re-exported)
    COLOURS,
    HEIGHT,
    SHAPES,
    SIZES,
    WIDTH,
    WORLDS,
    SceneObject,
    WorldConfig,
    class_label,
    generate,
    label_names,
)
from uniter_jax.data.tokenizer import build_vocab

# Bumped whenever the world gains stores or changes: runs rewrite older worlds.
WORLD_VERSION = 6
# Validation captions paired with hard negatives, one JSON object a line.
HARD_NEGATIVES = "itm_hard_val.jsonl"


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


def corpus(config: WorldConfig) -> list[str]:
    """Every word the templates can produce, for building the vocabulary."""
    words = [*SHAPES, *(s + "s" for s in SHAPES), *COLOURS, *SIZES]
    words += ["a", "and", "on", "the", "left", "right", "there", "is", "are", "what"]
    words += ["colour", "how", "many", "yes", "no", "in", "picture", *NEUTRAL_WORDS]
    # NLVR2 and VCR templates.
    words += ["image", "images", "both", "contain", "has", "more", "than", "it", "because"]
    words += [str(n) for n in range(config.max_objects + 1)] + [".", "?"]
    if "relation" in config.caption_kinds:
        words += ["to", "of"]
    return [" ".join(words)] * 3


def write_world(
    out: str,
    config: WorldConfig | None = None,
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
    keeps the public-format files. `config` defaults to `WorldConfig()`.
    """
    config = config or WorldConfig()
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
    hard: list[str] = []
    for i, (image_id, objects, feats, boxes, soft, _) in enumerate(generate(config)):
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
        claims = captions(objects, rng, config.captions_per_image, config.caption_kinds)
        captions_of[image_id] = [claim.text for claim in claims]
        if split == "val":
            hard += hard_negative_lines(image_id, objects, claims, config)
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
    paths["itm_hard_val"] = os.path.join(out, HARD_NEGATIVES)
    write_lines(paths["itm_hard_val"], hard)
    if not keep_raw:
        shutil.rmtree(raw)
    return paths


def hard_negative_lines(
    image_id: str, objects: list[SceneObject], claims: list, config: WorldConfig
) -> list[str]:
    """JSON lines pairing each true caption of an image with its hard negatives,
    one per kind of swap: `{image_id, kind, text, negative, claim, negative_claim}`."""
    rng = np.random.default_rng([config.seed, 7, int(image_id.removeprefix("synth"))])
    lines = []
    for claim in claims:
        for kind, negative in hard_negatives(claim, objects, rng, config.max_objects).items():
            record = {"image_id": image_id, "kind": kind, "text": claim.text}
            record |= {"negative": negative.text, "claim": claim.to_json()}
            lines.append(json.dumps({**record, "negative_claim": negative.to_json()}))
    return lines


def write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic scene world.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--world", choices=sorted(WORLDS), help="a named world of the family")
    parser.add_argument("--num-images", type=int, help=f"default {WorldConfig.num_images}")
    parser.add_argument("--feature-dim", type=int, help=f"default {WorldConfig.feature_dim}")
    parser.add_argument("--num-labels", type=int, help=f"default {WorldConfig.num_labels}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    config = WORLDS[args.world] if args.world else WorldConfig()
    given = {
        "num_images": args.num_images,
        "feature_dim": args.feature_dim,
        "num_labels": args.num_labels,
    }
    config = dataclasses.replace(
        config, seed=args.seed, **{k: v for k, v in given.items() if v is not None}
    )
    paths = write_world(args.out, config, overwrite=args.force)
    print(f"wrote {len(paths)} stores/files under {args.out} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
