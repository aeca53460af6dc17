"""Data-dependent starts for the image projection (`config.image_init`: pca, classes).

The image embedder's first layer maps each 2048-d region feature to the
hidden width. Started at random, it keeps every direction of the feature
space in proportion, so when an object's class explains a small share of a
feature's variance (about 2.5% in the `clutter` synthetic world, spread over
all 2048 dimensions) the embedding holds the class at that share too, and
pretraining never finds it (docs/results.md, "Learning on worlds the recipe
was not tuned on"). Started from the features' principal directions ("pca"),
the projection keeps the directions along which regions differ most; from
the directions between the detector's classes ("classes", read from the
store's soft labels), the ones along which the classes differ. Either is set
at the random start's weight scale; training moves it from there (slowly,
with `optim.image_lr_mul`: docs/results.md, "A slower image projection").
Fresh parameters only: weights loaded with `init_from` replace it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.regions import num_kept

# Regions sampled for the covariance: enough for 2048-d features (the sample
# covariance's noise directions stay well below a class direction), seconds to read.
MAX_REGIONS = 100_000
# A class counts for `class_directions` with at least this many regions: its
# mean's noise is then well below the spread between class means.
MIN_CLASS_REGIONS = 20


def _sampled_regions(
    images: ImageStore,
    image_ids: Sequence[str],
    selection: tuple[float, int, int],
    max_regions: int,
    seed: int,
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    """`(image id, kept features [n, D] float64, kept soft labels [n, L] or None)`
    of `image_ids` in a seeded order, until at least `max_regions` regions."""
    ids = sorted(set(image_ids))
    if not ids:
        raise ValueError("no images to start the image projection from")
    count = 0
    for index in np.random.default_rng(seed).permutation(len(ids)):
        regions = images.get(ids[index])
        kept = num_kept(regions.conf, *selection)
        soft = None if regions.soft_labels is None else regions.soft_labels[:kept]
        yield ids[index], regions.features[:kept].astype(np.float64), soft
        count += kept
        if count >= max_regions:
            return


def _moments(chunks: Iterator[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """`(mean [D], covariance [D, D], count)` of the rows of `chunks`."""
    total, outer, count = None, None, 0
    for x in chunks:
        if total is None:
            total, outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        total += x.sum(0)
        outer += x.T @ x
        count += len(x)
    mean = total / count
    return mean, outer / count - np.outer(mean, mean), count


def _top_eigenvectors(matrix: np.ndarray, k: int) -> np.ndarray:
    """The top-`k` eigenvectors `[D, k]` of a symmetric matrix, largest first,
    each signed so that its largest entry is positive."""
    _, vectors = np.linalg.eigh(matrix)  # ascending eigenvalues
    directions = vectors[:, ::-1][:, :k]
    return _signed(directions)


def _signed(directions: np.ndarray) -> np.ndarray:
    k = directions.shape[1]
    return directions * np.sign(directions[np.argmax(np.abs(directions), axis=0), np.arange(k)])


def _check_k(k: int, dim: int) -> None:
    if k > dim:
        raise ValueError(f"cannot take {k} directions of {dim}-d features")


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
    sampled = _sampled_regions(images, image_ids, selection, max_regions, seed)
    mean, covariance, count = _moments(x for _, x, _ in sampled)
    _check_k(k, len(mean))
    logging.info("image projection from the principal directions of %d regions", count)
    return mean, _top_eigenvectors(covariance, k)


def class_directions(
    images: ImageStore,
    image_ids: Sequence[str],
    k: int,
    *,
    selection: tuple[float, int, int],
    max_regions: int = MAX_REGIONS,
    seed: int = 0,
    min_count: int = MIN_CLASS_REGIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """`(mean [D], directions [D, k])`: the directions that separate the
    detector's classes, then the principal directions of what they leave.

    Each kept region counts for its soft label's argmax (the detector's class;
    background and stuff included). The first directions are the top
    eigenvectors of the between-class scatter `sum_c n_c (mu_c - mu)(mu_c - mu)^T`
    over the classes with at least `min_count` regions (at most their number
    less one); the rest, up to `k`, are the top eigenvectors of the feature
    covariance projected off those. Orthonormal, each signed so that its
    largest entry is positive. Regions are sampled as `principal_directions`.
    """
    class_sums: dict[int, np.ndarray] = {}
    class_counts: dict[int, int] = {}

    def features_by_class():
        for image_id, x, soft in sampled:
            if soft is None:
                raise ValueError(
                    f"{images.directory}: image {image_id} has no soft labels; "
                    "image_init = 'classes' needs the detector's class distributions "
                    "(choose pca or random for a store without them)"
                )
            labels = np.argmax(soft.astype(np.float32), axis=1)
            for c in np.unique(labels):
                class_sums.setdefault(int(c), np.zeros(x.shape[1]))
                class_sums[int(c)] += x[labels == c].sum(0)
                class_counts[int(c)] = class_counts.get(int(c), 0) + int((labels == c).sum())
            yield x

    sampled = _sampled_regions(images, image_ids, selection, max_regions, seed)
    mean, covariance, count = _moments(features_by_class())
    _check_k(k, len(mean))
    frequent = sorted(c for c, n in class_counts.items() if n >= min_count)
    if len(frequent) < 2:
        raise ValueError(
            f"{images.directory}: {len(frequent)} detector class(es) with at least "
            f"{min_count} regions among {count}; image_init = 'classes' needs two"
        )
    # Rows sqrt(n_c) (mu_c - mu): their Gram matrix is the between-class scatter.
    spread = np.stack(
        [np.sqrt(class_counts[c]) * (class_sums[c] / class_counts[c] - mean) for c in frequent]
    )
    _, singular, vt = np.linalg.svd(spread, full_matrices=False)
    rank = int(np.sum(singular > singular[0] * 1e-6))
    between = vt[: min(k, rank, len(frequent) - 1)].T
    rest = k - between.shape[1]
    if rest:
        # The covariance of the features with the class directions projected out.
        off = np.eye(len(mean)) - between @ between.T
        between = np.concatenate([between, _top_eigenvectors(off @ covariance @ off, rest)], 1)
    logging.info(
        "image projection from %d directions between %d detector classes of %d regions",
        k - rest,
        len(frequent),
        count,
    )
    return mean, _signed(between)


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
