"""Task losses against numpy on the full (ungathered) model outputs, and the task mix."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from batches import random_batch
from flax import nnx

from uniter_jax.model import UniterConfig, UniterForPretraining
from uniter_jax.objectives import tasks
from uniter_jax.objectives.masking import mlm_mask, mrm_mask
from uniter_jax.objectives.wra import wra_distance

CONFIG = UniterConfig.preset(
    "tiny", vocab_size=150, img_dim=12, num_region_labels=9, hidden_dropout=0.0
)
SETTINGS = tasks.TaskSettings(mask_id=103, special_ids=(101, 102, 0), random_range=(104, 150))
B, LT, NR = 4, 9, 6


@pytest.fixture(scope="module")
def model():
    return UniterForPretraining(CONFIG, nnx.Rngs(3))


def make_batch(seed=0):
    batch = random_batch(
        seed,
        [9, 6, 4, 7],
        [6, 3, 5, 2],
        text=LT,
        regions=NR,
        img_dim=CONFIG.img_dim,
        ids=(104, 150),
        cls_id=101,
        sep_id=102,
        num_labels=CONFIG.num_region_labels,
    )
    batch["itm_label"] = np.array([1, 0, 1, 1], np.int32)
    return batch


def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def encode(model, batch, **overrides):
    inputs = {k: batch[k] for k in ("input_ids", "text_mask", "img_feat", "img_pos", "img_mask")}
    return model(**{**inputs, **overrides})


def test_mlm_loss_is_cross_entropy_over_masked_tokens_of_matched_pairs(model):
    batch, key = make_batch(), jax.random.PRNGKey(5)
    loss, metrics = tasks.mlm(model, batch, key, None, SETTINGS)
    masked, chosen = mlm_mask(
        key,
        batch["input_ids"],
        batch["text_mask"],
        mask_id=103,
        random_range=(104, 150),
        special_ids=(101, 102, 0),
        prob=SETTINGS.mask_prob,
    )
    chosen = np.asarray(chosen) & (batch["itm_label"] == 1)[:, None]
    logits = model.mlm_logits(encode(model, batch, input_ids=masked)[:, :LT])  # every position
    logp = log_softmax(logits)[chosen]
    labels = batch["input_ids"][chosen]
    want = -logp[np.arange(len(labels)), labels].mean()
    assert chosen[1].sum() == 0 and chosen.sum() >= 3  # the mismatched example is left out
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    correct = (logp.argmax(-1) == labels).sum()
    assert metrics["accuracy"][0] == correct and metrics["accuracy"][1] == chosen.sum()
    assert metrics["dropped"][0] == 0


def test_gather_overflow_is_counted_not_silent(model, monkeypatch):
    batch, key = make_batch(), jax.random.PRNGKey(5)
    monkeypatch.setattr(tasks, "max_masked", lambda *args: 2)  # room for 2 positions
    _, metrics = tasks.mlm(model, batch, key, None, SETTINGS)
    dropped, total = (float(x) for x in metrics["dropped"])
    assert total > 2  # the room overflows
    assert metrics["accuracy"][1] == 2 and dropped == total - 2


@pytest.mark.parametrize("length", [1, 2, 5, 40])
def test_masked_count_moments_match_the_masks(length):
    """Monte Carlo over the real masks, every position eligible, 4000 examples."""
    keys = jax.random.split(jax.random.PRNGKey(length), 4000)
    ids = jnp.full((1, length), 120, jnp.int32)
    ones = jnp.ones((1, length), jnp.int32)

    def mlm_count(key):
        _, chosen = mlm_mask(
            key,
            ids,
            ones,
            mask_id=103,
            random_range=(104, 150),
            special_ids=(),
            prob=SETTINGS.mask_prob,
        )
        return chosen.sum()

    mean, var = tasks.masked_count_moments(length, 0.15)
    for counts in (
        jax.vmap(mlm_count)(keys),
        jax.vmap(lambda k: mrm_mask(k, ones, prob=SETTINGS.mask_prob).sum())(keys),
    ):
        counts = np.asarray(counts, np.float64)
        assert abs(counts.mean() - mean) < 4 * np.sqrt(var / counts.size) + 1e-9
        np.testing.assert_allclose(counts.var(), var, rtol=0.15, atol=1e-9)


@pytest.mark.parametrize(
    "batch,length", [(16, 40), (16, 36), (256, 62), (4, 9), (1, 3), (16, 2), (64, 5), (8, 4)]
)
def test_gather_room_covers_the_count_tail(batch, length):
    """The exact distribution of a batch's worst-case count: B convolutions."""
    room = tasks.max_masked(batch, length, 0.15, 5.0)
    one = scipy.stats.binom.pmf(np.arange(length + 1), length, 0.15)
    one[1] += one[0]  # an example with no draw gets one position forced
    one[0] = 0.0
    total = np.ones(1)
    for _ in range(batch):
        total = np.convolve(total, one)
    overflow = total[room + 1 :].sum()
    assert batch <= room <= batch * length
    assert overflow < (1e-6 if batch * length >= 500 else 3e-5), overflow
    if batch * length >= 500:  # and far smaller than a flat 30% of the positions
        assert room < 0.23 * batch * length


def test_task_settings_reject_bad_values():
    with pytest.raises(ValueError, match=r"tasks\.mask_prob .*tasks\.gather_sigmas"):
        tasks.TaskSettings(**{**SETTINGS.__dict__, "mask_prob": 0.0, "gather_sigmas": -1.0})
    with pytest.raises(ValueError, match=r"tasks\.wra_iterations"):
        tasks.TaskSettings(**{**SETTINGS.__dict__, "wra_iterations": 0})
    with pytest.raises(ValueError, match=r"tasks\.gather_sigmas must be finite"):
        tasks.TaskSettings(**{**SETTINGS.__dict__, "gather_sigmas": float("inf")})
    for weight in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"tasks\.wra_weight must be finite and >= 0"):
            tasks.TaskSettings(**{**SETTINGS.__dict__, "wra_weight": weight})


def test_region_tasks_match_numpy(model):
    batch, key = make_batch(1), jax.random.PRNGKey(9)
    chosen = (
        np.asarray(mrm_mask(key, batch["img_mask"], prob=SETTINGS.mask_prob))
        & (batch["itm_label"] == 1)[:, None]
    )
    hidden = encode(model, batch, img_masked=jnp.asarray(chosen))[:, LT:]
    # MRFR: mean over chosen regions x feature dims of the squared error.
    loss, _ = tasks.mrfr(model, batch, key, None, SETTINGS)
    pred = np.asarray(model.mrfr_features(hidden), np.float64)[chosen]
    want = np.mean((pred - batch["img_feat"][chosen]) ** 2)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    # MRC-kl: KL(p || q) averaged over regions x classes; accuracy vs argmax(p[1:]) + 1.
    logp_q = log_softmax(model.mrc_logits(hidden))[chosen]
    p = batch["img_soft_labels"][chosen].astype(np.float64)
    kl = p * (np.log(p) - logp_q)
    loss, metrics = tasks.TASK_FNS["mrc_kl"](model, batch, key, None, SETTINGS)
    np.testing.assert_allclose(float(loss), kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"][0] / metrics["kl"][1], kl.sum(-1).mean(), rtol=1e-5)
    hard = p[:, 1:].argmax(-1) + 1
    assert metrics["accuracy"][0] == (logp_q.argmax(-1) == hard).sum()
    # MRC: cross-entropy against the hard label.
    loss, _ = tasks.TASK_FNS["mrc"](model, batch, key, None, SETTINGS)
    np.testing.assert_allclose(float(loss), -logp_q[np.arange(len(hard)), hard].mean(), rtol=1e-5)


def test_itm_loss_adds_weighted_wra(model):
    batch = make_batch(2)
    loss, metrics = tasks.itm(model, batch, None, None, SETTINGS)
    seq = encode(model, batch)
    logp = log_softmax(model.itm_logits(seq))
    labels = batch["itm_label"]
    ce = -logp[np.arange(B), labels].mean()
    d = np.asarray(
        wra_distance(seq[:, :LT], batch["text_mask"], seq[:, LT:], batch["img_mask"], SETTINGS.wra)
    )
    ot = (d[labels == 1].sum() - d[labels == 0].sum()) / B
    np.testing.assert_allclose(float(loss), ce + 0.1 * ot, rtol=1e-5)
    np.testing.assert_allclose(metrics["wra_matched"][0], d[labels == 1].sum(), rtol=1e-5)
    assert metrics["wra_mismatched"][1] == 1


def test_task_draws_follow_the_mix_and_are_stateless():
    mix = tasks.check_mix({"itm": 2, "mlm": 2, "mrfr": 1, "mrc_kl": 1, "mrc": 0})
    assert "mrc" not in mix
    draws = [tasks.task_for_step(mix, 0, s) for s in range(12_000)]
    counts = collections.Counter(draws)
    for name, ratio in mix.items():
        # 12k draws: a 4-sigma band around the expected share.
        p = ratio / 6
        assert abs(counts[name] / 12_000 - p) < 4 * np.sqrt(p * (1 - p) / 12_000)
    assert [tasks.task_for_step(mix, 0, s) for s in range(100, 200)] == draws[100:200]
    assert draws[:100] != [tasks.task_for_step(mix, 1, s) for s in range(100)]


@pytest.mark.parametrize(
    "mix, message",
    [({"itm": 1, "nsp": 1}, "unknown tasks"), ({"itm": 0}, "zero"), ({"mlm": -1}, ">= 0")],
)
def test_bad_mix_is_named(mix, message):
    with pytest.raises(ValueError, match=message):
        tasks.check_mix(mix)


def test_a_first_phase_draws_only_its_tasks_then_the_mix():
    mix = tasks.check_mix({"itm": 3, "mlm": 1, "mrfr": 1, "mrc": 1})
    schedule = tasks.MixSchedule(mix, first={"itm": 1.0}, first_steps=500)
    draws = [tasks.task_for_step(schedule.at(s), 0, s) for s in range(2_000)]
    assert set(draws[:500]) == {"itm"}
    assert set(draws[500:]) == set(mix)
    # After the first phase the draws are the plain mix's, step for step.
    assert draws[500:] == [tasks.task_for_step(mix, 0, s) for s in range(500, 2_000)]
    assert schedule.tasks == ("itm", "mlm", "mrc", "mrfr")
    # A first mix with a task the mix lacks still gets that task's input stream.
    assert tasks.MixSchedule({"mlm": 1.0}, {"itm": 1.0}, 10).tasks == ("itm", "mlm")
    assert tasks.MixSchedule({"mlm": 1.0}, {"itm": 1.0}, 0).tasks == ("mlm",)


def test_a_second_phase_follows_the_first_then_the_mix():
    mix = tasks.check_mix({"itm": 3, "mlm": 1, "mrfr": 1, "mrc": 1})
    schedule = tasks.MixSchedule(
        mix, first={"itm": 1.0, "mrc": 0.2}, first_steps=400, second={"mrc": 1.0}, second_steps=150
    )
    draws = [tasks.task_for_step(schedule.at(s), 0, s) for s in range(2_000)]
    assert set(draws[:400]) == {"itm", "mrc"}
    assert set(draws[400:550]) == {"mrc"}
    assert draws[550:] == [tasks.task_for_step(mix, 0, s) for s in range(550, 2_000)]
    # Without a first phase the second starts at the first micro-step.
    alone = tasks.MixSchedule(mix, second={"mrc": 1.0}, second_steps=150)
    assert [alone.at(s) for s in (0, 149, 150)] == [{"mrc": 1.0}, {"mrc": 1.0}, mix]
    assert tasks.MixSchedule({"mlm": 1.0}, second={"mrc": 1.0}, second_steps=5).tasks == (
        "mlm",
        "mrc",
    )
    assert tasks.MixSchedule({"mlm": 1.0}, second={"mrc": 1.0}).tasks == ("mlm",)


def test_one_draw_per_update_shares_the_stream_of_its_micro_steps():
    mix = tasks.check_mix({"itm": 2, "mlm": 2, "mrfr": 1, "mrc_kl": 1})
    each = tasks.MixSchedule(mix)
    assert [each.stream(s, 3) for s in range(300)] == [
        tasks.task_for_step(mix, 3, s) for s in range(300)
    ]
    per_update = tasks.MixSchedule(mix, first={"itm": 1.0}, first_steps=12, draw_every=6)
    streams = [per_update.stream(s, 3) for s in range(6 * 3000)]
    updates = [streams[i : i + 6] for i in range(0, len(streams), 6)]
    assert all(len(set(u)) == 1 for u in updates)
    assert [u[0] for u in updates[:2]] == ["itm", "itm"]  # the first 12 micro-steps
    assert [u[0] for u in updates[2:]] == [tasks.task_for_step(mix, 3, d) for d in range(2, 3000)]
    counts = collections.Counter(u[0] for u in updates[2:])
    for name, ratio in mix.items():
        p = ratio / 6
        assert abs(counts[name] / 2998 - p) < 4 * np.sqrt(p * (1 - p) / 2998)
    with pytest.raises(ValueError, match="per task draw must be >= 1"):
        tasks.MixSchedule(mix, draw_every=0)


@pytest.mark.parametrize(
    ("first", "steps", "message"), [({}, 10, "first_mix gives no task"), ({"itm": 1}, -1, ">= 0")]
)
def test_bad_first_phase_is_named(first, steps, message):
    with pytest.raises(ValueError, match=message):
        tasks.MixSchedule({"itm": 1.0}, first, steps)


@pytest.mark.parametrize(
    ("second", "steps", "message"),
    [({}, 10, "second_mix gives no task"), ({"mrc": 1}, -1, "second_steps must be >= 0")],
)
def test_bad_second_phase_is_named(second, steps, message):
    with pytest.raises(ValueError, match=message):
        tasks.MixSchedule({"itm": 1.0}, second=second, second_steps=steps)
