"""MLM and MRM masking inside the jitted step (docs/original.md, Masking).

Conditional masking: a step masks one modality and leaves the other intact;
these functions only produce the masks, the task decides which one it uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mlm_mask(
    key: jax.Array,
    input_ids: jax.Array,
    text_mask: jax.Array,
    *,
    mask_id: int,
    random_range: tuple[int, int],
    special_ids: tuple[int, ...],
    prob: float,
) -> tuple[jax.Array, jax.Array]:
    """Chooses tokens for masked language modelling.

    Each real token except `special_ids` ([CLS], [SEP], padding) is chosen with
    `prob`; a chosen token becomes [MASK] (80%), a random id from
    `random_range` (10%) or stays (10%). An example with no token chosen gets
    its first eligible token chosen and replaced by [MASK], as the original.

    Args:
      input_ids, text_mask: `[B, L]`.

    Returns:
      `(masked_ids [B, L], chosen [B, L] bool)`; the targets are `input_ids`
      at the chosen positions.
    """
    choose_key, kind_key, random_key = jax.random.split(key, 3)
    eligible = text_mask.astype(bool)
    for special in special_ids:
        eligible &= input_ids != special
    chosen = eligible & jax.random.bernoulli(choose_key, prob, input_ids.shape)
    first = jnp.argmax(eligible, axis=1)  # first eligible position per example
    none = ~chosen.any(axis=1) & eligible.any(axis=1)
    forced = none[:, None] & (jnp.arange(input_ids.shape[1])[None] == first[:, None])
    chosen |= forced
    kind = jax.random.uniform(kind_key, input_ids.shape)
    random_ids = jax.random.randint(random_key, input_ids.shape, *random_range, input_ids.dtype)
    replaced = jnp.where(kind < 0.8, mask_id, jnp.where(kind < 0.9, random_ids, input_ids))
    replaced = jnp.where(forced, mask_id, replaced)
    return jnp.where(chosen, replaced, input_ids), chosen


def mrm_mask(key: jax.Array, img_mask: jax.Array, *, prob: float) -> jax.Array:
    """`[B, N]` bool: regions chosen for masked region modelling.

    Each real region is chosen with `prob`; an example with none chosen gets
    one real region chosen uniformly at random, as the original.
    """
    choose_key, pick_key = jax.random.split(key)
    valid = img_mask.astype(bool)
    chosen = valid & jax.random.bernoulli(choose_key, prob, img_mask.shape)
    # A uniform random valid region: the argmax of random scores over valid ones.
    scores = jnp.where(valid, jax.random.uniform(pick_key, img_mask.shape), -1.0)
    pick = jnp.arange(img_mask.shape[1])[None] == jnp.argmax(scores, axis=1)[:, None]
    none = ~chosen.any(axis=1) & valid.any(axis=1)
    return chosen | (none[:, None] & pick)


def gather_chosen(chosen: jax.Array, max_count: int) -> tuple[jax.Array, jax.Array]:
    """Flat indices of chosen positions, padded to a static `max_count`.

    Heads then run on `[max_count, H]` gathered states instead of every
    position (no vocabulary projection for unmasked tokens).

    Returns:
      `(index [max_count] into chosen.ravel(), valid [max_count] bool)`.
      Chosen positions beyond `max_count` are dropped; `valid.sum()` against
      `chosen.sum()` tells how many.
    """
    flat = chosen.reshape(-1)
    (index,) = jnp.nonzero(flat, size=max_count, fill_value=0)
    valid = jnp.arange(max_count) < flat.sum()
    return index, valid
