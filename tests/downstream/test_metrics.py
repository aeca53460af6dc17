"""Downstream metrics, box IoU and ragged text-store reads, against plain loops."""

import numpy as np
import pytest

from uniter_jax.data.convert.vqa import soft_scores
from uniter_jax.data.regions import box_iou
from uniter_jax.data.text_store import TextStore, TextStoreWriter
from uniter_jax.downstream import baselines, metrics, ranking

# Answers the humans may give; the vocabulary holds only the first five, so
# "cat" and "dog" are human answers that no prediction can name.
HUMAN_ANSWERS = ["yes", "no", "red", "2", "blue", "cat", "dog"]
VOCAB = ["yes", "no", "red", "2", "blue", "green"]  # "green": never a human answer here


def stored_answers(humans):
    """What the VQA converter keeps for one question: ids and soft scores."""
    ids, scores = soft_scores([{"answer": a} for a in humans], {a: i for i, a in enumerate(VOCAB)})
    return np.asarray(ids, np.int64), np.asarray(scores, np.float32)


def test_vqa_accuracy_matches_the_human_answer_formula():
    rng = np.random.default_rng(0)
    n = 200
    # A skewed choice so that some answers reach 3+ humans and others 1 or 2.
    humans = [
        list(rng.choice(HUMAN_ANSWERS, 10, p=[0.4, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05]))
        for _ in range(n)
    ]
    predicted = rng.integers(0, len(VOCAB), n)
    want = np.mean(
        [min(h.count(VOCAB[p]) / 3, 1.0) for h, p in zip(humans, predicted, strict=True)]
    )
    stored = [stored_answers(h) for h in humans]
    got = metrics.vqa_accuracy(predicted, [s[0] for s in stored], [s[1] for s in stored])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # The draw covers every case: full, partial and zero credit.
    credit = [min(h.count(VOCAB[p]) / 3, 1.0) for h, p in zip(humans, predicted, strict=True)]
    assert 0.0 in credit and 1.0 in credit and any(0 < c < 1 for c in credit)


def test_vqa_accuracy_small_hand_case():
    q1 = ["yes"] * 2 + ["no"] * 8  # "yes" from two humans: 2/3
    q2 = ["cat"] * 10  # nothing in the vocabulary: every prediction scores 0
    q3 = ["red"] * 4 + ["blue"] * 6
    stored = [stored_answers(h) for h in (q1, q2, q3)]
    predicted = np.array([VOCAB.index("yes"), VOCAB.index("yes"), VOCAB.index("red")])
    got = metrics.vqa_accuracy(predicted, [s[0] for s in stored], [s[1] for s in stored])
    np.testing.assert_allclose(got, (2 / 3 + 0 + 1) / 3, rtol=1e-6)
    assert len(stored[1][0]) == 0  # out-of-vocabulary answers are not stored


def test_empty_inputs_and_length_mismatch_raise():
    with pytest.raises(ValueError, match="no predictions"):
        metrics.vqa_accuracy(np.zeros(0, np.int64), [], [])
    with pytest.raises(ValueError, match="no predictions"):
        metrics.accuracy(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="no predictions"):
        metrics.grounding_accuracy(np.zeros((0, 4)), np.zeros((0, 4)))
    ids, scores = stored_answers(["yes"] * 10)
    with pytest.raises(ValueError):
        metrics.vqa_accuracy(np.array([0, 1]), [ids], [scores])


def test_accuracy_is_the_fraction_equal():
    rng = np.random.default_rng(1)
    predicted, labels = rng.integers(0, 3, 57), rng.integers(0, 3, 57)
    want = sum(int(p == y) for p, y in zip(predicted, labels, strict=True)) / 57
    assert metrics.accuracy(predicted, labels) == pytest.approx(want, abs=1e-12)
    assert metrics.accuracy([2, 2], [2, 2]) == 1.0


def brute_force_recall(scores, text_image, ks):
    t, i = scores.shape
    text_rank = []
    for u in range(t):
        order = sorted(range(i), key=lambda j: (-scores[u, j], j))
        text_rank.append(order.index(text_image[u]))
    image_rank = []
    for j in range(i):
        texts = [u for u in range(t) if text_image[u] == j]
        if not texts:
            continue
        order = sorted(range(t), key=lambda u: (-scores[u, j], u))
        image_rank.append(min(order.index(u) for u in texts))
    out = {}
    for k in ks:
        out[f"t2i_r{k}"] = sum(r < k for r in text_rank) / len(text_rank)
        out[f"i2t_r{k}"] = sum(r < k for r in image_rank) / len(image_rank)
    out["r_mean"] = np.mean([out[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in ks])
    return out


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_recall_at_k_matches_brute_force(seed, integer):
    rng = np.random.default_rng(seed)
    t, i = int(rng.integers(5, 30)), int(rng.integers(4, 15))
    # Several texts per image, and some images with none (only the first
    # images ever receive texts).
    text_image = rng.integers(0, max(i - 2, 1), t)
    if integer:  # few distinct values: many ties, broken by index order
        scores = rng.integers(0, 3, (t, i)).astype(np.float32)
    else:
        scores = rng.normal(size=(t, i)).astype(np.float32)
    ks = (1, 2, 5)
    got = metrics.recall_at_k(scores, text_image, ks)
    want = brute_force_recall(scores, text_image, ks)
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_recall_at_k_ties_count_against_later_indices():
    # Text 0 belongs to image 1, tied with image 0: stable order ranks image 0 first.
    # Image 1's texts are 0 and 2; in its column, text 1 (same score, lower
    # index than text 2) comes before text 2, text 0 comes first.
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    text_image = np.array([1, 0, 1])
    got = metrics.recall_at_k(scores, text_image, ks=(1, 2))
    # t2i ranks: text0 -> 1, text1 -> image 0 has score 0 below image 1: rank 1,
    # text2 -> rank 0 (image 1 is the only top score).
    assert got["t2i_r1"] == pytest.approx(1 / 3) and got["t2i_r2"] == 1.0
    # i2t: image 0 has text 1; column 0 orders texts 0 (1.0), 1, 2 (0.0): rank 1.
    # image 1 has texts 0, 2; column 1 is all ties: text 0 rank 0. Image 2: no texts.
    assert got["i2t_r1"] == pytest.approx(1 / 2) and got["i2t_r2"] == 1.0


def test_recall_at_k_rejects_bad_text_image():
    scores = np.zeros((3, 2))
    for bad in ([0, 1], [0, 1, 2], [0, -1, 1]):
        with pytest.raises(ValueError, match="text_image"):
            metrics.recall_at_k(scores, np.array(bad))


def raster_iou(a, b):
    """IoU by counting the unit cells of an integer grid covered by each box."""
    cells_a = {(x, y) for x in range(a[0], a[2]) for y in range(a[1], a[3])}
    cells_b = {(x, y) for x in range(b[0], b[2]) for y in range(b[1], b[3])}
    union = len(cells_a | cells_b)
    return len(cells_a & cells_b) / union if union else 0.0


def random_boxes(rng, n, size=8):
    x = np.sort(rng.integers(0, size + 1, (n, 2)), axis=1)
    y = np.sort(rng.integers(0, size + 1, (n, 2)), axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)  # some of zero width


def test_box_iou_matches_rasterised_iou_and_broadcasts():
    rng = np.random.default_rng(2)
    a, b = random_boxes(rng, 60), random_boxes(rng, 60)
    got = box_iou(a, b)
    assert got.shape == (60,)
    want = [raster_iou(p, q) for p, q in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert (got == 0).any() and (got > 0).any()
    one = box_iou(a[0], b)  # [4] against [n, 4]
    assert one.shape == (60,)
    np.testing.assert_allclose(one, [raster_iou(a[0], q) for q in b], rtol=1e-12)
    pairwise = box_iou(a[:5, None], b[None, :7])  # [5, 1, 4] against [1, 7, 4]
    assert pairwise.shape == (5, 7)
    np.testing.assert_allclose(
        pairwise, [[raster_iou(p, q) for q in b[:7]] for p in a[:5]], rtol=1e-12
    )


def test_box_iou_zero_for_disjoint_touching_and_degenerate_boxes():
    box = np.array([0, 0, 2, 2])
    others = np.array(
        [
            [5, 5, 7, 7],  # disjoint
            [2, 0, 4, 2],  # shares an edge only
            [1, 1, 1, 1],  # a point inside
            [1, 0, 1, 2],  # a zero-width line inside
            [2, 2, 0, 0],  # inverted corners: no area
        ]
    )
    np.testing.assert_array_equal(box_iou(box, others), np.zeros(5))
    assert box_iou([3, 3, 3, 3], [3, 3, 3, 3]) == 0.0  # empty union, no NaN
    assert box_iou(box, box) == 1.0


def test_grounding_accuracy_counts_iou_of_exactly_one_half():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2]], float)
    predicted = np.array(
        [
            [0, 0, 2, 1],  # IoU 1/2 exactly: counted
            [0, 0, 3, 1],  # IoU 1/3: not counted
            [0, 0, 1, 1],  # IoU 1
            [4, 4, 5, 5],  # IoU 0
        ],
        float,
    )
    np.testing.assert_array_equal(box_iou(predicted, truth), [0.5, 1 / 3, 1.0, 0.0])
    assert metrics.grounding_accuracy(predicted, truth) == 0.5
    assert metrics.grounding_accuracy(predicted, truth, threshold=0.3) == 0.75
    assert metrics.grounding_accuracy(predicted, truth, threshold=0.51) == 0.25


STORE_VOCAB = {"size": 50, "pad_id": 0, "cls_id": 1, "sep_id": 2, "mask_id": 3}


@pytest.fixture(scope="module")
def ragged_store(tmp_path_factory):
    rng = np.random.default_rng(3)
    out = str(tmp_path_factory.mktemp("texts") / "store")
    with TextStoreWriter(
        out, task="vqa", vocab=STORE_VOCAB, max_txt_len=8, ragged=("answers", "scores")
    ) as writer:
        for i in range(12):
            n = 0 if i % 4 == 1 else int(rng.integers(1, 5))  # every 4th one empty
            writer.add(
                f"q{i}",
                f"img{i % 3}",
                rng.integers(4, 50, int(rng.integers(1, 6))),
                answers=list(rng.integers(0, 100, n)),
                scores=list(rng.uniform(size=n).astype(np.float32)),
            )
    return TextStore(out)


@pytest.mark.parametrize(
    "index",
    [
        np.arange(12),
        np.array([1, 1, 5, 0, 0, 11, 9, 1]),  # repeats and empty entries
        np.array([5]),  # one empty entry only
        np.array([3, 3, 3]),
    ],
)
@pytest.mark.parametrize("name", ["answers", "scores", "input_ids"])
def test_text_store_ragged_matches_a_loop(ragged_store, name, index):
    rows, values = ragged_store.ragged(name, index)
    parts = [ragged_store.field(name, int(i)) for i in index]
    want_rows = np.concatenate([np.full(len(p), r) for r, p in enumerate(parts)])
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(values, np.concatenate(parts))
    assert values.dtype == ragged_store.arrays[name].dtype
    assert any(len(ragged_store.field("answers", i)) == 0 for i in range(12))


def test_text_store_ragged_of_no_examples(ragged_store):
    rows, values = ragged_store.ragged("answers", np.zeros(0, np.int64))
    assert rows.shape == (0,) and values.shape == (0,)


def vqa_store(path, questions):
    """A VQA text store as the converter writes one: `(input_ids, human answers)`."""
    with TextStoreWriter(
        str(path), task="vqa", vocab=STORE_VOCAB, max_txt_len=8, ragged=("answers", "scores")
    ) as writer:
        for i, (ids, humans) in enumerate(questions):
            answers, scores = stored_answers(humans)
            writer.add(f"q{i}", f"img{i}", ids, answers=answers, scores=scores)
    return TextStore(str(path))


def test_vqa_type_prior_by_hand(tmp_path):
    # Question types by their first two pieces: 10 11 "how many", 12 13 "what
    # colour", 14 15 "is there". Answer ids: yes 0, no 1, red 2, "2" 3, blue 4.
    train = vqa_store(
        tmp_path / "train",
        [
            ([10, 11, 20], ["2"] * 10),
            ([10, 11, 21], ["2"] * 2 + ["cat"] * 8),
            ([10, 11, 24], ["yes"] + ["cat"] * 9),  # "how many": 2 (5/3) over yes (1/3)
            ([12, 13, 22], ["red"] * 10),
            # blue is named in two questions, red in one, but red scores 1, blue 2/3.
            ([12, 13, 23], ["blue"] + ["cat"] * 9),
            ([12, 13, 27], ["blue"] + ["dog"] * 9),
            ([14, 15], ["no"] * 10),
            ([14, 15, 25], ["no"] * 10),  # "is there": no (2) over yes (1)
            ([14, 15, 26], ["yes"] * 10),
        ],
    )
    # Over all types: no 2, "2" 5/3, yes 4/3, red 1, blue 2/3.
    val = vqa_store(
        tmp_path / "val",
        [
            ([10, 11, 30], ["2"] * 3),  # guess 2: 1
            ([12, 13, 31], ["red"] * 2 + ["blue"] * 8),  # guess red: 2/3
            ([14, 15, 32], ["no"] + ["yes"] * 9),  # guess no: 1/3
            ([16, 17], ["no"] * 10),  # type unseen: the overall no, 1
            ([10, 12], ["2"] * 10),  # type unseen (only its first piece is "how"): no, 0
        ],
    )
    assert baselines.vqa_type_prior(train, val) == pytest.approx(3 / 5)
    # By the first piece alone the last question is a "how" one: 2, 1.
    assert baselines.vqa_type_prior(train, val, words=1) == pytest.approx(4 / 5)


def test_retrieval_scores_under_the_original_names_are_recall_by_brute_force():
    rng = np.random.default_rng(4)
    text_image = np.repeat(np.arange(6), 3)  # 6 images, 3 texts each
    scores = rng.standard_normal((len(text_image), 6)) + 2.0 * np.eye(6)[text_image]
    got = ranking.original_scores(metrics.recall_at_k(scores, text_image))
    for k in (1, 5, 10):
        # Image retrieval: is each text's image among its k best images?
        img = np.mean(
            [t in np.argsort(-row)[:k] for t, row in zip(text_image, scores, strict=True)]
        )
        # Text retrieval: is any of each image's texts among its k best texts?
        best = [set(np.argsort(-scores[:, i])[:k]) for i in range(6)]
        txt = np.mean([bool(best[i] & set(np.flatnonzero(text_image == i))) for i in range(6)])
        assert got[f"img_r{k}"] == pytest.approx(img) and got[f"txt_r{k}"] == pytest.approx(txt)
    assert got["img_r_mean"] == pytest.approx(np.mean([got[f"img_r{k}"] for k in (1, 5, 10)]))
    assert got["r_mean"] == pytest.approx((got["img_r_mean"] + got["txt_r_mean"]) / 2)
