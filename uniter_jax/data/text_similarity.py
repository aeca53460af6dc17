"""How alike two texts of a store are, by their words: tf-idf weighted bags of
token ids, each row L2-normalised, so the dot product of two rows is the
cosine of the texts. Numpy and scipy.sparse only.

The pipeline uses it to draw ITM negatives whose own text resembles the
example's text (`PipelineConfig.itm_neg_candidates`): an image described
much like the true one, so that telling them apart needs the words that
differ. Words every text shares weigh nearly nothing; rare words weigh most.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse

# A candidate whose cosine with the example reaches this is the same bag of
# words (a repeated caption): likely true of the example's image as well,
# so never drawn as its negative.
SAME_TEXT = 1.0 - 1e-6


def word_vectors(
    ids: np.ndarray, offsets: np.ndarray, vocab_size: int, skip_ids: Sequence[int] = ()
) -> scipy.sparse.csr_matrix:
    """`[N, vocab_size]` float32 rows, the tf-idf bag of each text's token ids.

    Args:
      ids: the texts' token ids end to end (a text store's `input_ids`).
      offsets: `[N + 1]` where each text starts in `ids`.
      vocab_size: the number of columns; every id must be below it.
      skip_ids: ids left out (e.g. special tokens a store holds).
    """
    ids = np.asarray(ids, np.int64)
    n = len(offsets) - 1
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got {ids.min()}..{ids.max()}")
    rows = np.repeat(np.arange(n), np.diff(offsets))
    keep = ~np.isin(ids, np.asarray(skip_ids, np.int64))
    counts = scipy.sparse.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (rows[keep], ids[keep])), shape=(n, vocab_size)
    )
    counts.sum_duplicates()
    df = np.bincount(counts.indices, minlength=vocab_size)
    idf = np.log((1.0 + n) / (1.0 + df)).astype(np.float32) + 1.0
    weighted = counts.multiply(idf[None, :]).tocsr()
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(1))).ravel()
    return scipy.sparse.diags(1.0 / np.maximum(norms, 1e-12)).dot(weighted).tocsr()


def pair_similarity(vectors: scipy.sparse.csr_matrix, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`[M]` cosine of texts `a[i]` and `b[i]` (rows of `word_vectors`)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} texts against {len(b)}")
    if not len(a):
        return np.zeros(0, np.float32)
    return np.asarray(vectors[a].multiply(vectors[b]).sum(1), np.float32).ravel()


def most_similar(
    vectors: scipy.sparse.csr_matrix, texts: np.ndarray, candidates: np.ndarray
) -> np.ndarray:
    """`[N]` for each of `texts`, the column of `candidates` (`[N, m]` text
    indices) whose text is most like it, repeats of the same words
    (`SAME_TEXT`) excluded; -1 where every candidate is such a repeat."""
    n, m = candidates.shape
    sims = pair_similarity(vectors, np.repeat(texts, m), candidates.ravel()).reshape(n, m)
    sims = np.where(sims >= SAME_TEXT, -np.inf, sims)
    best = np.argmax(sims, axis=1)
    return np.where(np.isfinite(sims[np.arange(n), best]), best, -1)
