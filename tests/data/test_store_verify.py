"""`convert verify` (every checksum of a store or sharded store) and `convert shard`
(a store split into a sharded store), locally and on a non-local filesystem."""

import itertools
import json
import os
import shutil
import uuid

import numpy as np
import pytest
import tensorflow as tf

from uniter_jax.data import region_labels, synthetic
from uniter_jax.data.convert.__main__ import main
from uniter_jax.data.files import read_bytes
from uniter_jax.data.image_store import ImageStore, blob_path
from uniter_jax.data.pipeline import Bucket, Pipeline, PipelineConfig
from uniter_jax.data.store_sets import (
    SHARDS,
    open_images,
    open_texts,
    shard_name,
    write_shard_index,
)
from uniter_jax.data.store_split import shard_bounds, split_store
from uniter_jax.data.store_verify import verify_store
from uniter_jax.data.text_store import DATA, TextStore

WORLD = synthetic.WorldConfig(num_images=12, feature_dim=8, num_labels=61, seed=5)
NUM_SHARDS = 3
CONFIG = PipelineConfig(
    buckets=(Bucket(14, 12, 8),),
    min_bb=3,
    max_bb=12,
    conf_th=0.5,
    itm_neg_prob=0.5,
    soft_labels=True,
    seed=2,
)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Plain stores of the synthetic world (VQA texts have ragged fields) and
    each split into NUM_SHARDS shards."""
    root = tmp_path_factory.mktemp("stores")
    paths = synthetic.write_world(str(root / "world"), WORLD)
    out = {"texts": paths["vqa_train"], "captions": paths["captions_train"]}
    out["images"] = paths["images"]
    for name in ("texts", "captions", "images"):
        out[f"sharded_{name}"] = str(root / f"sharded_{name}")
        split_store(out[name], out[f"sharded_{name}"], num_shards=NUM_SHARDS, progress=False)
    return out


def copy(path: str, tmp_path) -> str:
    target = str(tmp_path / os.path.basename(path))
    shutil.copytree(path, target)
    return target


def verify(path: str, capsys) -> tuple[int, str, str]:
    """The CLI's exit status, stdout and stderr."""
    status = main(["verify", path, "--no-progress"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def ok_rows(out: str) -> int:
    """The rows of verify's table whose status is OK."""
    return sum(line.endswith("  OK") for line in out.splitlines())


# -- verify -----------------------------------------------------------------------


def test_verify_passes_on_good_stores(stores, capsys):
    names = ("texts", "images", "sharded_texts", "sharded_images")
    reports = {name: verify_store(stores[name]) for name in names}
    assert all(r.ok and r.bytes > 0 for rs in reports.values() for r in rs)
    assert [len(reports[name]) for name in names] == [1, 1, NUM_SHARDS, NUM_SHARDS]
    images = ImageStore(stores["images"])
    assert reports["images"][0].kind == "image"
    assert reports["images"][0].records == len(images)
    assert reports["images"][0].regions == int(images.num_boxes.sum())
    assert sum(r.regions for r in reports["sharded_images"]) == int(images.num_boxes.sum())
    assert reports["sharded_texts"][0].kind == "text"
    assert sum(r.records for r in reports["sharded_texts"]) == len(TextStore(stores["texts"]))
    assert reports["sharded_texts"][1].path == os.path.join(
        stores["sharded_texts"], shard_name(1, NUM_SHARDS)
    )
    assert main(["verify", *(stores[name] for name in names), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert ok_rows(out) == 2 + 2 * NUM_SHARDS and "BAD" not in out
    assert f"all {2 + 2 * NUM_SHARDS} stores OK" in out


def _flip_byte(path: str) -> None:
    data = bytearray(read_bytes(path))
    data[len(data) // 2] ^= 0x01
    with open(path, "wb") as f:
        f.write(bytes(data))


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 2)


@pytest.mark.parametrize(
    "damage, field, message",
    [
        (_flip_byte, "crc32", "crc32 does not match the index"),
        (_truncate, "size", "bytes,"),
        (os.remove, None, "cannot read"),
    ],
    ids=["flipped_byte", "truncated", "missing"],
)
def test_a_damaged_blob_is_reported_by_file_and_record(
    stores, tmp_path, capsys, damage, field, message
):
    path = copy(stores["images"], tmp_path)
    images = ImageStore(path)
    blob = blob_path(path, 3)
    damage(blob)
    (report,) = verify_store(path)
    assert not report.ok and report.num_problems == 1
    assert (report.problem.file, report.problem.record, report.problem.field) == (
        blob,
        str(images.ids[3]),
        field,
    )
    assert message in report.problem.message
    status, out, err = verify(path, capsys)
    assert status == 2 and "1 of 1 stores are BAD" in err
    assert f"BAD: file {blob}, record {images.ids[3]}" in out


def test_a_changed_examples_npz_is_reported(stores, tmp_path, capsys):
    path = copy(stores["texts"], tmp_path)
    _flip_byte(os.path.join(path, DATA))
    (report,) = verify_store(path)
    assert (report.problem.file, report.problem.field) == (os.path.join(path, DATA), "data_sha256")
    status, out, _ = verify(path, capsys)
    assert status == 2 and "field data_sha256" in out


def test_every_bad_shard_is_reported_and_the_good_ones_checked(stores, tmp_path, capsys):
    """Damage in the first and last shard: both are found, the middle one is OK."""
    path = copy(stores["sharded_images"], tmp_path)
    first, last = (os.path.join(path, shard_name(i, NUM_SHARDS)) for i in (0, NUM_SHARDS - 1))
    _flip_byte(blob_path(first, 0))
    os.remove(blob_path(last, 1))
    reports = verify_store(path)
    assert [r.ok for r in reports] == [False, True, False]
    assert reports[0].problem.file == blob_path(first, 0)
    assert reports[2].problem.file == blob_path(last, 1)
    status, out, err = verify(path, capsys)
    assert status == 2 and "2 of 3 stores are BAD" in err
    assert out.count("BAD") == 2 and ok_rows(out) == 1


def _replace_shard(path: str) -> None:
    """Shard 1 becomes a copy of shard 0 (as many images: only the checksum differs)."""
    shutil.rmtree(os.path.join(path, shard_name(1, NUM_SHARDS)))
    shutil.copytree(
        os.path.join(path, shard_name(0, NUM_SHARDS)), os.path.join(path, shard_name(1, NUM_SHARDS))
    )


def _wrong_count(path: str) -> None:
    index = json.loads(read_bytes(os.path.join(path, SHARDS)))
    index["shards"][1]["count"] += 1
    with open(os.path.join(path, SHARDS), "w") as f:
        json.dump(index, f)


@pytest.mark.parametrize(
    "damage, field",
    [(_replace_shard, "sha256"), (_wrong_count, "count")],
    ids=["replaced", "count"],
)
@pytest.mark.parametrize("kind", ["texts", "images"])
def test_a_shard_that_does_not_match_its_index_entry_is_reported(
    stores, tmp_path, capsys, kind, damage, field
):
    path = copy(stores[f"sharded_{kind}"], tmp_path)
    opened = open_texts(path) if kind == "texts" else open_images(path)
    bounds = shard_bounds(len(opened), NUM_SHARDS)
    assert bounds[1] - bounds[0] == bounds[2] - bounds[1]  # shard 1 can pass for shard 0
    damage(path)
    reports = verify_store(path)
    assert [r.ok for r in reports] == [True, False, True]
    problem = reports[1].problem
    assert (problem.file, problem.record, problem.field) == (os.path.join(path, SHARDS), 1, field)
    status, out, _ = verify(path, capsys)
    assert status == 2 and f"record 1, field {field}" in out


def test_a_path_that_is_no_store_is_bad_and_the_others_still_checked(stores, tmp_path, capsys):
    status = main(["verify", str(tmp_path / "nothing"), stores["images"], "--no-progress"])
    out = capsys.readouterr().out
    assert status == 2 and "cannot read" in out and ok_rows(out) == 1


# -- shard ------------------------------------------------------------------------


def test_shard_round_trip_of_a_text_store(stores, tmp_path, capsys):
    out = str(tmp_path / "sharded")
    assert main(["shard", stores["texts"], "--num-shards", "4", "--out", out, "--no-progress"]) == 0
    source = TextStore(stores["texts"])
    assert f"wrote {len(source)} texts in 4 shards" in capsys.readouterr().out
    index = json.loads(read_bytes(os.path.join(out, SHARDS)))
    assert [s["count"] for s in index["shards"]] == list(np.diff(shard_bounds(len(source), 4)))
    sharded = open_texts(out)
    assert sharded.arrays.keys() == source.arrays.keys()
    for key, value in source.arrays.items():
        np.testing.assert_array_equal(sharded.arrays[key], value, err_msg=key)
        assert sharded.arrays[key].dtype.kind == value.dtype.kind, key
    first = TextStore(os.path.join(out, shard_name(0, 4)))
    np.testing.assert_array_equal(first.text_ids, source.text_ids[: len(first)])
    for key in ("task", "vocab", "fields", "ragged"):
        assert sharded.manifest[key] == source.manifest[key]


def test_shard_round_trip_of_an_image_store_is_byte_identical(stores, tmp_path):
    source = ImageStore(stores["images"])
    # Resharding a sharded store gives the same records too.
    for path in (stores["sharded_images"], str(tmp_path / "resharded")):
        if not os.path.exists(path):
            split_store(stores["sharded_images"], path, num_shards=2, progress=False)
        sharded = open_images(path)
        for key in ("ids", "num_boxes", "crc32", "conf"):
            np.testing.assert_array_equal(getattr(sharded, key), getattr(source, key))
        for i in range(len(source)):
            assert read_bytes(sharded.path(i)) == read_bytes(source.path(i))
    assert len(open_images(str(tmp_path / "resharded")).parts) == 2


def test_a_failed_shard_leaves_nothing(stores, tmp_path, capsys):
    out = tmp_path / "out"
    n = len(ImageStore(stores["images"]))
    args = ["--out", str(out), "--no-progress"]
    assert main(["shard", stores["images"], "--num-shards", str(n + 1), *args]) == 2
    assert "non-empty shards" in capsys.readouterr().err
    # A corrupt blob in the last shard's part: found after two shards are written.
    source = copy(stores["images"], tmp_path)
    _flip_byte(blob_path(source, n - 1))
    assert main(["shard", source, "--num-shards", "3", *args]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["images"]  # no out, no temporary folder
    # An existing sharded store is replaced only with --force.
    assert main(["shard", stores["texts"], "--num-shards", "2", *args]) == 0
    assert main(["shard", stores["texts"], "--num-shards", "3", *args]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["shard", stores["texts"], "--num-shards", "3", *args, "--force"]) == 0
    assert len(json.loads(read_bytes(str(out / SHARDS)))["shards"]) == 3


# -- a non-local filesystem ---------------------------------------------------------


def copy_to_filesystem(local: str, remote: str) -> str:
    """Copies the folder `local` to `remote` (any tf.io.gfile URL) with tf.io.gfile."""
    for folder, _, names in os.walk(local):
        target = "/".join([remote, os.path.relpath(folder, local)]).removesuffix("/.")
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(os.path.join(folder, name), f"{target}/{name}", overwrite=True)
    return remote


@pytest.fixture
def remote(stores):
    """The stores copied to TensorFlow's in-memory filesystem (`ram://`), read
    through tf.io.gfile and tf.io.read_file as gs:// is."""
    root = f"ram://stores-{uuid.uuid4().hex[:8]}"
    names = ("captions", "images", "sharded_captions", "sharded_images")
    yield {name: copy_to_filesystem(stores[name], f"{root}/{name}") for name in names}
    tf.io.gfile.rmtree(root)


def test_stores_on_a_remote_filesystem_read_verify_and_batch_as_local_ones(stores, remote):
    for plain in ("captions", "images"):
        assert tf.io.gfile.exists(f"{remote[f'sharded_{plain}']}/{SHARDS}")
        assert all(r.ok for r in verify_store(remote[f"sharded_{plain}"]))
        assert all(r.ok for r in verify_store(remote[plain]))
    texts = open_texts(stores["captions"])
    for path in (remote["captions"], remote["sharded_captions"]):
        got = open_texts(path)
        for key, value in texts.arrays.items():
            np.testing.assert_array_equal(got.arrays[key], value, err_msg=key)
    images = open_images(stores["images"])
    remote_images = open_images(remote["sharded_images"])
    assert remote_images.path(0).startswith("ram://")
    np.testing.assert_array_equal(remote_images.ids, images.ids)
    for i in (0, len(images) - 1):
        image_id = str(images.ids[i])
        np.testing.assert_array_equal(
            remote_images.get(image_id).features, images.get(image_id).features
        )
    want = list(itertools.islice(Pipeline(texts, images, CONFIG), 4))
    for text_path, image_path in [
        (remote["captions"], remote["images"]),
        (remote["sharded_captions"], remote["sharded_images"]),
    ]:
        got = list(
            itertools.islice(Pipeline(open_texts(text_path), open_images(image_path), CONFIG), 4)
        )
        assert len(got) == len(want) == 4
        for expected, actual in zip(want, got, strict=True):
            assert expected.keys() == actual.keys()
            for key in expected:
                np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


# -- label files (object and attribute labels beside an extraction's shards) -------


def _labelled(stores, tmp_path) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    """A copy of the sharded image store with a label file per shard, as
    extraction writes them (indexed in shards.json), and the labels by image."""
    path = copy(stores["sharded_images"], tmp_path)
    rng = np.random.default_rng(0)
    names = [shard_name(i, NUM_SHARDS) for i in range(NUM_SHARDS)]
    labels = {}
    for name in names:
        shard = ImageStore(os.path.join(path, name))
        ids = [str(i) for i in shard.ids]
        parts = []
        for n in shard.num_boxes:
            parts.append(
                {
                    "object_class": rng.integers(1, 61, n).astype(np.int16),
                    "object_conf": rng.random(n).astype(np.float32),
                    "attribute": rng.integers(0, 9, n).astype(np.int16),
                    "attribute_conf": rng.random(n).astype(np.float32),
                }
            )
        labels.update(zip(ids, parts, strict=True))
        region_labels.write_labels(region_labels.labels_path(path, name), ids, parts)
    write_shard_index(path, "image", names)
    return path, labels


def test_label_files_are_verified_and_carried_by_resharding(stores, tmp_path, capsys):
    path, labels = _labelled(stores, tmp_path)
    index = json.loads(read_bytes(os.path.join(path, SHARDS)))
    assert all(len(s["labels_sha256"]) == 64 for s in index["shards"])
    assert all(r.ok for r in verify_store(path))

    out = str(tmp_path / "resharded")
    assert main(["shard", path, "--num-shards", "2", "--out", out, "--no-progress"]) == 0
    names = [shard_name(i, 2) for i in range(2)]
    assert sorted(os.listdir(os.path.join(out, region_labels.LABELS))) == [
        f"{n}.npz" for n in names
    ]
    carried = region_labels.read_labels(out, names)
    assert carried.keys() == labels.keys()
    for image_id, want in labels.items():
        for key, value in want.items():
            np.testing.assert_array_equal(carried[image_id][key], value, err_msg=key)
            assert carried[image_id][key].dtype == value.dtype
    assert all(r.ok for r in verify_store(out))
    status, out_text, _ = verify(out, capsys)
    assert status == 0 and ok_rows(out_text) == 2


def _rewrite(path: str, shard: str, change) -> None:
    """Rewrites a shard's label file with `change(arrays)` applied, keeping
    the index's checksum (a file replaced after the index was written)."""
    file = region_labels.labels_path(path, shard)
    arrays = region_labels.read_label_file(file)
    change(arrays)
    with open(file, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    "damage, field, message",
    [
        (lambda p, s: _flip_byte(region_labels.labels_path(p, s)), "sha256", "labels_sha256"),
        (lambda p, s: os.remove(region_labels.labels_path(p, s)), None, "cannot read"),
    ],
    ids=["changed", "missing"],
)
def test_a_damaged_label_file_is_reported_by_file(stores, tmp_path, capsys, damage, field, message):
    path, _ = _labelled(stores, tmp_path)
    shard = shard_name(1, NUM_SHARDS)
    damage(path, shard)
    reports = verify_store(path)
    assert [r.ok for r in reports] == [True, False, True]
    problem = reports[1].problem
    assert problem.file == region_labels.labels_path(path, shard) and problem.field == field
    assert message in problem.message
    status, out, _ = verify(path, capsys)
    assert status == 2 and region_labels.labels_path(path, shard) in out


def test_label_files_that_disagree_with_their_shard_are_reported(stores, tmp_path):
    path, _ = _labelled(stores, tmp_path)
    names = [shard_name(i, NUM_SHARDS) for i in range(NUM_SHARDS)]

    def more_regions(arrays):
        arrays["num_boxes"][1] += 1
        for key in region_labels.LABEL_FIELDS:
            arrays[key] = np.concatenate([arrays[key], arrays[key][:1]])

    _rewrite(path, names[0], more_regions)
    _rewrite(path, names[2], lambda arrays: arrays.update(ids=arrays["ids"][::-1].copy()))
    write_shard_index(path, "image", names)  # checksums of the rewritten files
    reports = verify_store(path)
    assert [r.ok for r in reports] == [False, True, False]
    first = ImageStore(os.path.join(path, names[0]))
    assert (reports[0].problem.record, reports[0].problem.field) == (str(first.ids[1]), "num_boxes")
    assert reports[2].problem.field == "ids" and "first differ at position 0" in (
        reports[2].problem.message
    )


def test_resharding_refuses_to_drop_the_labels_of_some_shards(stores, tmp_path, capsys):
    path, _ = _labelled(stores, tmp_path)
    os.remove(region_labels.labels_path(path, shard_name(2, NUM_SHARDS)))
    out = tmp_path / "out"
    assert main(["shard", path, "--num-shards", "2", "--out", str(out), "--no-progress"]) == 2
    assert "has no label file while others have" in capsys.readouterr().err
    assert not out.exists()


def test_an_index_from_before_label_checksums_verifies_by_ids_and_counts(stores, tmp_path):
    """Extractions indexed before `labels_sha256` existed: their label files
    are checked against the shards only; a missing one is still reported."""
    path, _ = _labelled(stores, tmp_path)
    index_path = os.path.join(path, SHARDS)
    index = json.loads(read_bytes(index_path))
    for entry in index["shards"]:
        del entry["labels_sha256"]
    with open(index_path, "w") as f:
        json.dump(index, f)
    assert all(r.ok for r in verify_store(path))
    os.remove(region_labels.labels_path(path, shard_name(1, NUM_SHARDS)))
    reports = verify_store(path)
    assert [r.ok for r in reports] == [True, False, True]
    assert "no label file, where other shards have one" in reports[1].problem.message


def test_resharding_refuses_a_damaged_source_label_file(stores, tmp_path, capsys):
    path, _ = _labelled(stores, tmp_path)
    _flip_byte(region_labels.labels_path(path, shard_name(0, NUM_SHARDS)))
    out = tmp_path / "out"
    assert main(["shard", path, "--num-shards", "2", "--out", str(out), "--no-progress"]) == 2
    assert "labels_sha256" in capsys.readouterr().err
    assert not out.exists()


def test_label_files_with_bad_counts_or_half_the_attributes_are_refused(stores, tmp_path):
    path, _ = _labelled(stores, tmp_path)
    names = [shard_name(i, NUM_SHARDS) for i in range(NUM_SHARDS)]

    def negative(arrays):  # the same total, one count below zero
        arrays["num_boxes"][1] += arrays["num_boxes"][0] + 1
        arrays["num_boxes"][0] = -1

    _rewrite(path, names[0], negative)
    _rewrite(path, names[1], lambda arrays: arrays.pop("attribute_conf"))
    write_shard_index(path, "image", names)
    reports = verify_store(path)
    assert [r.ok for r in reports] == [False, False, True]
    assert "non-negative" in reports[0].problem.message
    assert "come together" in reports[1].problem.message
