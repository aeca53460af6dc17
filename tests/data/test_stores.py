"""Image and text stores: round trips, checksums, atomic writes, bad input."""

import json
import os

import numpy as np
import pytest

from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore, ImageStoreWriter
from uniter_jax.data.regions import box_features, check_pixel_boxes, make_regions, num_kept
from uniter_jax.data.text_store import TextStore, TextStoreWriter

VOCAB = {"size": 50, "pad_id": 0, "cls_id": 1, "sep_id": 2, "mask_id": 3}


def random_image(rng, image_id, n, dim=8, labels=5):
    return dict(
        image_id=image_id,
        features=rng.standard_normal((n, dim)).astype(np.float32),
        boxes7=rng.uniform(0, 1, (n, 7)),
        conf=rng.uniform(0, 1, n),
        soft_labels=rng.dirichlet(np.ones(labels), n),
    )


def test_image_store_round_trip_sorted_by_confidence(tmp_path):
    rng = np.random.default_rng(0)
    images = [random_image(rng, f"img{i}", 3 + i) for i in range(4)]
    with ImageStoreWriter(str(tmp_path / "s"), feature_dim=8, num_labels=5) as writer:
        for image in images:
            writer.add(make_regions(**image, feature_dim=8, num_labels=5))
    store = ImageStore(str(tmp_path / "s"))
    assert len(store) == 4 and store.manifest["num_regions"] == 3 + 4 + 5 + 6
    for image in images:
        got = store.get(image["image_id"])
        order = np.argsort(-image["conf"], kind="stable")
        np.testing.assert_array_equal(got.features, image["features"].astype(np.float16)[order])
        np.testing.assert_array_equal(got.boxes, image["boxes7"].astype(np.float32)[order])
        np.testing.assert_array_equal(got.conf, image["conf"].astype(np.float32)[order])
        np.testing.assert_array_equal(
            got.soft_labels, image["soft_labels"].astype(np.float16)[order]
        )


def test_corruption_and_tampering_are_detected(tmp_path):
    rng = np.random.default_rng(1)
    with ImageStoreWriter(str(tmp_path / "s"), feature_dim=8, num_labels=5) as writer:
        writer.add(make_regions(**random_image(rng, "a", 4), feature_dim=8, num_labels=5))
    store = ImageStore(str(tmp_path / "s"))
    path = store.path(0)
    with open(path, "rb") as f:
        blob = bytearray(f.read())
    blob[5] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(blob))
    with pytest.raises(DataError, match="checksum mismatch"):
        store.get("a")
    with pytest.raises(DataError, match="image id not in the store"):
        store.get("b")
    index = tmp_path / "s" / "index.npz"
    index.write_bytes(index.read_bytes() + b"x")
    with pytest.raises(DataError, match="checksum does not match"):
        ImageStore(str(tmp_path / "s"))


def test_failed_write_leaves_nothing_and_force_guards_other_folders(tmp_path):
    rng = np.random.default_rng(2)
    out = str(tmp_path / "s")
    duplicate = pytest.raises(DataError, match="duplicate image id")
    with duplicate, ImageStoreWriter(out, feature_dim=8, num_labels=5) as writer:
        writer.add(make_regions(**random_image(rng, "a", 2), feature_dim=8, num_labels=5))
        writer.add(make_regions(**random_image(rng, "a", 2), feature_dim=8, num_labels=5))
    assert os.listdir(tmp_path) == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("keep")
    refused = pytest.raises(DataError, match="refusing to replace")
    with refused, ImageStoreWriter(str(tmp_path / "notes"), feature_dim=8, overwrite=True):
        pass
    assert (tmp_path / "notes" / "keep.txt").exists()


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(features=np.full((3, 8), np.nan)), "features"),
        (dict(features=np.ones((3, 7))), "features"),
        (dict(features=np.full((3, 8), 1e6)), "features"),
        (dict(boxes7=np.ones((2, 7))), "boxes"),
        (dict(conf=np.ones(4)), "conf"),
        (dict(soft_labels=np.ones((3, 5))), "soft_labels"),
        (dict(features=np.ones((0, 8)), boxes7=np.ones((0, 7)), conf=np.ones(0)), "features"),
    ],
)
def test_bad_region_arrays_name_the_field(change, field):
    image = {**random_image(np.random.default_rng(3), "x", 3), **change}
    with pytest.raises(DataError, match=f"field {field}"):
        make_regions(**image, feature_dim=8, num_labels=5)


def test_box_features_and_checks():
    xyxy = np.array([[10.0, 20.0, 110.0, 70.0], [0.0, 0.0, 640.0, 480.0]])
    got = box_features(xyxy, 640, 480)
    w, h = 100 / 640, 50 / 480
    np.testing.assert_allclose(got[0], [10 / 640, 20 / 480, 110 / 640, 70 / 480, w, h, w * h])
    assert got.dtype == np.float32
    check_pixel_boxes(xyxy, 640, 480)
    with pytest.raises(DataError, match="outside"):
        check_pixel_boxes(np.array([[0.0, 0.0, 700.0, 10.0]]), 640, 480)
    with pytest.raises(DataError, match="zero area"):
        check_pixel_boxes(np.array([[5.0, 5.0, 5.0, 10.0]]), 640, 480)
    with pytest.raises(DataError, match="not positive"):
        check_pixel_boxes(xyxy, 0, 480)


@pytest.mark.parametrize(
    "conf, min_bb, max_bb, want",
    [
        ([0.9, 0.5, 0.3, 0.1], 2, 100, 3),  # three above 0.2
        ([0.1] * 20, 10, 100, 10),  # too few confident ones: at least min_bb
        ([0.9] * 200, 10, 100, 100),  # at most max_bb
        ([0.1] * 5, 10, 100, 5),  # never more than stored
    ],
)
def test_region_count_rule(conf, min_bb, max_bb, want):
    assert num_kept(np.array(conf), 0.2, min_bb, max_bb) == want


def test_text_store_round_trip_with_ragged_fields_and_truncation(tmp_path):
    out = str(tmp_path / "t")
    with TextStoreWriter(
        out, task="vqa", vocab=VOCAB, max_txt_len=4, ragged=("answers",)
    ) as writer:
        assert not writer.add("q1", "img1", [5, 6, 7], answers=[1, 2], label=0)
        assert writer.add("q2", "img2", [5, 6, 7, 8, 9, 10], answers=[3], label=1)
    store = TextStore(out)
    assert len(store) == 2 and store.manifest["truncated"] == 1
    np.testing.assert_array_equal(store.input_ids(1), [5, 6, 7, 8])
    np.testing.assert_array_equal(store.field("answers", 0), [1, 2])
    np.testing.assert_array_equal(store.field("answers", 1), [3])
    assert store.field("label", 1) == 1 and list(store.image_ids) == ["img1", "img2"]
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["num_images"] == 2


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("a", "i", [])], "empty text"),
        ([("a", "i", [5]), ("a", "i", [6])], "duplicate text id"),
        ([("a", "i", [60])], r"outside \[0, 50\)"),
    ],
)
def test_bad_text_examples(tmp_path, rows, message):
    with (
        pytest.raises(DataError, match=message),
        TextStoreWriter(
            str(tmp_path / "t"), task="captions", vocab=VOCAB, max_txt_len=60
        ) as writer,
    ):
        for text_id, image_id, ids in rows:
            writer.add(text_id, image_id, ids)
    assert not (tmp_path / "t").exists()


def test_inconsistent_fields_are_rejected(tmp_path):
    writer = TextStoreWriter(str(tmp_path / "t"), task="x", vocab=VOCAB, max_txt_len=9)
    with pytest.raises(DataError, match="differ from the store"), writer:
        writer.add("a", "i", [5], label=1)
        writer.add("b", "i", [5], target=1)


def test_store_region_counts_follow_the_rule_per_image(tmp_path):
    rng = np.random.default_rng(5)
    images = [random_image(rng, f"i{k}", int(rng.integers(1, 30))) for k in range(12)]
    with ImageStoreWriter(str(tmp_path / "s"), feature_dim=8, num_labels=5) as writer:
        for image in images:
            writer.add(make_regions(**image, feature_dim=8, num_labels=5))
    store = ImageStore(str(tmp_path / "s"))
    want = [num_kept(image["conf"].astype(np.float32), 0.3, 4, 9) for image in images]
    np.testing.assert_array_equal(store.num_kept(0.3, 4, 9), want)


def test_missing_files_and_bad_targets_are_data_errors(tmp_path):
    rng = np.random.default_rng(6)
    out = str(tmp_path / "s")
    with ImageStoreWriter(out, feature_dim=8, num_labels=5) as writer:
        writer.add(make_regions(**random_image(rng, "a", 3), feature_dim=8, num_labels=5))
    store = ImageStore(out)
    os.remove(store.path(0))
    with pytest.raises(DataError, match="cannot read"):
        store.get("a")
    with pytest.raises(DataError, match="cannot read"):
        ImageStore(str(tmp_path / "nowhere"))
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(DataError, match="not a folder"),
        ImageStoreWriter(str(tmp_path / "file"), feature_dim=8, overwrite=True),
    ):
        pass


def test_ragged_integer_fields_stay_integers_with_empty_rows(tmp_path):
    out = str(tmp_path / "t")
    with TextStoreWriter(out, task="vqa", vocab=VOCAB, max_txt_len=9, ragged=("answers",)) as w:
        w.add("q1", "i", [5], answers=np.zeros(0, np.int64))
        w.add("q2", "i", [5], answers=[])
        w.add("q3", "i", [5], answers=np.array([3, 4]))
    store = TextStore(out)
    assert store.arrays["answers"].dtype == np.int64
    np.testing.assert_array_equal(store.field("answers", 2), [3, 4])
