"""`main.py` end to end on the tiny config (the `make run` job)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_forward_check_runs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--config=configs/pretrain.py:tiny",
            f"--workdir={tmp_path}",
            "--config.data.synthetic_images=30",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "forward_check.json").read_text())
    assert report["finite"]
    # One batch of the tiny config's single bucket, from the synthetic world.
    assert report["input_shapes"]["img_feat"] == [4, 10, 2048]
    assert report["input_shapes"]["input_ids"] == [4, 16]
    assert (tmp_path / "synthetic" / "images" / "manifest.json").exists()
    assert report["num_params"] == 2_277_127
    # Valid positions come out of a final LayerNorm with unit scale, zero bias.
    assert abs(report["text_hidden"]["mean"]) < 1e-3
    assert abs(report["text_hidden"]["std"] - 1.0) < 1e-3
    assert "Total: 2,277,127" in result.stderr


def test_unknown_variant_is_an_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "main.py", "--config=configs/pretrain.py:huge", f"--workdir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0 and "unknown variant 'huge'" in result.stderr
