"""Examples from the stores, the inspection run, and the visualize command's PNGs."""

import json

import numpy as np
import ot
import pytest
from flax import nnx
from PIL import Image

from uniter_jax import param_checkpoint
from uniter_jax.analysis import encoder as enc
from uniter_jax.analysis import example as ex
from uniter_jax.analysis.head_patterns import PATTERNS
from uniter_jax.convert.pytorch import export_checkpoint
from uniter_jax.data import synthetic
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore
from uniter_jax.model import UniterConfig, UniterForPretraining, get_params
from uniter_jax.objectives.wra import WraSettings
from uniter_jax.tools import visualize

CONFIG = UniterConfig.preset("tiny", vocab_size=512, hidden_dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    synthetic.write_world(str(root), synthetic.WorldConfig(num_images=30))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny model, as a parameter checkpoint folder."""
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model = UniterForPretraining(CONFIG, nnx.Rngs(3))
    param_checkpoint.save(str(path), get_params(model), CONFIG)
    return path


@pytest.fixture(scope="module")
def stores(world):
    texts = TextStore(str(world / "texts" / "captions_val"))
    return texts, ImageStore(str(world / "images")), ex.Vocabulary(str(world / "vocab.txt"))


def test_an_example_from_the_stores_reads_as_the_pipeline_builds_it(world, stores):
    texts, images, vocab = stores
    names = synthetic.label_names()
    example = ex.from_store(texts, images, 3, vocab, max_text_len=8, names=names)
    pieces = (world / "vocab.txt").read_text().splitlines()
    ids = texts.input_ids(3)[:6]
    assert example.tokens == ("[CLS]", *(pieces[i] for i in ids), "[SEP]")
    assert example.special == (0, 7)
    regions = images.get(example.image_id)
    kept = int(np.clip((regions.conf > 0.2).sum(), 10, 100))
    kept = min(kept, regions.num_boxes)
    assert example.num_regions == kept
    np.testing.assert_array_equal(example.features, regions.features[:kept].astype(np.float32))
    classes = regions.soft_labels[:kept].argmax(-1)
    assert example.labels == tuple(f"{i}: {names[c]}" for i, c in enumerate(classes))
    # Every object class the world uses has a readable name.
    assert all(" " in example.labels[i].split(": ")[1] for i in range(kept))


def test_padding_in_a_batch_changes_nothing(checkpoint, stores):
    texts, images, vocab = stores
    model = enc.load_encoder(str(checkpoint))
    examples = [ex.from_store(texts, images, i, vocab) for i in range(5)]
    assert len({(e.num_text, e.num_regions) for e in examples}) > 1
    together = enc.inspect(model, examples, batch_size=5)
    for e, got in zip(examples, together, strict=True):
        inputs = ex.model_inputs([e], multiple=1)  # no padding at all
        hidden, attention = model(**inputs, return_attention=True)
        np.testing.assert_allclose(got.attention, np.asarray(attention)[:, 0], atol=1e-6)
        np.testing.assert_allclose(got.hidden, np.asarray(hidden)[0], atol=1e-5)
        np.testing.assert_allclose(got.attention.sum(-1), 1.0, atol=1e-5)


def test_the_alignment_plan_is_sinkhorns(checkpoint, stores):
    texts, images, vocab = stores
    model = enc.load_encoder(str(checkpoint))
    (inspection,) = enc.inspect(model, [ex.from_store(texts, images, 0, vocab)])
    plan = enc.transport_plan(inspection, WraSettings(epsilon=0.1, iterations=200))
    t, r = inspection.text_hidden, inspection.region_hidden
    cos = (t / np.linalg.norm(t, axis=1, keepdims=True)) @ (
        r / np.linalg.norm(r, axis=1, keepdims=True)
    ).T
    a, b = np.full(len(t), 1 / len(t)), np.full(len(r), 1 / len(r))
    want = ot.sinkhorn(a, b, 1.0 - cos.astype(np.float64), reg=0.1, numItermax=2000)
    np.testing.assert_allclose(plan, want, atol=1e-5)
    np.testing.assert_allclose(plan.sum(1), a, atol=1e-5)


def png(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def run_cli(*args):
    return visualize.main([str(a) for a in args])


def test_visualize_writes_every_picture_at_its_size(tmp_path, world, checkpoint, capsys):
    picture = tmp_path / "photo.png"
    Image.fromarray(np.full((240, 320, 3), 90, np.uint8)).save(picture)
    out = tmp_path / "viz"
    code = run_cli(
        "--checkpoint", checkpoint, "--world", world, "--index", 2,
        "--pattern-examples", 6, "--picture", picture, "--out", out,
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    # Pixel sizes at 100 dpi: tiny has 2 layers x 4 heads (4 panels of 3.2 in
    # in one row, plus a 0.5 in title band); four words get a 4 in panel each.
    expected = {
        "attention_layer00.png": (1280, 370),
        "attention_layer01.png": (1280, 370),
        "head_patterns.png": (1100, 400),
        "wra_heatmap.png": (800, 600),
        "wra_boxes.png": (1600, 360),
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == {k: list(v) for k, v in expected.items()}
    for name, (width, height) in expected.items():
        pixels = png(out / name)
        assert pixels.shape == (height, width, 3), name
        # Drawn on: many colours, not a blank page.
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, name
        assert pixels.std() > 10, name
    assert np.array(summary["patterns"]).shape == (2, 4)
    assert set(np.ravel(summary["patterns"])) <= set(PATTERNS)
    assert sum(summary["pattern_counts"].values()) == 8
    masses = np.stack([summary["masses"][p] for p in ("vertical", "diagonal", "intra", "inter")])
    np.testing.assert_allclose(masses.sum(0), 1.0, atol=1e-3)
    assert summary["pattern_examples"] == 6
    assert "wra_boxes.png" in capsys.readouterr().out


def test_a_pytorch_file_gives_the_same_pictures(tmp_path, world, checkpoint):
    params, config, _ = param_checkpoint.load(str(checkpoint))
    export_checkpoint(params, config, tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(
        json.dumps(
            dict(
                vocab_size=512,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=256,
                max_position_embeddings=512,
                type_vocab_size=2,
            )
        )
    )
    common = ("--world", world, "--pattern-examples", 4)
    assert run_cli("--checkpoint", checkpoint, *common, "--out", tmp_path / "a") == 0
    pt = ("--checkpoint", tmp_path / "model.pt", "--model-config", tmp_path / "config.json")
    assert run_cli(*pt, *common, "--out", tmp_path / "b") == 0
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in "ab")
    assert a["patterns"] == b["patterns"]
    for part in a["masses"]:
        np.testing.assert_allclose(a["masses"][part], b["masses"][part], atol=1e-4)


def test_a_sentence_of_ones_own(tmp_path, world, checkpoint, stores):
    texts, _, _ = stores
    out = tmp_path / "viz"
    image_id = str(texts.image_ids[4])
    args = ("--world", world, "--sentence", "a red cube and a blue sphere", "--image-id", image_id)
    assert run_cli("--checkpoint", checkpoint, *args, "--pattern-examples", 2, "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["example"]["tokens"] == [
        "[CLS]", "a", "red", "cube", "and", "a", "blue", "sphere", "[SEP]"
    ]  # fmt: skip
    assert summary["example"]["image_id"] == image_id


@pytest.mark.parametrize(
    "args, message",
    [
        (("--texts", "{world}/texts/captions_val"), "--texts needs --images"),
        (("--world", "{world}", "--index", "999"), "no text 999"),
        (("--world", "{world}", "--sentence", "cube", "--image-id", "nope"), "'nope' is not in"),
        (("--world", "{world}", "--vocab", "{world}/missing.txt"), "vocabulary file not found"),
        (("--world", "{world}/nowhere"), "nowhere"),
    ],
    ids=["no-images", "index", "image-id", "vocab", "world"],
)
def test_bad_input_is_a_clear_error(tmp_path, world, checkpoint, capsys, args, message):
    args = [a.format(world=world) for a in args]
    assert run_cli("--checkpoint", checkpoint, *args, "--out", tmp_path / "viz") == 2
    assert message in capsys.readouterr().err


def test_a_missing_checkpoint_is_a_clear_error(tmp_path, world, capsys):
    assert run_cli("--checkpoint", tmp_path / "none", "--world", world, "--out", tmp_path) == 2
    assert "no checkpoint file or folder" in capsys.readouterr().err
