"""Word-region alignment: optimal transport between words and regions (REFERENCE.md §2).

Per example, the cost between valid text outputs `w_i` (CLS and SEP included)
and valid region outputs `v_j` is the cosine distance `1 - cos(w_i, v_j)`, the
marginals are uniform over the valid positions, and the entropic plan comes
from ott-jax's Sinkhorn run for a fixed number of iterations. The plan is held
fixed (`stop_gradient`), so the gradient of the distance `sum_ij C_ij T_ij`
flows through the cost only, as in the original (envelope theorem). All fp32.
"""

from __future__ import annotations

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


def alignment(
    text: jax.Array,
    text_mask: jax.Array,
    regions: jax.Array,
    img_mask: jax.Array,
    *,
    epsilon: float = 0.1,
    iterations: int = 50,
) -> tuple[jax.Array, jax.Array]:
    """One example's `(cost, plan)`, each `[Lt, Nr]` fp32, both held fixed
    (`stop_gradient` on the plan only): `text` `[Lt, H]` with `text_mask`
    `[Lt]`, `regions` `[Nr, H]` with `img_mask` `[Nr]`. Padded rows and
    columns get no mass in the plan."""
    cost = cosine_cost(text.astype(jnp.float32), regions.astype(jnp.float32))
    a = text_mask.astype(jnp.float32) / jnp.sum(text_mask)
    b = img_mask.astype(jnp.float32) / jnp.sum(img_mask)
    plan = transport_plan(jax.lax.stop_gradient(cost), a, b, epsilon=epsilon, iterations=iterations)
    return cost, jax.lax.stop_gradient(plan)


def wra_distance(
    text: jax.Array,
    text_mask: jax.Array,
    regions: jax.Array,
    img_mask: jax.Array,
    *,
    epsilon: float = 0.1,
    iterations: int = 50,
) -> jax.Array:
    """`[B]` OT distances between each example's words and regions.

    Args:
      text: `[B, Lt, H]` final hidden states of the text positions.
      text_mask: `[B, Lt]`, 1 for real tokens.
      regions: `[B, Nr, H]` final hidden states of the region positions.
      img_mask: `[B, Nr]`, 1 for real regions.
    """

    def one(t, tm, r, rm):
        cost, plan = alignment(t, tm, r, rm, epsilon=epsilon, iterations=iterations)
        return jnp.sum(cost * plan)

    # Per device on its own examples under a mesh: no traffic inside Sinkhorn's loop.
    return per_example(jax.vmap(one))(text, text_mask, regions, img_mask)


def wra_loss(distance: jax.Array, itm_labels: jax.Array) -> jax.Array:
    """`(sum of matched distances - sum of mismatched) / batch`, added to ITM as 0.1x."""
    sign = jnp.where(itm_labels == 1, 1.0, -1.0)
    return jnp.sum(sign * distance) / distance.shape[0]
