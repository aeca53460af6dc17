"""A data-dependent start for the image projection (`config.image_init = "pca"`).

The image embedder's first layer maps each 2048-d region feature to the
hidden width. Started at random, it keeps every direction of the feature
space in proportion, so when an object's class explains a small share of a
feature's variance (about 2.5% in the `clutter` synthetic world, spread over
all 2048 dimensions) the embedding holds the class at that share too, and
pretraining never finds it (docs/results.md, "Learning on worlds the recipe
was not tuned on"). Started from the features' principal directions, the
projection keeps the directions along which regions differ most, where a
detector's class structure lies, at the same weight scale as the random
start; training moves it from there. Fresh parameters only: weights loaded
with `init_from` replace it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from absl import logging

from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.regions import num_kept

# Regions sampled for the covariance: enough for 2048-d features (the sample
# covariance's noise directions stay well below a class direction), seconds to read.
MAX_REGIONS = 100_000


def principal_directions(
    images: ImageStore,
    image_ids: Sequence[str],
    k: int,
    *,
    selection: tuple[float, int, int],
    max_regions: int = MAX_REGIONS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`(mean [D], directions [D, k])`: the mean region feature and the top-`k`
    eigenvectors of the feature covariance, largest first, each signed so that
    its largest entry is positive, over the kept regions (`selection` =
    (conf_th, min_bb, max_bb)) of `image_ids` visited in a seeded order
    until `max_regions` regions."""
    ids = sorted(set(image_ids))
    if not ids:
        raise ValueError("principal_directions: no images")
    order = np.random.default_rng(seed).permutation(len(ids))
    total, outer, count = None, None, 0
    for index in order:
        regions = images.get(ids[index])
        x = regions.features[: num_kept(regions.conf, *selection)].astype(np.float64)
        if total is None:
            total, outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        total += x.sum(0)
        outer += x.T @ x
        count += len(x)
        if count >= max_regions:
            break
    dim = total.shape[0]
    if k > dim:
        raise ValueError(f"cannot take {k} principal directions of {dim}-d features")
    mean = total / count
    covariance = outer / count - np.outer(mean, mean)
    _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    directions = vectors[:, ::-1][:, :k]
    signs = np.sign(directions[np.argmax(np.abs(directions), axis=0), np.arange(k)])
    logging.info("image projection from the principal directions of %d regions", count)
    return mean, directions * signs


def with_principal_projection(
    params: dict, mean: np.ndarray, directions: np.ndarray, std: float
) -> dict:
    """`params` (host arrays) with `uniter/img_embeddings/img_linear` set to the
    principal `directions` `[D, H]`, scaled so that the kernel's entries have
    standard deviation `std` (the random start's), and a bias that centres the
    mean feature."""
    linear = params["uniter"]["img_embeddings"]["img_linear"]
    if linear["kernel"].shape != directions.shape:
        raise ValueError(
            f"image projection {tuple(linear['kernel'].shape)}, directions {directions.shape}"
        )
    kernel = directions * (std / directions.std())
    new_linear = {
        **linear,
        "kernel": kernel.astype(np.asarray(linear["kernel"]).dtype),
        "bias": (-(mean @ kernel)).astype(np.asarray(linear["bias"]).dtype),
    }
    embeddings = {**params["uniter"]["img_embeddings"], "img_linear": new_linear}
    return {**params, "uniter": {**params["uniter"], "img_embeddings": embeddings}}
