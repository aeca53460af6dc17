"""Faults a long run meets: the process killed while a checkpoint is being
written, and the disk filling up during a save. (Unreadable checkpoints and a
store file deleted mid-run: tests/train/test_loop.py.)"""

import os
import signal
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest
from test_main import ROOT, run_main
from trees import assert_trees_equal

from configs.pretrain import get_config
from uniter_jax.data import synthetic
from uniter_jax.train import loop
from uniter_jax.train.checkpoint import CheckpointError
from uniter_jax.train.pretrain import pretraining_job

# A save at every step: from the third on, each is a chance to kill one half written.
STEPS = 10
ARGS = (
    "--config.data.synthetic_images=40",
    f"--config.optim.total_steps={STEPS}",
    "--config.optim.warmup_steps=2",
    "--config.log.every_steps=5",
    "--config.eval.every_steps=0",
    "--config.data.buckets=((16, 12, 8),)",
    "--config.checkpoint.every_steps=1",
    "--config.checkpoint.keep=2",
)


def final_state(workdir, step=STEPS):
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.join(workdir, "checkpoints", str(step), "state"))


@pytest.mark.slow
def test_killed_while_saving_resumes_from_the_last_complete_checkpoint(tmp_path):
    """SIGKILL the moment a checkpoint is half written (its temporary folder
    exists): the rerun resumes from the last committed step and ends exactly
    where an uninterrupted run does."""
    whole = run_main(tmp_path / "whole", *ARGS)
    assert whole.returncode == 0, whole.stderr[-3000:]
    workdir = tmp_path / "killed"
    command = [
        sys.executable,
        "main.py",
        "--config=configs/pretrain.py:tiny",
        f"--workdir={workdir}",
    ]
    process = subprocess.Popen(
        [*command, *ARGS],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints, caught = workdir / "checkpoints", None
    deadline = time.monotonic() + 600
    while caught is None and process.poll() is None and time.monotonic() < deadline:
        names = os.listdir(checkpoints) if checkpoints.exists() else []
        committed = [n for n in names if n.isdigit()]
        writing = [n for n in names if "tmp" in n]
        if len(committed) >= 2 and writing:
            process.send_signal(signal.SIGKILL)
            caught = writing
        time.sleep(0.001)
    process.wait(timeout=60)
    assert caught, "the run ended before a save could be interrupted"
    assert process.returncode == -signal.SIGKILL
    resumed = run_main(workdir, *ARGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr
    assert_trees_equal(final_state(workdir), final_state(tmp_path / "whole"))


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB file system (tmpfs): room for one tiny checkpoint, not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr!r}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # orbax may hold files


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_clear_error_and_it_resumes_after(tmp_path, small_disk):
    world = synthetic.write_world(str(tmp_path / "world"), synthetic.WorldConfig(num_images=40))
    config = get_config("tiny")
    config.data.images, config.data.texts = world["images"], world["captions_train"]
    config.data.buckets = ((16, 12, 8),)
    config.optim.total_steps, config.optim.warmup_steps = 12, 2
    config.eval.every_steps, config.log.every_steps = 0, 3
    config.checkpoint.every_steps, config.checkpoint.keep = 2, 10
    whole = loop.train(config, str(tmp_path / "whole"), pretraining_job)
    assert whole["status"] == "finished"

    workdir = small_disk / "run"
    with pytest.raises(CheckpointError) as error:
        loop.train(config, str(workdir), pretraining_job)
    message = str(error.value)
    assert (
        "No space left on device" in message and "newest complete checkpoint is step 2" in message
    )
    assert "\n" not in message
    # Room again: the same call resumes from step 2 and ends as if never stopped.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = loop.train(config, str(workdir), pretraining_job)
    assert resumed["status"] == "finished" and resumed["step"] == 12
    assert_trees_equal(final_state(workdir, 12), final_state(tmp_path / "whole", 12))
