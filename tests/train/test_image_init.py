"""The data-dependent starts of the image projection (`config.image_init`: pca, classes)."""

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from uniter_jax.data import scenes, synthetic
from uniter_jax.data.image_store import ImageStore, ImageStoreWriter
from uniter_jax.data.regions import num_kept
from uniter_jax.data.text_store import TextStore
from uniter_jax.model import UniterConfig
from uniter_jax.model.config import ConfigError
from uniter_jax.objectives.tasks import PRETRAINING
from uniter_jax.sharding import to_host
from uniter_jax.train.image_init import (
    class_directions,
    principal_directions,
    with_principal_projection,
)
from uniter_jax.train.pretrain import _image_directions
from uniter_jax.train.state import initial_params

SELECTION = (0.2, 4, 30)
CONFIG = dataclasses.replace(
    scenes.WORLDS["middle"], num_images=40, feature_dim=32, num_labels=64, feature_noise=1.0
)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return synthetic.write_world(str(tmp_path_factory.mktemp("pca") / "w"), CONFIG)


@pytest.fixture(scope="module")
def world(paths):
    images = ImageStore(paths["images"])
    ids = [str(i) for i in TextStore(paths["captions_train"]).image_ids]
    return images, ids


def kept_features(images, ids, labels=False):
    rows, argmax = [], []
    for image_id in sorted(set(ids)):
        regions = images.get(image_id)
        kept = num_kept(regions.conf, *SELECTION)
        rows.append(regions.features[:kept].astype(np.float64))
        argmax.append(np.argmax(regions.soft_labels[:kept].astype(np.float32), axis=1))
    x = np.concatenate(rows)
    return (x, np.concatenate(argmax)) if labels else x


def same_span(a, b):
    """Whether two orthonormal bases span one subspace (their projectors agree)."""
    return np.allclose(a @ a.T, b @ b.T, atol=1e-6)


def test_directions_are_the_covariance_eigenvectors(world):
    images, ids = world
    mean, directions = principal_directions(images, ids, 8, selection=SELECTION)
    x = kept_features(images, ids)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-10, atol=1e-10)
    # Independent: the right singular vectors of the centred data, largest first.
    _, singular, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    assert singular[7] > 1.01 * singular[8]  # a well-separated top 8
    want = vt[:8].T
    want *= np.sign(want[np.argmax(np.abs(want), axis=0), np.arange(8)])
    np.testing.assert_allclose(directions, want, atol=1e-6)


def test_sampling_stops_near_max_regions_and_is_seeded(world):
    images, ids = world
    a = principal_directions(images, ids, 4, selection=SELECTION, max_regions=50, seed=1)
    b = principal_directions(images, ids, 4, selection=SELECTION, max_regions=50, seed=1)
    c = principal_directions(images, ids, 4, selection=SELECTION, max_regions=50, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[0], c[0])
    with pytest.raises(ValueError, match="33 directions of 32-d"):
        principal_directions(images, ids, 33, selection=SELECTION)


def test_class_directions_separate_the_detectors_classes_then_the_rest(world):
    images, ids = world
    k = 12
    mean, directions = class_directions(images, ids, k, selection=SELECTION)
    x, labels = kept_features(images, ids, labels=True)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(directions.T @ directions, np.eye(k), atol=1e-8)
    # Independent: the between-class scatter of the classes with >= 20
    # regions, summed class by class, then the covariance left over.
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= 20]
    assert 3 <= len(classes) <= k  # both parts are exercised
    scatter = np.zeros((x.shape[1], x.shape[1]))
    for c in classes:
        d = x[labels == c].mean(0) - x.mean(0)
        scatter += (labels == c).sum() * np.outer(d, d)
    values, vectors = np.linalg.eigh(scatter)
    r = len(classes) - 1
    assert values[::-1][r - 1] > 1e-3 * values[-1]  # full rank: r directions
    between = vectors[:, ::-1][:, :r]
    assert same_span(directions[:, :r], between)
    off = np.eye(x.shape[1]) - between @ between.T
    values, vectors = np.linalg.eigh(off @ np.cov(x.T, bias=True) @ off)
    assert values[::-1][k - r - 1] > 1.01 * values[::-1][k - r]  # a well-separated rest
    assert same_span(directions[:, r:], vectors[:, ::-1][:, : k - r])


def test_class_directions_need_soft_labels_and_two_classes(world, tmp_path):
    images, ids = world
    with pytest.raises(ValueError, match="needs two"):
        class_directions(images, ids, 8, selection=SELECTION, min_count=10**6)
    # A store converted without the detector's class distributions.
    with ImageStoreWriter(str(tmp_path / "bare"), feature_dim=32) as writer:
        for image_id in sorted(set(ids))[:3]:
            writer.add(dataclasses.replace(images.get(image_id), soft_labels=None))
    bare = ImageStore(str(tmp_path / "bare"))
    with pytest.raises(ValueError, match=r"bare: image .* no soft labels.*choose pca or random"):
        class_directions(bare, sorted(set(ids))[:3], 8, selection=SELECTION)


def test_projection_keeps_the_init_scale_and_centres_the_mean():
    rng = np.random.default_rng(0)
    directions = np.linalg.qr(rng.standard_normal((32, 16)))[0]
    mean = rng.uniform(0, 3, 32)
    params = {
        "uniter": {
            "img_embeddings": {
                "img_linear": {"kernel": np.zeros((32, 16), np.float32), "bias": np.zeros(16)},
                "other": 1,
            },
            "encoder": 2,
        },
        "itm": 3,
    }
    out = with_principal_projection(params, mean, directions, 0.06)
    linear = out["uniter"]["img_embeddings"]["img_linear"]
    assert linear["kernel"].dtype == np.float32 and abs(linear["kernel"].std() - 0.06) < 1e-6
    np.testing.assert_allclose(linear["kernel"] / 0.06 * directions.std(), directions, atol=1e-6)
    np.testing.assert_allclose(mean @ linear["kernel"] + linear["bias"], 0, atol=1e-5)
    assert out["uniter"]["img_embeddings"]["other"] == 1 and out["itm"] == 3
    with pytest.raises(ValueError, match="image projection"):
        with_principal_projection(params, mean, directions[:, :8], 0.06)


def test_initial_params_start_from_the_directions(world):
    images, ids = world
    config = UniterConfig.preset(
        "tiny",
        hidden_size=16,
        intermediate_size=32,
        vocab_size=64,
        img_dim=32,
        num_region_labels=64,
    )
    stats = principal_directions(images, ids, config.hidden_size, selection=SELECTION)
    params = to_host(initial_params(config, 0, "", objective=PRETRAINING, image_directions=stats))
    random = to_host(initial_params(config, 0, "", objective=PRETRAINING))
    kernel = params["uniter"]["img_embeddings"]["img_linear"]["kernel"]
    # The kernel's columns are the directions (up to the common scale).
    np.testing.assert_allclose(kernel / np.linalg.norm(kernel, axis=0), stats[1], atol=1e-5)
    # Everything else is the random start's.
    jax.tree.map(
        np.testing.assert_array_equal, params["uniter"]["encoder"], random["uniter"]["encoder"]
    )
    assert not np.allclose(kernel, random["uniter"]["img_embeddings"]["img_linear"]["kernel"])


@pytest.mark.parametrize("start", ["pca", "classes", "random", "whitened"])
def test_the_config_picks_the_start(world, paths, start):
    images, _ = world
    texts = TextStore(paths["captions_train"])
    config = ml_collections.ConfigDict({"image_init": start, "seed": 0})
    model = UniterConfig.preset("tiny", hidden_size=8, img_dim=32)
    if start == "whitened":
        with pytest.raises(ConfigError, match="'whitened': choose random, pca or classes"):
            _image_directions(config, texts, images, SELECTION, model)
        return
    got = _image_directions(config, texts, images, SELECTION, model)
    if start == "random":
        assert got is None
        return
    make = {"pca": principal_directions, "classes": class_directions}[start]
    want = make(images, [str(i) for i in texts.image_ids], 8, selection=SELECTION)
    np.testing.assert_array_equal(got[1], want[1])
