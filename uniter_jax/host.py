"""Host settings that must be in place before Python starts: huge pages for CPU runs.

XLA:CPU allocates a step's temporaries afresh on every call (gigabytes for a
base pretraining step), and glibc hands such large blocks out as new
mappings, so every step pays a page fault per 4 KiB page, hundreds of
thousands of them. With glibc's `glibc.malloc.hugetlb=1` tunable, malloc
asks for transparent huge pages (2 MiB): far fewer faults and a shorter step
(issue #8; the numbers in docs/benchmarks.md, "Huge pages on CPU runs"). A
tunable is read once, when the process starts, so `main.py` re-executes
itself with it on CPU-only hosts.

Not applied when: an accelerator is present (its steps do not run on host
memory), the tunable is already set, glibc is older than 2.35, the kernel's
transparent huge pages are `never`, or `UNITER_JAX_HUGE_PAGES=0`. PyTorch's
CPU step is slower with it (docs/benchmarks.md), so the benchmark's PyTorch
side runs without it.
"""

from __future__ import annotations

import glob
import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "UNITER_JAX_HUGE_PAGES"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
_ACCELERATORS = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*")


def _glibc_at_least(version: tuple[int, int]) -> bool:
    name, found = platform.libc_ver()
    if name != "glibc" or not found:
        return False
    return tuple(int(part) for part in found.split(".")[:2]) >= version


def _thp_mode() -> str:
    """The kernel's transparent huge page mode: always, madvise, never ('' if unknown)."""
    try:
        with open(_THP_MODE) as f:
            text = f.read()
    except OSError:
        return ""
    return text[text.find("[") + 1 : text.find("]")] if "[" in text else ""


def _cpu_only(environ: Mapping[str, str]) -> bool:
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(glob.glob(pattern) for pattern in _ACCELERATORS)


def huge_pages_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, or None when it is not needed or not possible."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(OPT_OUT, "1") == "0" or "glibc.malloc.hugetlb" in tunables:
        return None
    if sys.platform != "linux" or not _glibc_at_least((2, 35)):
        return None
    if _thp_mode() not in ("madvise", "always") or not _cpu_only(environ):
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    return env


def without_huge_pages(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the huge-page tunable taken out (for a child that runs better without)."""
    env = dict(environ)
    kept = [t for t in env.pop("GLIBC_TUNABLES", "").split(":") if t and t != TUNABLE]
    if kept:
        env["GLIBC_TUNABLES"] = ":".join(kept)
    return env


def reexec_with_huge_pages() -> None:
    """Replaces this process by itself with the huge-page tunable set, where it helps.

    Call first thing in an entry point, before threads or large allocations;
    returns without doing anything where `huge_pages_env` says no."""
    env = huge_pages_env(os.environ)
    if env is None:
        return
    print(
        f"uniter_jax: CPU run, restarting with GLIBC_TUNABLES={env['GLIBC_TUNABLES']} "
        f"(about 10% faster steps; {OPT_OUT}=0 turns this off)",
        file=sys.stderr,
        flush=True,
    )
    # orig_argv keeps the interpreter's own options (-u, -X, -m) as they were given.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
