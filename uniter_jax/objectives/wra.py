"""Word-region alignment: optimal transport between words and regions (docs/original.md, WRA).

Per example, the cost between valid text outputs `w_i` (CLS and SEP included)
and valid region outputs `v_j` is the cosine distance `1 - cos(w_i, v_j)` and
the marginals are uniform over the valid positions. The plan comes from one
of two solvers, each run for a fixed number of iterations:

- `sinkhorn` (default): ott-jax's entropic Sinkhorn at `epsilon`;
- `ipot`: the inexact proximal point method the original UNITER uses
  (Xie et al. 2019, "A Fast Proximal Point Method for Computing Exact
  Wasserstein Distance"): each outer iteration multiplies the previous plan by
  the kernel `exp(-C / beta)` and rescales it once towards the marginals
  (one inner Sinkhorn step), so the plan approaches the unregularised one
  rather than an entropic blur. The original's values: beta 0.5, 50 iterations.

The plan is held fixed (`stop_gradient`), so the gradient of the distance
`sum_ij C_ij T_ij` flows through the cost only, as in the original (envelope
theorem). All fp32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from uniter_jax.sharding import per_example


def cosine_cost(text: jax.Array, regions: jax.Array) -> jax.Array:
    """`[Lt, H]`, `[Nr, H]` -> `[Lt, Nr]` cosine distances."""
    text = text / jnp.maximum(jnp.linalg.norm(text, axis=-1, keepdims=True), 1e-12)
    regions = regions / jnp.maximum(jnp.linalg.norm(regions, axis=-1, keepdims=True), 1e-12)
    return 1.0 - text @ regions.T


def transport_plan(
    cost: jax.Array, a: jax.Array, b: jax.Array, *, epsilon: float, iterations: int
) -> jax.Array:
    """The entropic OT plan `[Lt, Nr]` for marginals `a [Lt]`, `b [Nr]` (zeros allowed)."""
    geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon)
    solver = sinkhorn.Sinkhorn(
        max_iterations=iterations, min_iterations=iterations, threshold=-1.0, implicit_diff=None
    )
    return solver(linear_problem.LinearProblem(geom, a, b)).matrix


SOLVERS = ("sinkhorn", "ipot")


@dataclasses.dataclass(frozen=True)
class WraSettings:
    """How the plan is computed: training (`TaskSettings.wra`) and the analysis
    tools read the same values, so a picture shows the plan a run trained with."""

    solver: str = "sinkhorn"  # sinkhorn | ipot (the original's)
    epsilon: float = 0.1  # Sinkhorn entropic regularisation
    beta: float = 0.5  # IPOT proximal step (the original's 0.5)
    iterations: int = 50  # solver iterations (fixed; the original's 50)


def ipot_plan(
    cost: jax.Array, text_mask: jax.Array, img_mask: jax.Array, *, beta: float, iterations: int
) -> jax.Array:
    """The IPOT plan `[Lt, Nr]` between the valid texts and regions (uniform
    marginals), zero on padded rows and columns."""
    valid = text_mask.astype(jnp.float32)[:, None] * img_mask.astype(jnp.float32)[None, :]
    n_text, n_regions = jnp.sum(text_mask), jnp.sum(img_mask)
    kernel = jnp.exp(-cost / beta) * valid

    def inverse(x, mask):
        return jnp.where(mask > 0, 1.0 / jnp.where(mask > 0, x, 1.0), 0.0)

    def step(_, carry):
        plan, text_scale = carry
        q = kernel * plan
        region_scale = inverse(n_regions * (text_scale @ q), img_mask)  # [Nr]
        text_scale = inverse(n_text * (q @ region_scale), text_mask)  # [Lt]
        return text_scale[:, None] * q * region_scale[None, :], text_scale

    start = (valid, text_mask.astype(jnp.float32) / n_text)
    plan, _ = jax.lax.fori_loop(0, iterations, step, start)
    return plan


def alignment(
    text: jax.Array,
    text_mask: jax.Array,
    regions: jax.Array,
    img_mask: jax.Array,
    settings: WraSettings,
) -> tuple[jax.Array, jax.Array]:
    """One example's `(cost, plan)`, each `[Lt, Nr]` fp32, both held fixed
    (`stop_gradient` on the plan only): `text` `[Lt, H]` with `text_mask`
    `[Lt]`, `regions` `[Nr, H]` with `img_mask` `[Nr]`. Padded rows and
    columns get no mass in the plan."""
    cost = cosine_cost(text.astype(jnp.float32), regions.astype(jnp.float32))
    fixed = jax.lax.stop_gradient(cost)
    if settings.solver == "ipot":
        plan = ipot_plan(
            fixed, text_mask, img_mask, beta=settings.beta, iterations=settings.iterations
        )
    elif settings.solver == "sinkhorn":
        a = text_mask.astype(jnp.float32) / jnp.sum(text_mask)
        b = img_mask.astype(jnp.float32) / jnp.sum(img_mask)
        plan = transport_plan(fixed, a, b, epsilon=settings.epsilon, iterations=settings.iterations)
    else:
        raise ValueError(f"unknown WRA solver {settings.solver!r}; choose one of {SOLVERS}")
    return cost, jax.lax.stop_gradient(plan)


def wra_distance(
    text: jax.Array,
    text_mask: jax.Array,
    regions: jax.Array,
    img_mask: jax.Array,
    settings: WraSettings,
) -> jax.Array:
    """`[B]` OT distances between each example's words and regions.

    Args:
      text: `[B, Lt, H]` final hidden states of the text positions.
      text_mask: `[B, Lt]`, 1 for real tokens.
      regions: `[B, Nr, H]` final hidden states of the region positions.
      img_mask: `[B, Nr]`, 1 for real regions.
    """

    def one(t, tm, r, rm):
        cost, plan = alignment(t, tm, r, rm, settings)
        return jnp.sum(cost * plan)

    # Per device on its own examples under a mesh: no traffic inside Sinkhorn's loop.
    return per_example(jax.vmap(one))(text, text_mask, regions, img_mask)


def wra_loss(distance: jax.Array, itm_labels: jax.Array) -> jax.Array:
    """`(sum of matched distances - sum of mismatched) / batch`, added to ITM as 0.1x."""
    sign = jnp.where(itm_labels == 1, 1.0, -1.0)
    return jnp.sum(sign * distance) / distance.shape[0]
