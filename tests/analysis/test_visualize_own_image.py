"""One's own image -> detected regions with labels -> ITM score and pictures
(tools/own_image.py and visualize's --image), with a tiny random detector."""

import functools
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from matplotlib.patches import Rectangle
from PIL import Image
from tiny_detector import TINY_DETECTOR, tiny_extract

from uniter_jax import param_checkpoint
from uniter_jax.analysis import example as ex
from uniter_jax.features import preprocess
from uniter_jax.features.extract_step import detect, feature_map_size
from uniter_jax.features.random_weights import random_detector
from uniter_jax.model import UniterConfig, UniterForPretraining, get_params
from uniter_jax.tools import own_image, visualize

# Seconds to a minute of compiling; the slow tier (CI runs it).
pytestmark = pytest.mark.slow

DETECTOR = TINY_DETECTOR  # 128-d region features: UNITER's img_dim below
EXTRACT = tiny_extract()
UNITER = UniterConfig.preset(
    "tiny", vocab_size=512, img_dim=128, hidden_dropout=0.0, attention_dropout=0.0
)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cube", "on", "the", "table"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:48, :64]
    pixels = np.stack([x * 3, y * 4, (x + y) * 2], -1) % 256 + rng.integers(0, 30, (48, 64, 3))
    pixels[10:30, 20:50] = (200, 30, 30)
    Image.fromarray(pixels.astype(np.uint8)).save(root / "my_photo.png")
    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    model = UniterForPretraining(UNITER, nnx.Rngs(5))
    param_checkpoint.save(str(root / "model"), get_params(model), UNITER)
    return root


@pytest.fixture(scope="module")
def regions(files):
    detector = random_detector(DETECTOR)
    return detector, own_image.detect_regions(
        files / "my_photo.png", detector, DETECTOR, EXTRACT, note=own_image.RANDOM_NOTE
    )


def test_the_regions_are_detects(files, regions):
    detector, found = regions
    prepared = preprocess.prepare_image(files / "my_photo.png", 64, 96)
    batch = preprocess.pad_batch([prepared], (64, 96))
    sizes = np.array([feature_map_size(*batch.image_sizes[0])], np.int32)
    run = nnx.jit(functools.partial(detect, config=EXTRACT, cell_anchors=DETECTOR.cell_anchors()))
    out = run(
        detector,
        *(jnp.asarray(x) for x in (batch.images, batch.image_sizes, batch.scales, sizes)),
    )
    n = int(out.count[0])
    order = np.argsort(-np.asarray(out.confidence[0, :n]), kind="stable")
    assert found.image_id == "my_photo" and found.size == (48, 64)
    assert len(found.labels) == n and 3 <= n <= 10
    np.testing.assert_allclose(found.boxes, np.asarray(out.boxes[0, :n])[order], atol=1e-4)
    classes = np.asarray(out.object_class[0, :n])[order]
    np.testing.assert_array_equal(found.object_class, classes)
    # No names given: "class k", k the detector's object class.
    assert found.labels == tuple(f"{i}: class {c}" for i, c in enumerate(classes))

    # The picture draws exactly these boxes (pixels) with these labels.
    picture = np.zeros((48, 64, 3), np.uint8)
    figure = own_image.regions_figure(found, picture)
    ax = figure.axes[0]
    drawn = sorted(
        (p.get_x(), p.get_y(), p.get_x() + p.get_width(), p.get_y() + p.get_height())
        for p in ax.patches
        if isinstance(p, Rectangle)
    )
    want = sorted(map(tuple, found.boxes.astype(np.float64)))
    np.testing.assert_allclose(drawn, want, atol=1e-3)
    assert sorted(t.get_text() for t in ax.texts) == sorted(found.labels)
    assert own_image.RANDOM_NOTE.upper() in ax.get_title()


def test_pictures_and_itm_score_of_ones_own_image(tmp_path, files, regions):
    _, found = regions
    picture = np.asarray(Image.open(files / "my_photo.png").convert("RGB"))
    vocab = ex.Vocabulary(str(files / "vocab.txt"))
    out = tmp_path / "viz"
    summary = visualize.write_own_image(
        str(files / "model"), None, found, picture, "a red cube on the table", vocab, str(out)
    )
    for name in ("regions.png", "wra_boxes.png", "wra_heatmap.png", "attention_layer00.png"):
        assert (out / name).is_file(), name
        assert name in summary["files"]
    written = json.loads((out / "summary.json").read_text())
    assert written["detector"] == own_image.RANDOM_NOTE
    assert [r["label"] for r in written["regions"]] == list(found.labels)
    np.testing.assert_allclose([r["box"] for r in written["regions"]], found.boxes, atol=0.01)
    # UNITER saw every detected region, with the detector's labels.
    assert written["example"]["regions"] == list(found.labels)
    assert written["example"]["tokens"] == ["[CLS]", *WORDS[5:], "[SEP]"]
    assert 0.0 < written["itm"]["probability"] < 1.0


def test_the_cli_says_what_an_own_image_needs(tmp_path, files, capsys):
    args = ["--checkpoint", str(files / "model"), "--image", str(files / "my_photo.png")]
    assert visualize.main([*args, "--random-detector", "--out", str(tmp_path)]) == 2
    assert "--image needs --sentence and --vocab" in capsys.readouterr().err
    more = ["--sentence", "a cube", "--vocab", str(files / "vocab.txt"), "--out", str(tmp_path)]
    assert visualize.main([*args, *more]) == 2
    assert "--detector FILE or --random-detector" in capsys.readouterr().err
