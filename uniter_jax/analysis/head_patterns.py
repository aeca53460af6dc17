"""Sorting attention heads into the six patterns of the UNITER paper's
visualization (which follows Kovaleva et al. 2019). Pure numpy.

The paper sorts its heads by eye. Here each head's attention is summarised
by where each query's mass goes, averaged over queries, with four disjoint
parts of the key axis:

- `vertical`: the special tokens `[CLS]` and `[SEP]`;
- `diagonal`: the query itself and its neighbours (i-1, i+1) in the same
  modality (special tokens excluded);
- `intra`: the rest of the query's own modality (text->text, region->region);
- `inter`: the other modality (text->region, region->text), special tokens
  excluded.

The rules, with the thresholds of `Thresholds`:

| pattern | rule |
|---|---|
| vertical | vertical + diagonal >= `focused`, diagonal < `minor` |
| diagonal | vertical + diagonal >= `focused`, vertical < `minor` |
| vertical+diagonal | vertical + diagonal >= `focused`, both >= `minor` |
| block | otherwise, intra >= `modal` x (intra + inter) |
| reversed block | otherwise, inter >= `modal` x (intra + inter) |
| heterogeneous | none of the above |

Block compares intra with inter rather than with all mass, so a head that
spreads evenly inside its own modality counts as block whatever the two
modalities' lengths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

PATTERNS = (
    "vertical",
    "diagonal",
    "vertical+diagonal",
    "block",
    "heterogeneous",
    "reversed block",
)
PARTS = ("vertical", "diagonal", "intra", "inter")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    focused: float = 0.6  # mass on special tokens + the diagonal that makes a head "focused"
    minor: float = 0.2  # below this mass, vertical or diagonal does not count in a focused head
    modal: float = 0.8  # share of the unfocused mass inside (block) or across (reversed) modalities


def key_parts(num_text: int, num_regions: int, special: Sequence[int]) -> np.ndarray:
    """`[4, L, L]` boolean masks (query, key) of the four parts; they tile the map."""
    length = num_text + num_regions
    position = np.arange(length)
    image = position >= num_text
    is_special = np.zeros(length, bool)
    is_special[list(special)] = True
    same = image[:, None] == image[None, :]
    vertical = np.broadcast_to(is_special[None, :], (length, length))
    near = np.abs(position[:, None] - position[None, :]) <= 1
    diagonal = near & same & ~vertical
    intra = same & ~diagonal & ~vertical
    inter = ~same & ~vertical
    return np.stack([vertical, diagonal, intra, inter])


def part_masses(
    attention: np.ndarray, num_text: int, special: Sequence[int] = (0, -1)
) -> np.ndarray:
    """`attention` `[..., L, L]` (rows = queries, each summing to 1) -> `[..., 4]`
    mean mass per query in (vertical, diagonal, intra, inter). `special`
    positions may be negative (counted from the end of the text)."""
    length = attention.shape[-1]
    special = [s % num_text if s < 0 else s for s in special]
    parts = key_parts(num_text, length - num_text, special).astype(attention.dtype)
    # [..., q, k] x [p, q, k] -> [..., p, q] -> mean over queries
    per_query = np.einsum("...qk,pqk->...pq", attention, parts)
    return per_query.mean(axis=-1)


def classify(masses: np.ndarray, thresholds: Thresholds = Thresholds()) -> np.ndarray:
    """`[..., 4]` part masses -> `[...]` pattern names (numpy str array)."""
    vertical, diagonal, intra, inter = np.moveaxis(np.asarray(masses, np.float64), -1, 0)
    focused = vertical + diagonal >= thresholds.focused
    spread = np.maximum(intra + inter, 1e-12)
    return np.select(
        [
            focused & (diagonal < thresholds.minor),
            focused & (vertical < thresholds.minor),
            focused,
            intra >= thresholds.modal * spread,
            inter >= thresholds.modal * spread,
        ],
        ["vertical", "diagonal", "vertical+diagonal", "block", "reversed block"],
        default="heterogeneous",
    )


def head_masses(
    attentions: Sequence[np.ndarray], num_texts: Sequence[int], specials: Sequence[Sequence[int]]
) -> np.ndarray:
    """Mean part masses `[layers, heads, 4]` over examples, each with its
    attention `[layers, heads, L_i, L_i]`, text length and special positions."""
    if not attentions:
        raise ValueError("no examples to classify heads on")
    per_example = [
        part_masses(a, n, s) for a, n, s in zip(attentions, num_texts, specials, strict=True)
    ]
    return np.mean(per_example, axis=0)


def counts(patterns: np.ndarray) -> np.ndarray:
    """`[layers, heads]` pattern names -> `[layers, 6]` heads per pattern (PATTERNS order)."""
    return np.stack([(patterns == name).sum(axis=-1) for name in PATTERNS], axis=-1)
