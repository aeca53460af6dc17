"""bench_step.py's markdown: one section per platform, readable numbers."""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_step  # noqa: E402
from report import write_section  # noqa: E402

ARGS = argparse.Namespace(
    preset="base", batch=256, text=62, regions=100, dtype="bfloat16", rounds=3, repeats=10
)


def report(platform: str) -> dict:
    flops, seconds = 22128e9, 0.094
    return {
        "argv": ["--dtype", "bfloat16"],
        "date": "2026-11-28",
        "device": "NVIDIA H200" if platform == "gpu" else "cpu",
        "platform": platform,
        "cpu_count": 16,
        "jax": "0.11.2",
        "tunables": "glibc.malloc.hugetlb=1" if platform == "cpu" else "",
        "torch_tunables": "",
        "model": "12 layers",
        "peak_flops": 989e12,
        "peak_source": "nominal",
        "peak_memory_gib": 31.5,
        "tasks": {
            "itm": {
                "step_s": {"median": seconds, "min": 0.092, "max": 0.098},
                "examples_per_s": 256 / seconds,
                "positions_per_s": 256 * 162 / seconds,
                "flops_per_step": flops,
                "flops_per_s": flops / seconds,
                "of_peak": flops / seconds / 989e12,
                "compile_s": 57.1,
                "recompilations": 0,
            }
        },
    }


def test_gpu_table_has_plain_numbers_and_no_cpu_details():
    table = bench_step.markdown(report("gpu"), ARGS)
    row = next(line for line in table.splitlines() if line.startswith("| itm |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[4:7] == ["22,128", "235,404", f"{22128e9 / 0.094 / 989e12:.2f}"]
    assert "e+" not in table
    assert "989,000 GFLOP/s" in table
    assert "GLIBC_TUNABLES" not in table and "in use on the device" in table
    cpu = bench_step.markdown(report("cpu"), ARGS)
    assert "GLIBC_TUNABLES: glibc.malloc.hugetlb=1" in cpu and "of the process" in cpu


def test_a_gpu_run_keeps_the_cpu_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    cpu, gpu = bench_step.section_name("cpu"), bench_step.section_name("gpu")
    assert cpu != gpu
    write_section(str(doc), cpu, "cpu table")
    write_section(str(doc), gpu, "gpu table")
    write_section(str(doc), gpu, "gpu table, again")
    text = doc.read_text()
    assert "cpu table" in text and "gpu table, again" in text
    assert text.count("gpu table") == 1
