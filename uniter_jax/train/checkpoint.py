"""Training checkpoints: orbax CheckpointManager over the train state and run metadata.

A checkpoint step holds two items:
  state/  params, optimiser state and step (arrays, written asynchronously)
  meta/   JSON: the base PRNG key, every pipeline's position and the partly
          filled metric window, everything a resumed run needs to continue
          exactly where the saved one was.
Orbax commits each step atomically, so a run killed while saving leaves the
previous step as the latest. A step that is committed but cannot be read
(truncated or corrupted files) is logged by name, moved aside to
`<step>.unreadable[-n]` and the next older one is used (`restore_newest`).
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from uniter_jax.train.preemption import any_process


class CheckpointError(Exception):
    """A checkpoint could not be written, or none of a run's could be read."""


class Checkpoints:
    """`workdir/checkpoints`: keeps the newest `keep` steps."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self.directory = epath.Path(directory).resolve()
        self._pending: int | None = None  # the newest step handed to orbax
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, meta: dict[str, Any]) -> None:
        """Starts saving (returns before the arrays are written when async).

        The device-to-host copy finishes before this returns (orbax's default,
        no `save_device_host_concurrent_bytes` limit), so the caller may donate
        `state` to the next step at once. Setting that limit would make the
        copy asynchronous and race with donation.
        """
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
        except Exception as e:  # this step's write, or the pending one's (async)
            raise self._write_error(e, step) from None
        self._pending = step

    def _write_error(self, error: Exception, step: int) -> CheckpointError:
        """One line: which write failed, why (a full disk, say) and what to do."""
        step = self._pending or step
        why = f"{type(error).__name__}: {_first_line(error)}"
        done = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        newest = f"step {done[-1]}" if done else "none"
        return CheckpointError(
            f"writing checkpoint {step} under {self.directory} failed ({why}); the newest "
            f"complete checkpoint is {newest}: free space or fix the cause, then run the "
            "same command again to resume from it"
        )

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON item of `step` alone, no arrays read."""
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def restore(self, step: int, abstract_state: Any) -> tuple[dict, dict[str, Any]]:
        """`(state, meta)` of `step`; `abstract_state` gives structure, shapes and shardings."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def restore_newest(self, abstract_state: Any) -> tuple[int, dict, dict[str, Any]] | None:
        """`(step, state, meta)` of the newest readable step; None without any step.

        An unreadable step is logged with its path and error and moved aside
        (all processes agree that it failed, so they resume from one step);
        raises `CheckpointError` naming each failure when no step is readable.
        """
        failures = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, meta = self.restore(step, abstract_state)
                error = None
            except Exception as e:  # orbax / tensorstore / JSON: any read failure
                error = f"{type(e).__name__}: {_first_line(e)}"
            if not any_process(error is not None):
                return step, state, meta
            path = self.directory / str(step)
            failures.append(f"{path}: {error or 'unreadable on another process'}")
            logging.error("checkpoint %s cannot be read (%s); trying the one before", path, error)
            if jax.process_index() == 0:
                aside, n = self.directory / f"{step}.unreadable", 1
                while aside.exists():  # moved aside before, in an earlier run
                    aside, n = self.directory / f"{step}.unreadable-{n}", n + 1
                path.rename(aside)
            multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
            self.manager.reload()
        if failures:
            raise CheckpointError(
                "no checkpoint could be read; start in a new workdir, or repair:\n  "
                + "\n  ".join(failures)
            )
        return None

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_error(e, -1) from None

    def close(self) -> None:
        self.manager.close()


def _first_line(error: Exception, limit: int = 300) -> str:
    """An error's first line, its middle cut when long (the cause is at the end
    of tensorstore's messages, after the paths)."""
    lines = str(error).strip().splitlines() or [""]
    line = lines[0]
    return line if len(line) <= limit else f"{line[: limit // 2]} ... {line[-limit // 2 :]}"
