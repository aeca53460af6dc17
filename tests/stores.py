"""Small image stores written for the converter and analysis tests."""

from collections.abc import Iterable

import numpy as np

from uniter_jax.data.image_store import ImageStoreWriter
from uniter_jax.data.regions import ImageRegions, make_regions


def write_image_store(
    path, images: Iterable[ImageRegions], *, feature_dim: int = 4, num_labels: int | None = None
) -> str:
    """Writes `images` (from `make_regions`) as a store at `path`; returns the path."""
    with ImageStoreWriter(str(path), feature_dim=feature_dim, num_labels=num_labels) as writer:
        for regions in images:
            writer.add(regions)
    return str(path)


def image_store(path, ids: Iterable[str], *, seed: int = 0) -> str:
    """A store of the images `ids`, each two regions with random 4-d features and
    boxes: for converters that only look the ids up."""
    rng = np.random.default_rng(seed)
    images = (
        make_regions(image_id, rng.standard_normal((2, 4)), rng.uniform(0, 1, (2, 7)))
        for image_id in ids
    )
    return write_image_store(path, images)
