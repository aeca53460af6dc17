"""WRA against POT's Sinkhorn and the envelope-theorem gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest

from uniter_jax.objectives.wra import WraSettings, cosine_cost, wra_distance, wra_loss

EPS = 0.1


def batch(seed):
    rng = np.random.default_rng(seed)
    b, lt, nr, h = 3, 7, 5, 16
    text = rng.normal(size=(b, lt, h)).astype(np.float32)
    regions = rng.normal(size=(b, nr, h)).astype(np.float32)
    text_mask = (np.arange(lt)[None] < np.array([[7], [4], [2]])).astype(np.int32)
    img_mask = (np.arange(nr)[None] < np.array([[5], [3], [1]])).astype(np.int32)
    return text, text_mask, regions, img_mask


def numpy_cost(t, r):
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    r = r / np.linalg.norm(r, axis=-1, keepdims=True)
    return 1.0 - t @ r.T


def pot_plan(t, r):
    cost = numpy_cost(t.astype(np.float64), r.astype(np.float64))
    a, b = np.full(len(t), 1 / len(t)), np.full(len(r), 1 / len(r))
    return cost, ot.sinkhorn(a, b, cost, reg=EPS, numItermax=100_000, stopThr=1e-13)


@pytest.mark.parametrize("seed", [0, 1])
def test_distance_equals_pot_sinkhorn2_on_valid_positions(seed):
    text, tm, regions, im = batch(seed)
    got = np.asarray(wra_distance(text, tm, regions, im, WraSettings(epsilon=EPS, iterations=2000)))
    for i in range(len(text)):
        t, r = text[i][tm[i] == 1], regions[i][im[i] == 1]
        cost = numpy_cost(t.astype(np.float64), r.astype(np.float64))
        a, b = np.full(len(t), 1 / len(t)), np.full(len(r), 1 / len(r))
        want = ot.sinkhorn2(a, b, cost, reg=EPS, numItermax=100_000, stopThr=1e-13)
        np.testing.assert_allclose(got[i], want, rtol=1e-4)


def test_gradient_is_the_envelope_gradient():
    text, tm, regions, im = batch(2)
    weights = jnp.array([1.0, -1.0, 1.0])

    def ours(t, r):
        return jnp.sum(
            weights * wra_distance(t, tm, r, im, WraSettings(epsilon=EPS, iterations=2000))
        )

    plans = []
    for i in range(len(text)):
        _, plan = pot_plan(text[i][tm[i] == 1], regions[i][im[i] == 1])
        full = np.zeros((text.shape[1], regions.shape[1]))
        full[np.ix_(tm[i] == 1, im[i] == 1)] = plan
        plans.append(full)
    plans = jnp.asarray(np.stack(plans), jnp.float32)

    def envelope(t, r):  # the plan held fixed: gradient through the cost only
        costs = jax.vmap(cosine_cost)(t, r)
        return jnp.sum(weights * jnp.sum(costs * plans, axis=(1, 2)))

    got = jax.grad(ours, argnums=(0, 1))(text, regions)
    want = jax.grad(envelope, argnums=(0, 1))(text, regions)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4)
        assert np.isfinite(np.asarray(g)).all()
    # Padded positions get no gradient.
    assert np.abs(np.asarray(got[0])[tm == 0]).max() == 0


def test_loss_signs_matched_and_mismatched():
    distance = jnp.array([0.2, 0.9, 0.4, 1.1])
    labels = jnp.array([1, 0, 1, 0])
    np.testing.assert_allclose(wra_loss(distance, labels), (0.2 + 0.4 - 0.9 - 1.1) / 4, rtol=1e-6)


# ---- IPOT, the original's solver ---------------------------------------------


def numpy_ipot(cost, text_mask, img_mask, beta, iterations):
    """`(distance, plan [Lt, Nr])` of IPOT in float64, laid out as the original
    computes it: plan and kernel region-major `[Nr, Lt]`, padded scalings pushed
    to ~0 by a large additive term in their denominators, the plan masked at
    the end."""
    x_pad, y_pad = text_mask == 0, img_mask == 0
    x_len, y_len = (~x_pad).sum(), (~y_pad).sum()
    joint_pad = (x_pad[:, None] | y_pad[None, :]).T
    sigma = np.where(x_pad, 0.0, 1.0 / x_len)
    plan = np.where(joint_pad, 0.0, 1.0)
    kernel = np.where(joint_pad, 0.0, np.exp(-cost.T / beta))
    for _ in range(iterations):
        q = kernel * plan
        delta = 1.0 / (y_len * (q @ sigma) + 1e4 * y_pad)
        sigma = 1.0 / (x_len * (delta @ q) + 1e4 * x_pad)
        plan = delta[:, None] * q * sigma[None, :]
    plan = np.where(joint_pad, 0.0, plan)
    return float(np.sum(cost.T * plan)), plan.T


@pytest.mark.parametrize("seed", [0, 1])
def test_ipot_distance_matches_an_independent_float64_ipot(seed):
    text, tm, regions, im = batch(seed)
    got = np.asarray(
        wra_distance(text, tm, regions, im, WraSettings(solver="ipot", beta=0.5, iterations=50))
    )
    for i in range(len(text)):
        cost = numpy_cost(text[i].astype(np.float64), regions[i].astype(np.float64))
        want, _ = numpy_ipot(cost, tm[i], im[i], beta=0.5, iterations=50)
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-6)


def test_ipot_gradient_is_the_envelope_gradient():
    """Through the cost only, the plan (the float64 IPOT's) held fixed."""
    text, tm, regions, im = batch(4)
    weights = jnp.array([1.0, -1.0, 1.0])

    def ours(t, r):
        return jnp.sum(
            weights * wra_distance(t, tm, r, im, WraSettings(solver="ipot", iterations=50))
        )

    plans = []
    for i in range(len(text)):
        cost = numpy_cost(text[i].astype(np.float64), regions[i].astype(np.float64))
        plans.append(numpy_ipot(cost, tm[i], im[i], beta=0.5, iterations=50)[1])
    plans = jnp.asarray(np.stack(plans), jnp.float32)

    def envelope(t, r):
        return jnp.sum(weights * jnp.sum(jax.vmap(cosine_cost)(t, r) * plans, axis=(1, 2)))

    got = jax.grad(ours, argnums=(0, 1))(text, regions)
    want = jax.grad(envelope, argnums=(0, 1))(text, regions)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert np.abs(np.asarray(got[0])[tm == 0]).max() == 0


def test_ipot_approaches_the_exact_transport_distance():
    """The proximal iterations converge to the unregularised optimum (POT's
    network simplex), which entropic Sinkhorn at epsilon 0.1 does not reach."""
    text, tm, regions, im = batch(3)
    ipot = np.asarray(
        wra_distance(text, tm, regions, im, WraSettings(solver="ipot", iterations=2000))
    )
    sinkhorn = np.asarray(
        wra_distance(text, tm, regions, im, WraSettings(epsilon=EPS, iterations=2000))
    )
    for i in range(len(text)):
        t, r = text[i][tm[i] == 1], regions[i][im[i] == 1]
        cost = numpy_cost(t.astype(np.float64), r.astype(np.float64))
        exact = ot.emd2(np.full(len(t), 1 / len(t)), np.full(len(r), 1 / len(r)), cost)
        np.testing.assert_allclose(ipot[i], exact, rtol=1e-4)
        if len(t) > 1 and len(r) > 1:  # one row or column: every plan is the same
            assert abs(sinkhorn[i] - exact) > 10 * abs(ipot[i] - exact)


def test_an_unknown_solver_is_refused():
    text, tm, regions, im = batch(0)
    with pytest.raises(ValueError, match="unknown WRA solver 'emd'"):
        wra_distance(text, tm, regions, im, WraSettings(solver="emd"))
