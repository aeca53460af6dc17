"""Downstream metrics (pure numpy, on the host, over a whole split).

Each takes per-example predictions in store order and the stored targets;
evaluation gathers every prediction first, so these see the whole split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from uniter_jax.data.regions import box_iou


def vqa_credit(counts: np.ndarray, humans: int) -> np.ndarray:
    """The official VQA evaluation's credit for answers that `counts` of `humans`
    annotators gave: `min(matches / 3, 1)` averaged over the `humans` subsets
    that leave one annotator out.

    Leaving out one of the `k` who gave the answer leaves `k - 1` matches;
    leaving out one of the others leaves `k`. So an answer given by 3 of 10
    scores 0.9, not the 1.0 of `min(k / 3, 1)`.
    """
    k = np.asarray(counts, np.float64)
    if humans <= 0:
        return np.zeros_like(k)
    return ((humans - k) * np.minimum(k / 3, 1) + k * np.minimum((k - 1) / 3, 1)) / humans


def vqa_accuracy(
    predicted: np.ndarray, answers: list[np.ndarray], scores: list[np.ndarray]
) -> float:
    """Mean credit of the predicted answers (0 for an answer no human gave).

    Args:
      predicted: `[N]` answer ids.
      answers, scores: per question, the answer ids the humans named and each
        one's credit: `vqa_credit` for the official accuracy, or the training
        target `min(count / 3, 1)` (about a point higher).
    """
    if not len(predicted):
        raise ValueError("no predictions to score")
    total = 0.0
    for p, ids, s in zip(predicted, answers, scores, strict=True):
        hit = np.flatnonzero(ids == p)
        total += float(s[hit[0]]) if len(hit) else 0.0
    return total / len(predicted)


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of `[N]` predictions equal to their labels."""
    if not len(labels):
        raise ValueError("no predictions to score")
    return float(np.mean(np.asarray(predicted) == np.asarray(labels)))


def grounding_accuracy(predicted: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Referring expressions: fraction of predicted `[N, 4]` boxes with IoU >= `threshold`."""
    if not len(truth):
        raise ValueError("no predictions to score")
    return float(np.mean(box_iou(predicted, truth) >= threshold))


def recall_at_k(
    scores: np.ndarray, text_image: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Retrieval recall in both directions from a `[T, I]` text-image score matrix.

    `text_image[t]` is the image of text `t`. Image retrieval (`t2i`): is the
    text's image among its `k` best-scored images? Text retrieval (`i2t`): is
    any of the image's texts among its `k` best-scored texts? Ties count
    against the truth (the truth must beat or be ranked before equals by
    index order, as a stable sort of `-scores` does).
    """
    scores = np.asarray(scores)
    t, i = scores.shape
    if len(text_image) != t or (text_image < 0).any() or (text_image >= i).any():
        raise ValueError("text_image must give each text's image as an index into the columns")
    # Rank of the true image for each text: images scored higher, plus
    # equal-scored images of lower index (stable order).
    true_score = scores[np.arange(t), text_image]
    above = (scores > true_score[:, None]).sum(1)
    ties_before = ((scores == true_score[:, None]) & (np.arange(i) < text_image[:, None])).sum(1)
    text_rank = above + ties_before
    # For each image, the best rank among its texts in the image's column order.
    order = np.argsort(-scores, axis=0, kind="stable")  # [T, I]: texts by score per image
    rank_of = np.empty_like(order)
    np.put_along_axis(rank_of, order, np.arange(t)[:, None].repeat(i, 1), axis=0)
    image_rank = np.full(i, t)
    np.minimum.at(image_rank, text_image, rank_of[np.arange(t), text_image])
    has_text = np.isin(np.arange(i), text_image)
    out = {}
    for k in ks:
        out[f"t2i_r{k}"] = float(np.mean(text_rank < k))
        out[f"i2t_r{k}"] = float(np.mean(image_rank[has_text] < k))
    out["r_mean"] = float(np.mean([out[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in ks]))
    return out
