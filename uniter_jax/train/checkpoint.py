"""Training checkpoints: orbax CheckpointManager over the train state and run metadata.

A checkpoint step holds two items:
  state/  params, optimiser state and step (arrays, written asynchronously)
  meta/   JSON: the base PRNG key, every pipeline's position and the partly
          filled metric window, everything a resumed run needs to continue
          exactly where the saved one was.
Orbax commits each step atomically, so a run killed while saving leaves the
previous step as the latest.
"""

from __future__ import annotations

from typing import Any

import orbax.checkpoint as ocp
from etils import epath


class Checkpoints:
    """`workdir/checkpoints`: keeps the newest `keep` steps."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self.directory = epath.Path(directory).resolve()
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
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[dict, dict[str, Any]]:
        """`(state, meta)` of `step`; `abstract_state` gives structure, shapes and shardings."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
