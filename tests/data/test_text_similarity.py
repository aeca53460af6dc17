"""ITM negatives drawn by word similarity, against dense numpy by hand."""

import dataclasses

import numpy as np
import pytest

from uniter_jax.data.buckets import Bucket
from uniter_jax.data.plan import PipelineConfig, plan_epoch
from uniter_jax.data.text_similarity import SAME_TEXT, most_similar, word_vectors

TEXTS = [[5, 6, 7, 5], [5, 8], [9, 0, 6], [7, 7, 7], [1, 5, 6]]  # id 0 skipped below


def flat(texts):
    return np.concatenate(texts), np.concatenate([[0], np.cumsum([len(t) for t in texts])])


def dense_tfidf(texts, vocab_size, skip):
    """tf-idf with idf = ln((1 + N) / (1 + df)) + 1, rows L2-normalised, by loops."""
    counts = np.zeros((len(texts), vocab_size))
    for i, text in enumerate(texts):
        for t in text:
            if t not in skip:
                counts[i, t] += 1
    df = (counts > 0).sum(0)
    weighted = counts * (np.log((1 + len(texts)) / (1 + df)) + 1)
    return weighted / np.linalg.norm(weighted, axis=1, keepdims=True)


def test_word_vectors_equal_a_dense_computation():
    got = word_vectors(*flat(TEXTS), vocab_size=12, skip_ids=(0,)).toarray()
    np.testing.assert_allclose(got, dense_tfidf(TEXTS, 12, {0}), rtol=1e-6)


def test_word_vectors_reject_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        word_vectors(*flat(TEXTS), vocab_size=8)


def test_most_similar_takes_the_closest_candidate_and_skips_repeats():
    texts = [[5, 6], [5, 7], [5, 6], [8, 9], [6, 5]]
    vectors = word_vectors(*flat(texts), vocab_size=10)
    dense = dense_tfidf(texts, 10, set())
    candidates = np.array([[3, 1, 2], [3, 4, 0], [4, 0, 3]])
    best = most_similar(vectors, np.array([0, 1, 2]), candidates)
    # Text 0: text 2 repeats its words (cosine 1) and is skipped; 1 beats 3.
    # Text 1: 4 and 0 tie, the first wins. Text 2: every candidate but 3
    # repeats it, so 3 is taken though it shares no word.
    assert best.tolist() == [1, 1, 2]
    cos = dense @ dense.T
    assert cos[0, 2] >= SAME_TEXT and cos[0, 1] > cos[0, 3]
    assert most_similar(vectors, np.array([0]), np.array([[2, 4]])).tolist() == [-1]


def world_texts(rng, num_images, per_image, vocab_size):
    """Each image owns two rare words that all its texts carry, beside a common one;
    images i - 1 and i + 1 (cyclically) each share one of them."""
    texts, images = [], []
    for image in range(num_images):
        rare = [20 + image, 20 + (image + 1) % num_images]
        for _ in range(per_image):
            texts.append([int(rng.integers(1, 4)), *rare])
            images.append(image)
    return texts, np.array(images)


def test_planned_negatives_are_the_most_similar_candidates_image():
    rng = np.random.default_rng(0)
    texts, text_images = world_texts(rng, num_images=12, per_image=4, vocab_size=60)
    n = len(texts)
    vectors = word_vectors(*flat(texts), vocab_size=60)
    kept = np.full(12, 5, np.int32)
    config = PipelineConfig(buckets=(Bucket(12, 8, 8),), itm_neg_prob=0.5, seed=3)
    lens = np.array([len(t) for t in texts])
    uniform = plan_epoch(lens, text_images, kept, config, 1)
    similar = plan_epoch(
        lens, text_images, kept, dataclasses.replace(config, itm_neg_candidates=n), 1, vectors
    )
    # The same examples, order and labels; only the negatives' images change.
    np.testing.assert_array_equal(uniform.rows[:, [0, 2, 3]], similar.rows[:, [0, 2, 3]])
    negative = similar.rows[:, 2] == 0
    text, image = similar.rows[negative, 0], similar.rows[negative, 1]
    assert (image != text_images[text]).all()
    # With as many candidates as texts, nearly every negative is an image that
    # shares a rare word: the next or the previous one.
    neighbour = (image == (text_images[text] + 1) % 12) | (image == (text_images[text] - 1) % 12)
    assert neighbour.mean() > 0.9
    # and that image's closest text is on average far closer than the
    # uniformly drawn image's.
    cos = dense_tfidf(texts, 60, set()) @ dense_tfidf(texts, 60, set()).T
    closest = [cos[t, text_images == i].max() for t, i in zip(text, image, strict=True)]
    drawn = [
        cos[t, text_images == j].max() for t, j in zip(text, uniform.rows[negative, 1], strict=True)
    ]
    assert np.mean(closest) > np.mean(drawn) + 0.2


def test_one_candidate_is_the_uniform_draw_and_many_need_vectors():
    rng = np.random.default_rng(1)
    lens, text_images = rng.integers(3, 9, 40), rng.integers(0, 10, 40)
    kept = np.full(10, 5, np.int32)
    config = PipelineConfig(buckets=(Bucket(12, 8, 4),), itm_neg_prob=0.5, seed=2)
    np.testing.assert_array_equal(
        plan_epoch(lens, text_images, kept, config, 0).rows,
        plan_epoch(
            lens, text_images, kept, dataclasses.replace(config, itm_neg_candidates=1), 0
        ).rows,
    )
    with pytest.raises(ValueError, match="word vectors"):
        plan_epoch(lens, text_images, kept, dataclasses.replace(config, itm_neg_candidates=4), 0)
    with pytest.raises(ValueError, match="at least 1"):
        plan_epoch(lens, text_images, kept, dataclasses.replace(config, itm_neg_candidates=0), 0)


def test_the_similar_share_splits_the_negatives():
    rng = np.random.default_rng(0)
    texts, text_images = world_texts(rng, num_images=40, per_image=5, vocab_size=80)
    vectors = word_vectors(*flat(texts), vocab_size=80)
    lens, kept = np.array([len(t) for t in texts]), np.full(40, 5, np.int32)
    config = PipelineConfig(buckets=(Bucket(12, 8, 8),), itm_neg_prob=0.5, seed=3)

    def negatives(**change):
        plan = plan_epoch(
            lens, text_images, kept, dataclasses.replace(config, **change), 0, vectors
        )
        neg = plan.rows[:, 2] == 0
        return plan.rows[neg, 1], text_images[plan.rows[neg, 0]]

    uniform, _ = negatives()
    np.testing.assert_array_equal(
        negatives(itm_neg_candidates=64, itm_neg_similar_share=0.0)[0], uniform
    )
    for share in (0.5, 1.0):
        image, own = negatives(itm_neg_candidates=64, itm_neg_similar_share=share)
        neighbour = (image == (own + 1) % 40) | (image == (own - 1) % 40)
        # A uniform draw hits a neighbour 2 times in 39.
        assert abs(neighbour.mean() - (share + (1 - share) * 2 / 39)) < 0.1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        negatives(itm_neg_candidates=4, itm_neg_similar_share=1.5)


def test_similar_negatives_start_at_their_epoch():
    rng = np.random.default_rng(2)
    texts, text_images = world_texts(rng, num_images=20, per_image=4, vocab_size=60)
    vectors = word_vectors(*flat(texts), vocab_size=60)
    lens, kept = np.array([len(t) for t in texts]), np.full(20, 5, np.int32)
    uniform = PipelineConfig(buckets=(Bucket(12, 8, 8),), itm_neg_prob=0.5, seed=4)
    later = dataclasses.replace(uniform, itm_neg_candidates=32, itm_neg_similar_from_epoch=2)
    for epoch in (0, 1, 2, 3):
        same = np.array_equal(
            plan_epoch(lens, text_images, kept, uniform, epoch).rows,
            plan_epoch(lens, text_images, kept, later, epoch, vectors).rows,
        )
        assert same == (epoch < 2), epoch
