"""`UniterWithHead`: the encoder plus one downstream head, as one parameter tree.

Parameters are `uniter/...` (loaded from a pretrained checkpoint) and the
head's own group (freshly initialised), e.g. `vqa/...`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from uniter_jax.model import Uniter, UniterConfig


class UniterWithHead(nnx.Module):
    """`uniter` and a head module stored under the attribute `name`."""

    def __init__(
        self,
        config: UniterConfig,
        rngs: nnx.Rngs,
        name: str,
        head: Callable[[UniterConfig, nnx.Rngs], nnx.Module],
    ):
        self.config = config
        self.uniter = Uniter(config, rngs)
        self.head_name = name
        setattr(self, name, head(config, rngs))

    @property
    def head(self) -> nnx.Module:
        return getattr(self, self.head_name)

    def __call__(self, *args, **kwargs) -> jax.Array:
        """The encoder's sequence output; see `Uniter.__call__`."""
        return self.uniter(*args, **kwargs)
