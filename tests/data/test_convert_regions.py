"""Region-feature converters: round trips in the public layouts, bad input, fuzzing.

Inputs are written here from numpy, independently of the converters (base64
TSV lines built by hand), and read back through ImageStore. Expected values
follow docs/original.md, Region features: features as fp16, 7-d boxes
`[x1/W, y1/H, x2/W, y2/H, w/W, h/H, w*h]`, regions sorted by confidence.
"""

from __future__ import annotations

import base64
import os
import pickle
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from uniter_jax.data.convert import (
    Summary,
    convert_butd_tsv,
    convert_lxmert_tsv,
    convert_npz_dir,
)
from uniter_jax.data.convert.__main__ import main
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore

D = 16  # feature width in most tests: small and fast
LABELS = 1601
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------- input writers


def b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype).tobytes()).decode("ascii")


def make_image(seed: int, n: int = 5, width: int = 200, height: int = 100, dim: int = D):
    """Random detections: pixel boxes inside a W x H image, float32 features."""
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(0, width / 2, n)
    y1 = rng.uniform(0, height / 2, n)
    x2 = x1 + rng.uniform(1, width / 2 - 1, n)
    y2 = y1 + rng.uniform(1, height / 2 - 1, n)
    boxes = np.stack([x1, y1, x2, y2], 1).astype(np.float32)
    features = (rng.normal(size=(n, dim)) * 3).astype(np.float32)
    soft = rng.dirichlet(np.full(LABELS, 0.05), n).astype(np.float32)
    return {"boxes": boxes, "features": features, "w": width, "h": height, "soft": soft}


def expected_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """docs/original.md, Image embedder: `[x1/W, y1/H, x2/W, y2/H, w/W, h/H, (w/W)*(h/H)]`."""
    x1, y1, x2, y2 = np.asarray(boxes, np.float64).T
    w, h = (x2 - x1) / width, (y2 - y1) / height
    return np.stack([x1 / width, y1 / height, x2 / width, y2 / height, w, h, w * h], 1).astype(
        np.float32
    )


def butd_line(image_id: str, image: dict, *, num_boxes: int | None = None) -> str:
    n = len(image["boxes"]) if num_boxes is None else num_boxes
    columns = [image_id, image["w"], image["h"], n, b64(image["boxes"], "<f4")]
    return "\t".join(map(str, [*columns, b64(image["features"], "<f4")]))


def lxmert_line(image_id: str, image: dict, objects: np.ndarray, conf: np.ndarray) -> str:
    n = len(image["boxes"])
    attrs = np.arange(n) % 400
    columns = [
        image_id,
        image["h"],
        image["w"],
        b64(objects, "<i8"),
        b64(conf, "<f4"),
        b64(attrs, "<i8"),
        b64(np.full(n, 0.5), "<f4"),
        n,
        b64(image["boxes"], "<f4"),
        b64(image["features"], "<f4"),
    ]
    return "\t".join(map(str, columns))


def write_text(path, lines: list[str]) -> str:
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    return str(path)


def lxmert_labels(seed: int, n: int = 5):
    rng = np.random.default_rng(seed + 100)
    return rng.integers(0, 1600, n), rng.uniform(0.1, 0.99, n).astype(np.float32)


def assert_no_store(out) -> None:
    """Neither the store nor a temporary sibling is left behind."""
    parent, name = os.path.split(os.path.abspath(out))
    assert not os.path.exists(out)
    assert not [entry for entry in os.listdir(parent) if entry.startswith(f".{name}.tmp")]


def assert_located(error: DataError, file, record: str, field: str) -> None:
    assert error.file == str(file)
    assert error.record == record
    assert error.field == field
    assert str(file) in str(error) and record in str(error) and field in str(error)


# ---------------------------------------------------------------- round trips


def test_butd_round_trip(tmp_path):
    images = {f"img{i}": make_image(i, n=3 + i) for i in range(3)}
    first = write_text(tmp_path / "a.tsv", [butd_line(k, images[k]) for k in ("img0", "img1")])
    second = write_text(tmp_path / "b.tsv", [butd_line("img2", images["img2"])])
    out = tmp_path / "store"
    summary = convert_butd_tsv([first, second], out, feature_dim=D, progress=False)
    assert summary == Summary(str(out), images=3, regions=3 + 4 + 5)
    store = ImageStore(str(out))
    assert store.num_labels is None and list(store.ids) == ["img0", "img1", "img2"]
    for image_id, image in images.items():
        regions = store.get(image_id)
        np.testing.assert_array_equal(regions.features, np.float16(image["features"]))
        np.testing.assert_array_equal(
            regions.boxes, expected_boxes(image["boxes"], image["w"], image["h"])
        )
        np.testing.assert_array_equal(regions.conf, np.ones(len(image["boxes"])))
        assert regions.soft_labels is None


def test_butd_soft_labels_give_conf_and_order(tmp_path):
    image = make_image(7, n=6)
    tsv = write_text(tmp_path / "a.tsv", [butd_line("42", image)])
    (tmp_path / "soft").mkdir()
    np.save(tmp_path / "soft" / "42.npy", image["soft"])
    out = tmp_path / "store"
    convert_butd_tsv(tsv, out, soft_label_dir=tmp_path / "soft", feature_dim=D, progress=False)
    conf = image["soft"][:, 1:].max(1)
    order = np.argsort(-conf, kind="stable")
    regions = ImageStore(str(out)).get("42")
    np.testing.assert_array_equal(regions.conf, conf[order])
    np.testing.assert_array_equal(regions.soft_labels, np.float16(image["soft"])[order])
    np.testing.assert_array_equal(regions.features, np.float16(image["features"])[order])
    np.testing.assert_array_equal(
        regions.boxes, expected_boxes(image["boxes"], image["w"], image["h"])[order]
    )


def test_butd_default_feature_dim_is_2048(tmp_path):
    image = make_image(1, n=2, dim=2048)
    out = tmp_path / "store"
    convert_butd_tsv(write_text(tmp_path / "a.tsv", [butd_line("x", image)]), out, progress=False)
    store = ImageStore(str(out))
    assert store.feature_dim == 2048
    np.testing.assert_array_equal(store.get("x").features, np.float16(image["features"]))


def test_lxmert_round_trip_height_before_width(tmp_path):
    # W = 200 > H = 100: boxes reach x = 190, outside the image were w and h swapped.
    images = {f"COCO_{i}": make_image(10 + i, n=4) for i in range(2)}
    images["COCO_0"]["boxes"][0] = [10, 5, 190, 95]
    labels = {k: lxmert_labels(i, n=4) for i, k in enumerate(images)}
    lines = [lxmert_line(k, images[k], *labels[k]) for k in images]
    out = tmp_path / "store"
    summary = convert_lxmert_tsv(
        write_text(tmp_path / "a.tsv", lines), out, feature_dim=D, progress=False
    )
    assert (summary.images, summary.regions, summary.skipped) == (2, 8, [])
    store = ImageStore(str(out))
    assert store.num_labels is None
    for image_id, image in images.items():
        conf = labels[image_id][1]
        order = np.argsort(-conf, kind="stable")
        regions = store.get(image_id)
        np.testing.assert_array_equal(regions.conf, conf[order])
        np.testing.assert_array_equal(regions.features, np.float16(image["features"])[order])
        np.testing.assert_array_equal(
            regions.boxes, expected_boxes(image["boxes"], 200, 100)[order]
        )


def test_lxmert_one_hot_labels(tmp_path):
    image = make_image(3, n=4)
    objects, conf = lxmert_labels(3, n=4)
    objects[0], objects[1] = 0, 1599  # the ends of the range
    out = tmp_path / "store"
    tsv = write_text(tmp_path / "a.tsv", [lxmert_line("a", image, objects, conf)])
    convert_lxmert_tsv(tsv, out, one_hot_labels=True, feature_dim=D, progress=False)
    regions = ImageStore(str(out)).get("a")
    order = np.argsort(-conf, kind="stable")
    want = np.zeros((4, LABELS), np.float16)
    want[np.arange(4), objects + 1] = 1
    np.testing.assert_array_equal(regions.soft_labels, want[order])


def write_npz(directory, image_id: str, **arrays) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{image_id}.npz")
    np.savez(path, **arrays)
    return path


def uniter_record(image: dict) -> dict:
    """The original UNITER image-db record: fp16 features, norm_bb, conf, soft labels."""
    x1, y1, x2, y2 = image["boxes"].T.astype(np.float64)
    w, h = image["w"], image["h"]
    norm_bb = np.stack([x1 / w, y1 / h, x2 / w, y2 / h, (x2 - x1) / w, (y2 - y1) / h], 1)
    return {
        "features": image["features"].astype(np.float16),
        "norm_bb": norm_bb.astype(np.float16),
        "conf": image["soft"][:, 1:].max(1).astype(np.float16),
        "soft_labels": image["soft"].astype(np.float16),
    }


def test_npz_dir_uniter_records(tmp_path):
    image = make_image(5, n=6)
    record = uniter_record(image)
    write_npz(tmp_path / "in", "123", **record)
    out = tmp_path / "store"
    summary = convert_npz_dir(tmp_path / "in", out, feature_dim=D, progress=False)
    assert (summary.images, summary.regions) == (1, 6)
    regions = ImageStore(str(out)).get("123")
    conf = record["conf"].astype(np.float32)
    order = np.argsort(-conf, kind="stable")
    norm_bb = record["norm_bb"].astype(np.float32)
    want = np.concatenate([norm_bb, norm_bb[:, 4:5] * norm_bb[:, 5:6]], 1)
    np.testing.assert_array_equal(regions.boxes, want[order])
    np.testing.assert_array_equal(regions.features, record["features"][order])
    np.testing.assert_array_equal(regions.conf, conf[order])
    np.testing.assert_array_equal(regions.soft_labels, record["soft_labels"][order])


def test_npz_dir_pixel_boxes(tmp_path):
    images = {f"im{i}": make_image(20 + i, n=3) for i in range(2)}
    for image_id, image in images.items():
        write_npz(
            tmp_path / "in",
            image_id,
            features=image["features"],
            boxes=image["boxes"],
            image_w=np.array(image["w"]),
            image_h=np.array(image["h"]),
            unrelated=np.zeros(3),
        )
    out = tmp_path / "store"
    convert_npz_dir(tmp_path / "in", out, feature_dim=D, progress=False)
    store = ImageStore(str(out))
    assert store.num_labels is None
    for image_id, image in images.items():
        regions = store.get(image_id)
        np.testing.assert_array_equal(regions.features, np.float16(image["features"]))
        np.testing.assert_array_equal(
            regions.boxes, expected_boxes(image["boxes"], image["w"], image["h"])
        )
        np.testing.assert_array_equal(regions.conf, np.ones(3))


# ---------------------------------------------------------------- bad input: TSV


def _features(image: dict, value: float) -> dict:
    features = image["features"].copy()
    features[1, 3] = value
    return {**image, "features": features}


def _box(image: dict, box: list[float]) -> dict:
    boxes = image["boxes"].copy()
    boxes[1] = box
    return {**image, "boxes": boxes}


def _column(line: str, index: int, value: str) -> str:
    columns = line.split("\t")
    columns[index] = value
    return "\t".join(columns)


GOOD = make_image(0, n=3)
GOOD_LINE = butd_line("good", GOOD)
BUTD_BAD = {
    "columns": ("\t".join(GOOD_LINE.split("\t")[:5]), "columns", "5 tab-separated"),
    "width": (_column(GOOD_LINE, 1, "20x"), "image_w", "positive integer"),
    "float width": (_column(GOOD_LINE, 1, "200.0"), "image_w", "positive integer"),
    "height": (_column(GOOD_LINE, 2, "0"), "image_h", "positive integer"),
    "negative count": (_column(GOOD_LINE, 3, "-3"), "num_boxes", "positive integer"),
    "count": (butd_line("bad", GOOD, num_boxes=4), "boxes", "num_boxes 4"),
    "truncated": (GOOD_LINE[:-5], "features", "base64"),
    "truncated whole": (GOOD_LINE[:-8], "features", "truncated"),
    "corrupt": (_column(GOOD_LINE, 4, "AAAA$$$$"), "boxes", "base64"),
    "dimension": (butd_line("bad", make_image(0, n=3, dim=D // 2)), "features", "dimension 8"),
    "nan": (butd_line("bad", _features(GOOD, np.nan)), "features", "NaN"),
    "inf": (butd_line("bad", _features(GOOD, np.inf)), "features", "inf"),
    "overflow": (butd_line("bad", _features(GOOD, 1e6)), "features", "float16"),
    "outside": (butd_line("bad", _box(GOOD, [10, 10, 260, 50])), "boxes", "outside"),
    "zero area": (butd_line("bad", _box(GOOD, [10, 10, 10, 50])), "boxes", "zero area"),
    "nan box": (butd_line("bad", _box(GOOD, [10, np.nan, 20, 50])), "boxes", "non-finite"),
    "empty id": (_column(GOOD_LINE, 0, ""), "image_id", "bad image id"),
    "duplicate": (GOOD_LINE, "image_id", "duplicate image id 'good' (first at"),
}


@pytest.mark.parametrize("case", sorted(BUTD_BAD))
def test_butd_bad_record_names_file_line_and_field(tmp_path, case):
    line, field, words = BUTD_BAD[case]
    tsv = write_text(tmp_path / "a.tsv", [GOOD_LINE, line, butd_line("later", GOOD)])
    out = tmp_path / "store"
    with pytest.raises(DataError, match="line 2") as error:
        convert_butd_tsv(tsv, out, feature_dim=D, progress=False)
    assert_located(error.value, tsv, "line 2", field)
    assert words in error.value.message
    assert_no_store(out)


LX_OBJECTS, LX_CONF = lxmert_labels(0, n=3)
LX_LINE = lxmert_line("good", GOOD, LX_OBJECTS, LX_CONF)
LXMERT_BAD = {
    "columns": (LX_LINE + "\textra", "columns", "11 tab-separated"),
    "width": (_column(LX_LINE, 2, "wide"), "img_w", "positive integer"),
    "w and h swapped": (
        _column(
            _column(lxmert_line("b", _box(GOOD, [10, 5, 190, 95]), LX_OBJECTS, LX_CONF), 1, "200"),
            2,
            "100",
        ),
        "boxes",
        "outside",
    ),
    "count": (_column(LX_LINE, 7, "2"), "boxes", "num_boxes 2"),
    "objects count": (_column(LX_LINE, 3, b64(LX_OBJECTS[:2], "<i8")), "objects_id", "bytes"),
    "objects dtype": (_column(LX_LINE, 3, b64(LX_OBJECTS, "<i4")), "objects_id", "bytes"),
    "conf range": (_column(LX_LINE, 4, b64(LX_CONF + 1, "<f4")), "objects_conf", "[0, 1]"),
    "conf nan": (_column(LX_LINE, 4, b64(LX_CONF * np.nan, "<f4")), "objects_conf", "NaN"),
    "attrs truncated": (_column(LX_LINE, 5, b64(np.zeros(3), "<i8")[:-2]), "attrs_id", "base64"),
    "attrs conf": (_column(LX_LINE, 6, b64(np.zeros(4), "<f4")), "attrs_conf", "bytes"),
    "dimension": (
        lxmert_line("bad", make_image(0, n=3, dim=D + 1), LX_OBJECTS, LX_CONF),
        "features",
        "dimension 17",
    ),
    "nan": (lxmert_line("bad", _features(GOOD, np.nan), LX_OBJECTS, LX_CONF), "features", "NaN"),
    "duplicate": (LX_LINE, "image_id", "duplicate"),
}


@pytest.mark.parametrize("case", sorted(LXMERT_BAD))
def test_lxmert_bad_record_names_file_line_and_field(tmp_path, case):
    line, field, words = LXMERT_BAD[case]
    tsv = write_text(tmp_path / "a.tsv", [LX_LINE, line])
    out = tmp_path / "store"
    with pytest.raises(DataError, match="line 2") as error:
        convert_lxmert_tsv(tsv, out, feature_dim=D, progress=False)
    assert_located(error.value, tsv, "line 2", field)
    assert words in error.value.message
    assert_no_store(out)


def test_lxmert_one_hot_rejects_ids_out_of_range(tmp_path):
    objects = LX_OBJECTS.copy()
    objects[2] = 1600  # 1600 object classes: ids 0..1599
    tsv = write_text(tmp_path / "a.tsv", [LX_LINE, lxmert_line("b", GOOD, objects, LX_CONF)])
    with pytest.raises(DataError) as error:
        convert_lxmert_tsv(tsv, tmp_path / "s", one_hot_labels=True, feature_dim=D, progress=False)
    assert_located(error.value, tsv, "line 2", "objects_id")
    convert_lxmert_tsv(tsv, tmp_path / "s", feature_dim=D, progress=False)  # unused without


@pytest.mark.parametrize("convert", [convert_butd_tsv, convert_lxmert_tsv])
def test_tsv_empty_and_missing_files(tmp_path, convert):
    good = write_text(
        tmp_path / "good.tsv", [GOOD_LINE if convert is convert_butd_tsv else LX_LINE]
    )
    empty = write_text(tmp_path / "empty.tsv", ["", ""])  # blank lines only
    out = tmp_path / "store"
    with pytest.raises(DataError, match="empty") as error:
        convert([good, empty], out, feature_dim=D, skip_bad=True, progress=False)
    assert error.value.file == empty
    assert_no_store(out)
    missing = str(tmp_path / "missing.tsv")
    with pytest.raises(DataError, match="not found") as error:
        convert([good, missing], out, feature_dim=D, progress=False)
    assert error.value.file == missing
    with pytest.raises(DataError, match="no input"):
        convert([], out, feature_dim=D, progress=False)
    assert_no_store(out)


def test_butd_soft_label_files_checked(tmp_path):
    tsv = write_text(tmp_path / "a.tsv", [GOOD_LINE, butd_line("b", GOOD)])
    soft = tmp_path / "soft"
    soft.mkdir()
    np.save(soft / "good.npy", GOOD["soft"])
    out = tmp_path / "store"
    with pytest.raises(DataError, match="not found") as error:
        convert_butd_tsv(tsv, out, soft_label_dir=soft, feature_dim=D, progress=False)
    assert_located(error.value, soft / "b.npy", f"line 2 of {tsv}", "soft_labels")
    np.save(soft / "b.npy", GOOD["soft"][:2])  # one row short
    with pytest.raises(DataError, match=r"shape \[2, 1601\]") as error:
        convert_butd_tsv(tsv, out, soft_label_dir=soft, feature_dim=D, progress=False)
    assert_located(error.value, soft / "b.npy", f"line 2 of {tsv}", "soft_labels")
    with pytest.raises(DataError, match="soft-label folder not found"):
        convert_butd_tsv(tsv, out, soft_label_dir=tmp_path / "no", feature_dim=D, progress=False)
    assert_no_store(out)


# ---------------------------------------------------------------- bad input: npz


def _pixel_record(image: dict) -> dict:
    return {
        "features": image["features"],
        "boxes": image["boxes"],
        "image_w": np.array(image["w"]),
        "image_h": np.array(image["h"]),
    }


GOOD_NPZ = _pixel_record(GOOD)
NORM = uniter_record(GOOD)


def _norm(row: list[float]) -> dict:
    norm_bb = NORM["norm_bb"].copy()
    norm_bb[1] = row
    return {**NORM, "norm_bb": norm_bb}


NPZ_BAD = {
    "no features": ({k: v for k, v in GOOD_NPZ.items() if k != "features"}, "features", "missing"),
    "no boxes": ({"features": GOOD["features"]}, "boxes", "missing"),
    "dimension": ({**GOOD_NPZ, "features": np.zeros((3, 8), np.float32)}, "features", "dim"),
    "string features": ({**GOOD_NPZ, "features": np.full((3, D), "a")}, "features", "dtype"),
    "nan": ({**GOOD_NPZ, "features": _features(GOOD, np.nan)["features"]}, "features", "NaN"),
    "count": ({**GOOD_NPZ, "boxes": GOOD["boxes"][:2]}, "boxes", "shape [2, 4]"),
    "conf count": ({**NORM, "conf": NORM["conf"][:2]}, "conf", "shape [2]"),
    "conf range": ({**NORM, "conf": NORM["conf"] + 2}, "conf", "[0, 1]"),
    "float width": ({**GOOD_NPZ, "image_w": np.array(200.5)}, "image_w", "positive integer"),
    "zero height": ({**GOOD_NPZ, "image_h": np.array(0)}, "image_h", "positive integer"),
    "outside": (_pixel_record(_box(GOOD, [10, 10, 260, 50])), "boxes", "outside"),
    "zero area": (_pixel_record(_box(GOOD, [10, 50, 20, 50])), "boxes", "zero area"),
    "norm outside": (_norm([0.1, 0.1, 1.2, 0.5, 1.1, 0.4]), "norm_bb", "outside"),
    "norm zero": (_norm([0.3, 0.1, 0.3, 0.5, 0.0, 0.4]), "norm_bb", "zero area"),
    "soft sum": ({**NORM, "soft_labels": NORM["soft_labels"] * 0.5}, "soft_labels", "sum"),
    "soft missing": ({k: v for k, v in NORM.items() if k != "soft_labels"}, "soft_labels", "miss"),
}


@pytest.mark.parametrize("case", sorted(NPZ_BAD))
def test_npz_bad_record_names_file_and_field(tmp_path, case):
    arrays, field, words = NPZ_BAD[case]
    first = NORM if "soft" in case or "conf" in case or "norm" in case else GOOD_NPZ
    write_npz(tmp_path / "in", "a", **first)
    bad = write_npz(tmp_path / "in", "b", **arrays)
    out = tmp_path / "store"
    with pytest.raises(DataError) as error:
        convert_npz_dir(tmp_path / "in", out, feature_dim=D, progress=False)
    assert_located(error.value, bad, "b", field)
    assert words in error.value.message
    assert_no_store(out)


def test_npz_soft_labels_must_agree_with_the_first_file(tmp_path):
    write_npz(tmp_path / "in", "a", **GOOD_NPZ)
    bad = write_npz(tmp_path / "in", "b", **NORM)
    out = tmp_path / "store"
    with pytest.raises(DataError, match="first file has none") as error:
        convert_npz_dir(tmp_path / "in", out, feature_dim=D, progress=False)
    assert_located(error.value, bad, "b", "soft_labels")
    summary = convert_npz_dir(
        tmp_path / "in", out, soft_labels=False, feature_dim=D, progress=False
    )
    assert summary.images == 2 and ImageStore(str(out)).num_labels is None


class _Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_npz_files_are_never_unpickled(tmp_path):
    trap = str(tmp_path / "unpickled")
    write_npz(tmp_path / "in", "a", **GOOD_NPZ)
    objects = np.empty(1, object)
    objects[0] = _Trap(trap)
    write_npz(tmp_path / "in", "pickled", **{**GOOD_NPZ, "features": objects})
    with open(tmp_path / "in" / "raw.npz", "wb") as f:
        pickle.dump(_Trap(trap), f)
    (tmp_path / "in" / "empty.npz").write_bytes(b"")
    (tmp_path / "in" / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    out = tmp_path / "store"
    summary = convert_npz_dir(tmp_path / "in", out, feature_dim=D, skip_bad=True, progress=False)
    assert summary.images == 1
    assert sorted(skipped.record for skipped in summary.skipped) == [
        "empty",
        "junk",
        "pickled",
        "raw",
    ]
    assert not os.path.exists(trap)
    with pytest.raises(DataError, match=r"not a readable \.npz") as error:
        convert_npz_dir(tmp_path / "in", tmp_path / "s2", feature_dim=D, progress=False)
    assert error.value.record == "empty"  # the first in name order
    assert not os.path.exists(trap)


def test_butd_soft_label_npy_never_unpickled(tmp_path):
    trap = str(tmp_path / "unpickled")
    tsv = write_text(tmp_path / "a.tsv", [GOOD_LINE])
    (tmp_path / "soft").mkdir()
    objects = np.empty(1, object)
    objects[0] = _Trap(trap)
    np.save(tmp_path / "soft" / "good.npy", objects, allow_pickle=True)
    with pytest.raises(DataError, match=r"not a readable \.npy"):
        convert_butd_tsv(
            tsv, tmp_path / "s", soft_label_dir=tmp_path / "soft", feature_dim=D, progress=False
        )
    assert not os.path.exists(trap)


def test_npz_dir_missing_or_empty(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        convert_npz_dir(tmp_path / "nothing", tmp_path / "s", feature_dim=D, progress=False)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no arrays here")
    with pytest.raises(DataError, match=r"no \.npz files"):
        convert_npz_dir(tmp_path / "in", tmp_path / "s", feature_dim=D, progress=False)
    assert_no_store(tmp_path / "s")


# ---------------------------------------------------------------- skip_bad, overwrite


def test_skip_bad_lists_skipped_records(tmp_path):
    lines = [
        GOOD_LINE,
        BUTD_BAD["nan"][0],
        butd_line("second", GOOD),
        GOOD_LINE,  # duplicate of line 1
        BUTD_BAD["columns"][0],
    ]
    tsv = write_text(tmp_path / "a.tsv", lines)
    out = tmp_path / "store"
    summary = convert_butd_tsv(tsv, out, feature_dim=D, skip_bad=True, progress=False)
    assert (summary.images, summary.regions) == (2, 6)
    got = [(s.file, s.record, s.field) for s in summary.skipped]
    assert got == [
        (tsv, "line 2", "features"),
        (tsv, "line 4", "image_id"),
        (tsv, "line 5", "columns"),
    ]
    assert "NaN" in summary.skipped[0].reason
    assert f"first at {tsv} line 1" in summary.skipped[1].reason
    report = summary.report()
    assert "wrote 2 images, 6 regions" in report and "skipped 3 bad records" in report
    assert f"{tsv} line 2 [features]: NaN" in report
    assert "... and 1 more" in summary.report(max_listed=2)
    assert list(ImageStore(str(out)).ids) == ["good", "second"]


def test_skip_bad_with_no_good_record_is_an_error(tmp_path):
    tsv = write_text(tmp_path / "a.tsv", [BUTD_BAD["nan"][0], BUTD_BAD["outside"][0]])
    out = tmp_path / "store"
    with pytest.raises(DataError, match="no good images: all 2 records are bad"):
        convert_butd_tsv(tsv, out, feature_dim=D, skip_bad=True, progress=False)
    assert_no_store(out)


def test_existing_store_needs_overwrite(tmp_path):
    tsv = write_text(tmp_path / "a.tsv", [GOOD_LINE])
    out = tmp_path / "store"
    convert_butd_tsv(tsv, out, feature_dim=D, progress=False)
    with pytest.raises(DataError, match="already exists"):
        convert_butd_tsv(tsv, out, feature_dim=D, progress=False)
    tsv = write_text(tmp_path / "b.tsv", [butd_line("new", GOOD)])
    convert_butd_tsv(tsv, out, feature_dim=D, overwrite=True, progress=False)
    assert list(ImageStore(str(out)).ids) == ["new"]
    # A failed overwrite keeps the old store.
    bad = write_text(tmp_path / "c.tsv", [BUTD_BAD["nan"][0]])
    with pytest.raises(DataError):
        convert_butd_tsv(bad, out, feature_dim=D, overwrite=True, progress=False)
    assert list(ImageStore(str(out)).ids) == ["new"]


# ---------------------------------------------------------------- command line


def test_cli_end_to_end(tmp_path, capsys):
    butd = write_text(tmp_path / "butd.tsv", [GOOD_LINE, BUTD_BAD["nan"][0]])
    lxmert = write_text(tmp_path / "lxmert.tsv", [LX_LINE])
    write_npz(tmp_path / "npz", "a", **NORM)
    common = ["--feature-dim", str(D), "--no-progress"]

    assert main(["butd-tsv", butd, "--out", str(tmp_path / "s1"), *common]) == 2
    assert "line 2, field features" in capsys.readouterr().err
    assert_no_store(tmp_path / "s1")
    assert main(["butd-tsv", butd, "--out", str(tmp_path / "s1"), "--skip-bad", *common]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 images, 3 regions" in printed and "line 2 [features]" in printed

    args = ["lxmert-tsv", lxmert, "--out", str(tmp_path / "s2"), "--one-hot-labels", *common]
    assert main(args) == 0
    assert ImageStore(str(tmp_path / "s2")).num_labels == LABELS

    args = ["npz-dir", str(tmp_path / "npz"), "--out", str(tmp_path / "s3"), *common]
    assert main([*args, "--no-soft-labels"]) == 0
    assert ImageStore(str(tmp_path / "s3")).num_labels is None
    assert main(args) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert ImageStore(str(tmp_path / "s3")).num_labels == LABELS

    with pytest.raises(SystemExit):
        main(["no-such-format"])


# ---------------------------------------------------------------- fuzzing

ARRAY_COLUMNS = {"boxes": 4, "features": 5}


def _mutated_lines(draw, line: str) -> list[bytes]:
    """Applies 1-3 random corruptions to the columns of a good line."""
    columns = [c.encode() for c in line.split("\t")]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(columns) - 1))
        kind = draw(st.sampled_from(["bytes", "text", "truncate", "drop", "repeat", "int"]))
        if kind == "bytes":
            columns[i] = draw(st.binary(max_size=24))
        elif kind == "text":
            columns[i] = draw(st.text(max_size=12)).encode("utf-8", "surrogatepass")
        elif kind == "truncate":
            columns[i] = columns[i][: draw(st.integers(0, len(columns[i])))]
        elif kind == "drop" and len(columns) > 1:
            del columns[i]
        elif kind == "repeat":
            columns.insert(i, columns[i])
        elif kind == "int":
            columns[i] = str(draw(st.integers(-3, 10**20))).encode()
    return [b"\t".join(columns)]


def _fuzz_image(draw) -> dict:
    image = make_image(draw(st.integers(0, 3)), n=draw(st.integers(1, 3)))
    if draw(st.booleans()):
        key = draw(st.sampled_from(["features", "boxes"]))
        values = image[key].copy()
        values.flat[draw(st.integers(0, values.size - 1))] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf, -5.0, 1e9, 0.0])
        )
        image[key] = values
    return image


def _run_fuzzed(convert, lines: list[bytes], skip_bad: bool, **kwargs) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tsv = os.path.join(tmp, "in.tsv")
        with open(tsv, "wb") as f:
            f.write(b"\n".join(lines))
        out = os.path.join(tmp, "store")
        try:
            summary = convert(tsv, out, feature_dim=D, skip_bad=skip_bad, progress=False, **kwargs)
        except DataError:
            assert_no_store(out)
            return
        assert len(ImageStore(out)) == summary.images > 0


@st.composite
def butd_fuzz_lines(draw) -> list[bytes]:
    return _mutated_lines(draw, butd_line("x", _fuzz_image(draw)))


@st.composite
def lxmert_fuzz_lines(draw) -> list[bytes]:
    image = _fuzz_image(draw)
    n = len(image["boxes"])
    objects = np.array(draw(st.lists(st.integers(-2, 1601), min_size=n, max_size=n)))
    conf = np.array(draw(st.lists(st.floats(-1, 2, width=32), min_size=n, max_size=n)))
    return _mutated_lines(draw, lxmert_line("x", image, objects, conf))


@FUZZ
@given(lines=butd_fuzz_lines(), skip_bad=st.booleans())
def test_fuzz_butd_raises_only_data_error(lines, skip_bad):
    _run_fuzzed(convert_butd_tsv, [GOOD_LINE.encode(), *lines], skip_bad)


@FUZZ
@given(lines=lxmert_fuzz_lines(), skip_bad=st.booleans(), one_hot=st.booleans())
def test_fuzz_lxmert_raises_only_data_error(lines, skip_bad, one_hot):
    _run_fuzzed(convert_lxmert_tsv, [LX_LINE.encode(), *lines], skip_bad, one_hot_labels=one_hot)


_ANY_ARRAY = hnp.arrays(
    dtype=st.sampled_from(["<f2", "<f4", "<f8", "<i8", "u1", "?", "<U2", "<c8"]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
    elements=None,
)


@FUZZ
@given(data=st.data(), skip_bad=st.booleans())
def test_fuzz_npz_raises_only_data_error(data, skip_bad):
    arrays = dict(data.draw(st.sampled_from([GOOD_NPZ, NORM])))
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from([*sorted(arrays), "soft_labels", "conf", "norm_bb"]))
        kind = data.draw(st.sampled_from(["drop", "replace", "nan", "slice"]))
        if kind == "drop":
            arrays.pop(key, None)
        elif kind == "replace":
            arrays[key] = data.draw(_ANY_ARRAY)
        elif (
            key in arrays
            and arrays[key].ndim
            and arrays[key].size
            and arrays[key].dtype.kind == "f"
        ):
            value = arrays[key].copy()
            if kind == "nan":
                value.flat[data.draw(st.integers(0, value.size - 1))] = np.nan
                arrays[key] = value
            else:
                arrays[key] = value[: data.draw(st.integers(0, len(value)))]
    with tempfile.TemporaryDirectory() as tmp:
        write_npz(tmp, "good", **NORM)
        path = write_npz(tmp, "fuzzed", **arrays)
        if data.draw(st.booleans()):  # corrupt the bytes of the archive itself
            with open(path, "rb") as f:
                raw = bytearray(f.read())
            for _ in range(data.draw(st.integers(1, 4))):
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
            raw = raw[: data.draw(st.integers(0, len(raw)))]
            with open(path, "wb") as f:
                f.write(raw)
        out = os.path.join(tmp, "store")
        try:
            summary = convert_npz_dir(tmp, out, feature_dim=D, skip_bad=skip_bad, progress=False)
        except DataError:
            assert_no_store(out)
            return
        assert len(ImageStore(out)) == summary.images > 0


@pytest.mark.parametrize("key", ["soft_labels", "cls_prob", "anything"])
def test_butd_soft_labels_from_npz_archives(tmp_path, key):
    """Extraction scripts write `.npz`: the distribution is read under either
    key, or as the archive's only array, exactly as from `.npy`."""
    image = make_image(7, n=6)
    tsv = write_text(tmp_path / "a.tsv", [butd_line("42", image)])
    (tmp_path / "soft").mkdir()
    extra = {} if key == "anything" else {"boxes": image["boxes"]}
    np.savez(tmp_path / "soft" / "42.npz", **{key: image["soft"]}, **extra)
    out = tmp_path / "store"
    convert_butd_tsv(tsv, out, soft_label_dir=tmp_path / "soft", feature_dim=D, progress=False)
    order = np.argsort(-image["soft"][:, 1:].max(1), kind="stable")
    regions = ImageStore(str(out)).get("42")
    np.testing.assert_array_equal(regions.soft_labels, np.float16(image["soft"])[order])


def test_butd_npz_without_a_distribution_names_its_keys(tmp_path):
    image = make_image(7, n=6)
    tsv = write_text(tmp_path / "a.tsv", [butd_line("42", image)])
    (tmp_path / "soft").mkdir()
    np.savez(tmp_path / "soft" / "42.npz", x=image["features"], bbox=image["boxes"])
    out = tmp_path / "store"
    with pytest.raises(DataError, match=r"holds \['bbox', 'x'\]") as error:
        convert_butd_tsv(tsv, out, soft_label_dir=tmp_path / "soft", feature_dim=D, progress=False)
    assert_located(error.value, tmp_path / "soft" / "42.npz", f"line 1 of {tsv}", "soft_labels")
    assert_no_store(out)
