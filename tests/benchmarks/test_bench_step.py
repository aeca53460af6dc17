"""benchmarks/bench_step.py end to end on the tiny preset, PyTorch side included."""

import json
import os
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_bench_step_alternates_rounds_and_reports_per_round_ratios(tmp_path):
    out, table = tmp_path / "bench.json", tmp_path / "bench.md"
    table.write_text(
        "# B\n\n<!-- bench_step.py: start -->\nold\n<!-- bench_step.py: end -->\ntail\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "bench_step.py"),
            "--preset=tiny",
            "--batch=4",
            "--text=12",
            "--regions=6",
            "--tasks=itm,mlm",
            "--rounds=3",
            "--repeats=2",
            "--no-pipeline",
            f"--json={out}",
            f"--out={table}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    torch_rounds = report["torch"]["round_medians_s"]
    assert len(torch_rounds) == 3
    assert report["torch"]["positions"] == 18 and report["torch"]["batch"] == 4
    for task in ("itm", "mlm"):
        result = report["tasks"][task]
        assert result["recompilations"] == 0
        assert len(result["round_medians_s"]) == 3
        per_round = [a / b for a, b in zip(result["round_medians_s"], torch_rounds, strict=True)]
        assert result["vs_torch"]["median"] == pytest.approx(statistics.median(per_round))
        assert result["vs_torch"]["min"] == pytest.approx(min(per_round))
        step = result["step_s"]
        assert step["min"] <= step["median"] <= step["max"]
        assert result["flops_per_s"] == pytest.approx(result["flops_per_step"] / step["median"])
        fractions = [
            result["flops_per_step"] / seconds / peak
            for seconds, peak in zip(result["round_medians_s"], report["round_peaks"], strict=True)
        ]
        assert result["of_peak"] == pytest.approx(statistics.median(fractions))
    assert 0 < report["wra_share"] < 1
    written = table.read_text()
    assert "old" not in written and written.endswith("<!-- bench_step.py: end -->\ntail\n")
    assert "| itm |" in written and "| mlm |" in written and "JAX / PyTorch" in written
