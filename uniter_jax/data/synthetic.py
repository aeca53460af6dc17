"""Deterministic, learnable scene worlds: the built-in data of demos and tests.

It is written in the public formats (a folder of per-image npz, COCO caption
JSON, VQA v2 JSON) and converted by the same converters users run.

Each image holds a few objects (shape, colour, size, position), drawn as
one member of a parameterised family describes (`uniter_jax.data.scenes`).
Captions (`uniter_jax.data.claims`), VQA questions, SNLI-VE statements and
referring expressions (`uniter_jax.data.synthetic_annotations`) are generated
from templates over the same objects, so text and regions carry the same
facts. The validation captions come with hard negatives (one
attribute swapped, false in the scene) in `itm_hard_val.jsonl`.

  python -m uniter_jax.data.synthetic --out data/synthetic   # seconds
  python -m uniter_jax.data.synthetic --out data/clutter --world clutter
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import shutil
import time
from typing import Any

import numpy as np

from uniter_jax.data import synthetic_downstream as downstream
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
from uniter_jax.data.synthetic_annotations import NEUTRAL_WORDS, SPLITS, Annotations
from uniter_jax.data.tokenizer import build_vocab

# Bumped whenever the world gains stores or changes: runs rewrite older worlds.
WORLD_VERSION = 6
# Validation captions paired with hard negatives, one JSON object a line.
HARD_NEGATIVES = "itm_hard_val.jsonl"


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
    annotations = _write_public_files(raw, config)
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
    for split in SPLITS:
        paths |= _convert_split(raw, os.path.join(out, "texts"), split, text, config)
    for split in SPLITS:
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
    write_lines(paths["itm_hard_val"], annotations.hard)
    if not keep_raw:
        shutil.rmtree(raw)
    return paths


def _write_public_files(raw: str, config: WorldConfig) -> Annotations:
    """Draws the world and writes it under `raw` in the public formats; the
    first tenth of the images (one at least) is the validation split."""
    annotations = Annotations(config)
    num_val = max(1, config.num_images // 10)
    for i, (image_id, objects, feats, boxes, soft, _) in enumerate(generate(config)):
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
        annotations.add(i, image_id, objects, "val" if i < num_val else "train")
    scenes = annotations.scenes
    for split in SPLITS:
        files = {
            f"captions_{split}.json": annotations.coco[split],
            f"vqa_{split}_questions.json": {"questions": annotations.vqa_questions[split]},
            f"vqa_{split}_annotations.json": {"annotations": annotations.vqa_answers[split]},
        }
        for name, value in files.items():
            write_json(os.path.join(raw, name), value)
        write_lines(os.path.join(raw, f"snli_ve_{split}.jsonl"), annotations.ve_lines[split])
        _write_nlvr2(raw, scenes, split, config)
        rng = np.random.default_rng([config.seed, 5, SPLITS.index(split)])
        write_lines(
            os.path.join(raw, f"vcr_{split}.jsonl"), downstream.vcr_lines(scenes, split, rng)
        )
    karpathy = downstream.karpathy(scenes, annotations.captions_of)
    write_json(os.path.join(raw, "dataset_synthetic.json"), karpathy)
    with open(os.path.join(raw, "refs(synthetic).p"), "wb") as f:
        pickle.dump(annotations.refs, f, protocol=2)
    write_json(os.path.join(raw, "instances.json"), annotations.instances)
    return annotations


def _write_nlvr2(raw: str, scenes: list[downstream.Scene], split: str, config: WorldConfig) -> None:
    """The split's NLVR2 lines; NLVR2 names its two images after the statement,
    so those images are copies of the scenes' regions."""
    pairs = max(1, int(config.nlvr2_pairs_per_image * sum(s.split == split for s in scenes)))
    rng = np.random.default_rng([config.seed, 4, SPLITS.index(split)])
    lines, copies = downstream.nlvr2_lines(
        scenes, split, pairs, config.nlvr2_statements_per_pair, rng
    )
    write_lines(os.path.join(raw, f"nlvr2_{split}.json"), lines)
    for name, source in copies:
        shutil.copyfile(
            os.path.join(raw, "regions", f"{source}.npz"),
            os.path.join(raw, "regions", f"{name}.npz"),
        )


def _convert_split(
    raw: str, texts: str, split: str, text: dict[str, Any], config: WorldConfig
) -> dict[str, str]:
    """One split's text stores under `texts` but refexp's, by name, in the order written.

    `text`: the converters' options; the SNLI-VE, NLVR2, VCR and Karpathy
    files name images by their store ids, so those read them as they are.
    """
    paths = {
        name: os.path.join(texts, f"{name}_{split}")
        for name in ("captions", "vqa", "ve", "nlvr2", "vcr_qa", "vcr_qar", "retrieval")
    }
    as_named = {**text, "image_id_format": "{id}"}
    convert_coco_captions(os.path.join(raw, f"captions_{split}.json"), paths["captions"], **text)
    convert_vqa(
        os.path.join(raw, f"vqa_{split}_questions.json"),
        paths["vqa"],
        annotations_path=os.path.join(raw, f"vqa_{split}_annotations.json"),
        # One answer vocabulary for both splits: the train store's.
        answer_vocab=answer_vocab_from(os.path.join(texts, "vqa_train"))
        if split == "val"
        else None,
        num_answers=len(COLOURS) + 2 + config.max_objects + 1,
        **text,
    )
    convert_snli_ve(os.path.join(raw, f"snli_ve_{split}.jsonl"), paths["ve"], **as_named)
    convert_nlvr2(os.path.join(raw, f"nlvr2_{split}.json"), paths["nlvr2"], **as_named)
    for mode in ("qa", "qar"):
        vcr = os.path.join(raw, f"vcr_{split}.jsonl")
        convert_vcr(vcr, paths[f"vcr_{mode}"], mode=mode, **as_named)
    dataset = os.path.join(raw, "dataset_synthetic.json")
    convert_karpathy(dataset, paths["retrieval"], split=split, **as_named)
    return {f"{name}_{split}": path for name, path in paths.items()}


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
