"""The original UNITER LMDB databases (ChenRocks/UNITER) -> image and text stores.

How the dbs are read (their layout, the value encodings, what is refused) is
in `uniter_db`; this module checks the records and writes our stores.

Image db: the store id is the key (the image file name) without `.npz`.
`norm_bb` `[N, 6]` = `[x1/W, y1/H, x2/W, y2/H, w/W, h/H]` gets the 7th box
value `w*h` appended (docs/original.md, Region features), `conf` `[N]` is
kept and `soft_labels` `[N, L]` (L = 1601, background first) are stored when
the first record has them. The `nbb_*.json` next to the db (regions kept per
image) is not read: the pipeline applies the same rule at load time.

Text db: each record `{"input_ids": [...], "img_fname": "<image>.npz", ...}`
holds WordPiece ids without `[CLS]`/`[SEP]`, and for VQA `"target":
{"labels": [...], "scores": [...]}`; `meta.json` gives the special ids and
the vocabulary range. `id2len.json`, `txt2img.json` and `img2txts.json` are
not needed: each record names its image. Texts over `max_txt_len` are cut and
counted (the original dropped them). A record with two images (`img_fname` a
list, as in NLVR2's db) is refused: NLVR2 is converted from its public JSON
Lines by `nlvr2` into a grouped store.

The pretraining dbs are caption dbs (`--task captions`), one per corpus and
split, each read with one image db (the original's configs pair them in
order). Their records carry more fields than are read here (`id`,
`toked_caption`; COCO/VG also `sent`, `bbox`, `image_id`, `file_path`):

  text db                         image db         img_fname
  pretrain_coco_train.db          coco_train2014   coco_train2014_<id:012>.npz
  pretrain_coco_{restval,val}.db  coco_val2014     coco_val2014_<id:012>.npz
  pretrain_vg_{train,val}.db      vg               vg_<id:012>.npz
  conceptual_caption_<split>.db   gcc_<split>      gcc_<split>_<id:012>.npz
  sbu_caption_{train,val}.db      sbu              sbu_<id>.npz

Text ids are the caption annotation's id (COCO, VG; COCO's train and restval
stores are read together, and `store_sets.open_texts` refuses an id in both)
or the image's (CC, SBU: one caption per image). Their `meta.json` names the
tokenizer under `bert`. tests/data/test_convert_pretrain_lmdb.py writes each
layout.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import lmdb
import numpy as np

from uniter_jax.data.convert.arrays import image_id, numeric, probabilities
from uniter_jax.data.convert.common import Record, RegionOptions, Summary
from uniter_jax.data.convert.npz_dir import norm_bb_features
from uniter_jax.data.convert.texts import Text, TextRecord, TextSummary, write_text_store
from uniter_jax.data.convert.uniter_db import (
    NAMES_KEY,
    count_records,
    image_arrays,
    msgpack_ndarray,
    open_lmdb,
    read_entries,
    record_name,
    str_keys,
    text_record,
)
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import read_json
from uniter_jax.data.regions import ImageRegions, make_regions
from uniter_jax.data.store_sets import open_images

TEXT_TASKS = ("captions", "vqa")
META = "meta.json"
# Token and answer ids are int32 downstream.
_MAX_ID = 2**31


def _store_id(value: Any, field: str) -> str:
    """An image file name (`<id>.npz`) -> the store's image id."""
    if not isinstance(value, str | bytes):
        raise DataError(f"expected a file name, got {type(value).__name__}", field=field)
    return image_id(image_id(value, field).removesuffix(".npz"), field)


# ---------------------------------------------------------------- image db


def _parse_image(
    key: bytes, value: bytes, *, feature_dim: int, num_labels: int | None
) -> ImageRegions:
    name = _store_id(key, "key")
    arrays = image_arrays(value)
    for required in ("features", "norm_bb", "conf"):
        if required not in arrays:
            raise DataError("missing", field=required)
    features = numeric(arrays["features"], "features", (None, None))
    n = len(features)
    if n == 0:
        raise DataError("no regions", field="features")
    boxes7 = norm_bb_features(numeric(arrays["norm_bb"], "norm_bb", (n, 6)))
    conf = probabilities(arrays["conf"], "conf", (n,))
    soft = arrays.get("soft_labels")
    if num_labels is None and soft is not None:
        raise DataError("present, but the first record has none", field="soft_labels")
    if num_labels is not None:
        if soft is None:
            raise DataError("missing (the first record has them)", field="soft_labels")
        soft = probabilities(soft, "soft_labels", (n, num_labels))
    return make_regions(
        name, features, boxes7, conf, soft, feature_dim=feature_dim, num_labels=num_labels
    )


def _first_num_labels(env: lmdb.Environment, db_dir: str) -> int | None:
    """Soft-label width `L` of the first readable record; None when it has none."""
    with contextlib.closing(read_entries(env, db_dir, (NAMES_KEY,))) as entries:
        for _, value in entries:
            try:
                soft = image_arrays(value).get("soft_labels")
            except DataError:
                continue
            if soft is None:
                return None
            if soft.ndim == 2 and soft.shape[1] > 0:
                return int(soft.shape[1])
    return None


def convert_uniter_img_lmdb(
    db_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    **options: Any,
) -> Summary:
    """Converts an original UNITER image db (compressed or not) into an image store.

    Soft labels are stored when the first readable record has them, and are
    then required, with the same width, in every record. `options`: the
    fields of `RegionOptions`, as keywords.
    """
    opts = RegionOptions(**options)
    db_dir = os.fspath(db_dir)
    with open_lmdb(db_dir) as env:
        total = count_records(env, db_dir, (NAMES_KEY,))
        num_labels = _first_num_labels(env, db_dir)
        parse = functools.partial(_parse_image, feature_dim=opts.feature_dim, num_labels=num_labels)
        # Closed before the environment, even when the writer stops early.
        with contextlib.closing(read_entries(env, db_dir, (NAMES_KEY,))) as entries:
            records = (
                Record(db_dir, record_name(key), functools.partial(parse, key, value))
                for key, value in entries
            )
            return opts.write(
                records,
                out_dir,
                num_labels=num_labels,
                source={"format": "uniter-img-lmdb", "db": db_dir},
                total=total,
            )


# ---------------------------------------------------------------- text db


def _id(value: Any, name: str, path: str) -> int:
    if type(value) is not int or not 0 <= value < _MAX_ID:
        raise DataError(f"expected a token id, got {str(value)[:24]}", file=path, field=name)
    return value


def text_db_vocab(db_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`meta.json` -> (the store's vocabulary facts as `Vocab.to_json()`, the meta).

    The vocabulary size is the end of `v_range` (28996 for bert-base-cased),
    `[PAD]` is id 0 as in every BERT vocabulary; an uncased tokenizer name
    (as the original's prepro.py decided) sets `lowercase`.
    """
    path = os.path.join(db_dir, META)
    if not os.path.isfile(path):
        raise DataError("missing: the text db's meta.json is needed", file=path)
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise DataError(f"expected an object, got {type(meta).__name__}", file=path)
    cls_id, sep_id, mask_id = (_id(meta.get(name), name, path) for name in ("CLS", "SEP", "MASK"))
    v_range = meta.get("v_range")
    if not (
        isinstance(v_range, list)
        and len(v_range) == 2
        and all(type(v) is int for v in v_range)
        and 0 <= v_range[0] < v_range[1] < _MAX_ID
    ):
        raise DataError(f"expected [lo, hi) token ids, got {v_range}", file=path, field="v_range")
    if max(cls_id, sep_id, mask_id) >= v_range[1]:
        raise DataError("special ids outside the vocabulary", file=path, field="v_range")
    vocab = {
        "path": None,
        "size": v_range[1],
        "pad_id": 0,
        "cls_id": cls_id,
        "sep_id": sep_id,
        "mask_id": mask_id,
        "random_range": list(v_range),
        "lowercase": "uncased" in bert_name(meta),
    }
    return vocab, meta


def bert_name(meta: dict[str, Any]) -> str:
    """The tokenizer a text db was made with: `bert` in released dbs, `toker` in prepro.py's."""
    for key in ("bert", "toker", "tokenizer"):
        if isinstance(meta.get(key), str):
            return meta[key]
    return ""


def _ids(value: Any, field: str) -> np.ndarray:
    """A list of ids in [0, 2**31) (or a msgpack_numpy integer vector) -> int64 `[n]`."""
    if isinstance(value, dict):
        array = msgpack_ndarray(value, field)
        ok = array.ndim == 1 and array.dtype.kind in "iu"
        ok = ok and (not array.size or (array.min() >= 0 and array.max() < _MAX_ID))
    else:
        ok = isinstance(value, list) and all(type(v) is int and 0 <= v < _MAX_ID for v in value)
        array = np.array(value if ok else [], np.int64)
    if not ok:
        raise DataError("expected a list of integers in [0, 2**31)", field=field)
    return array.astype(np.int64)


def _scores(value: Any, field: str) -> np.ndarray:
    """A list of numbers in [0, 1] (or a msgpack_numpy vector) -> float64 `[n]`."""
    if isinstance(value, dict):
        array = msgpack_ndarray(value, field)
        ok = array.ndim == 1 and array.dtype.kind in "iuf"
    else:
        ok = isinstance(value, list) and all(type(v) in (int, float) for v in value)
        array = np.array(value if ok else [], np.float64)
    if not ok:
        raise DataError("expected a list of numbers", field=field)
    return probabilities(array.astype(np.float64), field, (None,))


def _vqa_fields(record: dict, first: dict[str, bool]) -> dict[str, np.ndarray]:
    """VQA answer ids and soft scores; none in a test split (no `target`).

    The first record decides whether the db has targets; a record that
    differs is bad, so a train db cannot silently lose answers.
    """
    has_target = record.get("target") is not None
    if first.setdefault("target", has_target) != has_target:
        message = "present, but the first record has none" if has_target else "missing"
        raise DataError(f"{message} (the first record decides: test split or not)", field="target")
    if not has_target:
        return {"answers": np.zeros(0, np.int64), "scores": np.zeros(0, np.float64)}
    target = record["target"]
    if not isinstance(target, dict):
        raise DataError(f"expected a map, got {type(target).__name__}", field="target")
    target = str_keys(target)
    labels = _ids(target.get("labels"), "target.labels")
    scores = _scores(target.get("scores"), "target.scores")
    if len(labels) != len(scores):
        raise DataError(f"{len(labels)} labels but {len(scores)} scores", field="target")
    return {"answers": labels, "scores": scores}


def _parse_text(key: bytes, value: bytes, *, task: str, first: dict[str, bool]) -> Text:
    try:
        text_id = key.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError("text id is not UTF-8", field="key") from None
    record = text_record(value)
    for required in ("input_ids", "img_fname"):
        if required not in record:
            raise DataError("missing", field=required)
    if isinstance(record["img_fname"], list):
        raise DataError(
            "two images per text (NLVR2): convert NLVR2 from its JSON Lines files with "
            "`python -m uniter_jax.data.convert nlvr2`",
            field="img_fname",
        )
    image = _store_id(record["img_fname"], "img_fname")
    input_ids = _ids(record["input_ids"], "input_ids")
    fields = _vqa_fields(record, first) if task == "vqa" else {}
    return Text(text_id, image, "", fields, input_ids=input_ids)


def convert_uniter_txt_lmdb(
    db_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    task: str,
    images: str | None = None,
    max_txt_len: int = 60,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TextSummary:
    """Converts an original UNITER text db (`task` "captions" or "vqa") into a text store.

    `images`: our image store; texts whose image it lacks are bad records.
    """
    if task not in TEXT_TASKS:
        raise ValueError(f"task must be one of {TEXT_TASKS}, got {task!r}")
    db_dir = os.fspath(db_dir)
    vocab, meta = text_db_vocab(db_dir)
    image_store = open_images(images) if images else None
    with open_lmdb(db_dir) as env:
        total = count_records(env, db_dir, ())
        parse = functools.partial(_parse_text, task=task, first={})
        with contextlib.closing(read_entries(env, db_dir, ())) as entries:
            records = (
                TextRecord(db_dir, record_name(key), functools.partial(parse, key, value))
                for key, value in entries
            )
            return write_text_store(
                records,
                out_dir,
                task=task,
                tokenizer=None,
                vocab=vocab,
                max_txt_len=max_txt_len,
                images=image_store,
                ragged=("answers", "scores") if task == "vqa" else (),
                source={"format": "uniter-txt-lmdb", "db": db_dir, "bert": bert_name(meta)},
                skip_bad=skip_bad,
                overwrite=overwrite,
                progress=progress,
                total=total,
            )
