"""Four small synthetic pretraining corpora, in the public formats of UNITER's four.

UNITER pretrains on COCO captions, Visual Genome region descriptions,
Conceptual Captions and SBU captions (docs/original.md, Pretraining data).
Each corpus here is a synthetic scene world of its own (`scenes.py`; its own
seed and family member, image ids prefixed with its name), written as the
public files of its corpus hold it and converted by the converters users run:

  coco  captions_{train,val}.json (COCO caption JSON, integer image ids)
  vg    region_descriptions_{train,val}.json (one phrase per region)
  cc    {train,val}.tsv (caption<TAB>url) and url_map.tsv (url<TAB>image id),
        with a few dead links, as downloads leave them
  sbu   {train,val}_urls.txt and {train,val}_captions.txt (line-aligned) and url_map.tsv

Region features of every corpus: `regions.tsv` in the bottom-up-attention
TSV layout with a folder of per-image class distributions (`soft_labels/`),
converted by the BUTD converter. All four share one vocabulary file (the
stores of one run must). The first tenth of each corpus' images is its
validation split. Conversion runs through the Beam pipelines on the
DirectRunner when apache-beam is installed (`uniter_jax.data.beam`), else
in process: the same bytes.

  python -m uniter_jax.data.synthetic_corpora --out data/corpora   # all four
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import importlib
import importlib.util
import os
import shutil
from typing import Any

import numpy as np
from absl import logging

from uniter_jax.data.claims import captions
from uniter_jax.data.convert.butd_tsv import convert_butd_tsv
from uniter_jax.data.convert.coco_captions import convert_coco_captions
from uniter_jax.data.convert.vg_regions import convert_vg_regions
from uniter_jax.data.convert.web_captions import convert_cc, convert_sbu
from uniter_jax.data.files import write_json
from uniter_jax.data.scenes import CAPTION_KINDS, HEIGHT, WIDTH, WorldConfig, generate
from uniter_jax.data.synthetic import corpus, write_lines
from uniter_jax.data.tokenizer import build_vocab

# apache-beam is an optional extra (pip install -e .[beam]) and takes over half
# a second to import: looked up here, imported when a corpus is converted with
# it (`beam_converters`), not at every training start that imports this module.
BEAM_INSTALLED = importlib.util.find_spec("apache_beam") is not None


def beam_converters() -> Any:
    """`uniter_jax.data.beam` (the Beam pipelines), imported on first use."""
    return importlib.import_module("uniter_jax.data.beam")


# Bumped whenever a corpus changes: runs rewrite older ones.
VERSION = 1
NAMES = ("coco", "vg", "cc", "sbu")
SPLITS = ("train", "val")
# What differs between the corpora's worlds, so that a run mixes unlike data.
_WORLDS = {
    "coco": {},
    "vg": {"max_objects": 5, "captions_per_image": 8},
    "cc": {"background_regions": (2, 6), "captions_per_image": 1, "shuffle_rows": True},
    "sbu": {"regions_per_object": 1, "captions_per_image": 1, "feature_noise": 0.6},
}
# Every word any corpus' templates can produce: the one vocabulary they share.
_VOCAB_WORLD = WorldConfig(
    max_objects=max(w.get("max_objects", 4) for w in _WORLDS.values()), caption_kinds=CAPTION_KINDS
)
DEAD_LINK_EVERY = 25  # cc and sbu: every 25th image's URL is missing from the map


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    name: str  # one of NAMES: which public format
    world: WorldConfig

    @classmethod
    def named(cls, name: str, *, num_images: int, seed: int = 0) -> CorpusConfig:
        """Corpus `name`'s world of `num_images` images."""
        if name not in NAMES:
            raise ValueError(
                f"no synthetic corpus {name!r}: choose from {list(NAMES)}, or give the "
                "dataset's texts and images"
            )
        world = WorldConfig(
            num_images=num_images, seed=seed * len(NAMES) + NAMES.index(name), **_WORLDS[name]
        )
        return cls(name, world)


def vocab_path(root: str) -> str:
    """The vocabulary every corpus under `root/..` shares (written once, same bytes)."""
    return os.path.join(os.path.dirname(os.path.abspath(root)), "vocab.txt")


def write_corpus(
    root: str,
    config: CorpusConfig,
    *,
    overwrite: bool = False,
    use_beam: bool | None = None,
    keep_raw: bool = False,
) -> dict[str, str]:
    """Writes corpus `config` in its public formats under `root/raw`, converts it
    to `root/images` and `root/texts/{train,val}`; returns those paths.

    `use_beam`: convert through the Beam pipelines on the DirectRunner
    (`uniter_jax.data.beam`; None: when apache-beam is installed), else with
    the in-process converters; the stores are the same bytes either way.
    `keep_raw` keeps the public-format files."""
    if use_beam is None:
        use_beam = BEAM_INSTALLED
    if use_beam and not BEAM_INSTALLED:
        raise ImportError("use_beam needs apache-beam: pip install -e .[beam]")
    convert = beam_converters() if use_beam else _InProcess
    extra = {"pipeline_options": ["--runner=DirectRunner"]} if use_beam else {}
    os.makedirs(root, exist_ok=True)
    vocab = build_vocab(corpus(_VOCAB_WORLD), vocab_path(root), vocab_size=400)
    raw = os.path.join(root, "raw")
    shutil.rmtree(raw, ignore_errors=True)
    os.makedirs(os.path.join(raw, "soft_labels"))
    captions_of = _write_regions(raw, config)
    texts = _write_texts(raw, config, captions_of)
    paths = {"vocab": vocab, "images": os.path.join(root, "images")}
    quiet = {"overwrite": overwrite, "progress": False, **extra}
    convert.convert_butd_tsv(
        os.path.join(raw, "regions.tsv"),
        paths["images"],
        soft_label_dir=os.path.join(raw, "soft_labels"),
        feature_dim=config.world.feature_dim,
        **quiet,
    )
    options = {"vocab": vocab, "images": paths["images"], **quiet}
    for split in SPLITS:
        paths[split] = os.path.join(root, "texts", split)
        _convert_texts(config.name, texts[split], paths[split], convert, options)
    logging.info("%s converted %s", "Beam (DirectRunner)" if use_beam else "in process", root)
    if not keep_raw:
        shutil.rmtree(raw)
    return paths


def _image_id(name: str, i: int) -> str:
    return f"{name}_{i:06d}"


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, "<f4").tobytes()).decode("ascii")


def _write_regions(raw: str, config: CorpusConfig) -> dict[str, list[tuple[int, list[str]]]]:
    """Writes `regions.tsv` and `soft_labels/`; returns each split's `(image
    number, captions)`, captions drawn from the scene's objects."""
    name, world = config.name, config.world
    captions_of: dict[str, list] = {split: [] for split in SPLITS}
    num_val = max(1, world.num_images // 10)
    lines = []
    for i, (_, objects, feats, boxes, soft, _) in enumerate(generate(world)):
        image_id = _image_id(name, i)
        lines.append(
            "\t".join(
                [image_id, str(WIDTH), str(HEIGHT), str(len(boxes)), _b64(boxes), _b64(feats)]
            )
        )
        np.save(os.path.join(raw, "soft_labels", f"{image_id}.npy"), soft.astype(np.float32))
        rng = np.random.default_rng([world.seed, 3, i])
        claims = captions(objects, rng, world.captions_per_image, world.caption_kinds)
        captions_of["val" if i < num_val else "train"].append((i, [c.text for c in claims]))
    write_lines(os.path.join(raw, "regions.tsv"), lines)
    return captions_of


def _write_texts(raw: str, config: CorpusConfig, captions_of: dict) -> dict[str, list[str]]:
    """Writes each split's captions in the corpus' public format; returns the
    files of each split, in the converter's argument order (the URL map last)."""
    name, out = config.name, {}
    for split in SPLITS:
        items = captions_of[split]
        if name == "coco":
            path = os.path.join(raw, f"captions_{split}.json")
            annotations = [
                {"id": i * 100 + k, "image_id": i, "caption": text}
                for i, texts in items
                for k, text in enumerate(texts)
            ]
            write_json(path, {"images": [{"id": i} for i, _ in items], "annotations": annotations})
            out[split] = [path]
        elif name == "vg":
            path = os.path.join(raw, f"region_descriptions_{split}.json")
            images = [
                {"id": i, "regions": [_vg_region(i, k, text) for k, text in enumerate(texts)]}
                for i, texts in items
            ]
            write_json(path, images)
            out[split] = [path]
        else:
            out[split] = _write_web(raw, name, split, items)
    return out


def _vg_region(image: int, k: int, phrase: str) -> dict:
    # The box is the image's: a region's annotated box is not kept (vg_regions.py).
    return {
        "region_id": image * 100 + k,
        "image_id": image,
        "phrase": phrase,
        "x": 0,
        "y": 0,
        "width": WIDTH,
        "height": HEIGHT,
    }


def _write_web(raw: str, name: str, split: str, items: list) -> list[str]:
    """CC's `caption<TAB>url` TSV, or SBU's two line-aligned files, and the URL map."""
    rows = [(f"https://{name}.example/{i}.jpg", text) for i, texts in items for text in texts]
    url_map = os.path.join(raw, "url_map.tsv")
    mapped = [
        f"https://{name}.example/{i}.jpg\t{_image_id(name, i)}"
        for i, _ in items
        if i % DEAD_LINK_EVERY != DEAD_LINK_EVERY - 1
    ]
    with open(url_map, "a") as f:  # both splits' URLs, one map
        f.write("".join(line + "\n" for line in mapped))
    if name == "cc":
        path = os.path.join(raw, f"{split}.tsv")
        write_lines(path, [f"{text}\t{url}" for url, text in rows])
        return [path, url_map]
    urls, texts = os.path.join(raw, f"{split}_urls.txt"), os.path.join(raw, f"{split}_captions.txt")
    write_lines(urls, [url for url, _ in rows])
    write_lines(texts, [text for _, text in rows])
    return [urls, texts, url_map]


def _convert_texts(name: str, files: list[str], out: str, convert, options: dict) -> None:
    """Converts one split of corpus `name` with `convert` (the in-process or the
    Beam converters, which take the same arguments)."""
    if name == "coco":
        convert.convert_coco_captions(files[0], out, image_id_format="coco_{id:06d}", **options)
    elif name == "vg":
        convert.convert_vg_regions(files[0], out, image_id_format="vg_{id:06d}", **options)
    elif name == "cc":
        convert.convert_cc(files[0], out, url_map=files[1], **options)
    else:
        convert.convert_sbu(files[0], files[1], out, url_map=files[2], **options)


class _InProcess:
    """The in-process converters under the names the Beam package gives them."""

    convert_butd_tsv = staticmethod(convert_butd_tsv)
    convert_coco_captions = staticmethod(convert_coco_captions)
    convert_vg_regions = staticmethod(convert_vg_regions)
    convert_cc = staticmethod(convert_cc)
    convert_sbu = staticmethod(convert_sbu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder: one subfolder per corpus")
    parser.add_argument("--corpora", nargs="+", default=list(NAMES), choices=NAMES)
    parser.add_argument("--num-images", type=int, default=500, help="images per corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace existing stores")
    parser.add_argument(
        "--no-beam", action="store_true", help="convert in process even if apache-beam is installed"
    )
    parser.add_argument("--keep-raw", action="store_true", help="keep the public-format files")
    args = parser.parse_args(argv)
    for name in args.corpora:
        config = CorpusConfig.named(name, num_images=args.num_images, seed=args.seed)
        paths = write_corpus(
            os.path.join(args.out, name),
            config,
            overwrite=args.force,
            use_beam=False if args.no_beam else None,
            keep_raw=args.keep_raw,
        )
        print(f"{name}: {paths}")


if __name__ == "__main__":
    main()
