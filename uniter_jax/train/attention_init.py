"""A start for the attention's query and key projections (`config.attention_init`).

At a random start the query-key product of every head is small and
unstructured, so every token attends almost uniformly to every other. A
word that names one region among 10-36 then reads that region at a weight of
about one in the sequence length, and the matching signal ITM needs is
diluted by the region count (docs/results.md, "Dilution alone"). The input
alignment (`tasks.wra_input_weight`) pulls a word's embedding toward the
embeddings of the regions it names; a query-key product that starts near
the identity turns that closeness into attention from the first update, so
the first layer's words attend to their regions before ITM has learned to.

"mimetic" (Trockman and Kolter, "Mimetic Initialization of Self-Attention
Layers", ICML 2023) starts each layer with `W_q W_k^T = alpha Z + beta I`,
`Z` Gaussian with variance `1/hidden`: one SVD of that `[H, H]` matrix,
`U sqrt(S)` as the query kernel and `V sqrt(S)` as the key kernel, so that
head `h` takes the singular directions `h * head_dim` to `(h + 1) * head_dim`
and the heads together make the product exactly. Value and output kernels
and every bias keep their random start. Fresh parameters only: weights
loaded with `init_from` replace it.
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util

# The query-key product's random and identity parts (the paper's choice for
# its vision transformers, 0.7 each).
ALPHA = 0.7
BETA = 0.7
STARTS = ("random", "mimetic")
_ATTENTION = ("uniter", "encoder", "layers", "attention")


def mimetic_pair(
    hidden: int, rng: np.random.Generator, alpha: float = ALPHA, beta: float = BETA
) -> tuple[np.ndarray, np.ndarray]:
    """`(query, key)` kernels `[H, H]` with `query @ key.T = alpha Z + beta I`."""
    target = alpha * rng.normal(0.0, 1.0 / np.sqrt(hidden), (hidden, hidden)) + beta * np.eye(
        hidden
    )
    u, s, vt = np.linalg.svd(target)
    root = np.sqrt(s)
    return u * root, vt.T * root


def with_mimetic_attention(params: dict, seed: int) -> dict:
    """`params` (host arrays) with every encoder layer's query and key kernels
    (`[layers, H, H]`, stacked) set by `mimetic_pair`, drawn from `seed`."""
    flat = traverse_util.flatten_dict(params)
    query_key = (*_ATTENTION, "query", "kernel")
    if query_key not in flat:
        raise ValueError(f"no {'/'.join(query_key)} in the parameters to start")
    query = np.asarray(flat[query_key])
    layers, hidden, _ = query.shape
    rng = np.random.default_rng(seed)
    pairs = [mimetic_pair(hidden, rng) for _ in range(layers)]
    for i, name in enumerate(("query", "key")):
        flat[(*_ATTENTION, name, "kernel")] = np.stack([pair[i] for pair in pairs]).astype(
            query.dtype
        )
    return traverse_util.unflatten_dict(flat)
