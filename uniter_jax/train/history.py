"""A run's metric records: `metrics.jsonl` and the window of training metrics
between two log lines (saved in checkpoints, so a resumed run logs the same
lines as one that was never stopped)."""

from __future__ import annotations

import collections
import json
from typing import Any

from etils import epath


class History:
    """`metrics.jsonl`: one line per logged step; lines past a resumed step are dropped."""

    def __init__(self, path: epath.Path, resume_step: int, *, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if resume_step and path.exists():
            with path.open() as f:
                kept = [line for line in f if _logged_step(line) <= resume_step]
        with path.open("w") as f:
            f.writelines(kept)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **scalars}, sort_keys=True) + "\n")


def _logged_step(line: str) -> float:
    """The step of a `metrics.jsonl` line; a line cut off by a kill sorts last."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return float("inf")


class Window:
    """Training metrics since the last log line, as float64 `(sum, count)` per name."""

    def __init__(self, saved: dict[str, list[float]] | None = None):
        self.sums = collections.defaultdict(lambda: [0.0, 0.0], saved or {})

    def add(self, task: str, metrics: dict[str, Any]) -> None:
        self.sums[f"train/{task}/steps"][0] += 1.0
        self.sums[f"train/{task}/steps"][1] = 1.0
        for name, (total, count) in metrics.items():
            entry = self.sums[f"train/{task}/{name}"]
            entry[0] += float(total)
            entry[1] += float(count)

    def flush(self) -> dict[str, float]:
        out = {k: s / c for k, (s, c) in sorted(self.sums.items()) if c > 0}
        self.sums.clear()
        return out

    def state(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.sums.items()}
