"""The original UNITER's pretraining dbs, each corpus's layout, through the converters.

The dbs are written here as the original's preprocessing wrote them, without
its code (the facts are in `uniter_jax/data/convert/uniter_lmdb.py`, The
pretraining dbs): a text db per corpus and split, `lz4(msgpack(record))`
keyed by text id next to `meta.json`, `id2len.json` and `txt2img.json`; an
image db per image set, `img_db/<set>/feat_th0.2_max100_min10/` (LMDB, msgpack
values with msgpack_numpy's array maps, a `__keys__` entry) next to its
`nbb_*.json`. Each is converted on the command line (`uniter-img-lmdb`, then
`uniter-txt-lmdb --task captions --images`) and read back against an
independent read of the db.
"""

from __future__ import annotations

import json
import os

import lmdb
import lz4.frame
import msgpack
import numpy as np
import pytest

from uniter_jax.data.buckets import Bucket
from uniter_jax.data.convert.__main__ import main
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.pipeline import Pipeline, PipelineConfig
from uniter_jax.data.store_sets import open_images, open_texts
from uniter_jax.data.text_store import TextStore

D = 8  # feature width: small and fast
MAX_TXT_LEN = 60  # the converter's default, the original's max_txt_len
FEAT_DB = "feat_th0.2_max100_min10"  # the image LMDB's folder name (conf_th 0.2, 10..100 boxes)
# meta.json as the preprocessing of these dbs wrote it: its arguments, then the ids.
META = {
    "annotations": ["/ann/pretrain_caption.json"],
    "output": "/txt_db/pretrain.db",
    "task": "licheng_cleaned",
    "bert": "bert-base-cased",
    "UNK": 100,
    "CLS": 101,
    "SEP": 102,
    "MASK": 103,
    "v_range": [999, 28996],
}


# ---------------------------------------------------------------- the original's layouts


def _put(path, items: dict[bytes, bytes]) -> str:
    os.makedirs(path, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    env.close()
    return str(path)


def _array_map(array: np.ndarray) -> dict:
    """msgpack_numpy's encoding of an array (byte keys, as it writes them)."""
    return {
        b"nd": True,
        b"type": array.dtype.str,
        b"kind": b"",
        b"shape": list(array.shape),
        b"data": array.tobytes(),
    }


def image_arrays(seed: int) -> dict[str, np.ndarray]:
    """One image's fp16 arrays: 3..7 regions, distinct confidences."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 8))
    wh = rng.uniform(0.1, 0.5, (n, 2))
    xy = rng.uniform(0, 0.5, (n, 2))
    return {
        "features": rng.normal(size=(n, D)).astype(np.float16),
        "norm_bb": np.concatenate([xy, xy + wh, wh], 1).astype(np.float16),
        "conf": rng.permutation(np.linspace(0.1, 0.9, n)).astype(np.float16),
    }


def write_img_db(root, name: str, images: dict[str, dict]) -> str:
    """`root/<name>/feat_th0.2_max100_min10/` holding `images` (file name -> arrays)."""
    items = {
        fname.encode(): msgpack.packb(
            {key: _array_map(a) for key, a in arrays.items()}, use_bin_type=True
        )
        for fname, arrays in images.items()
    }
    items[b"__keys__"] = json.dumps(list(images)).encode()
    db = _put(os.path.join(root, name, FEAT_DB), items)
    nbb = {fname: len(arrays["conf"]) for fname, arrays in images.items()}
    with open(os.path.join(root, name, "nbb_th0.2_max100_min10.json"), "w") as f:
        json.dump(nbb, f)
    return db


def write_txt_db(root, name: str, records: dict[str, dict]) -> str:
    """`root/<name>` (e.g. pretrain_coco_train.db) holding `records` (text id -> record)."""
    db = _put(
        os.path.join(root, name),
        {
            key.encode(): lz4.frame.compress(msgpack.packb(record, use_bin_type=True))
            for key, record in records.items()
        },
    )
    side = {
        "meta.json": {**META, "output": f"/txt_db/{name}"},
        "id2len.json": {key: len(r["input_ids"]) for key, r in records.items()},
        "txt2img.json": {key: r["img_fname"] for key, r in records.items()},
        "img2txts.json": {},
    }
    for file_name, value in side.items():
        with open(os.path.join(db, file_name), "w") as f:
            json.dump(value, f)
    return db


def _tokens(rng: np.random.Generator, n: int) -> tuple[list[str], list[int]]:
    ids = rng.integers(999, 28996, n).tolist()
    return [f"w{i}" for i in ids], ids


def coco_records(first_id: int, folder: str, image_ids: list[int], rng) -> dict[str, dict]:
    """Captions as in pretrain_coco_*.db: the cleaned annotation, ids and `img_fname`."""
    out = {}
    for k, image in enumerate(image_ids):
        toked, ids = _tokens(rng, int(rng.integers(1, 75)))
        text_id = first_id + k
        out[str(text_id)] = {
            "id": text_id,
            "dataset": "coco",
            "split": "train",
            "sent": " ".join(toked),
            "bbox": None,
            "dataset_image_id": image,
            "file_path": f"{folder}/COCO_{folder}_{image:012d}.jpg",
            "image_id": image,
            "toked_caption": toked,
            "input_ids": ids,
            "img_fname": f"coco_{folder}_{image:012d}.npz",
        }
    return out


def vg_records(first_id: int, image_ids: list[int], rng) -> dict[str, dict]:
    """Region descriptions as in pretrain_vg_*.db: the same fields, a box per text."""
    out = {}
    for k, image in enumerate(image_ids):
        toked, ids = _tokens(rng, int(rng.integers(1, 12)))
        text_id = first_id + k
        out[str(text_id)] = {
            "id": text_id,
            "dataset": "vg",
            "split": "train",
            "sent": " ".join(toked),
            "bbox": [float(v) for v in rng.uniform(0, 300, 4)],
            "dataset_image_id": image,
            "file_path": f"VG_100K/{image}.jpg",
            "image_id": image,
            "toked_caption": toked,
            "input_ids": ids,
            "img_fname": f"vg_{image:012d}.npz",
        }
    return out


def cc_records(split: str, image_ids: list[int], rng) -> dict[str, dict]:
    """Conceptual Captions: one caption per image, the id a string, `gcc_<split>_` names."""
    out = {}
    for image in image_ids:
        toked, ids = _tokens(rng, int(rng.integers(1, 40)))
        out[str(image)] = {
            "id": str(image),
            "toked_caption": toked,
            "input_ids": ids,
            "img_fname": f"gcc_{split}_{image:012d}.npz",
        }
    return out


def sbu_records(image_ids: list[int], rng) -> dict[str, dict]:
    """SBU captions: one per image, `sbu_<id>` without zero padding."""
    out = {}
    for image in image_ids:
        toked, ids = _tokens(rng, int(rng.integers(1, 70)))
        out[str(image)] = {
            "id": str(image),
            "toked_caption": toked,
            "input_ids": ids,
            "img_fname": f"sbu_{image}.npz",
        }
    return out


# Each db of the original's pretraining: its image db and its records.
CORPUS_DBS = {
    "pretrain_coco_train.db": (
        "coco_train2014",
        lambda rng: coco_records(166386, "train2014", [9, 9, 9, 25, 25, 204103], rng),
    ),
    "pretrain_coco_restval.db": (
        "coco_val2014",
        lambda rng: coco_records(700001, "val2014", [42, 42, 73, 73, 73], rng),
    ),
    "pretrain_coco_val.db": (
        "coco_val2014",
        lambda rng: coco_records(800001, "val2014", [133, 133, 164], rng),
    ),
    "pretrain_vg_train.db": ("vg", lambda rng: vg_records(0, [1, 1, 1, 1, 2, 2, 2338], rng)),
    "pretrain_vg_val.db": ("vg", lambda rng: vg_records(5000000, [107899, 107899, 3], rng)),
    "conceptual_caption_train.db": ("gcc_train", lambda rng: cc_records("train", [0, 7, 12], rng)),
    "conceptual_caption_val.db": ("gcc_val", lambda rng: cc_records("val", [3, 15000], rng)),
    "sbu_caption_train.db": ("sbu", lambda rng: sbu_records([5, 347, 999999], rng)),
    "sbu_caption_val.db": ("sbu", lambda rng: sbu_records([1000001, 1000002], rng)),
}


def images_of(records: dict[str, dict]) -> dict[str, dict]:
    """An image db's content for `records`: each named image, arrays seeded by its name."""
    names = sorted({r["img_fname"] for r in records.values()})
    return {name: image_arrays(int.from_bytes(name.encode()[-12:], "little")) for name in names}


def read_txt_db(db: str) -> dict[str, tuple[list[int], str]]:
    """Independent of the converter: text id -> (input_ids, img_fname), in key order."""
    env = lmdb.open(db, readonly=True, lock=False)
    with env.begin() as txn:
        out = {}
        for key, value in txn.cursor():
            record = msgpack.unpackb(lz4.frame.decompress(value), raw=False)
            out[key.decode()] = (record["input_ids"], record["img_fname"])
    env.close()
    return out


def convert(args: list[str]) -> None:
    assert main([*args, "--no-progress"]) == 0


def convert_img_db(db: str, out: str) -> str:
    convert(["uniter-img-lmdb", db, "--out", out, "--feature-dim", str(D)])
    return out


def convert_txt_db(db: str, images: str, out: str) -> str:
    convert(["uniter-txt-lmdb", db, "--task", "captions", "--images", images, "--out", out])
    return out


# ---------------------------------------------------------------- one db of each corpus


@pytest.mark.parametrize("db_name", sorted(CORPUS_DBS))
def test_each_pretraining_db_converts_and_reads_back(tmp_path, db_name):
    img_name, make = CORPUS_DBS[db_name]
    records = make(np.random.default_rng(len(db_name)))
    images = images_of(records)
    img_db = write_img_db(tmp_path / "img_db", img_name, images)
    txt_db = write_txt_db(tmp_path / "txt_db", db_name, records)
    img_store = convert_img_db(img_db, str(tmp_path / "data" / "img" / img_name))
    txt_store = convert_txt_db(txt_db, img_store, str(tmp_path / "data" / "txt" / "out"))

    expected = read_txt_db(txt_db)
    store = TextStore(txt_store)
    assert [str(t) for t in store.text_ids] == list(expected)  # LMDB key order
    assert [str(i) for i in store.image_ids] == [
        fname.removesuffix(".npz") for _, fname in expected.values()
    ]
    for i, (ids, _) in enumerate(expected.values()):
        np.testing.assert_array_equal(store.input_ids(i), ids[:MAX_TXT_LEN])
    long = sum(len(ids) > MAX_TXT_LEN for ids, _ in expected.values())
    assert store.manifest["truncated"] == long
    assert store.manifest["vocab"]["random_range"] == [999, 28996]
    assert store.manifest["source"]["bert"] == "bert-base-cased"

    image_store = ImageStore(img_store)
    assert sorted(map(str, image_store.ids)) == sorted(n.removesuffix(".npz") for n in images)
    for fname, arrays in images.items():
        regions = image_store.get(fname.removesuffix(".npz"))
        order = np.argsort(-arrays["conf"].astype(np.float32), kind="stable")
        np.testing.assert_array_equal(regions.features, arrays["features"][order])


# ---------------------------------------------------------------- COCO's two dbs read as one


@pytest.fixture
def coco(tmp_path):
    """COCO's training dbs converted: {name: store} for train, restval and both image sets."""
    rng = np.random.default_rng(0)
    train = coco_records(166386, "train2014", [9, 9, 25, 25, 25], rng)
    restval = coco_records(700001, "val2014", [42, 42, 73], rng)
    stores = {}
    for img_name, records in [("coco_train2014", train), ("coco_val2014", restval)]:
        db = write_img_db(tmp_path / "img_db", img_name, images_of(records))
        stores[img_name] = convert_img_db(db, str(tmp_path / "data" / "img" / img_name))
    for name, records, img_name in [
        ("coco_train", train, "coco_train2014"),
        ("coco_restval", restval, "coco_val2014"),
    ]:
        db = write_txt_db(tmp_path / "txt_db", f"pretrain_{name}.db", records)
        stores[name] = convert_txt_db(db, stores[img_name], str(tmp_path / "data" / "txt" / name))
    return stores, {**train, **restval}


def test_coco_train_and_restval_read_as_one(coco):
    stores, records = coco
    texts = open_texts([stores["coco_train"], stores["coco_restval"]])
    images = open_images([stores["coco_train2014"], stores["coco_val2014"]])
    ids = [str(t) for t in texts.text_ids]
    assert len(ids) == len(set(ids)) == len(records) == 8
    assert ids == sorted(r for r in records if r.startswith("1")) + sorted(
        r for r in records if r.startswith("7")
    )
    for i, text_id in enumerate(ids):
        assert str(texts.image_ids[i]) == records[text_id]["img_fname"].removesuffix(".npz")
        np.testing.assert_array_equal(
            texts.input_ids(i), records[text_id]["input_ids"][:MAX_TXT_LEN]
        )
    assert len(images) == 4 and len(set(map(str, images.ids))) == 4

    # Each text reads its own image's regions, from whichever store holds it.
    pipeline = Pipeline(texts, images, PipelineConfig(buckets=(Bucket(64, 8, 4),), shuffle=False))
    positions = images.positions(texts.image_ids)
    plan = pipeline.plan_pairs(np.arange(len(texts)), positions)
    seen = 0
    for batch in pipeline.batches(plan):
        for row in np.flatnonzero(batch["valid"]):
            text_id = ids[batch["text_index"][row]]
            fname = records[text_id]["img_fname"]
            arrays = image_arrays(int.from_bytes(fname.encode()[-12:], "little"))
            order = np.argsort(-arrays["conf"].astype(np.float32), kind="stable")
            n = int(batch["img_mask"][row].sum())
            assert n == len(order)
            np.testing.assert_array_equal(batch["img_feat"][row, :n], arrays["features"][order])
            seen += 1
    assert seen == len(texts)


def test_a_text_id_in_two_dbs_is_a_data_error(coco, tmp_path):
    stores, _ = coco
    rng = np.random.default_rng(1)
    again = coco_records(166386, "val2014", [42], rng)  # the train db's first id
    db = write_txt_db(tmp_path / "txt_db", "pretrain_coco_again.db", again)
    other = convert_txt_db(db, stores["coco_val2014"], str(tmp_path / "data" / "txt" / "again"))
    with pytest.raises(DataError, match="text id also in") as error:
        open_texts([stores["coco_train"], other])
    assert error.value.record == "166386" and error.value.file == other
    assert stores["coco_train"] in error.value.message
