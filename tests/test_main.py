"""`main.py` end to end on the tiny config (the `make run` job)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# A six-step tiny run on a 40-image world: logs at 3 and 6, validates and saves at 6.
SIX_STEPS = (
    "--config.data.synthetic_images=40",
    "--config.optim.total_steps=6",
    "--config.optim.warmup_steps=2",
    "--config.log.every_steps=3",
    "--config.eval.every_steps=6",
    "--config.eval.num_batches=1",
    "--config.data.buckets=((16, 12, 8),)",
)


def run_main(tmp_path, *overrides, timeout=600, devices=None):
    """`python main.py` on the tiny config in `tmp_path`, with config overrides.

    `devices`: how many host devices to force (default: the tests' 8).
    """
    env = dict(os.environ)
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [
            sys.executable,
            "main.py",
            "--config=configs/pretrain.py:tiny",
            f"--workdir={tmp_path}",
            *overrides,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_tiny_pretraining_runs_and_reports(tmp_path):
    result = run_main(tmp_path, *SIX_STEPS)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "pretrain_report.json").read_text())
    assert report["status"] == "finished" and report["step"] == 6
    assert set(report["validation"]) >= {"val/itm/accuracy", "val/mlm/accuracy", "val/mrfr/loss"}
    assert (tmp_path / "synthetic" / "images" / "manifest.json").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["6"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [3, 6, 6]  # train, train, val
    assert "validation at step 6" in result.stderr
    assert "orbax" not in result.stderr  # its per-save chatter is filtered
    check_score_mode(tmp_path)


def check_score_mode(workdir):
    """`--mode=score` on the run's model: the margins `itm_margins` gives for the
    same model and pairs, the input keys kept, probabilities from the margins."""
    from uniter_jax.analysis.example import Vocabulary
    from uniter_jax.analysis.itm_scores import itm_margins, load_pretraining
    from uniter_jax.data.image_store import ImageStore

    world = workdir / "synthetic"
    pairs = [
        {"image_id": "synth000003", "text": "a red cube.", "id": 7},
        {"image_id": "synth000011", "text": "there are 2 spheres on the left."},
    ]
    (workdir / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    common = [*SIX_STEPS[:1], "--mode=score", f"--pairs={workdir / 'pairs.jsonl'}"]
    result = run_main(workdir, *common, "--wra")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (workdir / "scores.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in line.items() if k in pairs[0] or k == "text"} for line in lines] == [
        {k: v for k, v in p.items()} for p in pairs
    ]
    want = itm_margins(
        load_pretraining(str(workdir / "model")),
        ImageStore(str(world / "images")),
        Vocabulary(str(world / "vocab.txt")),
        [(p["image_id"], p["text"]) for p in pairs],
    )
    np.testing.assert_allclose([line["itm_margin"] for line in lines], want, atol=1e-5)
    np.testing.assert_allclose(
        [line["itm_score"] for line in lines], 1 / (1 + np.exp(-want)), atol=1e-5
    )
    assert all(line["wra_distance"] > 0 for line in lines)
    # An image the store lacks: one line naming the file, the line and the field.
    (workdir / "bad.jsonl").write_text('{"image_id": "nope", "text": "a cube."}\n')
    result = run_main(workdir, *common[:2], f"--pairs={workdir / 'bad.jsonl'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"file {workdir / 'bad.jsonl'}, record line 1, field image_id" in result.stderr


def test_unknown_config_key_is_an_error(tmp_path):
    result = run_main(tmp_path, "--config.optim.learning_rate=1e-3")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        "FATAL Flags parsing error: --config.optim.learning_rate=1e-3: "
        "the config has no key 'learning_rate'."
    )
    result = run_main(tmp_path, "--config.tasks.mask_prb=0.2")  # a typo gets a suggestion
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--config.tasks.mask_prb=0.2: the config has no key 'mask_prb'" in result.stderr
    assert 'Did you mean "mask_prob"' in result.stderr


def test_unknown_variant_is_an_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "main.py", "--config=configs/pretrain.py:huge", f"--workdir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0 and "unknown variant 'huge'" in result.stderr


def test_a_config_that_cannot_start_is_one_line_and_leaves_no_workdir(tmp_path):
    workdir = tmp_path / "run"
    result = run_main(workdir, *SIX_STEPS, "--config.optim.warmup_steps=20")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("FATAL config optim: need 0 <= warmup_steps (20) <= total_steps (6)")
    assert "--config.optim.warmup_steps" in last
    assert not workdir.exists()  # the synthetic world it began to write went with it
