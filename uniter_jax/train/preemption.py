"""SIGTERM during training: every process stops at the same step.

A pod's hosts are signalled at different moments, each inside a different
step. Each process notes the signal in its own flag; at every step boundary
(and between validation batches) the processes combine their flags with one
collective, so all of them see the stop at the same point and save the same
checkpoint together. With one process the flag is read as is.

Inside `Preemption`, the batch loops of validation call `interruption_point()`
between batches; once a stop is agreed it raises `Interrupted`, the training
loop drops that validation, saves and returns.
"""

from __future__ import annotations

import signal

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


class Interrupted(Exception):
    """A stop was agreed during validation (raised between its batches)."""


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any (a collective: every
    process must call it at the same point)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


_ACTIVE: list[Preemption] = []


class Preemption:
    """Notes SIGTERM while active; `stop()` says, agreed across processes,
    whether to stop now."""

    def __init__(self):
        self.requested = False  # this process was signalled
        self._agreed = False

    def __enter__(self) -> Preemption:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        _ACTIVE.append(self)
        return self

    def _handle(self, signum, frame) -> None:
        logging.warning("SIGTERM: saving a checkpoint at the next step boundary")
        self.requested = True

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)
        signal.signal(signal.SIGTERM, self._previous)

    def stop(self) -> bool:
        """Whether any process was signalled; once true, stays true."""
        if not self._agreed:
            self._agreed = any_process(self.requested)
        return self._agreed


def interruption_point() -> None:
    """Raises `Interrupted` when a stop is agreed; nothing outside training."""
    if _ACTIVE and _ACTIVE[-1].stop():
        raise Interrupted
