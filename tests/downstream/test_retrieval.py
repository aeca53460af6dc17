"""Retrieval: the hard-negative ranking loss, the dual-encoder loss and the
two-stage ranking, against numpy."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import expit, log_softmax
from tiny_model import tiny_config

from uniter_jax.downstream import metrics
from uniter_jax.downstream.ranking import Split, dual_scores, late_interaction, two_stage_scores
from uniter_jax.downstream.retrieval import Retrieval
from uniter_jax.model.inputs import MODEL_INPUTS

CONFIG = tiny_config()
P, K = 4, 2  # sampled negatives per text, hard negatives kept
W = 1 + P  # rows per group
G, LT, NR = 4, 6, 5
NUM_IMAGES = W  # every group sees every image: all batches have G * W rows
TEXT_LEN = np.array([6, 4, 5, 3])
GROUP_VALID = np.array([1, 1, 0, 1], np.int32)  # group 2 is a filler


def make_pool(seed=0):
    """`G` texts and `NUM_IMAGES` images with padded regions."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, CONFIG.vocab_size, (G, LT)).astype(np.int32)
    text_mask = (np.arange(LT) < TEXT_LEN[:, None]).astype(np.int32)
    ids[:, 0] = 1
    ids = np.where(text_mask > 0, ids, 0).astype(np.int32)
    kept = rng.integers(2, NR + 1, NUM_IMAGES)
    img_mask = (np.arange(NR) < kept[:, None]).astype(np.int32)
    feat = rng.normal(size=(NUM_IMAGES, NR, CONFIG.img_dim)).astype(np.float32)
    pos = rng.uniform(size=(NUM_IMAGES, NR, 7)).astype(np.float32)
    return {
        "texts": (ids, text_mask),
        "images": (feat * img_mask[..., None], pos * img_mask[..., None], img_mask),
    }


def pair_batch(pool, texts, images, valid):
    """Rows of (text, image) pairs, as the pipeline would emit them."""
    ids, text_mask = pool["texts"]
    feat, pos, img_mask = pool["images"]
    texts, images = np.asarray(texts), np.asarray(images)
    return {
        "input_ids": ids[texts],
        "text_mask": text_mask[texts],
        "img_feat": feat[images],
        "img_pos": pos[images],
        "img_mask": img_mask[images],
        "valid": np.asarray(valid, np.int32),
        "image_index": images.astype(np.int32),
    }


def inputs_of(batch):
    return {name: batch[name] for name in MODEL_INPUTS}


@pytest.fixture(scope="module")
def built():
    # A low temperature: pooled outputs of a random model are nearly parallel.
    objective = Retrieval(negatives=P, hard_negatives=K, margin=0.2, dual_temperature=0.002)
    return objective, objective.build(CONFIG, nnx.Rngs(0))


@pytest.fixture(scope="module")
def batch(built):
    """`G` groups of `W` rows. Group 0's own image is the one it scores best
    (its positive beats every negative), group 3's the one it scores worst;
    group 1 shares group 0's image; group 2 is a filler copy of group 3."""
    objective, model = built
    pool = make_pool()
    texts = np.repeat(np.arange(G), NUM_IMAGES)
    every = np.tile(np.arange(NUM_IMAGES), G)
    grid = pair_batch(pool, texts, every, np.ones(len(texts)))
    logits = np.asarray(objective.scores(model, inputs_of(grid), None)).reshape(G, NUM_IMAGES)
    rng = np.random.default_rng(1)
    own = [int(logits[0].argmax()), int(logits[0].argmax()), 0, int(logits[3].argmin())]
    groups = []
    for g in range(G):
        others = rng.permutation(np.setdiff1d(np.arange(NUM_IMAGES), own[g]))
        groups.append([own[g], *others])
    groups[2] = list(groups[3])
    texts = np.repeat([0, 1, 3, 3], W)
    return pair_batch(pool, texts, np.concatenate(groups), np.repeat(GROUP_VALID, W))


def hinge_reference(scores, valid, margin):
    """Per group: the `K` best-scored negatives, sigmoid, hinge; numpy."""
    scores = np.asarray(scores, np.float64).reshape(-1, W)
    hard = np.argsort(-scores[:, 1:], axis=1, kind="stable")[:, :K] + 1
    prob = expit(scores)
    positive = prob[:, :1]
    negative = np.take_along_axis(prob, hard, axis=1)
    hinge = np.maximum(0.0, margin + negative - positive)
    valid = valid.reshape(-1, W)[:, 0] > 0
    return {
        "hard": hard,
        "per_group": hinge.mean(1),
        "valid": valid,
        "first": (positive > negative).all(1),
        "hinge": hinge,
        "gap": positive - negative,
    }


# ---- the ranking loss --------------------------------------------------------


def test_ranking_loss_and_hard_accuracy_match_numpy(built, batch):
    objective, model = built
    scores = np.asarray(objective.scores(model, inputs_of(batch), None))
    assert scores.shape == (G * W,)
    # A margin in the middle of the chosen gaps: some hinges clip at 0, some do not.
    gaps = hinge_reference(scores, batch["valid"], 0.0)["gap"]
    margin = float(np.median(gaps))
    objective = dataclasses.replace(objective, margin=margin)
    ref = hinge_reference(scores, batch["valid"], margin)
    assert (ref["hinge"] == 0).any() and (ref["hinge"] > 0).any()

    loss, out = objective.loss("retrieval", model, batch, None, None)
    valid = ref["valid"]
    assert valid.sum() == 3
    np.testing.assert_allclose(loss, ref["per_group"][valid].mean(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["loss"][0], ref["per_group"][valid].sum(), rtol=1e-5, atol=1e-7)
    assert out["loss"][1] == 3 and out["hard_accuracy"][1] == 3
    # By construction group 0's positive is its best image, group 3's its worst.
    assert ref["first"][0] and not ref["first"][3]
    assert out["hard_accuracy"][0] == ref["first"][valid].sum()
    assert "dual_loss" not in out


def test_ranking_loss_ignores_filler_groups_and_reads_valid_from_first_rows(built, batch):
    objective, model = built
    loss, out = objective.loss("retrieval", model, batch, None, None)
    # Other filler content, and `valid` changed on every row but the first of each group.
    changed = dict(batch, input_ids=batch["input_ids"].copy(), valid=batch["valid"].copy())
    changed["input_ids"][2 * W : 3 * W, 1:3] = 5
    later = np.arange(G * W) % W > 0
    changed["valid"][later] = 1 - changed["valid"][later]
    loss2, out2 = objective.loss("retrieval", model, changed, None, None)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    for key in out:
        np.testing.assert_allclose(out2[key], out[key], rtol=1e-6, err_msg=key)


def test_ranking_loss_of_an_all_filler_batch_is_zero(built, batch):
    objective, model = built
    empty = dict(batch, valid=np.zeros_like(batch["valid"]))
    loss, out = objective.loss("retrieval", model, empty, None, None)
    assert float(loss) == 0.0
    assert float(out["loss"][1]) == 0.0 and float(out["hard_accuracy"][0]) == 0.0


def test_gradient_flows_only_through_the_chosen_rows(built, batch):
    objective, model = built
    scores = np.asarray(objective.scores(model, inputs_of(batch), None))
    hard = hinge_reference(scores, batch["valid"], objective.margin)["hard"]
    # Row numbers of each group's positive and chosen negatives, fixed constants.
    rows = np.concatenate([np.zeros((G, 1), np.int64), hard], 1) + (np.arange(G) * W)[:, None]
    rows = rows.ravel()
    valid = jnp.asarray(batch["valid"][::W], jnp.float32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    arrays = {k: jnp.asarray(v) for k, v in batch.items()}

    def loss_of(p):
        m = nnx.merge(graphdef, p, rest)
        return objective.loss("retrieval", m, arrays, None, None)[0]

    def fixed_loss_of(p):
        m = nnx.merge(graphdef, p, rest)
        chosen = {name: arrays[name][rows] for name in MODEL_INPUTS}
        prob = jax.nn.sigmoid(objective.scores(m, chosen, None)).reshape(G, 1 + K)
        hinge = jnp.maximum(0.0, objective.margin + prob[:, 1:] - prob[:, :1]).mean(1)
        return jnp.sum(hinge * valid) / jnp.sum(valid)

    both = jax.jit(lambda p: (jax.grad(loss_of)(p), jax.grad(fixed_loss_of)(p)))
    got, want = (nnx.to_pure_dict(g) for g in both(params))
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves)
    assert any(np.abs(w).max() > 0 for w in want_leaves)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7)
    # Only the "match" logit is scored: the "no match" column gets no gradient.
    bias = np.asarray(got["itm"]["dense"]["bias"])
    assert bias[0] == 0 and bias[1] != 0


# ---- the dual-encoder loss ---------------------------------------------------


def late_reference(tokens, token_mask, regions, region_mask):
    """Each real token's best cosine over the real regions, averaged over the tokens."""
    best = []
    for t in np.flatnonzero(token_mask):
        best.append(max(float(tokens[t] @ regions[n]) for n in np.flatnonzero(region_mask)))
    return float(np.mean(best))


def dual_reference(texts, images, image_index, valid, temperature, text_mask, region_mask):
    """The dual loss by loops. Text g: against its own group's W images and the
    other groups' own images (not another copy of its image, no fillers); its
    image: against every group's text (texts of groups whose own image is the
    same, and fillers, left out); symmetric mean over valid groups."""
    texts, images = np.asarray(texts, np.float64), np.asarray(images, np.float64)
    groups = len(texts)

    def score(g, row):
        return late_reference(texts[g], text_mask[g], images[row], region_mask[row]) / temperature

    per = []
    for g in range(groups):
        if not valid[g]:
            continue
        own = image_index[g * W]
        candidates = [score(g, g * W + j) for j in range(W)]
        candidates += [
            score(g, r * W)
            for r in range(groups)
            if r != g and valid[r] and image_index[r * W] != own
        ]
        t2i = -log_softmax(np.array(candidates))[0]
        texts_in = [r for r in range(groups) if r == g or (valid[r] and image_index[r * W] != own)]
        column = np.array([score(r, g * W) for r in texts_in])
        i2t = -log_softmax(column)[texts_in.index(g)]
        per.append((t2i + i2t) / 2)
    return float(np.mean(per))


def embedded(objective, model, batch):
    positives = {name: batch[name][::W] for name in MODEL_INPUTS}
    texts = np.asarray(objective.embed_texts(model, positives, None))
    images = np.asarray(objective.embed_images(model, inputs_of(batch), None))
    masks = (np.asarray(batch["text_mask"][::W]), np.asarray(batch["img_mask"]))
    return texts, images, masks


def test_dual_loss_is_symmetric_info_nce_against_every_image_of_the_batch(built, batch):
    objective, model = built
    objective = dataclasses.replace(objective, dual_weight=0.7, dual_temperature=0.003)
    image_index = batch["image_index"]
    valid = batch["valid"][::W]
    assert image_index[0] == image_index[W] and image_index[2 * W] == image_index[3 * W]
    texts, images, masks = embedded(objective, model, batch)
    want = dual_reference(texts, images, image_index, valid, 0.003, *masks)

    loss, out = objective.loss("retrieval", model, batch, None, None)
    np.testing.assert_allclose(out["dual_loss"][0], want * valid.sum(), rtol=1e-4)
    assert out["dual_loss"][1] == valid.sum()
    ranking, _ = dataclasses.replace(objective, dual_weight=0.0).loss(
        "retrieval", model, batch, None, None
    )
    np.testing.assert_allclose(loss, ranking + 0.7 * want, rtol=1e-4)


def test_dual_loss_does_not_count_the_shared_image_as_a_negative(built, batch):
    objective, model = built
    objective = dataclasses.replace(objective, dual_weight=1.0)
    texts, images, masks = embedded(objective, model, batch)
    valid = batch["valid"][::W]
    _, out = objective.loss("retrieval", model, batch, None, None)
    # Naming group 1's image differently makes group 0's image its negative: another loss.
    distinct = batch["image_index"].copy()
    distinct[W] = distinct.max() + 1
    temperature = objective.dual_temperature
    other = dual_reference(texts, images, distinct, valid, temperature, *masks)
    shared = dual_reference(texts, images, batch["image_index"], valid, temperature, *masks)
    assert abs(other - shared) > 1e-3
    np.testing.assert_allclose(out["dual_loss"][0] / out["dual_loss"][1], shared, rtol=1e-4)


def test_dual_loss_does_not_depend_on_filler_texts(built, batch):
    objective, model = built
    objective = dataclasses.replace(objective, dual_weight=1.0)
    _, out = objective.loss("retrieval", model, batch, None, None)
    texts, images, masks = embedded(objective, model, batch)
    valid = batch["valid"][::W]
    assert not valid.all()
    temperature = objective.dual_temperature
    want = dual_reference(texts, images, batch["image_index"], valid, temperature, *masks)
    np.testing.assert_allclose(out["dual_loss"][0] / out["dual_loss"][1], want, rtol=1e-4)
    changed = dict(batch, input_ids=batch["input_ids"].copy())
    filler = int(np.flatnonzero(valid == 0)[0])
    changed["input_ids"][filler * W : (filler + 1) * W, 1:3] = 5  # the filler group's text
    _, out2 = objective.loss("retrieval", model, changed, None, None)
    np.testing.assert_allclose(out2["dual_loss"][0], out["dual_loss"][0], rtol=1e-6)


# ---- predictions and embeddings ----------------------------------------------


def test_predict_in_each_mode(built, batch):
    objective, model = built
    rows = inputs_of(batch)
    cross = dataclasses.replace(objective, mode="cross").predict(model, rows)
    assert set(cross) == {"score"} and cross["score"].shape == (G * W,)
    # A row's score does not depend on the other rows of its batch.
    shuffle = np.random.default_rng(2).permutation(G * W)
    shuffled = objective.predict(model, {k: v[shuffle] for k, v in rows.items()})
    np.testing.assert_allclose(shuffled["score"], cross["score"][shuffle], rtol=1e-5, atol=1e-6)
    positives = {k: v[::W] for k, v in rows.items()}
    for mode, mask in (("text", "text_mask"), ("image", "img_mask")):
        out = dataclasses.replace(objective, mode=mode).predict(model, positives)
        assert set(out) == {"embedding", "mask"}
        length = positives[mask].shape[1]
        assert out["embedding"].shape == (G, length, CONFIG.hidden_size)
        np.testing.assert_array_equal(out["mask"], positives[mask])
        np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=-1), 1.0, rtol=1e-5)


def test_late_interaction_and_dual_scores_match_loops():
    rng = np.random.default_rng(11)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    tokens, regions = unit(rng.normal(size=(5, 6, 8))), unit(rng.normal(size=(4, 7, 8)))
    token_mask = (rng.random((5, 6)) < 0.7).astype(np.float32)
    region_mask = (rng.random((4, 7)) < 0.6).astype(np.float32)
    token_mask[:, 0] = region_mask[:, 0] = 1  # at least one real token and region
    want = np.array(
        [
            [late_reference(tokens[t], token_mask[t], regions[i], region_mask[i]) for i in range(4)]
            for t in range(5)
        ]
    )
    got = dual_scores((tokens, token_mask), (regions, region_mask), chunk=2)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    pair = late_interaction(
        jnp.asarray(tokens[1]), jnp.asarray(token_mask[1]), jnp.asarray(regions[2]), region_mask[2]
    )
    np.testing.assert_allclose(pair, want[1, 2], rtol=1e-5)


def test_text_embeddings_ignore_regions_and_image_embeddings_ignore_words(built, batch):
    objective, model = built
    rows = {k: v[::W] for k, v in inputs_of(batch).items()}
    rng = np.random.default_rng(7)
    other_regions = dict(
        rows,
        img_feat=rng.normal(size=rows["img_feat"].shape).astype(np.float32),
        img_pos=rng.uniform(size=rows["img_pos"].shape).astype(np.float32),
        img_mask=np.ones_like(rows["img_mask"]),
    )
    ids = rows["input_ids"].copy()
    ids[:, 1:] = rng.integers(4, CONFIG.vocab_size, ids[:, 1:].shape)
    other_words = dict(rows, input_ids=ids, text_mask=np.ones_like(rows["text_mask"]))

    texts = objective.embed_texts(model, rows, None)
    images = objective.embed_images(model, rows, None)
    np.testing.assert_allclose(objective.embed_texts(model, other_regions, None), texts, atol=1e-6)
    np.testing.assert_allclose(objective.embed_images(model, other_words, None), images, atol=1e-6)
    # Each still sees its own modality.
    assert np.abs(objective.embed_texts(model, other_words, None) - texts).max() > 1e-3
    assert np.abs(objective.embed_images(model, other_regions, None) - images).max() > 1e-3


def test_constructor_checks_and_pipeline_options():
    with pytest.raises(ValueError, match="hard_negatives"):
        Retrieval(negatives=3, hard_negatives=4)
    with pytest.raises(ValueError, match="hard_negatives"):
        Retrieval(negatives=3, hard_negatives=0)
    with pytest.raises(ValueError, match="unknown mode"):
        Retrieval(negatives=3, hard_negatives=1, mode="both")
    objective = Retrieval(negatives=3, hard_negatives=3)
    assert objective.pipeline_options == {"negatives_per_text": 3}
    assert set(objective.fields("retrieval")) == {*MODEL_INPUTS, "valid", "image_index"}


# ---- the two-stage ranking ---------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_two_stage_ranks_candidates_by_cross_then_the_rest_by_dual(dtype):
    rng = np.random.default_rng(4)
    t, i, k = 7, 12, 4
    dual = (rng.normal(size=(t, i)) * 3).astype(dtype)
    cross = (rng.normal(size=(t, k)) * 10 - 5).astype(dtype)
    candidates = np.stack([rng.permutation(i)[:k] for _ in range(t)])
    staged = two_stage_scores(dual, candidates, cross)
    assert staged.shape == (t, i)
    for row in range(t):
        by_cross = sorted(range(k), key=lambda j: -cross[row, j])
        first = [int(candidates[row, j]) for j in by_cross]
        rest = sorted(set(range(i)) - set(first), key=lambda c: -dual[row, c])
        np.testing.assert_array_equal(np.argsort(-staged[row], kind="stable"), first + rest)
    # Across texts too (image-to-text ranking): every cross-scored pair is above
    # every other pair.
    is_candidate = np.zeros((t, i), bool)
    is_candidate[np.arange(t)[:, None], candidates] = True
    assert staged[is_candidate].min() > staged[~is_candidate].max()


def test_two_stage_keeps_recall_at_1_when_candidates_hold_the_best_and_the_truth():
    rng = np.random.default_rng(5)
    t, i, k = 40, 15, 5
    full = rng.normal(size=(t, i))
    text_image = rng.integers(0, i, t)
    # Candidates: each text's 4 best images by the full scores, then its true
    # image if missing (else its 5th best), shuffled.
    order = np.argsort(-full, axis=1)
    candidates = np.empty((t, k), np.int64)
    for row in range(t):
        top = list(order[row, : k - 1])
        extra = text_image[row] if text_image[row] not in top else order[row, k - 1]
        candidates[row] = rng.permutation([*top, extra])
    assert (candidates == text_image[:, None]).any(1).all()
    cross = np.take_along_axis(full, candidates, axis=1)
    dual = rng.normal(size=(t, i))  # unrelated to the full scores
    staged = two_stage_scores(dual, candidates, cross)
    want = metrics.recall_at_k(full, text_image)
    got = metrics.recall_at_k(staged, text_image)
    assert 0 < want["t2i_r1"] < 1
    assert got["t2i_r1"] == want["t2i_r1"]
    # Within the candidates the truth is always found; the full ranking misses some.
    assert got["t2i_r5"] == 1.0 and want["t2i_r5"] < 1.0


def test_split_columns_are_the_sorted_distinct_images():
    text_images = np.array([7, 3, 7, 12, 3, 3])
    split = Split.of(types.SimpleNamespace(text_images=text_images))
    np.testing.assert_array_equal(split.images, [3, 7, 12])
    np.testing.assert_array_equal(split.text_image, [1, 0, 1, 2, 0, 0])
    np.testing.assert_array_equal(split.images[split.text_image], text_images)


def test_image_anchored_groups_mine_the_hardest_texts():
    """The second stream: an image with its own text first and `text_negatives`
    texts of other images; the loss groups rows by 1 + text_negatives (not 1 +
    negatives) and picks the hardest texts, as numpy does."""
    q = G - 1  # every other text of the pool, a group width unlike W
    objective = Retrieval(negatives=P, text_negatives=q, hard_negatives=K, margin=0.3)
    model = objective.build(CONFIG, nnx.Rngs(0))
    assert objective.pipeline_streams == {
        "": {"negatives_per_text": P},
        "_by_image": {"negatives_per_image": q},
    }
    pool = make_pool(2)
    images = np.repeat(np.arange(G), 1 + q)  # image g's group ...
    texts = np.concatenate([[g, *np.setdiff1d(np.arange(G), [g])] for g in range(G)])
    valid = np.ones(len(texts))
    batch = pair_batch(pool, texts, images, valid)
    scores = np.asarray(objective.scores(model, inputs_of(batch), None), np.float64)
    prob = expit(scores.reshape(G, 1 + q))
    hard = np.sort(prob[:, 1:], axis=1)[:, ::-1][:, :K]
    want = np.maximum(0.0, 0.3 + hard - prob[:, :1]).mean(1).mean()
    loss, out = objective.loss("retrieval_by_image", model, batch, None, None)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert out["loss"][1] == G
    with pytest.raises(ValueError, match="text_negatives"):
        Retrieval(negatives=P, text_negatives=1, hard_negatives=K)
