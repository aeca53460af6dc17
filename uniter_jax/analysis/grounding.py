"""Do words attend to the regions they name? Attention shares by layer and head.

A word token "names" a region when it is one of the words of the region's
detector class name ("red" and "cube" both name a region the detector calls
"red cube"; with Visual Genome classes, "dog" names a "dog" region). For
each such token, each layer and each head, the share of the token's
attention over regions that falls on the regions it names, against the share
those regions would get from uniform attention (their count over the
regions'). A head that grounds words puts far more than the uniform share
there. On the `clutter` synthetic world a two-layer model grounds, in its
first layer, only the family of words (shapes or colours) it learned to
match (docs/results.md, "Which words find their regions"). Only tokens that
name some regions of their image, and not all of them, count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from uniter_jax.analysis.encoder import Inspection


def named_regions(token: str, region_names: Sequence[str]) -> np.ndarray:
    """`[Nr]` bool: the regions whose class name has `token` as one of its words."""
    return np.array([token in name.split() for name in region_names], bool)


def named_region_shares(
    inspections: Iterable[Inspection], region_names: Iterable[Sequence[str]]
) -> tuple[np.ndarray, float, int]:
    """`(shares [layers, heads], uniform, tokens)`: the mean share of a naming
    token's region attention that falls on the regions it names, per layer and
    head; the mean share uniform attention would give them; and how many
    tokens counted. `region_names` gives each inspection's region class names
    (`[Nr]`, in the inspection's region order)."""
    shares, uniform = [], []
    for inspection, names in zip(inspections, region_names, strict=True):
        example = inspection.example
        if len(names) != example.num_regions:
            raise ValueError(
                f"text {example.text_id}: {len(names)} region names for "
                f"{example.num_regions} regions"
            )
        to_regions = inspection.attention[:, :, : example.num_text, example.num_text :]
        for t, token in enumerate(example.tokens):
            named = named_regions(token, names)
            if not named.any() or named.all():
                continue
            rows = to_regions[:, :, t].astype(np.float64)  # [layers, heads, Nr]
            shares.append(rows[..., named].sum(-1) / np.maximum(rows.sum(-1), 1e-12))
            uniform.append(named.mean())
    if not shares:
        raise ValueError("no token names a region of its image: nothing to measure")
    return np.mean(shares, axis=0), float(np.mean(uniform)), len(shares)
