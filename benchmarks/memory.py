"""Compiled per-device memory of the train step across meshes and remat settings.

  python benchmarks/memory.py [--devices 8] [--task mlm] [--out docs/benchmarks.md]

`--out` replaces the marked section of that file (or appends one).

Nothing runs: each configuration is lowered and compiled for the reference
batch (512 examples of 62 text + 100 region positions: the original's eight
GPUs x ~10k positions, the largest base bucket) on `--devices` forced host
devices, and XLA's `memory_analysis()` of the partitioned program gives one
device's arguments (parameters, optimiser state, batch), temporaries
(activations and gradients) and outputs. The numbers are what the program
asks of each device on this backend; TPU and GPU compilers fuse and schedule
differently, so read them as the relative effect of a mesh or a remat policy.

Also measured: compile time of base and large with and without the scanned
layer stack, on one device.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--task", default="mlm")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--out", default="", help="also write the markdown table here")
    return parser.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ARGS.devices}"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from report import write_section  # noqa: E402

from configs.pretrain import get_config  # noqa: E402
from uniter_jax import sharding  # noqa: E402
from uniter_jax.model import UniterConfig  # noqa: E402
from uniter_jax.objectives.tasks import PRETRAINING, TaskSettings  # noqa: E402
from uniter_jax.train import step as steps  # noqa: E402
from uniter_jax.train.optimizer import OptimSettings  # noqa: E402

TEXT, REGIONS = 62, 100
MESHES = ((8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4))
REMATS = ("none", "full")
GIB = 2.0**30


def settings(preset: str, *, remat: str = "none", scan: bool = True) -> steps.StepSettings:
    model = UniterConfig.preset(preset, remat=remat, scan_layers=scan)
    tasks = TaskSettings(mask_id=103, special_ids=(101, 102, 0), random_range=(999, 28996))
    return steps.StepSettings(model, tasks, OptimSettings())


def abstract_batch(model: UniterConfig, batch: int, layout: sharding.Layout, task: str) -> dict:
    shapes = {
        "input_ids": ((batch, TEXT), jnp.int32),
        "text_mask": ((batch, TEXT), jnp.int32),
        "img_feat": ((batch, REGIONS, model.img_dim), jnp.float16),
        "img_pos": ((batch, REGIONS, 7), jnp.float32),
        "img_mask": ((batch, REGIONS), jnp.int32),
        "itm_label": ((batch,), jnp.int32),
        "img_soft_labels": ((batch, REGIONS, model.num_region_labels), jnp.float16),
    }
    return {
        name: jax.ShapeDtypeStruct(*shapes[name], sharding=layout.batch)
        for name in steps.batch_fields(task, PRETRAINING)
    }


def compile_step(s: steps.StepSettings, layout: sharding.Layout, batch: int, task: str):
    """`(compiled, seconds)` of the train step for abstract inputs (nothing runs)."""
    state = steps.abstract_state(s, layout)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=layout.replicated)
    start = time.perf_counter()
    jitted = steps.train_step_fn(task, s, layout)
    compiled = jitted.lower(state, abstract_batch(s.model, batch, layout, task), key).compile()
    return compiled, time.perf_counter() - start


def main() -> None:
    rules = tuple(tuple(r) for r in get_config("base").mesh.rules)
    rows = []
    print(
        f"{jax.device_count()} devices ({jax.devices()[0].platform}), task {ARGS.task}, "
        f"batch {ARGS.batch} x ({TEXT} + {REGIONS})",
        flush=True,
    )
    for preset in ("base", "large"):
        for shape in MESHES:
            devices = jax.devices()[: shape[0] * shape[1] * shape[2]]
            layout = sharding.Layout(
                sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape, strict=True)), devices),
                rules,
            )
            for remat in REMATS:
                compiled, seconds = compile_step(
                    settings(preset, remat=remat), layout, ARGS.batch, ARGS.task
                )
                m = compiled.memory_analysis()
                row = (
                    preset,
                    "x".join(map(str, shape)),
                    remat,
                    m.argument_size_in_bytes / GIB,
                    m.temp_size_in_bytes / GIB,
                    m.output_size_in_bytes / GIB,
                    (
                        m.argument_size_in_bytes
                        + m.temp_size_in_bytes
                        + m.output_size_in_bytes
                        - m.alias_size_in_bytes
                    )
                    / GIB,
                    seconds,
                )
                rows.append(row)
                print(
                    "  ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row),
                    flush=True,
                )

    one = sharding.Layout.single_device()
    compile_times = {}
    for preset in ("base", "large"):
        for scan in (True, False):
            _, seconds = compile_step(settings(preset, scan=scan), one, 8, ARGS.task)
            compile_times[preset, scan] = seconds
            print(f"compile {preset} scan={scan}: {seconds:.1f}s", flush=True)

    lines = [
        f"Per-device memory of the `{ARGS.task}` train step (GiB), from `memory_analysis()` of "
        f"the compiled program on {jax.device_count()} forced {jax.devices()[0].platform.upper()} "
        f"devices; global batch {ARGS.batch} x ({TEXT} text + {REGIONS} regions), fp32, AdamW.",
        "Arguments: parameters, optimiser state and batch shard; temporaries: activations, "
        "gradients and scratch; peak = arguments + temporaries + outputs - donated aliases.",
        "",
        "| model | mesh (data x fsdp x tensor) | remat | arguments | temporaries | outputs "
        "| peak | compile s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p} | {m} | {r} | {a:.2f} | {t:.2f} | {o:.2f} | {k:.2f} | {s:.0f} |"
        for p, m, r, a, t, o, k, s in rows
    ]
    ratio = compile_times["large", True] / compile_times["base", True]
    lines += [
        "",
        f"Compile time on one device, batch 8 (`{ARGS.task}` step):",
        "",
        "| model | scan over layers | compile s |",
        "|---|---|---:|",
    ]
    lines += [
        f"| {p} | {'yes' if s else 'no'} | {t:.1f} |" for (p, s), t in sorted(compile_times.items())
    ]
    lines += ["", f"Large / base with scan: {ratio:.2f}x (target <= 1.5x)."]
    table = "\n".join(lines)
    print(table)
    if ARGS.out:
        write_section(ARGS.out, "memory.py", table)


if __name__ == "__main__":
    main()
