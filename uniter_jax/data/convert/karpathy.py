"""Karpathy's caption splits (`dataset_coco.json`, `dataset_flickr30k.json`) -> a captions store.

Layout read: `{"dataset": "coco" | "flickr30k" | "flickr8k", "images": [{
"filename", "imgid", "split", "sentences": [{"raw", "tokens", "sentid",
"imgid"}], "cocoid", "filepath"}]}` (`cocoid` and `filepath` in the COCO file
only). `split` is one of train / val / test / restval; "train+restval" takes
both, the usual training set (113k COCO images).

Written: one example per sentence of the chosen split, text id = `sentid`,
text = `raw` (tokenized here; the lower-cased `tokens` are not used), the
task "captions" with no task fields, as the COCO caption converter writes.
The image id is formatted from `{id}` with `image_id_format`: for COCO `{id}`
is the `cocoid` (an int, so `COCO_val2014_{id:012d}` works), for the
Flickr files the file name without its extension (a string:
`1000092795.jpg` -> `1000092795`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from uniter_jax.data.convert.coco_captions import format_image_id
from uniter_jax.data.convert.texts import Text, TextOptions, TextRecord, TextSummary
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import read_json
from uniter_jax.data.tokenizer import Tokenizer

SPLITS = ("train", "val", "test", "restval")
SPLIT_CHOICES = (*SPLITS, "train+restval")
DATASETS = ("coco", "flickr30k", "flickr8k")


def _records(
    path: str, images: list, dataset: str, wanted: set[str], image_id_format: str
) -> list[TextRecord]:
    records, present, selected = [], set(), 0
    for n, image in enumerate(images):
        where = f"image {n}"
        split = image.get("split") if isinstance(image, dict) else None
        if not isinstance(split, str) or split not in SPLITS:
            # A bad image cannot be placed in a split, so it is bad in every split.
            records.append(TextRecord(path, where, functools.partial(_bad_image, image)))
            continue
        present.add(split)
        if split not in wanted:
            continue
        selected += 1
        sentences = image.get("sentences")
        if not isinstance(sentences, list):
            error = DataError("expected a 'sentences' list", field="sentences")
            records.append(TextRecord(path, where, functools.partial(_raise, error)))
            continue
        records += [
            TextRecord(
                path,
                f"{where} sentence {m}",
                functools.partial(_parse, image, sentence, dataset, image_id_format),
            )
            for m, sentence in enumerate(sentences)
        ]
    if not selected:
        raise DataError(
            f"no images in split {'+'.join(sorted(wanted))}; the file has {sorted(present)}",
            file=path,
        )
    return records


def _raise(error: DataError) -> Text:
    raise error


def _bad_image(image: object) -> Text:
    if not isinstance(image, dict):
        raise DataError(f"expected an object, got {type(image).__name__}")
    if "split" not in image:
        raise DataError("missing key 'split'", field="split")
    raise DataError(f"unknown split {image['split']!r}, expected one of {SPLITS}", field="split")


def _image_id(image: dict, dataset: str, image_id_format: str) -> str:
    if dataset == "coco":
        cocoid = image.get("cocoid")
        if not isinstance(cocoid, int) or isinstance(cocoid, bool):
            raise DataError(f"expected an integer cocoid, got {cocoid!r}", field="cocoid")
        return format_image_id(image_id_format, cocoid)
    filename = image.get("filename")
    if not isinstance(filename, str) or not filename:
        raise DataError(f"expected a file name, got {filename!r}", field="filename")
    return format_image_id(image_id_format, os.path.splitext(os.path.basename(filename))[0])


def _parse(image: dict, sentence: object, dataset: str, image_id_format: str) -> Text:
    if not isinstance(sentence, dict):
        raise DataError(f"expected an object, got {type(sentence).__name__}", field="sentences")
    missing = sorted({"raw", "sentid"} - set(sentence))
    if missing:
        raise DataError(f"missing keys {missing}", field=missing[0])
    sentid, raw = sentence["sentid"], sentence["raw"]
    if isinstance(sentid, bool) or not isinstance(sentid, int | str):
        raise DataError(f"expected an integer id, got {sentid!r}", field="sentid")
    if not isinstance(raw, str):
        raise DataError(f"expected a string, got {type(raw).__name__}", field="raw")
    return Text(str(sentid), _image_id(image, dataset, image_id_format), raw, {})


def convert_karpathy(
    json_path: str | os.PathLike, out_dir: str | os.PathLike, *, split: str, **options: Any
) -> TextSummary:
    """Writes the captions of one Karpathy split; see the module docstring.

    `options`: the fields of `TextOptions`, as keywords (`vocab` required).
    """
    opts = TextOptions(**options)
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    path = os.fspath(json_path)
    data = read_json(path)
    items = data.get("images") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DataError("expected an object with an 'images' list", file=path)
    dataset = data.get("dataset")
    if dataset not in DATASETS:
        raise DataError(
            f"unknown dataset {dataset!r}, expected one of {DATASETS}", file=path, field="dataset"
        )
    records = _records(path, items, dataset, set(split.split("+")), opts.image_id_format)
    return opts.write(
        records,
        out_dir,
        task="captions",
        tokenizer=Tokenizer(opts.vocab),
        images=opts.image_store(),
        source={
            "format": "karpathy",
            "file": path,
            "dataset": dataset,
            "split": split,
            "image_id_format": opts.image_id_format,
        },
    )
