"""uniter_jax.host: when a CPU run restarts with huge pages, and that they take effect."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from uniter_jax import host


@pytest.fixture
def cpu_linux_host(monkeypatch):
    """A glibc 2.36 host with THP in madvise mode and no accelerator."""
    monkeypatch.setattr(host.sys, "platform", "linux")
    monkeypatch.setattr(host.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(host, "_thp_mode", lambda: "madvise")
    monkeypatch.setattr(host.glob, "glob", lambda pattern: [])


def test_a_cpu_host_gets_the_tunable_added_to_its_own(cpu_linux_host, monkeypatch):
    assert host.huge_pages_env({"PATH": "/bin"}) == {
        "PATH": "/bin",
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
    }
    env = host.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    # JAX_PLATFORMS=cpu is a CPU run even where an accelerator exists.
    monkeypatch.setattr(
        host.glob, "glob", lambda pattern: ["/dev/accel0"] if "accel" in pattern else []
    )
    assert host.huge_pages_env({"JAX_PLATFORMS": "cpu"}) is not None


@pytest.mark.parametrize(
    "environ, change",
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, None),  # the user chose
        ({"UNITER_JAX_HUGE_PAGES": "0"}, None),
        ({"JAX_PLATFORMS": "tpu"}, None),
        ({}, ("glob", lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else [])),
        ({}, ("_thp_mode", lambda: "never")),
        ({}, ("libc_ver", lambda: ("glibc", "2.31"))),
        ({}, ("libc_ver", lambda: ("musl", ""))),
    ],
)
def test_no_restart_where_it_cannot_help(cpu_linux_host, monkeypatch, environ, change):
    if change:
        name, value = change
        owner = {"glob": host.glob, "libc_ver": host.platform}.get(name, host)
        monkeypatch.setattr(owner, name, value)
    assert host.huge_pages_env(environ) is None


@pytest.mark.skipif(host.huge_pages_env({"JAX_PLATFORMS": "cpu"}) is None, reason="no THP here")
def test_the_restarted_process_keeps_its_arguments_and_gets_huge_pages(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        textwrap.dedent(
            """
            import ctypes, json, os, sys
            from uniter_jax.host import reexec_with_huge_pages
            reexec_with_huge_pages()
            # 256 MiB from malloc, as XLA gets its buffers (numpy madvises its own).
            libc = ctypes.CDLL("libc.so.6")
            libc.malloc.restype = ctypes.c_void_p
            size = 256 * 2**20
            block = libc.malloc(size)
            ctypes.memset(block, 1, size)
            with open("/proc/self/smaps_rollup") as f:
                huge_kib = [int(l.split()[1]) for l in f if l.startswith("AnonHugePages:")][0]
            print(json.dumps({
                "tunables": os.environ.get("GLIBC_TUNABLES"),
                "args": sys.argv[1:],
                "optimize": sys.flags.optimize,
                "huge_mib": huge_kib // 1024,
                "touched": ctypes.string_at(block + size - 1, 1) == b"\\x01",
            }))
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host.OPT_OUT)}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=root)

    def probe(*python_options):
        done = subprocess.run(
            [sys.executable, *python_options, str(script), "--flag=1", "two"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout), done.stderr

    seen, stderr = probe("-O")
    assert seen["tunables"] == "glibc.malloc.hugetlb=1" and "restarting with" in stderr
    assert seen["args"] == ["--flag=1", "two"] and seen["optimize"] == 1  # -O survived
    assert seen["touched"] and seen["huge_mib"] >= 128, seen  # mostly on 2 MiB pages
    # Opted out: no restart, and the same block sits on 4 KiB pages.
    env[host.OPT_OUT] = "0"
    seen, stderr = probe()
    assert seen["tunables"] is None and "restarting" not in stderr
    assert seen["huge_mib"] < 16, seen


def test_without_huge_pages_keeps_the_other_tunables():
    both = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "A": "b"}
    assert host.without_huge_pages(both) == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"}
    assert host.without_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == {}
    assert host.without_huge_pages({}) == {}
