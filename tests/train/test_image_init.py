"""The principal-direction start of the image projection (`config.image_init = "pca"`)."""

import dataclasses

import jax
import numpy as np
import pytest

from uniter_jax.data import scenes, synthetic
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.regions import num_kept
from uniter_jax.data.text_store import TextStore
from uniter_jax.model import UniterConfig
from uniter_jax.objectives.tasks import PRETRAINING
from uniter_jax.sharding import to_host
from uniter_jax.train.image_init import principal_directions, with_principal_projection
from uniter_jax.train.state import initial_params

SELECTION = (0.2, 4, 30)
CONFIG = dataclasses.replace(
    scenes.WORLDS["middle"], num_images=40, feature_dim=32, num_labels=64, feature_noise=1.0
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    paths = synthetic.write_world(str(tmp_path_factory.mktemp("pca") / "w"), CONFIG)
    images = ImageStore(paths["images"])
    ids = [str(i) for i in TextStore(paths["captions_train"]).image_ids]
    return images, ids


def kept_features(images, ids):
    rows = []
    for image_id in sorted(set(ids)):
        regions = images.get(image_id)
        rows.append(regions.features[: num_kept(regions.conf, *SELECTION)].astype(np.float64))
    return np.concatenate(rows)


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
    with pytest.raises(ValueError, match="33 principal directions of 32-d"):
        principal_directions(images, ids, 33, selection=SELECTION)


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
