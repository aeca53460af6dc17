"""The original UNITER LMDB databases: round trips in their layouts, bad records, fuzzing.

The databases are written here as ChenRocks/UNITER wrote them, without its
code: image values as msgpack whose arrays are msgpack_numpy's maps built by
hand (or `np.savez_compressed` bytes), text values as
`lz4.frame.compress(msgpack.packb(record))` next to `meta.json`. Expected
values follow docs/original.md, Region features: features as fp16, `norm_bb`
with `w*h` appended, regions sorted by confidence (stable).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile

import lmdb
import lz4.frame
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stores import image_store

from uniter_jax.data.convert import convert_uniter_img_lmdb, convert_uniter_txt_lmdb
from uniter_jax.data.convert.__main__ import main
from uniter_jax.data.convert.texts import write_text_store
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore

D = 16  # feature width in most tests: small and fast
LABELS = 1601
META = {
    "bert": "bert-base-cased",
    "UNK": 100,
    "CLS": 101,
    "SEP": 102,
    "MASK": 103,
    "v_range": [999, 28996],
}

# ---------------------------------------------------------------- writers, in the original layouts


def nd(array: np.ndarray, *, byte_keys: bool = True) -> dict:
    """msgpack_numpy's encoding of one array (its keys are bytes)."""
    fields = {
        "nd": True,
        "type": array.dtype.str,
        "kind": b"",
        "shape": list(array.shape),
        "data": array.tobytes(),
    }
    return {key.encode() if byte_keys else key: value for key, value in fields.items()}


def msgpack_value(record: dict, *, byte_keys: bool = True, use_bin_type: bool = True) -> bytes:
    """An uncompressed image-db value: `msgpack.dumps(dump, use_bin_type=True)`."""
    packed = {
        key: nd(value, byte_keys=byte_keys) if isinstance(value, np.ndarray) else value
        for key, value in record.items()
    }
    return msgpack.packb(packed, use_bin_type=use_bin_type)


def npz_value(record: dict, *, compressed: bool = True) -> bytes:
    """A compressed image-db value: the bytes of `np.savez_compressed`."""
    with io.BytesIO() as f:
        (np.savez_compressed if compressed else np.savez)(f, **record)
        return f.getvalue()


def write_lmdb(path, items: dict[bytes, bytes]) -> str:
    os.makedirs(path, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    env.close()
    return str(path)


def image_record(seed: int, n: int = 5, dim: int = D, soft: bool = True) -> dict:
    """One image as the original db holds it: fp16 features, norm_bb, conf, soft labels."""
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    x1, y1 = rng.uniform(0, width / 2, n), rng.uniform(0, height / 2, n)
    x2 = x1 + rng.uniform(1, width / 2 - 1, n)
    y2 = y1 + rng.uniform(1, height / 2 - 1, n)
    norm_bb = np.stack(
        [x1 / width, y1 / height, x2 / width, y2 / height, (x2 - x1) / width, (y2 - y1) / height],
        1,
    )
    conf = rng.uniform(0.05, 1, n).astype(np.float16)
    conf[-1] = conf[0]  # a tie: the store's order is stable
    record = {
        "features": (rng.normal(size=(n, dim)) * 3).astype(np.float16),
        "norm_bb": norm_bb.astype(np.float16),
        "conf": conf,
    }
    if soft:
        record["soft_labels"] = rng.dirichlet(np.full(LABELS, 0.05), n).astype(np.float16)
    return record


def assert_matches(regions, record: dict) -> None:
    """The store's image equals the record: fp16 features, 7-d boxes, conf order."""
    conf = np.asarray(record["conf"], np.float32)
    order = np.argsort(-conf, kind="stable")
    norm_bb = np.asarray(record["norm_bb"]).astype(np.float32)
    boxes = np.concatenate([norm_bb, norm_bb[:, 4:5] * norm_bb[:, 5:6]], 1)
    np.testing.assert_array_equal(regions.features, record["features"].astype(np.float16)[order])
    np.testing.assert_array_equal(regions.boxes, boxes[order])
    np.testing.assert_array_equal(regions.conf, conf[order])
    if "soft_labels" in record:
        np.testing.assert_array_equal(regions.soft_labels, record["soft_labels"][order])
    else:
        assert regions.soft_labels is None


def assert_no_store(out) -> None:
    """Neither the store nor a temporary sibling is left behind."""
    parent, name = os.path.split(os.path.abspath(out))
    assert not os.path.exists(out)
    assert not [entry for entry in os.listdir(parent) if entry.startswith(f".{name}.tmp")]


def assert_located(error: DataError, file: str, record: str, field: str) -> None:
    assert (error.file, error.record, error.field) == (file, record, field)
    assert file in str(error) and record in str(error) and field in str(error)


class _Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---------------------------------------------------------------- image db: round trips


def test_img_db_round_trip_msgpack_and_compressed(tmp_path):
    records = {
        b"coco_train2014_000000000001.npz": image_record(1),
        b"coco_train2014_000000000002.npz": image_record(2, n=7),
        b"coco_val2014_3": image_record(3, n=1),
        b"coco_val2014_4.npz": image_record(4, n=4),
    }
    # The compressed variant may hold fp32 features: the store rounds them to fp16.
    records[b"coco_train2014_000000000002.npz"]["features"] = (
        np.random.default_rng(9).normal(size=(7, D)).astype(np.float32)
    )
    keys = list(records)
    values = {
        keys[0]: msgpack_value(records[keys[0]]),
        # Other arrays (older numpy stored convert_imgdir.py's allow_pickle=True) are ignored.
        keys[1]: npz_value({**records[keys[1]], "image_w": np.array(640)}),
        keys[2]: msgpack_value(records[keys[2]], byte_keys=False),  # str keys
        keys[3]: msgpack_value(records[keys[3]], use_bin_type=False),  # old msgpack: raw str
        b"__keys__": json.dumps([key.decode() for key in keys]).encode(),
    }
    db = write_lmdb(tmp_path / "img_db", values)
    (tmp_path / "img_db" / "nbb_th0.2_max100_min10.json").write_text(json.dumps({"x": 10}))
    out = tmp_path / "store"
    summary = convert_uniter_img_lmdb(db, out, feature_dim=D, progress=False)
    assert (summary.images, summary.regions, summary.skipped) == (4, 17, [])
    store = ImageStore(str(out))
    assert store.num_labels == LABELS and store.feature_dim == D
    assert store.manifest["source"] == {"format": "uniter-img-lmdb", "db": db}
    ids = ["coco_train2014_000000000001", "coco_train2014_000000000002"]
    ids += ["coco_val2014_3", "coco_val2014_4"]
    assert list(store.ids) == ids
    for image_id, record in zip(ids, records.values(), strict=True):
        assert_matches(store.get(image_id), record)


def test_img_db_default_dim_and_no_soft_labels(tmp_path):
    record = image_record(5, n=3, dim=2048, soft=False)
    db = write_lmdb(tmp_path / "db", {b"a.npz": npz_value(record, compressed=False)})
    convert_uniter_img_lmdb(db, tmp_path / "store", progress=False)
    store = ImageStore(str(tmp_path / "store"))
    assert store.feature_dim == 2048 and store.num_labels is None
    assert_matches(store.get("a"), record)


# ---------------------------------------------------------------- image db: bad records

GOOD = image_record(0, n=3)


def _without(name: str) -> dict:
    return {key: value for key, value in GOOD.items() if key != name}


def _nan(name: str) -> dict:
    value = GOOD[name].copy()
    value[1, 2] = np.nan
    return {**GOOD, name: value}


def _norm(box: list[float]) -> dict:
    norm_bb = GOOD["norm_bb"].copy()
    norm_bb[1] = box
    return {**GOOD, "norm_bb": norm_bb}


def _features_map(**changes) -> bytes:
    """A msgpack value whose `features` map is altered by hand."""
    features = {**nd(GOOD["features"]), **{k.encode(): v for k, v in changes.items()}}
    return msgpack.packb({**GOOD, "features": features}, default=nd, use_bin_type=True)


def _packb(record: dict) -> bytes:
    return msgpack.packb(record, default=nd, use_bin_type=True)


IMG_BAD = {
    "not msgpack": (b"\xc1\x00", "value", "neither an npz archive nor msgpack"),
    "trailing bytes": (_packb(GOOD) + b"\x00", "value", "neither an npz archive nor msgpack"),
    "not a map": (msgpack.packb([1, 2]), "value", "expected a msgpack map"),
    "no features": (_packb(_without("features")), "features", "missing"),
    "no norm_bb": (_packb(_without("norm_bb")), "norm_bb", "missing"),
    "no conf": (_packb(_without("conf")), "conf", "missing"),
    "no soft labels": (_packb(_without("soft_labels")), "soft_labels", "first record has them"),
    "dimension": (
        _packb({**GOOD, "features": np.zeros((3, 8), np.float16)}),
        "features",
        "dimension 8",
    ),
    "no regions": (_packb({**GOOD, "features": np.zeros((0, D), np.float16)}), "features", "no"),
    "norm_bb shape": (_packb({**GOOD, "norm_bb": GOOD["norm_bb"][:, :4]}), "norm_bb", "[3, 4]"),
    "conf count": (_packb({**GOOD, "conf": GOOD["conf"][:2]}), "conf", "shape [2]"),
    "conf range": (_packb({**GOOD, "conf": GOOD["conf"] + 2}), "conf", "[0, 1]"),
    "soft width": (
        _packb({**GOOD, "soft_labels": GOOD["soft_labels"][:, :100]}),
        "soft_labels",
        "shape [3, 100]",
    ),
    "soft sum": (
        _packb({**GOOD, "soft_labels": GOOD["soft_labels"] * 0.5}),
        "soft_labels",
        "sum to 1",
    ),
    "nan features": (_packb(_nan("features")), "features", "NaN"),
    "nan norm_bb": (_packb(_nan("norm_bb")), "norm_bb", "NaN"),
    "norm outside": (_packb(_norm([0.1, 0.1, 1.2, 0.5, 1.1, 0.4])), "norm_bb", "outside"),
    "norm zero area": (_packb(_norm([0.3, 0.1, 0.3, 0.5, 0.0, 0.4])), "norm_bb", "zero area"),
    "not an array": (_packb({**GOOD, "features": 5}), "features", "msgpack_numpy array map"),
    "string dtype": (_features_map(type="<U2"), "features", "not a numeric dtype"),
    "odd dtype": (_features_map(type="<f3"), "features", "not a numpy dtype"),
    "structured": (_features_map(kind=b"V", type=[["a", "<f4"]]), "features", "structured"),
    "byte count": (
        _features_map(data=GOOD["features"].tobytes()[:-2]),
        "features",
        "data bytes",
    ),
    "bad shape": (_features_map(shape=[-3, D]), "features", "bad array shape"),
    "bool shape": (_features_map(shape=[True, D]), "features", "bad array shape"),
    "data not bytes": (_features_map(data=12), "features", "not bytes"),
    "nd neither": (_features_map(nd=1), "features", "neither true nor false"),
    "scalar": (
        _features_map(nd=False, data=np.float16(1).tobytes(), shape=None),
        "features",
        "shape []",
    ),
    "corrupt npz": (b"PK\x03\x04 not really a zip", "value", "not a readable npz"),
    "pk but not zip": (b"PKxx", "value", "not a readable npz"),
    "npz nan": (npz_value(_nan("features")), "features", "NaN"),
    "npz no conf": (npz_value(_without("conf")), "conf", "missing"),
}


@pytest.mark.parametrize("case", sorted(IMG_BAD))
def test_img_bad_record_names_db_key_and_field(tmp_path, case):
    value, field, words = IMG_BAD[case]
    later = image_record(1, n=2)
    db = write_lmdb(
        tmp_path / "db",
        {b"a.npz": _packb(GOOD), b"b.npz": value, b"c.npz": npz_value(later)},
    )
    out = tmp_path / "store"
    with pytest.raises(DataError) as error:
        convert_uniter_img_lmdb(db, out, feature_dim=D, progress=False)
    assert_located(error.value, db, "b.npz", field)
    assert words in error.value.message
    assert_no_store(out)
    summary = convert_uniter_img_lmdb(db, out, feature_dim=D, skip_bad=True, progress=False)
    assert (summary.images, summary.regions) == (2, 5)
    assert [(s.file, s.record, s.field) for s in summary.skipped] == [(db, "b.npz", field)]
    assert "b.npz" in summary.report()
    store = ImageStore(str(out))
    assert list(store.ids) == ["a", "c"]
    assert_matches(store.get("c"), later)


@pytest.mark.parametrize(
    "key, words",
    [(b"\xff\xfe.npz", "not UTF-8"), (b".npz", "bad image id"), (b"a/b.npz", "bad image id")],
)
def test_img_bad_key(tmp_path, key, words):
    db = write_lmdb(tmp_path / "db", {b"0.npz": _packb(GOOD), key: _packb(GOOD)})
    with pytest.raises(DataError, match=words) as error:
        convert_uniter_img_lmdb(db, tmp_path / "s", feature_dim=D, progress=False)
    assert_located(error.value, db, key.decode("utf-8", "backslashreplace"), "key")


def test_img_duplicate_id_and_soft_labels_follow_the_first_record(tmp_path):
    db = write_lmdb(tmp_path / "db", {b"a": _packb(GOOD), b"a.npz": _packb(GOOD)})
    with pytest.raises(DataError, match="duplicate image id 'a'") as error:
        convert_uniter_img_lmdb(db, tmp_path / "s", feature_dim=D, progress=False)
    assert_located(error.value, db, "a.npz", "image_id")

    items = {b"a": b"junk", b"b": _packb(_without("soft_labels")), b"c": _packb(GOOD)}
    db = write_lmdb(tmp_path / "db2", items)
    summary = convert_uniter_img_lmdb(
        db, tmp_path / "s", feature_dim=D, skip_bad=True, progress=False
    )
    assert ImageStore(str(tmp_path / "s")).num_labels is None  # "b" decides, "a" is unreadable
    assert [(s.record, s.field) for s in summary.skipped] == [("a", "value"), ("c", "soft_labels")]


def test_object_arrays_are_never_unpickled(tmp_path):
    trap = str(tmp_path / "unpickled")
    objects = np.empty(3, object)
    objects[:] = [_Trap(trap)] * 3
    payload = pickle.dumps(objects)
    values = {
        b"0good": _packb(GOOD),
        b"kind": _features_map(kind=b"O", type=[[b"", b"|O"]], shape=[3], data=payload),
        b"type": _features_map(type="|O", shape=[3], data=payload),
        b"npz": npz_value({**GOOD, "features": objects}, compressed=False),
        b"npz_compressed": npz_value({**GOOD, "conf": objects}),
    }
    db = write_lmdb(tmp_path / "db", values)
    out = tmp_path / "store"
    summary = convert_uniter_img_lmdb(db, out, feature_dim=D, skip_bad=True, progress=False)
    assert summary.images == 1
    reasons = {s.record: (s.field, s.reason) for s in summary.skipped}
    assert reasons["kind"] == (
        "features",
        "object array: msgpack_numpy pickles these, never unpickled",
    )
    assert reasons["type"] == reasons["kind"]
    assert reasons["npz"][0] == "features" and "allow_pickle" in reasons["npz"][1]
    assert reasons["npz_compressed"][0] == "conf"
    assert not os.path.exists(trap)
    with pytest.raises(DataError, match="object array"):
        convert_uniter_img_lmdb(db, tmp_path / "s2", feature_dim=D, progress=False)
    assert not os.path.exists(trap)


def test_img_db_folder_errors(tmp_path):
    with pytest.raises(DataError, match="LMDB folder not found"):
        convert_uniter_img_lmdb(tmp_path / "none", tmp_path / "s", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not an LMDB database"):
        convert_uniter_img_lmdb(tmp_path / "empty", tmp_path / "s", progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.mdb").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="not an LMDB database"):
        convert_uniter_img_lmdb(tmp_path / "junk", tmp_path / "s", progress=False)
    for name, items in [("nothing", {}), ("names only", {b"__keys__": b"[]"})]:
        with pytest.raises(DataError, match="no records"):
            convert_uniter_img_lmdb(write_lmdb(tmp_path / name, items), tmp_path / "s")
    # The original's layout: img_db/coco/{feat_th0.2_max100_min10/, nbb_th0.2_....json}.
    write_lmdb(tmp_path / "img_db" / "feat_th0.2_max100_min10", {b"a": _packb(GOOD)})
    with pytest.raises(DataError, match=r"LMDB folders inside: feat_th0\.2_max100_min10"):
        convert_uniter_img_lmdb(tmp_path / "img_db", tmp_path / "s", progress=False)
    db = write_lmdb(tmp_path / "all_bad", {b"a": b"x", b"b": b"y"})
    with pytest.raises(DataError, match="no good images: all 2 records are bad"):
        convert_uniter_img_lmdb(db, tmp_path / "s", skip_bad=True, progress=False)
    assert_no_store(tmp_path / "s")


# ---------------------------------------------------------------- text db


def txt_value(record: dict) -> bytes:
    return lz4.frame.compress(msgpack.packb(record, use_bin_type=True))


def write_txt_db(path, records: dict[bytes, dict | bytes], meta: dict | None = META) -> str:
    """A text db folder: the LMDB plus meta.json, id2len, txt2img and img2txts."""
    db = write_lmdb(
        path,
        {k: v if isinstance(v, bytes) else txt_value(v) for k, v in records.items()},
    )
    good = {k.decode(errors="replace"): v for k, v in records.items() if isinstance(v, dict)}
    side = {
        "id2len.json": {k: len(v.get("input_ids", [])) for k, v in good.items()},
        "txt2img.json": {k: v.get("img_fname") for k, v in good.items()},
        "img2txts.json": {},
    }
    if meta is not None:
        side["meta.json"] = meta
    for name, value in side.items():
        (path / name).write_text(json.dumps(value))
    return db


def caption(ids: list[int], image: str = "coco_1.npz") -> dict:
    return {"input_ids": ids, "img_fname": image, "raw": "text", "toked_caption": ["x"]}


def question(ids: list[int], labels: list[int], scores: list[float], image="coco_2.npz") -> dict:
    return {
        "input_ids": ids,
        "img_fname": image,
        "question_id": 5,
        "target": {"labels": labels, "scores": scores},
    }


def test_txt_captions_round_trip(tmp_path):
    long = list(range(2000, 2070))
    records = {
        b"10": caption([1188, 1110, 170, 1285]),
        b"11": caption(long, "coco_2.npz"),
        b"9": caption([28995, 999], "coco_2"),
        # msgpack_numpy arrays (msgpack_numpy.patch() was active when the dbs were written).
        b"90": caption(nd(np.array([1188, 1110], np.int32)), "coco_1.npz"),
    }
    db = write_txt_db(tmp_path / "txt_db", records)
    images = image_store(tmp_path / "img", ["coco_1", "coco_2"])
    out = tmp_path / "store"
    summary = convert_uniter_txt_lmdb(db, out, task="captions", images=images, progress=False)
    assert (summary.texts, summary.truncated, summary.skipped) == (4, 1, [])
    store = TextStore(str(out))
    assert list(store.text_ids) == ["10", "11", "9", "90"]  # LMDB key order
    assert list(store.image_ids) == ["coco_1", "coco_2", "coco_2", "coco_1"]
    for i, ids in enumerate([[1188, 1110, 170, 1285], long[:60], [28995, 999], [1188, 1110]]):
        np.testing.assert_array_equal(store.input_ids(i), ids)
    manifest = store.manifest
    assert manifest["task"] == "captions" and manifest["fields"] == []
    assert manifest["vocab"] == {
        "path": None,
        "size": 28996,
        "pad_id": 0,
        "cls_id": 101,
        "sep_id": 102,
        "mask_id": 103,
        "random_range": [999, 28996],
        "lowercase": False,
    }
    assert manifest["source"] == {"format": "uniter-txt-lmdb", "db": db, "bert": "bert-base-cased"}


def test_txt_vqa_round_trip_and_test_split(tmp_path):
    records = {
        b"1": question([2054, 1110], [3, 17], [1.0, 0.3]),
        b"2": question([2054, 1110, 1103], [], [], "coco_1.npz"),
        b"3": question([1103], [42], [0.6]),
    }
    db = write_txt_db(tmp_path / "train", records)
    convert_uniter_txt_lmdb(db, tmp_path / "s", task="vqa", max_txt_len=2, progress=False)
    store = TextStore(str(tmp_path / "s"))
    assert store.fields == ["answers", "scores"] and store.manifest["truncated"] == 1
    for i, record in enumerate(records.values()):
        np.testing.assert_array_equal(store.input_ids(i), record["input_ids"][:2])
        np.testing.assert_array_equal(store.field("answers", i), record["target"]["labels"])
        np.testing.assert_array_equal(store.field("scores", i), record["target"]["scores"])
    assert store.arrays["answers"].dtype == np.int64
    assert store.arrays["scores"].dtype == np.float64

    test_split = {b"1": caption([2054]), b"2": caption([1110])}
    db = write_txt_db(tmp_path / "test", test_split)
    convert_uniter_txt_lmdb(db, tmp_path / "t", task="vqa", progress=False)
    store = TextStore(str(tmp_path / "t"))
    assert len(store) == 2 and store.arrays["answers"].size == 0


def _vqa_target(target) -> dict:
    return {**question([2054], [1], [1.0]), "target": target}


TXT_BAD = {
    "not lz4": ("captions", b"garbage", "value", "not lz4-compressed msgpack"),
    "lz4 of junk": ("captions", lz4.frame.compress(b"\xc1"), "value", "not lz4-compressed"),
    "not a map": ("captions", txt_value([1, 2]), "value", "expected a msgpack map"),
    "no input_ids": ("captions", {"img_fname": "coco_1.npz"}, "input_ids", "missing"),
    "no img_fname": ("captions", {"input_ids": [1010]}, "img_fname", "missing"),
    "two images": (
        "captions",
        caption([1010], ["coco_1.npz", "coco_2.npz"]),
        "img_fname",
        "convert NLVR2 from its JSON Lines files",
    ),
    "img_fname number": ("captions", caption([1010], 7), "img_fname", "expected a file name"),
    "img_fname empty": ("captions", caption([1010], ""), "img_fname", "bad image id"),
    "string ids": ("captions", caption(["a"]), "input_ids", "list of integers"),
    "float ids": ("captions", caption([1010.0]), "input_ids", "list of integers"),
    "negative id": ("captions", caption([-1]), "input_ids", "list of integers"),
    "huge id": ("captions", caption([2**64 - 1]), "input_ids", "list of integers"),
    "nested ids": ("captions", caption([[1010]]), "input_ids", "list of integers"),
    "beyond vocab": ("captions", caption([28996]), "input_ids", "outside [0, 28996)"),
    "no tokens": ("captions", caption([]), "input_ids", "empty text"),
    "unknown image": ("captions", caption([1010], "coco_404.npz"), "image_id", "not in the"),
    "target not a map": ("vqa", _vqa_target([1]), "target", "expected a map"),
    "target missing": ("vqa", caption([1010]), "target", "missing"),
    "labels strings": (
        "vqa",
        _vqa_target({"labels": ["yes"], "scores": [1.0]}),
        "target.labels",
        "list of integers",
    ),
    "no scores": ("vqa", _vqa_target({"labels": [1]}), "target.scores", "list of numbers"),
    "score range": (
        "vqa",
        _vqa_target({"labels": [1], "scores": [1.5]}),
        "target.scores",
        "[0, 1]",
    ),
    "score nan": (
        "vqa",
        _vqa_target({"labels": [1], "scores": [float("nan")]}),
        "target.scores",
        "NaN",
    ),
    "lengths": ("vqa", _vqa_target({"labels": [1, 2], "scores": [1.0]}), "target", "2 labels"),
}


@pytest.mark.parametrize("case", sorted(TXT_BAD))
def test_txt_bad_record_names_db_key_and_field(tmp_path, case):
    task, bad, field, words = TXT_BAD[case]
    good = question([1010], [1], [1.0], "coco_1.npz")
    db = write_txt_db(tmp_path / "db", {b"q1": good, b"q2": bad, b"q3": good})
    images = image_store(tmp_path / "img", ["coco_1", "coco_2"])
    out = tmp_path / "store"
    with pytest.raises(DataError) as error:
        convert_uniter_txt_lmdb(db, out, task=task, images=images, progress=False)
    assert_located(error.value, db, "q2", field)
    assert words in error.value.message
    assert_no_store(out)
    summary = convert_uniter_txt_lmdb(
        db, out, task=task, images=images, skip_bad=True, progress=False
    )
    assert summary.texts == 2
    assert [(s.file, s.record, s.field) for s in summary.skipped] == [(db, "q2", field)]
    assert list(TextStore(str(out)).text_ids) == ["q1", "q3"]


def test_txt_key_and_target_rules(tmp_path):
    db = write_txt_db(tmp_path / "db", {b"a": caption([1010]), b"\xff": caption([1010])})
    with pytest.raises(DataError, match="not UTF-8") as error:
        convert_uniter_txt_lmdb(db, tmp_path / "s", task="captions", progress=False)
    assert_located(error.value, db, "\\xff", "key")
    # A test-split first record (no target) makes a later target an error.
    db = write_txt_db(tmp_path / "db2", {b"a": caption([1010]), b"b": question([1010], [], [])})
    with pytest.raises(DataError, match="present, but the first record has none"):
        convert_uniter_txt_lmdb(db, tmp_path / "s", task="vqa", progress=False)
    with pytest.raises(ValueError, match="task must be one of"):
        convert_uniter_txt_lmdb(db, tmp_path / "s", task="nlvr2", progress=False)


@pytest.mark.parametrize(
    "meta, words",
    [
        (None, "meta.json is needed"),
        ([], "expected an object"),
        ({**META, "CLS": "101"}, "expected a token id"),
        ({**META, "v_range": [999]}, "expected [lo, hi)"),
        ({**META, "v_range": [999, 50]}, "expected [lo, hi)"),
        ({**META, "v_range": [0, 100]}, "special ids outside"),
    ],
)
def test_txt_bad_meta(tmp_path, meta, words):
    db = write_txt_db(tmp_path / "db", {b"a": caption([1010])}, meta=meta)
    with pytest.raises(DataError) as error:
        convert_uniter_txt_lmdb(db, tmp_path / "s", task="captions", progress=False)
    assert error.value.file == os.path.join(db, "meta.json") and words in error.value.message
    assert_no_store(tmp_path / "s")


def test_uncased_meta_and_write_text_store_needs_tokenizer_or_vocab(tmp_path):
    meta = {k: v for k, v in META.items() if k != "bert"}
    meta |= {"toker": "bert-base-uncased", "v_range": [999, 30522]}  # prepro.py's meta
    db = write_txt_db(tmp_path / "db", {b"a": caption([30521])}, meta=meta)
    convert_uniter_txt_lmdb(db, tmp_path / "s", task="captions", progress=False)
    vocab = TextStore(str(tmp_path / "s")).manifest["vocab"]
    assert vocab["lowercase"] and vocab["size"] == 30522
    assert TextStore(str(tmp_path / "s")).manifest["source"]["bert"] == "bert-base-uncased"
    common = dict(task="captions", max_txt_len=60, images=None, source={})
    common |= dict(skip_bad=False, overwrite=False, progress=False)
    with pytest.raises(ValueError, match="a tokenizer or"):
        write_text_store([], tmp_path / "x", tokenizer=None, **common)


# ---------------------------------------------------------------- fuzzing


def _fuzz_values() -> st.SearchStrategy[bytes]:
    """Random bytes, and random bytes behind each format's first decoding step."""
    good_img, good_txt = _packb(GOOD), txt_value(caption([1010]))

    def mutate(value: bytes):
        return st.tuples(st.integers(0, len(value) - 1), st.binary(max_size=4)).map(
            lambda cut: value[: cut[0]] + cut[1] + value[cut[0] + len(cut[1]) :]
        )

    leaves = st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=4))
    leaves |= st.binary(max_size=8) | st.booleans() | st.none()
    objects = st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["nd", "type", "kind", "shape", "data"]), inner)
        ),
        max_leaves=8,
    )
    records = st.dictionaries(
        st.sampled_from([*GOOD, "input_ids", "img_fname", "target", "x"]), objects, max_size=4
    )
    return st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=64).map(lambda b: b"PK\x03\x04" + b),
        st.binary(max_size=64).map(lz4.frame.compress),
        records.map(lambda r: msgpack.packb(r, use_bin_type=True)),
        records.map(txt_value),
        mutate(good_img),
        mutate(good_txt),
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(value=_fuzz_values(), text=st.booleans(), skip_bad=st.booleans())
def test_fuzz_values_raise_only_data_error(value, text, skip_bad):
    with tempfile.TemporaryDirectory() as tmp:
        good = txt_value(caption([1010])) if text else _packb(GOOD)
        items = {b"a.npz": good, b"b.npz": value}
        if text:
            os.makedirs(os.path.join(tmp, "db"))
            with open(os.path.join(tmp, "db", "meta.json"), "w") as f:
                json.dump(META, f)
        db = write_lmdb(os.path.join(tmp, "db"), items)
        out = os.path.join(tmp, "store")
        try:
            if text:
                summary = convert_uniter_txt_lmdb(
                    db, out, task="vqa", skip_bad=skip_bad, progress=False
                )
                assert len(TextStore(out)) == summary.texts
            else:
                summary = convert_uniter_img_lmdb(
                    db, out, feature_dim=D, skip_bad=skip_bad, progress=False
                )
                assert len(ImageStore(out)) == summary.images
        except DataError:
            assert_no_store(out)


# ---------------------------------------------------------------- command line


def test_cli_end_to_end(tmp_path, capsys):
    img_db = write_lmdb(
        tmp_path / "img_db",
        {b"coco_1.npz": _packb(GOOD), b"coco_2.npz": IMG_BAD["nan features"][0]},
    )
    images = str(tmp_path / "images")
    args = ["uniter-img-lmdb", img_db, "--out", images, "--feature-dim", str(D), "--no-progress"]
    assert main(args) == 2
    assert "record coco_2.npz, field features" in capsys.readouterr().err
    assert_no_store(images)
    assert main([*args, "--skip-bad"]) == 0
    assert "wrote 1 images, 3 regions" in capsys.readouterr().out
    assert list(ImageStore(images).ids) == ["coco_1"]

    txt_db = write_txt_db(
        tmp_path / "txt_db",
        {b"q1": question([1010], [1], [1.0], "coco_1.npz"), b"q2": question([1010], [1], [1.0])},
    )
    out = str(tmp_path / "vqa")
    args = ["uniter-txt-lmdb", txt_db, "--task", "vqa", "--out", out, "--no-progress"]
    assert main([*args, "--images", images]) == 2
    assert "record q2, field image_id" in capsys.readouterr().err
    assert main(args) == 0
    assert "wrote 2 texts" in capsys.readouterr().out
    assert main(args) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--force", "--images", images, "--skip-bad", "--max-txt-len", "5"]) == 0
    assert list(TextStore(out).text_ids) == ["q1"]
    with pytest.raises(SystemExit):
        main(["uniter-txt-lmdb", txt_db, "--task", "nlvr2", "--out", out])
