"""NLVR2 (pair, triplet, pair-attn) and VCR objectives against numpy."""

import csv

import jax
import numpy as np
import pytest
from batches import random_batch
from flax import nnx
from scipy.special import log_softmax, softmax
from tiny_model import tiny_config

from uniter_jax.data.text_store import TextStore, TextStoreWriter
from uniter_jax.downstream import vcr
from uniter_jax.downstream.nlvr2 import AttentionPool, Nlvr2
from uniter_jax.downstream.vcr import Vcr

CONFIG = tiny_config(type_vocab_size=3)
VCR_CONFIG = CONFIG.replace(type_vocab_size=2)
LT, NR = 6, 5
MASKED = -1e4  # the additive score of padding, as in the original

# ---------------------------------------------------------------- helpers


def random_rows(text_len, num_regions, seed):
    """Independent examples with the given text and region counts."""
    return random_batch(
        seed,
        text_len,
        num_regions,
        text=LT,
        regions=NR,
        img_dim=CONFIG.img_dim,
        ids=(4, CONFIG.vocab_size),
        cls_id=1,
    )


def repad(batch, seed, extra=3):
    """The same batch with other (even NaN) padded-region inputs and `extra`
    more padded region slots appended."""
    rng = np.random.default_rng(seed)
    out = dict(batch)
    rows, _, dim = batch["img_feat"].shape
    feat = np.concatenate([batch["img_feat"], np.zeros((rows, extra, dim), np.float32)], 1)
    pos = np.concatenate([batch["img_pos"], np.zeros((rows, extra, 7), np.float32)], 1)
    mask = np.concatenate([batch["img_mask"], np.zeros((rows, extra), np.int32)], 1)
    padded = mask == 0
    feat[padded] = rng.normal(0, 50, (padded.sum(), dim))
    pos[padded] = rng.uniform(-3, 3, (padded.sum(), 7))
    row, slot = np.argwhere(padded)[0]
    feat[row, slot, 0] = np.nan
    out["img_feat"], out["img_pos"], out["img_mask"] = feat, pos, mask
    return out


def randomize(module, seed, std):
    """Replaces every parameter of `module` (biases too) with normal(0, std) values."""
    state = nnx.state(module, nnx.Param)
    rng = np.random.default_rng(seed)
    fresh = jax.tree.map(
        lambda a: rng.normal(0, std, a.shape).astype(np.float32), nnx.to_pure_dict(state)
    )
    nnx.replace_by_pure_dict(state, fresh)
    nnx.update(module, state)


def scramble(model, seed, std=0.15):
    """Weights larger than the 0.02 init, so outputs clearly depend on inputs:
    normal(0, std) matrices, normal(0, 0.1) biases, LayerNorm scales near 1."""
    state = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(seed)

    def draw(path, a):
        name = str(path[-1].key)
        if name == "scale":
            return (1.0 + rng.normal(0, 0.1, a.shape)).astype(np.float32)
        return rng.normal(0, 0.1 if name == "bias" else std, a.shape).astype(np.float32)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state)))
    nnx.update(model, state)


def f64(x):
    return np.asarray(x, np.float64)


def np_linear(layer, x):
    return f64(x) @ f64(layer.kernel[...]) + f64(layer.bias[...])


def np_attention(attention, x, context, context_mask, num_heads):
    """Multi-head attention of queries from `x` over keys/values from `context`."""
    q = np_linear(attention.query, x)
    k, v = np_linear(attention.key, context), np_linear(attention.value, context)
    rows, lq, hidden = q.shape
    d = hidden // num_heads

    def split(y):
        return y.reshape(rows, -1, num_heads, d).transpose(0, 2, 1, 3)

    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d)
    scores = scores + (1.0 - context_mask)[:, None, None, :] * MASKED
    mixed = softmax(scores, -1) @ split(v)
    return np_linear(attention.out, mixed.transpose(0, 2, 1, 3).reshape(rows, lq, hidden))


def np_attention_pool(pool, x, mask):
    score = np.maximum(np_linear(pool.score, x)[..., 0], 0.0) + (1.0 - mask) * MASKED
    return np.einsum("bl,blh->bh", softmax(score, -1), f64(x))


def np_cross_entropy(logits, labels):
    return -log_softmax(f64(logits), -1)[np.arange(len(labels)), labels]


# ---------------------------------------------------------------- NLVR2

STATEMENTS = 3
TEXT_LEN = np.array([6, 4, 3])  # per statement
REGIONS = np.array([5, 3, 2, 5, 4, 1])  # per row: left, right, left, right, ...
LABELS = np.array([1, 0, 1], np.int32)  # per statement
VALID = np.array([1, 0, 1], np.int32)  # statement 1 is a padding statement


def nlvr2_batch(seed=0):
    """Rows 2k and 2k+1: statement k with its left and its right image."""
    batch = random_rows(np.repeat(TEXT_LEN, 2), REGIONS, seed)
    for name in ("input_ids", "text_mask"):
        batch[name] = np.repeat(batch[name][0::2], 2, axis=0)
    batch["label"] = np.repeat(LABELS, 2)
    batch["valid"] = np.repeat(VALID, 2)
    return batch


NLVR2_BATCH = nlvr2_batch()


def build_nlvr2(variant, seed=0):
    objective = Nlvr2(variant)
    model = objective.build(CONFIG, nnx.Rngs(seed))
    scramble(model, seed + 10)
    return objective, model


@pytest.fixture(scope="module", params=["pair", "triplet", "pair-attn"])
def nlvr2(request):
    return build_nlvr2(request.param)


def encode_rows(model, batch, types):
    return model(
        batch["input_ids"],
        batch["text_mask"],
        batch["img_feat"],
        batch["img_pos"],
        batch["img_mask"],
        img_type_ids=types,
    )


def side_types(batch):
    """1 for the left image's regions (even rows), 2 for the right's (odd rows)."""
    rows = batch["img_mask"].shape[0]
    return np.where(np.arange(rows)[:, None] % 2 == 0, 1, 2) * np.ones_like(batch["img_mask"])


def test_nlvr2_pair_is_the_head_on_both_pooled_images():
    objective, model = build_nlvr2("pair")
    pooled = f64(model.uniter.pool(encode_rows(model, NLVR2_BATCH, side_types(NLVR2_BATCH))))
    features = np.concatenate([pooled[0::2], pooled[1::2]], axis=1)
    want = np_linear(model.head, features)
    got = np.asarray(objective.logits(model, NLVR2_BATCH, None))
    assert got.shape == (STATEMENTS, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Not the same as encoding both images with the default region type.
    same_type = f64(model.uniter.pool(encode_rows(model, NLVR2_BATCH, None)))
    other = np_linear(model.head, np.concatenate([same_type[0::2], same_type[1::2]], 1))
    assert np.abs(other - want).max() > 1e-3


def test_nlvr2_triplet_is_one_sequence_with_both_images():
    objective, model = build_nlvr2("triplet")
    b = NLVR2_BATCH
    left, right = slice(0, None, 2), slice(1, None, 2)
    feat = np.concatenate([b["img_feat"][left], b["img_feat"][right]], 1)
    pos = np.concatenate([b["img_pos"][left], b["img_pos"][right]], 1)
    mask = np.concatenate([b["img_mask"][left], b["img_mask"][right]], 1)
    types = np.concatenate([np.ones((STATEMENTS, NR)), 2 * np.ones((STATEMENTS, NR))], 1)

    def reference(types):
        sequence = model(
            b["input_ids"][left], b["text_mask"][left], feat, pos, mask, img_type_ids=types
        )
        assert sequence.shape == (STATEMENTS, LT + 2 * NR, CONFIG.hidden_size)
        return np_linear(model.head, f64(model.uniter.pool(sequence)))

    want = reference(types.astype(np.int32))
    got = np.asarray(objective.logits(model, b, None))
    assert got.shape == (STATEMENTS, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Type 1 for both images would give other logits.
    assert np.abs(reference(np.ones_like(mask)) - want).max() > 1e-3


def np_pair_attention_head(head, left, right, left_mask, right_mask, num_heads):
    l2r = np_attention(head.left_to_right, left, right, right_mask, num_heads)
    r2l = np_attention(head.right_to_left, right, left, left_mask, num_heads)

    def fuse(attended, own):
        return np.maximum(np_linear(head.fuse, np.concatenate([attended, f64(own)], -1)), 0)

    left_pooled = np_attention_pool(head.pool, fuse(l2r, left), left_mask)
    right_pooled = np_attention_pool(head.pool, fuse(r2l, right), right_mask)
    return np_linear(head.out, np.concatenate([left_pooled, right_pooled], -1))


def test_nlvr2_pair_attn_matches_a_numpy_head_on_the_encoded_rows():
    objective, model = build_nlvr2("pair-attn")
    b = NLVR2_BATCH
    sequence = f64(encode_rows(model, b, side_types(b)))
    mask = np.concatenate([b["text_mask"], b["img_mask"]], 1).astype(np.float64)
    want = np_pair_attention_head(
        model.head, sequence[0::2], sequence[1::2], mask[0::2], mask[1::2], CONFIG.num_heads
    )
    got = np.asarray(objective.logits(model, b, None))
    assert got.shape == (STATEMENTS, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_nlvr2_pair_attn_head_ignores_padded_positions():
    _, model = build_nlvr2("pair-attn")
    rng = np.random.default_rng(4)
    rows, length, hidden = 2, 9, CONFIG.hidden_size
    left, right = rng.normal(size=(2, rows, length, hidden)).astype(np.float32)
    left_mask = (np.arange(length) < np.array([[9], [5]])).astype(np.int32)
    right_mask = (np.arange(length) < np.array([[3], [7]])).astype(np.int32)
    logits = np.asarray(model.head(left, right, left_mask, right_mask, None))
    assert logits.shape == (rows, 2)
    noisy_left = np.where(left_mask[..., None] > 0, left, rng.normal(0, 5, left.shape))
    noisy_right = np.where(right_mask[..., None] > 0, right, rng.normal(0, 5, right.shape))
    changed = np.asarray(
        model.head(
            noisy_left.astype(np.float32),
            noisy_right.astype(np.float32),
            left_mask,
            right_mask,
            None,
        )
    )
    np.testing.assert_allclose(changed, logits, rtol=1e-5, atol=1e-6)
    # A change at a valid position is seen.
    moved = left.copy()
    moved[1, 0] += 1.0
    assert (
        np.abs(np.asarray(model.head(moved, right, left_mask, right_mask, None)) - logits).max()
        > 1e-4
    )


def test_attention_pool_matches_numpy():
    pool = AttentionPool(CONFIG, nnx.Rngs(5))
    randomize(pool, 6, 0.3)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 6, CONFIG.hidden_size)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 0, 1]], np.int32)
    got = np.asarray(pool(x, mask, None))
    np.testing.assert_allclose(got, np_attention_pool(pool, x, mask), rtol=1e-5, atol=1e-5)
    # The case is not degenerate: ReLU clips some scores, weights are not uniform.
    raw = np_linear(pool.score, x)[..., 0]
    assert (raw < 0).any() and (raw > 0).any()
    assert np.abs(got[0] - x[0].mean(0)).max() > 1e-2
    # Padding gets no weight, whatever it holds.
    assert (
        np.abs(np.asarray(pool(np.where(mask[..., None] > 0, x, 1e3), mask, None)) - got).max()
        < 1e-4
    )


def test_nlvr2_padded_regions_change_nothing(nlvr2):
    objective, model = nlvr2
    logits = np.asarray(objective.logits(model, NLVR2_BATCH, None))
    changed = repad(NLVR2_BATCH, seed=8)
    assert changed["img_mask"].shape[1] == NR + 3
    again = np.asarray(objective.logits(model, changed, None))
    assert np.isfinite(again).all()
    np.testing.assert_allclose(again, logits, rtol=1e-5, atol=1e-5)
    # A kept region's change is seen.
    feat = NLVR2_BATCH["img_feat"].copy()
    feat[3, 0] += 1.0  # the right image of statement 1
    moved = np.asarray(objective.logits(model, dict(NLVR2_BATCH, img_feat=feat), None))
    assert np.abs(moved[1] - logits[1]).max() > 1e-4
    np.testing.assert_allclose(moved[[0, 2]], logits[[0, 2]], rtol=1e-5, atol=1e-6)


def test_nlvr2_loss_is_cross_entropy_per_valid_statement(nlvr2):
    objective, model = nlvr2
    logits = np.asarray(objective.logits(model, NLVR2_BATCH, None), np.float64)
    nll = np_cross_entropy(logits, LABELS)
    keep = VALID > 0
    loss, metrics = objective.loss("nlvr2", model, NLVR2_BATCH, None, None)
    np.testing.assert_allclose(loss, nll[keep].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"][0], nll[keep].sum(), rtol=1e-5)
    assert metrics["loss"][1] == keep.sum() == metrics["accuracy"][1]
    assert metrics["accuracy"][0] == (logits.argmax(-1) == LABELS)[keep].sum()
    # Only the even row's label counts, and an invalid statement's label not at all.
    relabel = NLVR2_BATCH["label"].copy()
    relabel[1::2] = 1 - relabel[1::2]
    relabel[2] = 1 - relabel[2]  # the invalid statement
    loss2, _ = objective.loss("nlvr2", model, dict(NLVR2_BATCH, label=relabel), None, None)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    # ...but a valid statement's label does.
    flipped = NLVR2_BATCH["label"].copy()
    flipped[0] = 1 - flipped[0]
    loss3, _ = objective.loss("nlvr2", model, dict(NLVR2_BATCH, label=flipped), None, None)
    want3 = (np_cross_entropy(logits, np.array([1 - LABELS[0], *LABELS[1:]]))[keep]).mean()
    np.testing.assert_allclose(loss3, want3, rtol=1e-5)


def test_nlvr2_predict_gives_both_rows_the_statement_label(nlvr2):
    objective, model = nlvr2
    logits = np.asarray(objective.logits(model, NLVR2_BATCH, None))
    predicted = objective.predict(model, NLVR2_BATCH)
    label = np.asarray(predicted["label"])
    assert label.shape == (2 * STATEMENTS,)
    for k in range(STATEMENTS):
        assert label[2 * k] == label[2 * k + 1] == logits[k].argmax()
        np.testing.assert_allclose(predicted["logit"][2 * k], logits[k], rtol=1e-6)
        np.testing.assert_allclose(predicted["logit"][2 * k + 1], logits[k], rtol=1e-6)


@pytest.mark.parametrize("variant", ["pair", "triplet", "pair-attn"])
def test_nlvr2_third_segment_type_is_used(variant):
    objective, model = build_nlvr2(variant)
    table = np.asarray(model.uniter.embeddings.token_type.embedding[...])
    assert table.shape == (3, CONFIG.hidden_size) and np.abs(table[2]).max() > 0
    logits = np.asarray(objective.logits(model, NLVR2_BATCH, None))
    other = nnx.clone(model)
    other.uniter.embeddings.token_type.embedding[...] = table * np.array([[1], [1], [-3]])
    changed = np.asarray(objective.logits(other, NLVR2_BATCH, None))
    assert np.abs(changed - logits).max() > 1e-3


def test_nlvr2_rejects_two_segment_types_and_unknown_variants():
    with pytest.raises(ValueError, match="type_vocab_size"):
        Nlvr2("pair").build(VCR_CONFIG, nnx.Rngs(0))
    with pytest.raises(ValueError, match="variant"):
        Nlvr2("quad")
    assert Nlvr2().model_overrides == {"type_vocab_size": 3}


# ---------------------------------------------------------------- VCR

GROUPS = 4


@pytest.fixture(scope="module")
def vcr_model():
    objective = Vcr()
    model = objective.build(VCR_CONFIG, nnx.Rngs(3))
    scramble(model, 13)
    rows = GROUPS * vcr.GROUP_SIZE
    rng = np.random.default_rng(9)
    batch = random_rows(rng.integers(2, LT + 1, rows), rng.integers(1, NR + 1, rows), 10)
    batch["valid"] = np.ones(rows, np.int32)
    batch["valid"][12:] = 0  # group 3 is padding
    batch["label"] = np.zeros(rows, np.int32)
    right = np.asarray(objective.logits(model, batch, None))[:, 1].reshape(GROUPS, 4)
    best = right.argmax(-1)
    # Group 0: labelled at the model's choice (right); group 1: elsewhere
    # (wrong); group 2: unlabelled; group 3: labelled at the choice but invalid.
    truth = np.array([best[0], (best[1] + 2) % 4, 0, best[3]])
    batch["label"] = np.eye(4, dtype=np.int32)[truth].reshape(-1)
    batch["label"][8:12] = -1
    return objective, model, batch


def test_vcr_loss_is_two_class_cross_entropy_of_labelled_valid_rows(vcr_model):
    objective, model, batch = vcr_model
    logits = np.asarray(objective.logits(model, batch, None), np.float64)
    assert logits.shape == (GROUPS * 4, 2)
    keep = (batch["valid"] > 0) & (batch["label"] >= 0)
    assert keep.sum() == 8
    nll = np_cross_entropy(logits[keep], batch["label"][keep])
    loss, metrics = objective.loss("vcr_qa", model, batch, None, None)
    np.testing.assert_allclose(loss, nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"][0], nll.sum(), rtol=1e-5)
    assert metrics["loss"][1] == 8
    # Per question: is the candidate with the highest "right" logit the labelled one?
    correct, counted = 0, 0
    for g in range(GROUPS):
        rows = slice(4 * g, 4 * g + 4)
        if not keep[rows].all():
            continue
        counted += 1
        correct += logits[rows, 1].argmax() == batch["label"][rows].argmax()
    assert (correct, counted) == (1, 2)
    assert metrics["accuracy"] == (correct, counted)
    np.testing.assert_allclose(objective.predict(model, batch)["score"], logits[:, 1], rtol=1e-6)


def test_vcr_invalid_group_never_counts_and_a_labelled_one_does(vcr_model):
    objective, model, batch = vcr_model
    loss, metrics = objective.loss("vcr_qa", model, batch, None, None)
    logits = np.asarray(objective.logits(model, batch, None))
    # Group 3 (invalid) labelled elsewhere: nothing changes.
    moved = batch["label"].copy()
    moved[12:] = np.roll(moved[12:], 1)
    loss2, metrics2 = objective.loss("vcr_qa", model, dict(batch, label=moved), None, None)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    assert metrics2["accuracy"] == metrics["accuracy"]
    # Group 2 labelled (at candidate 1): its four rows and the question count.
    labelled = batch["label"].copy()
    labelled[8:12] = [0, 1, 0, 0]
    loss3, metrics3 = objective.loss("vcr_qa", model, dict(batch, label=labelled), None, None)
    keep = np.arange(16) < 12
    want = np_cross_entropy(logits[keep], labelled[keep]).mean()
    np.testing.assert_allclose(loss3, want, rtol=1e-5)
    assert metrics3["loss"][1] == 12 and metrics3["accuracy"][1] == 3
    hit = logits[8:12, 1].argmax() == 1
    assert metrics3["accuracy"][0] == metrics["accuracy"][0] + hit


STORE_VOCAB = {"size": 50, "pad_id": 0, "cls_id": 1, "sep_id": 2, "mask_id": 3}


def write_vcr_store(directory, task, mode, questions):
    """`questions`: (annot id, correct candidate or None) -> one group of 4 rows."""
    with TextStoreWriter(directory, task=task, vocab=STORE_VOCAB, max_txt_len=8) as writer:
        for group, (annot, correct) in enumerate(questions):
            for k in range(4):
                label = -1 if correct is None else int(k == correct)
                writer.add(
                    f"{annot}#{mode}#{k}",
                    f"img_{annot}",
                    [5 + k, 6],
                    label=label,
                    group=group,
                    slot=k,
                )
    return TextStore(directory)


def scores_choosing(choices, seed):
    """Random scores of groups of 4 whose arg-max is `choices`."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(-1, 1, (len(choices), 4))
    scores[np.arange(len(choices)), choices] += 3.0
    return scores.reshape(-1).astype(np.float32)


def test_vcr_score_matches_a_per_question_count(tmp_path):
    # annot id: (correct answer, chosen answer); a4 is unlabelled.
    qa = {"a0": (2, 2), "a1": (0, 0), "a2": (1, 1), "a3": (3, 0), "a4": (None, 1)}
    # Another order; a2 has no QA->R group; a3's rationale is right, its answer not.
    qar = {"a3": (1, 1), "a0": (0, 0), "a1": (2, 3)}
    texts = {
        "vcr_qa": write_vcr_store(
            str(tmp_path / "qa"), "vcr_qa", "qa", [(a, c) for a, (c, _) in qa.items()]
        ),
        "vcr_qar": write_vcr_store(
            str(tmp_path / "qar"), "vcr_qar", "qar", [(a, c) for a, (c, _) in qar.items()]
        ),
    }
    outputs = {
        "vcr_qa": {"score": scores_choosing([c for _, c in qa.values()], 11)},
        "vcr_qar": {"score": scores_choosing([c for _, c in qar.values()], 12)},
    }
    got = vcr.score(outputs, texts)
    # The count, one question at a time, from the stores' own labels and ids.
    results = {}
    for task in ("vcr_qa", "vcr_qar"):
        labels = texts[task].arrays["label"].reshape(-1, 4)
        choice = outputs[task]["score"].reshape(-1, 4).argmax(-1)
        ids = [str(t).split("#")[0] for t in texts[task].text_ids[::4]]
        results[task] = {
            a: bool(labels[q, choice[q]] == 1) for q, a in enumerate(ids) if labels[q].min() >= 0
        }
    answered, reasoned = results["vcr_qa"], results["vcr_qar"]
    both = [answered[a] and reasoned.get(a, False) for a in answered]
    assert got["qa_accuracy"] == pytest.approx(np.mean(list(answered.values())))
    assert got["qar_accuracy"] == pytest.approx(np.mean(list(reasoned.values())))
    assert got["q_ar_accuracy"] == pytest.approx(np.mean(both))
    # By hand: Q->A a0, a1, a2 of four; QA->R a3, a0 of three; Q->AR only a0.
    assert (got["qa_accuracy"], got["qar_accuracy"], got["q_ar_accuracy"]) == pytest.approx(
        (3 / 4, 2 / 3, 1 / 4)
    )
    # Without QA->R outputs there is no joint score.
    alone = vcr.score({"vcr_qa": outputs["vcr_qa"]}, texts)
    assert set(alone) == {"qa_accuracy"} and alone["qa_accuracy"] == pytest.approx(3 / 4)


def write_unlabelled_qar(directory, annots):
    """An unlabelled QA->R store: per question, 4 groups, rationales under answer j."""
    with TextStoreWriter(directory, task="vcr_qar", vocab=STORE_VOCAB, max_txt_len=8) as writer:
        group = 0
        for annot in annots:
            for j in range(4):
                for k in range(4):
                    writer.add(
                        f"{annot}#qar#a{j}#{k}",
                        f"img_{annot}",
                        [5 + k, 6],
                        label=-1,
                        group=group,
                        slot=k,
                    )
                group += 1
    return TextStore(directory)


def test_vcr_test_split_writes_the_leaderboard_csv(tmp_path):
    annots = ["test-10", "test-2", "test-7"]  # rows are sorted by the number: 2, 7, 10
    texts = {
        "vcr_qa": write_vcr_store(
            str(tmp_path / "qa"), "vcr_qa", "qa", [(a, None) for a in annots]
        ),
        "vcr_qar": write_unlabelled_qar(str(tmp_path / "qar"), annots),
    }
    rng = np.random.default_rng(5)
    outputs = {
        task: {"score": rng.normal(0, 2, len(texts[task])).astype(np.float32)} for task in texts
    }
    vcr.write_results(outputs, texts, str(tmp_path / "results_vcr_test.json"))
    with open(tmp_path / "leaderboard_vcr_test.csv") as f:
        rows = list(csv.reader(f))
    header = ["annot_id", *(f"answer_{k}" for k in range(4))]
    header += [f"rationale_conditioned_on_a{j}_{k}" for j in range(4) for k in range(4)]
    assert rows[0] == header and [r[0] for r in rows[1:]] == ["test-2", "test-7", "test-10"]

    def softmax4(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    for row in rows[1:]:
        q = annots.index(row[0])
        answer = softmax4(outputs["vcr_qa"]["score"][4 * q : 4 * q + 4].astype(np.float64))
        rationales = [
            softmax4(
                outputs["vcr_qar"]["score"][16 * q + 4 * j : 16 * q + 4 * j + 4].astype(np.float64)
            )
            for j in range(4)
        ]
        np.testing.assert_allclose(
            np.array(row[1:], float), np.concatenate([answer, *rationales]), atol=1e-6
        )
    # A labelled (val) split has no leaderboard file.
    labelled = {
        "vcr_qa": texts["vcr_qa"],
        "vcr_qar": write_vcr_store(
            str(tmp_path / "qar2"), "vcr_qar", "qar", [(a, 1) for a in annots]
        ),
    }
    outputs["vcr_qar"] = {"score": outputs["vcr_qar"]["score"][:12]}
    vcr.write_results(outputs, labelled, str(tmp_path / "results_vcr_val.json"))
    assert not (tmp_path / "leaderboard_vcr_val.csv").exists()
