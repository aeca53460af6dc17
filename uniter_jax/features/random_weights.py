"""A detector with random weights, fast: for timing and plumbing, never for labels."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uniter_jax.features.detector import Detector
from uniter_jax.features.detector_config import DetectorConfig

# What the log and every store written with such a detector say.
RANDOM_WEIGHTS = "random weights: labels are meaningless"


def random_detector(config: DetectorConfig, seed: int = 0) -> Detector:
    """A detector with random weights, built abstract and filled from numpy (one
    generator per parameter, seeded by its name): a few seconds for ResNet-101
    where `Detector(config, rngs)` runs op by op for tens of seconds.

    Frozen batch norms are identities, but the stem's scales by 0.02 (the input
    is pixels +-100, which a trained BN brings to O(1)); convs are He-normal over
    fan-in, a quarter of that at the end of each residual branch, so features stay
    O(1) through 33 blocks (fp16-storable; boxes do not blow up); the RPN and the
    heads are normal(0.01). Labels from such a detector mean nothing."""
    abstract = nnx.eval_shape(lambda: Detector(config, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)

    def fill(path, leaf):
        name = ".".join(str(p.key) for p in path if hasattr(p, "key"))
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        last = name.rsplit(".", 2)[-2:]
        if name == "backbone.stem.conv1.norm.weight":  # as a real BN: pixels are +-100
            return jnp.full(leaf.shape, 0.02, leaf.dtype)
        if last[-1] in ("weight", "running_var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if last[-1] in ("bias", "running_mean"):
            return jnp.zeros(leaf.shape, leaf.dtype)
        if last[-1] == "kernel" and len(leaf.shape) == 4 and "rpn_head" not in name:
            std = np.sqrt(2.0 / np.prod(leaf.shape[:3]))
            if last[0] == "conv3":
                std *= 0.25
        else:
            std = 0.01
        return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * np.float32(std))

    filled = jax.tree_util.tree_map_with_path(fill, state)
    return nnx.merge(graphdef, filled)
