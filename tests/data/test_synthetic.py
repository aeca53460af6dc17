"""The synthetic world: deterministic, consistent between text and regions, learnable."""

import itertools

import numpy as np
import pytest

from uniter_jax.data import synthetic
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore

CONFIG = synthetic.WorldConfig(num_images=40, feature_dim=32, num_labels=61, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return synthetic.write_world(str(tmp_path_factory.mktemp("w") / "world"), CONFIG)


def test_same_seed_same_bytes(tmp_path, world):
    again = synthetic.write_world(str(tmp_path / "again"), CONFIG)
    for key in ("images", "captions_train", "vqa_val", "refexp_train"):
        a = ImageStore(world[key]) if key == "images" else TextStore(world[key])
        b = ImageStore(again[key]) if key == "images" else TextStore(again[key])
        digest = "index_sha256" if key == "images" else "data_sha256"
        assert a.manifest[digest] == b.manifest[digest], key
    other = synthetic.write_world(
        str(tmp_path / "other"), synthetic.WorldConfig(**{**vars(CONFIG), "seed": 4})
    )
    assert (
        ImageStore(other["images"]).manifest["index_sha256"]
        != ImageStore(world["images"]).manifest["index_sha256"]
    )


def _words(vocab_path):
    with open(vocab_path) as f:
        return f.read().split("\n")


def test_region_classes_are_learnable_from_features(world):
    """Nearest class-mean on held-out images classifies regions almost perfectly."""
    store = ImageStore(world["images"])
    feats, labels = [], []
    for image_id in store.ids:
        regions = store.get(str(image_id))
        feats.append(regions.features.astype(np.float32))
        labels.append(regions.soft_labels.astype(np.float32).argmax(1))
    split = len(feats) // 2
    x_train, y_train = np.concatenate(feats[:split]), np.concatenate(labels[:split])
    x_test, y_test = np.concatenate(feats[split:]), np.concatenate(labels[split:])
    classes = np.unique(y_train)
    means = np.stack([x_train[y_train == c].mean(0) for c in classes])
    pred = classes[((x_test[:, None] - means[None]) ** 2).sum(-1).argmin(1)]
    known = np.isin(y_test, classes)
    assert (pred[known] == y_test[known]).mean() > 0.95


def test_referring_expressions_point_at_the_named_object(world):
    store, texts = ImageStore(world["images"]), TextStore(world["refexp_train"])
    words = _words(world["vocab"])
    checked = 0
    for i in range(len(texts)):
        size, colour, shape = [words[t] for t in texts.input_ids(i)][1:4]
        regions = store.get(str(texts.image_ids[i]))
        target = int(texts.field("target", i))
        label = int(regions.soft_labels[target].astype(np.float32).argmax())
        assert label == 1 + synthetic.SHAPES.index(shape) * len(synthetic.COLOURS) + (
            synthetic.COLOURS.index(colour)
        )
        box = regions.boxes[target]
        assert (box[4] > 80 / synthetic.WIDTH) == (size == "large")
        checked += 1
    assert checked > 50


def test_captions_describe_their_image(world):
    """Every colour+shape pair a caption names is an object of its image."""
    store, texts = ImageStore(world["images"]), TextStore(world["captions_train"])
    words = _words(world["vocab"])
    for i in range(len(texts)):
        tokens = [words[t] for t in texts.input_ids(i)]
        regions = store.get(str(texts.image_ids[i]))
        present = set(regions.soft_labels.astype(np.float32).argmax(1).tolist())
        for a, b in itertools.pairwise(tokens):
            if a in synthetic.COLOURS and b in synthetic.SHAPES:
                label = 1 + synthetic.SHAPES.index(b) * len(synthetic.COLOURS)
                assert label + synthetic.COLOURS.index(a) in present


def test_splits_and_tasks(world):
    for task in ("captions", "vqa", "refexp"):
        train, val = TextStore(world[f"{task}_train"]), TextStore(world[f"{task}_val"])
        assert not set(train.image_ids) & set(val.image_ids)
        assert len(train) > len(val) > 0
    vqa = TextStore(world["vqa_train"])
    answers = vqa.manifest["source"]["answer_vocab"]
    assert all(0 <= vqa.field("answers", i)[0] < len(answers) for i in range(len(vqa)))
