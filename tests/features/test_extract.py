"""`python -m uniter_jax.features extract`: images -> a sharded image store.

A tiny detector (random weights) on tiny images (32-96 px, resized to a 64-px
short side, one bucket), so that each compiled program takes seconds: good
images of every colour mode stored, bad ones reported or stopping the run,
nothing half-written, reruns resuming, the bytes independent of the batch, its
neighbours and the devices, and the store read by the training pipeline.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image
from test_networks import Reference, randomize
from tiny_detector import TINY_DETECTOR, tiny_extract

from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore, ImageStoreWriter
from uniter_jax.data.pipeline import Bucket, Pipeline, PipelineConfig
from uniter_jax.data.regions import box_features
from uniter_jax.data.store_sets import SHARDS, open_images, open_texts
from uniter_jax.data.store_verify import verify_store
from uniter_jax.data.text_store import TextStoreWriter
from uniter_jax.data.tokenizer import Tokenizer, build_vocab
from uniter_jax.features import __main__ as cli
from uniter_jax.features import extract, extract_output, preprocess
from uniter_jax.features.detector import Detector
from uniter_jax.features.extract_step import detect, feature_map_size
from uniter_jax.features.image_files import list_images
from uniter_jax.features.random_weights import RANDOM_WEIGHTS, random_detector

TINY = dataclasses.replace(TINY_DETECTOR, blocks_per_stage=(1, 1, 2, 2))
# Short side 64, at most 96: every landscape test image lands in (64, 96).
CONFIG = tiny_extract(batch_size=1, shard_size=3, workers=2)
# (name, height, width, PIL mode): landscape, aspect 1..1.5.
GOOD = (
    ("a_rgb.jpg", 48, 64, "RGB"),
    ("b_grey.png", 40, 56, "L"),
    ("c_cmyk.jpg", 60, 80, "CMYK"),
    ("d_rgba.png", 64, 90, "RGBA"),
    ("e_palette.gif", 36, 48, "P"),
    ("f_rgb.png", 50, 70, "RGB"),
)
IDS = sorted(os.path.splitext(name)[0] for name, *_ in GOOD)


def picture(seed: int, height: int, width: int) -> np.ndarray:
    """`[height, width, 3]` uint8: a few bright rectangles on a noisy ramp."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    image = np.stack([x * 3, y * 4, (x + y) * 2], -1) % 256 + rng.integers(
        0, 30, (height, width, 3)
    )
    for _ in range(3):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.integers(0, 256, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image(path, height: int, width: int, mode: str = "RGB", seed: int = 0) -> str:
    image = Image.fromarray(picture(seed, height, width)).convert(mode)
    image.save(path)
    return str(path)


def write_good(folder, names=None) -> str:
    os.makedirs(folder, exist_ok=True)
    for seed, (name, height, width, mode) in enumerate(GOOD):
        if names is None or os.path.splitext(name)[0] in names:
            write_image(os.path.join(folder, name), height, width, mode, seed)
    return str(folder)


def write_bad(folder) -> dict[str, str]:
    """One file of each bad kind; returns id -> the reason's expected words."""
    jpeg = io.BytesIO()
    Image.fromarray(picture(9, 60, 80)).save(jpeg, "JPEG")
    files = {
        "corrupt.jpg": np.random.default_rng(1).bytes(3000),
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "text.png": b"not an image at all\n",
        "empty.jpg": b"",
    }
    for name, content in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    write_image(os.path.join(folder, "tiny.png"), 15, 40)  # the real default: >= 16 px
    write_image(os.path.join(folder, "huge.png"), 16, 20001)  # > 20000 px on a side
    return {
        "corrupt": "cannot read image",
        "truncated": "cannot read image",
        "text": "cannot read image",
        "empty": "cannot read image",
        "tiny": "under 16 px",
        "huge": "over 20000 px",
    }


def blobs(out: str) -> dict[str, bytes]:
    """Image id -> its blob's bytes, through the sharded store's index."""
    store = open_images(out)
    result = {}
    for image_id in map(str, store.ids):
        with open(store.path(store.position(image_id)), "rb") as f:
            result[image_id] = f.read()
    return result


def run(images, out, detector, **kwargs):
    options = {"config": CONFIG, "progress": False, "devices": jax.devices()[:1], **kwargs}
    return extract.extract_images(images, str(out), detector, **options)


@pytest.fixture(scope="module")
def detector():
    return random_detector(TINY, seed=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, detector):
    """The good images extracted one per step on one device."""
    root = tmp_path_factory.mktemp("reference")
    images = list_images(write_good(root / "images"))
    run(images, root / "out", detector)
    return images, str(root / "out")


# ---------------------------------------------------------------------- tests


def test_good_images_are_stored_as_the_step_computes_them(reference, detector):
    images, out = reference
    store = open_images(out)
    assert sorted(map(str, store.ids)) == IDS
    assert sorted(extract_output.finished_shards(out)) == ["p0000-00000", "p0000-00001"]
    assert store.feature_dim == TINY.res5_channels and store.num_labels == TINY.num_classes
    manifest = json.loads(pathlib.Path(out, "p0000-00000", "manifest.json").read_text())
    assert manifest["source"]["extraction"]["min_boxes"] == 3
    assert "batch_size" not in manifest["source"]["extraction"]
    labels = extract_output.read_labels(out)
    # The label files are indexed and check out against their shards.
    index = json.loads(pathlib.Path(out, SHARDS).read_text())
    assert all(len(entry["labels_sha256"]) == 64 for entry in index["shards"])
    assert [r.ok for r in verify_store(out)] == [True, True]

    # The stored arrays against `detect` run directly on one padded image.
    step = nnx.jit(functools.partial(detect, config=CONFIG, cell_anchors=TINY.cell_anchors()))
    for image in images:
        prepared = preprocess.prepare_image(image.path, CONFIG.short_side, CONFIG.max_side)
        batch = preprocess.pad_batch([prepared], (64, 96))
        sizes = np.array([feature_map_size(*prepared.pixels.shape[:2])], np.int32)
        want = step(detector, batch.images, batch.image_sizes, batch.scales, sizes)
        n = int(want.count[0])
        order = np.argsort(-np.asarray(want.confidence[0, :n]), kind="stable")
        got = store.get(image.image_id)
        assert CONFIG.min_boxes <= got.num_boxes == n <= CONFIG.max_boxes
        height, width = prepared.original_size
        boxes = box_features(np.asarray(want.boxes[0, :n])[order], width, height)
        np.testing.assert_allclose(got.boxes, boxes, atol=1e-6)
        assert (got.boxes[:, :4] >= -1e-6).all() and (got.boxes[:, :4] <= 1 + 1e-6).all()
        np.testing.assert_allclose(got.conf, np.asarray(want.confidence[0, :n])[order], rtol=1e-6)
        assert (np.diff(got.conf) <= 0).all()
        feats = np.asarray(want.features[0, :n])[order].astype(np.float16)
        np.testing.assert_allclose(got.features.astype(np.float32), feats, rtol=2e-3, atol=1e-3)
        probs = np.asarray(want.class_probs[0, :n])[order]
        np.testing.assert_allclose(got.soft_labels.astype(np.float32), probs, atol=1e-3)
        np.testing.assert_allclose(got.soft_labels.astype(np.float32).sum(1), 1, atol=0.02)
        mine = labels[image.image_id]
        np.testing.assert_array_equal(
            mine["object_class"], np.asarray(want.object_class[0, :n])[order]
        )
        np.testing.assert_array_equal(mine["attribute"], np.asarray(want.attribute[0, :n])[order])
        assert ((mine["object_class"] >= 1) & (mine["object_class"] < TINY.num_classes)).all()


def test_bad_images_are_reported_with_skip_bad(tmp_path, detector):
    folder = write_good(tmp_path / "images", names={"a_rgb", "b_grey"})
    expected = write_bad(folder)
    summary = run(list_images(folder), tmp_path / "out", detector, skip_bad=True)
    reasons = {s.record: s.reason for s in summary.skipped}
    assert sorted(reasons) == sorted(expected)
    for image_id, words in expected.items():
        assert words in reasons[image_id], (image_id, reasons[image_id])
    assert summary.images == 2 and summary.index_written
    assert sorted(map(str, open_images(str(tmp_path / "out")).ids)) == ["a_rgb", "b_grey"]
    report = (tmp_path / "out" / "bad-images-p0000.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in report) == sorted(expected)
    assert "skipped 6 bad records" in summary.report()


def test_a_bad_image_stops_the_run_and_a_rerun_resumes(tmp_path, detector, monkeypatch):
    folder = write_good(tmp_path / "images", names={"a_rgb", "b_grey", "d_rgba"})
    with open(os.path.join(folder, "c_broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8 not really a jpeg")
    images, out = list_images(folder), tmp_path / "out"
    config = dataclasses.replace(CONFIG, shard_size=2)  # [a, b] then [c, d]
    with pytest.raises(DataError, match=r"c_broken\.jpg"):
        run(images, out, detector, config=config)
    assert extract_output.finished_shards(str(out)) == ["p0000-00000"]
    assert sorted(os.listdir(out)) == ["labels", "p0000-00000"]  # no temporary folder
    assert sorted(map(str, ImageStore(str(out / "p0000-00000")).ids)) == ["a_rgb", "b_grey"]

    prepared = []
    original = preprocess.prepare_image

    def counting(path, *args):
        prepared.append(os.path.basename(path))
        return original(path, *args)

    monkeypatch.setattr(preprocess, "prepare_image", counting)
    summary = run(images, out, detector, config=config, skip_bad=True)
    assert sorted(prepared) == ["c_broken.jpg", "d_rgba.png"]
    assert summary.already_done == 2 and summary.images == 1 and summary.index_written
    assert [s.record for s in summary.skipped] == ["c_broken"]
    assert sorted(map(str, open_images(str(out)).ids)) == ["a_rgb", "b_grey", "d_rgba"]


def test_rerun_skips_done_images_and_grows_the_index(tmp_path, detector, reference, monkeypatch):
    folder = write_good(tmp_path / "images", names=set(IDS[:4]))
    out = tmp_path / "out"
    first = run(list_images(folder), out, detector)
    assert first.images == 4 and first.index_written
    write_good(folder)  # the last two arrive
    calls = []
    original = extract.make_step
    monkeypatch.setattr(extract, "make_step", lambda *a, **k: calls.append(1) or original(*a, **k))
    original_prepare = preprocess.prepare_image
    prepared = []
    monkeypatch.setattr(
        preprocess,
        "prepare_image",
        lambda path, *a: prepared.append(os.path.basename(path)) or original_prepare(path, *a),
    )
    second = run(list_images(folder), out, detector)
    assert second.already_done == 4 and second.images == 2 and second.index_written
    assert sorted(prepared) == sorted(name for name, *_ in GOOD[4:])
    index = json.loads((out / SHARDS).read_text())
    assert [s["name"] for s in index["shards"]] == ["p0000-00000", "p0000-00001", "p0000-00002"]
    assert blobs(str(out)) == blobs(reference[1])

    third = run(list_images(folder), out, detector)
    assert third.already_done == 6 and third.images == 0 and len(calls) == 1
    assert len(prepared) == 2


def test_a_crash_mid_shard_leaves_no_half_shard(tmp_path, detector, reference, monkeypatch):
    images, out = reference[0], tmp_path / "out"
    added = []
    original = ImageStoreWriter.add

    def crashing(self, regions):
        added.append(regions.image_id)
        if len(added) == 5:  # the second image of the second shard
            raise KeyboardInterrupt
        original(self, regions)

    monkeypatch.setattr(ImageStoreWriter, "add", crashing)
    with pytest.raises(KeyboardInterrupt):
        run(images, out, detector)
    assert sorted(os.listdir(out)) == ["labels", "p0000-00000"]
    assert os.listdir(out / "labels") == ["p0000-00000.npz"]
    # What a SIGKILL would leave: the writer's temporary folder, a label file.
    os.makedirs(out / ".p0000-00001.tmp-0123abcd" / "regions")
    shutil.copy(out / "labels" / "p0000-00000.npz", out / "labels" / "p0000-00001.npz")
    monkeypatch.setattr(ImageStoreWriter, "add", original)
    summary = run(images, out, detector)
    assert summary.already_done == 3 and summary.images == 3
    assert sorted(os.listdir(out)) == ["labels", "p0000-00000", "p0000-00001", SHARDS]
    assert blobs(str(out)) == blobs(reference[1])
    assert extract_output.read_labels(str(out)).keys() == set(IDS)


def test_a_rerun_with_other_settings_is_refused_before_writing(reference, detector, tmp_path):
    images, out = reference
    before = sorted(os.listdir(out))
    other = dataclasses.replace(CONFIG, min_boxes=2)
    with pytest.raises(DataError, match=r"made with other settings.*min_boxes") as error:
        run(images, out, detector, config=other)
    assert error.value.field == "extraction" and sorted(os.listdir(out)) == before
    # Shards from before the box convention was recorded made Caffe proposals:
    # a Caffe detector resumes them, a detectron2-convention one is refused.
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy)
    for shard in extract_output.finished_shards(str(legacy)):
        path = legacy / shard / "manifest.json"
        manifest = json.loads(path.read_text())
        assert manifest["source"]["extraction"].pop("box_convention") == "caffe"
        path.write_text(json.dumps(manifest))
    assert run(images, legacy, detector).already_done == len(images)
    detector.box_convention = "detectron2"
    try:
        with pytest.raises(DataError, match="'detectron2' now"):
            run(images, legacy, detector)
    finally:
        detector.box_convention = "caffe"


def test_bytes_do_not_depend_on_the_batch_or_the_neighbours(tmp_path, detector, reference):
    images, out_one = reference
    out_three = tmp_path / "three"
    run(images, out_three, detector, config=dataclasses.replace(CONFIG, batch_size=3))
    want = blobs(out_one)
    assert blobs(str(out_three)) == want
    # Whole shards, manifests and label files included.
    for name in ("p0000-00000/manifest.json", "p0000-00000/index.npz", "labels/p0000-00001.npz"):
        assert (out_three / name).read_bytes() == pathlib.Path(out_one, name).read_bytes()
    # Other neighbours in the batch of three: every other image, and a partial batch.
    out_other = tmp_path / "other"
    run(images[::2], out_other, detector, config=dataclasses.replace(CONFIG, batch_size=3))
    got = blobs(str(out_other))
    assert len(got) == 3 and all(got[i] == want[i] for i in got)


def test_eight_devices_give_the_bytes_of_one(tmp_path, detector, reference):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 host devices)")
    images, out_one = reference
    config = dataclasses.replace(CONFIG, batch_size=5)  # rounded up to 8, 3 blanks
    run(images, tmp_path / "out", detector, config=config, devices=jax.devices()[:8])
    assert blobs(str(tmp_path / "out")) == blobs(out_one)


def test_hosts_write_their_own_shards_and_process_0_the_index(tmp_path, detector, reference):
    images, out_one = reference
    out = tmp_path / "out"
    later = run(images, out, detector, process_index=1, process_count=2)
    assert later.shards == ["p0001-00000"] and not later.index_written
    assert sorted(map(str, ImageStore(str(out / "p0001-00000")).ids)) == IDS[3:]
    first = run(images, out, detector, process_index=0, process_count=2)
    assert first.shards == ["p0000-00000"] and first.index_written
    assert blobs(str(out)) == blobs(out_one)


def test_extracted_store_feeds_the_training_pipeline(tmp_path, reference):
    _, out = reference
    captions = {image_id: f"a photo number {k} of things" for k, image_id in enumerate(IDS)}
    vocab = build_vocab(captions.values(), str(tmp_path / "vocab.txt"))
    tokenizer = Tokenizer(vocab)
    with TextStoreWriter(
        str(tmp_path / "captions"), task="captions", vocab=tokenizer.vocab.to_json(), max_txt_len=12
    ) as writer:
        for image_id, text in captions.items():
            writer.add(f"{image_id}-0", image_id, tokenizer.encode(text))
    texts, images = open_texts(str(tmp_path / "captions")), open_images(out)
    config = PipelineConfig(
        buckets=(Bucket(16, 12, 2),), min_bb=3, max_bb=10, soft_labels=True, shuffle=False
    )
    pipeline = Pipeline(texts, images, config)
    batch = next(iter(pipeline))
    pipeline.close()
    for row in range(2):
        regions = images.get(str(images.ids[batch["image_index"][row]]))
        n = int(batch["img_mask"][row].sum())
        assert n == images.num_kept(0.2, 3, 10)[batch["image_index"][row]]
        np.testing.assert_array_equal(batch["img_feat"][row, :n], regions.features[:n])
        np.testing.assert_array_equal(batch["img_pos"][row, :n], regions.boxes[:n])
        np.testing.assert_array_equal(batch["img_soft_labels"][row, :n], regions.soft_labels[:n])


def test_image_lists_folders_patterns_and_duplicate_ids(tmp_path):
    write_good(tmp_path / "one", names={"a_rgb", "b_grey"})
    write_good(tmp_path / "two", names={"c_cmyk"})
    shutil.copy(tmp_path / "one" / "b_grey.png", tmp_path / "one" / "b_grey.png.bak")
    (tmp_path / "one" / "notes.txt").write_text("not listed: not an image extension")
    listed = tmp_path / "list.txt"
    listed.write_text("# images\ntwo/c_cmyk.jpg\n\n")
    found = list_images([str(tmp_path / "one"), str(listed)])
    assert [i.image_id for i in found] == ["a_rgb", "b_grey", "c_cmyk"]
    assert found[2].path == str(tmp_path / "two" / "c_cmyk.jpg")
    assert [i.image_id for i in list_images(str(tmp_path / "*" / "*.png"))] == ["b_grey"]
    assert list_images(str(tmp_path / "one" / "a_rgb.jpg"))[0].image_id == "a_rgb"
    with pytest.raises(DataError, match="not a text list"):
        list_images(str(tmp_path / "one" / "b_grey.png.bak"))
    write_image(tmp_path / "two" / "a_rgb.png", 40, 50)
    with pytest.raises(DataError, match=r"one/a_rgb.jpg and .*two/a_rgb.png"):
        list_images([str(tmp_path / "one"), str(tmp_path / "two")])
    with pytest.raises(DataError, match="no such folder"):
        list_images(str(tmp_path / "missing"))


def test_feature_map_size_is_the_backbones():
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Detector(TINY, nnx.Rngs(0))))
    for height, width in [(64, 96), (600, 1000), (600, 800), (1000, 600), (17, 31), (97, 65)]:
        images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
        shape = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).backbone(x), state, images)
        assert feature_map_size(height, width) == shape.shape[1:3], (height, width)


def test_random_detector_is_seeded_and_keeps_features_small():
    a, b, c = (random_detector(TINY, seed) for seed in (0, 0, 1))
    leaves = [jax.tree.leaves(nnx.state(m)) for m in (a, b, c)]
    assert all(np.array_equal(x, y) for x, y in zip(leaves[0], leaves[1], strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves[0], leaves[2], strict=True))
    shapes = jax.tree.map(
        lambda x: x.shape, nnx.state(nnx.eval_shape(lambda: Detector(TINY, nnx.Rngs(0))))
    )
    assert jax.tree.map(lambda x: x.shape, nnx.state(a)) == shapes


def tiny_detector_args() -> list[str]:
    """`--detector KEY=VALUE` for each field of TINY that differs from the default."""
    fields = (
        "blocks_per_stage",
        "stem_channels",
        "res2_channels",
        "bottleneck_channels",
        "rpn_channels",
        "num_classes",
        "num_attributes",
        "class_embedding_size",
        "attribute_hidden_size",
    )
    return [x for f in fields for x in ("--detector", f"{f}={getattr(TINY, f)!r}")]


@pytest.mark.slow
def test_cli_random_weights_at_the_real_sizes(tmp_path, capsys, caplog):
    folder = write_good(tmp_path / "images", names={"a_rgb", "c_cmyk"})
    argv = [
        "extract",
        "--images",
        folder,
        "--random-weights",
        "--seed",
        "3",
        "--out",
        str(tmp_path / "out"),
        "--num-boxes",
        "5",
        "--batch-size",
        "1",
        "--no-progress",
        "--workers",
        "2",
    ]
    argv += tiny_detector_args()
    assert cli.main(argv) == 0
    assert "stored 2 images, 10 regions" in capsys.readouterr().out
    assert "RANDOM WEIGHTS (seed 3)" in caplog.text
    store = open_images(str(tmp_path / "out"))
    assert list(store.num_boxes) == [5, 5]
    source = store.manifest["source"]
    assert RANDOM_WEIGHTS in source["weights"] and source["detector"]["stem_channels"] == 8
    # Bad arguments end in one line and status 2.
    assert cli.main([*argv, "--min-boxes", "3"]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_loads_a_checkpoint_and_swaps_its_compute_dtype(tmp_path, capsys):
    state = randomize(Reference(TINY).eval(), seed=2)
    weights = tmp_path / "bua-tiny.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, weights)
    folder = write_good(tmp_path / "images", names={"a_rgb"})
    out = tmp_path / "out"
    argv = ["extract", "--images", folder, "--weights", str(weights), "--out", str(out)]
    argv += ["--dtype", "bfloat16", "--num-boxes", "4", "--batch-size", "8", "--no-progress"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    source = open_images(str(out)).manifest["source"]
    assert source["weights"] == str(weights) and source["layout"] == "bua"
    assert source["detector"]["dtype"] == "bfloat16" and source["detector"]["anchors"] == "caffe"
    assert open_images(str(out)).get("a_rgb").num_boxes == 4
    assert cli.main([*argv, "--detector", "depth=50"]) == 2
    assert "--detector applies to --random-weights" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_a_distributed_run_store_the_bytes_of_one(tmp_path):
    """A real multi-process run on one machine: two processes joined by jax's
    distributed runtime (gloo on the CPU), each extracting its slice of the
    images into the one folder, process 0 writing `shards.json` after the
    barrier. The store is the single process's, blob for blob: that process
    runs as the two do (one device, the same XLA flags), since XLA:CPU may
    round a confidence differently on the test process's 8 forced devices."""
    folder = write_good(tmp_path / "images")
    argv = ["extract", "--images", folder, "--random-weights", *tiny_detector_args()]
    argv += ["--min-boxes", "3", "--max-boxes", "10", "--shard-size", "2", "--batch-size", "2"]
    argv += ["--workers", "2", "--no-progress"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device each
    env["JAX_PLATFORMS"] = "cpu"
    single = [sys.executable, "-m", "uniter_jax.features", *argv, "--out", one]
    done = subprocess.run(single, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    address = f"localhost:{free_port()}"
    command = [sys.executable, "-m", "uniter_jax.features", *argv, "--out", two]
    command += ["--coordinator-address", address, "--num-processes", "2"]
    processes = [
        subprocess.Popen(
            [*command, "--process-id", str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=600)[0] for p in processes]
    finally:  # a hung process must not outlive the test (it holds the coordinator's port)
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], logs
    assert f"wrote {two}/{SHARDS}" in logs[0]
    assert f"process 0 writes {SHARDS} once every process is done" in logs[1]
    shards = extract_output.finished_shards(two)
    assert {name[:5] for name in shards} == {"p0000", "p0001"}
    assert blobs(two) == blobs(one) and len(blobs(one)) == len(GOOD)
    assert all(report.ok for report in verify_store(two))
    labels_one, labels_two = extract_output.read_labels(one), extract_output.read_labels(two)
    assert labels_two.keys() == labels_one.keys()
    for image_id, want in labels_one.items():
        for key, value in want.items():
            np.testing.assert_array_equal(labels_two[image_id][key], value)
