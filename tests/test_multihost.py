"""Two processes x 4 CPU devices train exactly like one process x 8 devices.

The processes find each other through jax's distributed runtime (gloo
collectives on CPU), each reads its own half of every global batch, and they
write one set of checkpoints and logs.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_main import ROOT, SIX_STEPS
from trees import assert_trees_close

ARGS = ["--config=configs/pretrain.py:tiny", *SIX_STEPS]


def launch(workdir, devices, *extra):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen(
        [sys.executable, "main.py", f"--workdir={workdir}", *ARGS, *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def crash_excerpt(output: str, size: int = 4000) -> str:
    """The part of a failed run's output that says why: the log before a fatal error
    and the error's own lines (the list of loaded extension modules after it is noise)."""
    fatal = output.find("Fatal Python error")
    if fatal < 0:
        return output[-size:]
    modules = output.find("Extension modules:", fatal)
    end = modules if modules > 0 else len(output)
    return output[max(0, fatal - size // 2) : min(end, fatal + size // 2)]


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def restore(workdir, step=6):
    """A step's state onto this process's first device, whatever topology saved it."""
    import jax

    path = os.path.join(workdir, "checkpoints", str(step), "state")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            checkpointer.metadata(path).item_metadata,
        )
        return checkpointer.restore(path, target)


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    port = free_port()
    pair = [
        launch(
            tmp_path / "two",
            4,
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        )
        for i in range(2)
    ]
    one = launch(tmp_path / "one", 8)
    failures = []
    for name, process in zip(("process 0", "process 1", "one process"), (*pair, one), strict=True):
        output, _ = process.communicate(timeout=900)
        if process.returncode != 0:
            failures.append(f"{name} exited {process.returncode}:\n{crash_excerpt(output)}")
    assert not failures, "\n\n".join(failures)
    a, b = restore(tmp_path / "one"), restore(tmp_path / "two")
    assert_trees_close(b, a)
    lines = [
        [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("one", "two")
    ]
    assert [sorted(x) for x in lines[0]] == [sorted(x) for x in lines[1]]
    for x, y in zip(*lines, strict=True):
        for name in x:
            np.testing.assert_allclose(x[name], y[name], rtol=1e-4, atol=1e-6, err_msg=name)
    reports = [
        json.loads((tmp_path / d / "pretrain_report.json").read_text()) for d in ("one", "two")
    ]
    assert reports[0]["step"] == reports[1]["step"] == 6


@pytest.mark.slow
def test_sigterm_to_one_host_stops_all_at_one_step_and_resumes_exactly(tmp_path):
    """Only process 1 is signalled, inside some step; both processes agree on
    the stop step, save one checkpoint together and exit 143. Resumed, the
    pair ends with the parameters of an uninterrupted pair."""
    steps = 24
    extra = [
        f"--config.optim.total_steps={steps}",
        "--config.log.every_steps=1",
        "--config.eval.every_steps=0",
        "--config.checkpoint.every_steps=1000",
    ]

    def start_pair(name):
        port = free_port()
        command = [sys.executable, "main.py", f"--workdir={tmp_path / name}", *ARGS, *extra]
        command += [f"--coordinator_address=localhost:{port}", "--num_processes=2"]
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
        logs = [open(tmp_path / f"{name}{i}.log", "a") for i in range(2)]  # noqa: SIM115
        procs = [
            subprocess.Popen(
                [*command, f"--process_id={i}"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for i, log in enumerate(logs)
        ]
        return procs, logs

    def wait(procs, logs, timeout=600):
        codes = []
        for proc, log in zip(procs, logs, strict=True):
            try:
                codes.append(proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                codes.append("hung")
            log.close()
        return codes

    def log_text(name, i=0):
        return crash_excerpt((tmp_path / f"{name}{i}.log").read_text())

    whole = start_pair("whole")
    procs, logs = start_pair("two")
    # SIGTERM to process 1 alone, once step 3 is logged (process 0 logs).
    deadline = time.monotonic() + 600
    while "[3] train/" not in (tmp_path / "two0.log").read_text():
        assert procs[1].poll() is None and time.monotonic() < deadline, log_text("two")
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    codes = wait(procs, logs, timeout=240)
    assert codes == [143, 143], f"{codes}\n{log_text('two')}\n{log_text('two', 1)}"
    saved = os.listdir(tmp_path / "two" / "checkpoints")
    assert len(saved) == 1 and 3 <= int(saved[0]) < steps, saved

    procs, logs = start_pair("two")
    assert wait(procs, logs) == [0, 0], log_text("two")
    assert wait(*whole) == [0, 0], log_text("whole")
    assert_trees_close(restore(tmp_path / "two", steps), restore(tmp_path / "whole", steps))
