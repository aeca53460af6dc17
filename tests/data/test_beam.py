"""Beam conversions against the in-process converters: the same store, byte for
byte, the same report and the same errors; sharded output that reads as the
one-piece store and does not depend on the number of workers; nothing left
behind by a failure.

Pipelines run on `FnApiRunner`, the DirectRunner's batch engine (the
DirectRunner itself first tries to download the Prism runner). Inputs are
tiny, cut into blocks of a few records (`chunk_size`, `range_bytes`) so that
every step sees several blocks, bundles and, with 2 workers, processes.
"""

import base64
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from stores import image_store

pytest.importorskip("apache_beam")

from uniter_jax.data import beam
from uniter_jax.data import convert as in_process
from uniter_jax.data.beam import lines, shards
from uniter_jax.data.beam.__main__ import main, unknown_beam_flags
from uniter_jax.data.beam.elements import Plan
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.store_sets import open_images, open_texts
from uniter_jax.data.text_store import TextStore

CAPTIONS = [
    "the clock is green in colour",
    "A man riding a horse on the beach.",
    "Two dogs play with a red frisbee.",
    "a kitchen with a stove and a sink, café au lait",
]
VOCAB_TEXTS = CAPTIONS  # the `vocab` fixture's corpus (conftest.py)
ONE = ["--runner=FnApiRunner"]
TWO = [*ONE, "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
D = 16
LABELS = 1601


# ---------------------------------------------------------------- inputs


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def b64(array, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype).tobytes()).decode("ascii")


def detections(seed: int, n: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, 90, n), rng.uniform(0, 40, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, 90, n), y1 + rng.uniform(1, 40, n)], 1)
    soft = rng.dirichlet(np.full(LABELS, 0.05), n)
    return {"boxes": boxes, "features": rng.normal(size=(n, D)), "soft": soft}


def butd_line(image_id: str, image: dict) -> str:
    n = len(image["boxes"])
    columns = [image_id, 200, 100, n, b64(image["boxes"], "<f4"), b64(image["features"], "<f4")]
    return "\t".join(map(str, columns))


def coco(tmp, name: str, captions: list) -> str:
    """`captions`: (id, image id, caption) triples; a dict is written as it is."""
    keys = ("id", "image_id", "caption")
    annotations = [c if isinstance(c, dict) else dict(zip(keys, c, strict=True)) for c in captions]
    return write(tmp / name, json.dumps({"images": [], "annotations": annotations}))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, vocab) -> dict:
    """Every format's input with bad records, duplicates and, for the web
    captions, unmapped URLs; and the image store texts are checked against."""
    tmp = tmp_path_factory.mktemp("inputs")
    images = image_store(tmp / "img", [f"img{i}" for i in range(5)])
    text = {"vocab": vocab, "images": images, "image_id_format": "img{id}", "max_txt_len": 8}

    good = [(i, i % 5, CAPTIONS[i % 4]) for i in range(30)]
    good[4] = (4, 1, "  ")  # empty caption
    good[7] = {"id": 7, "image_id": 2}  # no caption
    good[11] = (11, 9, CAPTIONS[0])  # image 9 is not in the store
    good[13] = (25, 3, "")  # bad, so the later id 25 is not a duplicate
    good[20] = (2, 0, CAPTIONS[1])  # duplicate of annotation 2, in another chunk
    coco_json = coco(tmp, "captions.json", good)

    regions = [
        {"region_id": 100 + i, "image_id": i // 3, "phrase": CAPTIONS[i % 4]} for i in range(12)
    ]
    regions[5]["phrase"] = " "
    regions[7]["image_id"] = 4  # disagrees with its image
    regions[10]["region_id"] = 101  # duplicate
    vg = [{"id": i, "regions": regions[3 * i : 3 * i + 3]} for i in range(4)]
    vg.insert(2, {"id": 9, "regions": "none"})
    vg_json = write(tmp / "vg.json", json.dumps(vg))

    url_map = write(tmp / "map.tsv", "".join(f"http://x/{i}.jpg\t{i}\n" for i in range(5)))
    cc_lines = [f"{CAPTIONS[i % 4]}\thttp://x/{i % 7}.jpg" for i in range(24)]
    cc_lines[3] = ""
    cc_lines[8] = "only a caption"
    cc_lines[9] += "\r"
    cc_lines[15] = "   \thttp://x/1.jpg"
    cc_tsv = write(tmp / "cc.tsv", "\n".join(cc_lines))  # no final newline

    sbu_urls = [f"http://x/{i % 6}.jpg" for i in range(16)]
    sbu_captions = [CAPTIONS[i % 4] for i in range(16)]
    sbu_urls[3], sbu_captions[6] = " ", ""
    sbu = [write(tmp / "urls.txt", "\n".join(sbu_urls) + "\n")]
    sbu.append(write(tmp / "captions.txt", "\n".join(sbu_captions) + "\n"))

    soft = tmp / "soft"
    soft.mkdir()
    butd = []
    for part in range(2):
        tsv_lines = []
        for i in range(7):
            image_id, image = f"im{part}{i}", detections(10 * part + i)
            np.save(soft / f"{image_id}.npy", image["soft"])
            tsv_lines.append(butd_line(image_id, image))
        tsv_lines[2] = "\r"  # blank
        tsv_lines[4] = tsv_lines[4].replace("\t3\t", "\t2\t")  # boxes do not match the count
        if part:
            tsv_lines[5] = butd_line("im01", detections(1))  # duplicate of file 0
        butd.append(write(tmp / f"butd{part}.tsv", "\n".join(tsv_lines) + "\n"))

    npz = tmp / "npz"
    npz.mkdir()
    for i in range(7):
        image = detections(30 + i)
        if i == 3:
            image["features"][0, 0] = np.nan
        features, boxes = image["features"].astype(np.float32), image["boxes"]
        np.savez(npz / f"n{i}.npz", features=features, boxes=boxes, image_w=200, image_h=100)

    region = {"feature_dim": D}
    return {
        "coco-captions": ([coco_json], {**text}, {"chunk_size": 4}),
        "vg-regions": ([vg_json], {**text}, {"chunk_size": 2}),
        "cc": ([cc_tsv], {**text, "url_map": url_map}, {"range_bytes": 90}),
        "sbu": (sbu, {**text, "url_map": url_map}, {"chunk_size": 3}),
        "butd-tsv": ([butd], {**region, "soft_label_dir": str(soft)}, {"range_bytes": 700}),
        "npz-dir": ([str(npz)], region, {"chunk_size": 2}),
    }


CONVERTERS = {
    "coco-captions": (in_process.convert_coco_captions, beam.convert_coco_captions),
    "vg-regions": (in_process.convert_vg_regions, beam.convert_vg_regions),
    "cc": (in_process.convert_cc, beam.convert_cc),
    "sbu": (in_process.convert_sbu, beam.convert_sbu),
    "butd-tsv": (in_process.convert_butd_tsv, beam.convert_butd_tsv),
    "npz-dir": (in_process.convert_npz_dir, beam.convert_npz_dir),
}


def convert_in_process(inputs: dict, fmt: str, out, **options):
    args, kwargs, _ = inputs[fmt]
    return CONVERTERS[fmt][0](*args, out, **kwargs, **options, progress=False)


def convert_beam(inputs: dict, fmt: str, out, flags=ONE, **options):
    args, kwargs, blocks = inputs[fmt]
    return CONVERTERS[fmt][1](*args, out, **kwargs, **blocks, **options, pipeline_options=flags)


def files(root) -> dict[str, bytes]:
    """Every file under `root` by relative path, with its bytes."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def assert_nothing_at(out) -> None:
    """Neither the store nor anything of the run (staging, outcome) beside it."""
    parent, name = os.path.split(os.path.abspath(out))
    assert not os.path.exists(out)
    assert not [entry for entry in os.listdir(parent) if entry.startswith(f".{name}.")]


# ---------------------------------------------------------------- one piece


@pytest.fixture(scope="module")
def one_piece(inputs, tmp_path_factory) -> dict:
    """Each format converted in process, with --skip-bad: `(store folder, summary)`."""
    tmp = tmp_path_factory.mktemp("in_process")
    return {
        fmt: (str(tmp / fmt), convert_in_process(inputs, fmt, tmp / fmt, skip_bad=True))
        for fmt in CONVERTERS
    }


@pytest.mark.parametrize("fmt", sorted(CONVERTERS))
def test_one_piece_is_the_in_process_store(inputs, one_piece, tmp_path, fmt):
    want_dir, want = one_piece[fmt]
    assert want.skipped  # the inputs hold bad records, to be listed alike
    got = convert_beam(inputs, fmt, tmp_path / "out", skip_bad=True)
    assert got.report().replace(str(tmp_path / "out"), want_dir) == want.report()
    assert got.skipped == want.skipped
    assert files(tmp_path / "out") == files(want_dir)
    assert os.listdir(tmp_path) == ["out"]  # nothing of the run left beside it


# ---------------------------------------------------------------- shards


@pytest.fixture(scope="module")
def sharded(inputs, tmp_path_factory) -> dict:
    """CC (texts) and BUTD (images) in 3 shards, on 1 worker and on 2 processes."""
    tmp = tmp_path_factory.mktemp("sharded")
    return {
        (fmt, workers): (
            str(tmp / f"{fmt}{workers}"),
            convert_beam(inputs, fmt, tmp / f"{fmt}{workers}", flags, skip_bad=True, num_shards=3),
        )
        for fmt in ("cc", "butd-tsv")
        for workers, flags in ((1, ONE), (2, TWO))
    }


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["cc", "butd-tsv"])
def test_sharded_output_is_the_same_on_one_or_two_workers(sharded, fmt):
    (one, one_summary), (two, two_summary) = sharded[fmt, 1], sharded[fmt, 2]
    assert files(one) == files(two)
    assert one_summary.report().replace(one, two) == two_summary.report()
    assert json.loads(files(one)["shards.json"])["kind"] == ("text" if fmt == "cc" else "image")


def test_sharded_texts_read_as_the_one_piece_store(sharded, one_piece):
    folder, summary = sharded["cc", 1]
    whole, joined = TextStore(one_piece["cc"][0]), open_texts(folder)
    assert set(joined.arrays) == set(whole.arrays)
    for key, value in whole.arrays.items():
        np.testing.assert_array_equal(joined.arrays[key], value, err_msg=key)
    assert joined.manifest["truncated"] == whole.manifest["truncated"] == summary.truncated > 0
    sizes = [len(TextStore(os.path.join(folder, f"0000{i}-of-00003"))) for i in range(3)]
    assert sum(sizes) == len(whole) and max(sizes) - min(sizes) <= 1


def test_sharded_images_read_as_the_one_piece_store(sharded, one_piece):
    joined, whole = open_images(sharded["butd-tsv", 1][0]), ImageStore(one_piece["butd-tsv"][0])
    np.testing.assert_array_equal(joined.ids, whole.ids)
    for key in ("num_boxes", "crc32", "conf"):
        np.testing.assert_array_equal(getattr(joined, key), getattr(whole, key))
    for image_id in whole.ids:
        got, want = joined.get(str(image_id)), whole.get(str(image_id))
        for key in ("features", "boxes", "conf", "soft_labels"):
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key))


# ---------------------------------------------------------------- failures


def _bad_inputs(tmp, vocab) -> dict:
    """Inputs whose first fault (in input order, not in any worker's) is known."""
    good = butd_line("a", detections(0))
    nan = detections(1)
    nan["features"][1, 2] = np.nan
    later_dup = [(i, 0, CAPTIONS[0]) for i in range(9)] + [(3, 0, CAPTIONS[1]), (20, 0, "")]
    text = {"vocab": vocab, "image_id_format": "img{id}"}
    return {
        "empty caption": ("coco-captions", [coco(tmp, "c.json", [(1, 0, "x"), (2, 0, " ")])], text),
        "duplicate text": ("coco-captions", [coco(tmp, "d.json", later_dup)], text),
        "unmapped": (
            "cc",
            [write(tmp / "cc.tsv", "a horse\thttp://gone/1.jpg\n")],
            {**text, "url_map": write(tmp / "map.tsv", "http://a/1.jpg\t1\n")},
        ),
        "nan": ("butd-tsv", [[write(tmp / "nan.tsv", f"{good}\n{butd_line('b', nan)}\n")]], {}),
        "base64": ("butd-tsv", [[write(tmp / "b64.tsv", f"{good}\n{good[:-7]}\n")]], {}),
        "duplicate image": (
            "butd-tsv",
            [[write(tmp / "1.tsv", f"{good}\n"), write(tmp / "2.tsv", f"\n{good}\n{good}\n")]],
            {},
        ),
        "empty file": (
            "butd-tsv",
            [[write(tmp / "e1.tsv", good), write(tmp / "e2.tsv", "\n")]],
            {},
        ),
    }


BAD_CASES = ["empty caption", "duplicate text", "nan", "base64", "duplicate image"]
FATAL_CASES = ["unmapped", "empty file"]  # bad input, not a bad record: --skip-bad fails too


@pytest.mark.parametrize("skip_bad", [False, True])
@pytest.mark.parametrize("case", BAD_CASES + FATAL_CASES)
def test_bad_input_fails_as_in_process_and_leaves_nothing(tmp_path, vocab, case, skip_bad):
    fmt, args, kwargs = _bad_inputs(tmp_path, vocab)[case]
    kwargs = {**kwargs, "feature_dim": D} if fmt == "butd-tsv" else kwargs
    inputs = {fmt: (args, kwargs, {"chunk_size": 2} if "coco" in fmt else {"range_bytes": 64})}
    try:
        want = convert_in_process(inputs, fmt, tmp_path / "want", skip_bad=skip_bad)
    except DataError as e:
        want = e
    assert isinstance(want, DataError) == (not skip_bad or case in FATAL_CASES)
    if isinstance(want, DataError):
        with pytest.raises(DataError) as got:
            convert_beam(inputs, fmt, tmp_path / "out", skip_bad=skip_bad)
        assert (got.value.file, got.value.record, got.value.field, str(got.value)) == (
            want.file,
            want.record,
            want.field,
            str(want),
        )
        assert_nothing_at(tmp_path / "out")
    else:
        got = convert_beam(inputs, fmt, tmp_path / "out", skip_bad=skip_bad)
        assert got.skipped == want.skipped and files(tmp_path / "out") == files(tmp_path / "want")


# ---------------------------------------------------------------- retries


def test_a_repeated_bundle_writes_the_same_store(inputs, sharded, tmp_path):
    """Every bundle (shard writes and the commit too) run twice, as a runner's retry would."""
    out = tmp_path / "out"
    convert_beam(
        inputs, "cc", out, [*ONE, "--direct_runner_bundle_repeat=1"], skip_bad=True, num_shards=3
    )
    assert files(out) == files(sharded["cc", 1][0])
    assert sorted(os.listdir(tmp_path)) == ["out"]


class FlakyWriter(shards.TextStoreWriter):
    """Fails once, after its third record, on its first attempt only."""

    attempts = 0

    def add(self, *args, **kwargs):
        if FlakyWriter.attempts == 0 and len(self) == 3:
            FlakyWriter.attempts += 1
            raise OSError("the worker lost its disk")
        return super().add(*args, **kwargs)


def test_a_failed_shard_write_leaves_nothing_and_its_retry_replaces_it(monkeypatch, tmp_path):
    spec = shards.TextStoreSpec("captions", {"size": 50}, 4, {"format": "test"})
    items = [(rank, (f"t{rank}", "img0", [rank + 1, 7], {})) for rank in range(6)][::-1]
    plan = Plan(None, 6, 2, 0)
    FlakyWriter.attempts = 0
    clean = shards.write_shard(spec, str(tmp_path / "clean"), 1, items, plan)
    monkeypatch.setattr(shards, "TextStoreWriter", FlakyWriter)
    with pytest.raises(OSError, match="lost its disk"):
        shards.write_shard(spec, str(tmp_path / "staging"), 1, items, plan)
    assert os.listdir(tmp_path / "staging") == []  # no partial shard, no temp folder
    for _ in range(2):  # the retry, and a second (speculative) attempt over the first
        assert shards.write_shard(spec, str(tmp_path / "staging"), 1, items, plan) == clean
    assert files(tmp_path / "staging") == files(tmp_path / "clean")


def test_a_failing_shard_write_fails_the_job_and_leaves_nothing(inputs, monkeypatch, tmp_path):
    class Broken(shards.ImageStoreWriter):
        def add(self, regions):
            raise OSError("no space left")

    monkeypatch.setattr(shards, "ImageStoreWriter", Broken)
    with pytest.raises(Exception, match="no space left"):
        convert_beam(inputs, "npz-dir", tmp_path / "out", skip_bad=True, num_shards=2)
    assert_nothing_at(tmp_path / "out")


# ---------------------------------------------------------------- command line


def test_cli_passes_beam_flags_and_fails_with_status_2(inputs, one_piece, tmp_path, capsys):
    (path,), options, _ = inputs["coco-captions"]
    out = str(tmp_path / "out")
    args = ["coco-captions", path, "--out", out, "--vocab", options["vocab"]]
    args += ["--images", options["images"], "--image-id-format", "img{id}", "--max-txt-len", "8"]
    assert main([*args, *ONE, "--direct_num_workers=1"]) == 2
    assert "annotation 4, field text: empty text" in capsys.readouterr().err
    assert_nothing_at(out)
    assert main([*args, "--skip-bad", "--num-shards", "2", "--no-progress", *ONE]) == 0
    assert f"wrote 25 texts to {out}" in capsys.readouterr().out
    assert main([*args, "--skip-bad", *ONE]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--skip-bad", "--force", *ONE]) == 0  # a sharded store replaced
    assert files(out) == files(one_piece["coco-captions"][0])


BEAM_FLAGS = [
    "--runner=FnApiRunner",
    "--direct_num_workers=2",
    "--direct_running_mode=multi_processing",
    "--project=x",
    "--temp_location=gs://b/t",
    "--experiments=a",
    "--experiments=b",
    "--region",
    "R",
    "--no_pipeline_type_check",
]


def test_beam_flags_are_known_and_others_unknown_as_written():
    assert unknown_beam_flags(BEAM_FLAGS) == []
    stray = ["--max-text-len", "40", "--skip_bad", "extra.json", "--foo_bar=3"]
    assert unknown_beam_flags([*BEAM_FLAGS[:2], *stray, *BEAM_FLAGS[2:]]) == stray


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--max-text-len", "40"], "--max-text-len 40"),  # ours is --max-txt-len
        (["--skip_bad"], "--skip_bad"),  # ours is --skip-bad
        (["second.json"], "second.json"),
        (["--direct_num_workers=two"], "argument --direct_num_workers: invalid int value"),
        (["--project"], "argument --project: expected one argument"),
    ],
)
def test_cli_refuses_arguments_neither_it_nor_beam_knows(inputs, tmp_path, capsys, extra, named):
    (path,), options, _ = inputs["coco-captions"]
    out = str(tmp_path / "out")
    args = ["coco-captions", path, "--out", out, "--vocab", options["vocab"]]
    with pytest.raises(SystemExit) as stop:
        main([*args, *extra, *ONE])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "coco-captions" in err
    if not named.startswith("argument"):
        assert "write Beam flags as --flag=value" in err
    assert_nothing_at(out)


def test_import_prints_nothing_and_leaves_logging_as_it_was():
    code = (
        "import logging, uniter_jax.data.beam\n"
        "assert not logging.root.handlers and not logging.root.filters\n"
        "assert logging.root.level == logging.WARNING\n"
        "logging.warning('a later warning')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout == "" and result.stderr == "WARNING:root:a later warning\n"


# ---------------------------------------------------------------- byte ranges


@pytest.mark.parametrize("range_bytes", [1, 2, 7, 64, 10_000])
def test_byte_ranges_read_every_line_once_with_its_number(tmp_path, range_bytes):
    rng = np.random.default_rng(range_bytes)
    text = b"".join(
        bytes(rng.integers(32, 127, rng.integers(0, 12)).astype(np.uint8)) + b"\n"
        for _ in range(40)
    )
    paths = [str(tmp_path / "a"), str(tmp_path / "empty"), str(tmp_path / "b")]
    for path, data in zip(paths, [text, b"", text[:-1] + b"\r\n\nlast"], strict=True):
        with open(path, "wb") as f:
            f.write(data)
    ranges = lines.split_ranges(paths, range_bytes)
    first = lines.first_lines(
        [((r.file_index, r.index), lines.count_line_starts(r)) for r in ranges]
    )
    got = [
        (r.path, *line)
        for r in ranges
        for line in lines.read_lines(r, first[r.file_index, r.index])
    ]
    want = []
    for path in paths:
        with open(path, "rb") as f:
            want += [(path, n, line) for n, line in enumerate(f, 1)]
    assert got == want


def test_out_must_be_new_or_forced(inputs, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        convert_beam(inputs, "npz-dir", tmp_path / "out")
    with pytest.raises(DataError, match="not a store: refusing"):
        convert_beam(inputs, "npz-dir", tmp_path / "out", overwrite=True)
    shutil.rmtree(tmp_path / "out")
    with pytest.raises(DataError, match="gs://"):
        convert_beam(inputs, "npz-dir", "gs://bucket/out")
