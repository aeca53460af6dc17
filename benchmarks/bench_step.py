"""Train-step speed of each pretraining task, side by side with PyTorch.

  python benchmarks/bench_step.py --out docs/benchmarks.md        # base, CPU: ~10 min
  python benchmarks/bench_step.py --preset tiny --batch 64 --no-torch
  python benchmarks/bench_step.py --dtype bfloat16 --batch 256 --text 62 --regions 100  # GPU/TPU

For each task, the real jitted train step (masking, forward, loss, backward,
AdamW update; `uniter_jax.train.step.train_step`, as the loop calls it) on
one device with a fixed batch of `--batch` x (`--text` + `--regions`)
positions, all of them real, dropout on:
- step time: median, min and max over `--repeats` steps after the first
  (compiling) call, each timed to its result;
- compile: the first call's time less a median step;
- recompilations during the timed steps (must be 0);
- examples/s, positions/s, the analytic FLOPs of a step
  (`uniter_jax.model.flops`: matmuls, forward x 3; the MLM/MRM heads count
  the expected masked positions, not the gather's padding) and the achieved
  FLOP/s as a fraction of the peak: the measured fp32 matmul peak of jnp on a
  CPU, the nominal dense bf16 peak of the accelerator otherwise (MFU);
- peak memory: the process's resident set on a CPU, the device's peak bytes
  in use otherwise.
Then: the WRA share of the ITM step (the OT distance and its gradient, jitted
alone at the ITM step's shapes), the padding waste of the default buckets on a
COCO-like length mix and the input pipeline's examples/s
(benchmarks/input_pipeline.py), and the PyTorch side
(benchmarks/torch_baseline.py, run first, in a child process, on the same
machine).

`--json` writes every number; `--out` rewrites this benchmark's section of a
markdown file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import numpy as np
from report import write_section

from uniter_jax.model import UniterConfig
from uniter_jax.model.flops import train_step_flops
from uniter_jax.objectives.tasks import TaskSettings
from uniter_jax.objectives.wra import wra_distance
from uniter_jax.sharding import Layout
from uniter_jax.train import step as steps
from uniter_jax.train.optimizer import OptimSettings

TASKS = ("itm", "mlm", "mrfr", "mrc_kl")
# Nominal dense bf16 peaks (FLOP/s) by device kind, lower case, most specific first.
NOMINAL_BF16 = (
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("l4", 121e12),
    ("tpu v6 lite", 918e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5", 459e12),
    ("tpu v4", 275e12),
)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base", choices=("tiny", "base", "large"))
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--text", type=int, default=40, help="text positions, [CLS] and [SEP] included")
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--scan", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", default="", help="write every number here")
    p.add_argument("--out", default="", help="rewrite the bench_step.py section of this file")
    return p.parse_args()


def host_batch(model: UniterConfig, batch: int, text: int, regions: int) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(999, model.vocab_size, (batch, text)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    logits = rng.normal(size=(batch, regions, model.num_region_labels))
    soft = np.exp(logits - logits.max(-1, keepdims=True))
    return {
        "input_ids": ids,
        "text_mask": np.ones((batch, text), np.int32),
        "img_feat": rng.normal(size=(batch, regions, model.img_dim)).astype(np.float16),
        "img_pos": rng.uniform(size=(batch, regions, 7)).astype(np.float32),
        "img_mask": np.ones((batch, regions), np.int32),
        "itm_label": rng.integers(0, 2, batch).astype(np.int32),
        "img_soft_labels": (soft / soft.sum(-1, keepdims=True)).astype(np.float16),
    }


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def matmul_peak() -> tuple[float, str]:
    """FLOP/s to compare with: measured fp32 jnp matmul on a CPU, nominal bf16 otherwise."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        kind = device.device_kind.lower()
        for name, peak in NOMINAL_BF16:
            if name in kind:
                return peak, f"nominal dense bf16 peak of {device.device_kind}"
    n = 2048
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    seconds = statistics.median(timed(lambda: matmul(a), 10))
    return 2 * n**3 / seconds, f"measured fp32 {n}^3 jnp matmul on {device.device_kind}"


def peak_memory_gib() -> float:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return (device.memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**30


def bench_task(task: str, settings: steps.StepSettings, args, batch: dict) -> dict:
    layout = Layout.single_device()
    state = steps.init_state(steps.init_params(settings.model, 0, layout), settings, layout)
    key = jax.device_put(np.asarray(jax.random.PRNGKey(0)), layout.replicated)
    fields = layout.global_batch({k: batch[k] for k in steps.batch_fields(task)})
    holder = {"state": state}

    def one():
        holder["state"], out = steps.train_step(
            holder["state"], fields, key, task=task, settings=settings, layout=layout
        )
        return out

    start = time.perf_counter()
    jax.block_until_ready(one())
    first = time.perf_counter() - start
    traces = sum(steps.TRACES.values())
    times = timed(one, args.repeats)
    median = statistics.median(times)
    flops = train_step_flops(
        settings.model, task, args.batch, args.text, args.regions, settings.tasks.mask_prob
    )
    return {
        "step_s": {"median": median, "min": min(times), "max": max(times)},
        "compile_s": first - median,
        "recompilations": sum(steps.TRACES.values()) - traces,
        "examples_per_s": args.batch / median,
        "positions_per_s": args.batch * (args.text + args.regions) / median,
        "flops_per_step": flops,
        "flops_per_s": flops / median,
        "peak_memory_gib": peak_memory_gib(),
    }


def wra_seconds(model: UniterConfig, tasks: TaskSettings, args) -> float:
    """Median time of the WRA distance and its gradient at the ITM step's shapes."""
    rng = np.random.default_rng(1)
    dtype = jnp.dtype(model.dtype)
    text = jnp.asarray(rng.normal(size=(args.batch, args.text, model.hidden_size)), dtype)
    regions = jnp.asarray(rng.normal(size=(args.batch, args.regions, model.hidden_size)), dtype)
    text_mask = jnp.ones((args.batch, args.text), jnp.int32)
    img_mask = jnp.ones((args.batch, args.regions), jnp.int32)

    def total(t, r):
        distance = wra_distance(
            t,
            text_mask,
            r,
            img_mask,
            epsilon=tasks.wra_epsilon,
            iterations=tasks.wra_iterations,
        )
        return jnp.sum(distance)

    grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))
    jax.block_until_ready(grad(text, regions))
    return statistics.median(timed(lambda: grad(text, regions), max(5, args.repeats)))


def torch_side(args) -> dict | None:
    command = [
        sys.executable,
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_baseline.py"),
        f"--preset={args.preset}",
        f"--batch={args.batch}",
        f"--positions={args.text + args.regions}",
        f"--repeats={args.repeats}",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"torch side failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(report: dict, args) -> str:
    model, device = report["model"], report["device"]
    lines = [
        f"`python benchmarks/bench_step.py {' '.join(report['argv'])}` on {device} "
        f"({report['cpu_count']} CPU cores), {report['date']}: UNITER-{args.preset}, "
        f"{args.dtype}, batch {args.batch} x ({args.text} text + {args.regions} regions) = "
        f"{args.batch * (args.text + args.regions)} positions, dropout on, one device.",
        f"Peak for the fractions: {report['peak_flops'] / 1e9:.0f} GFLOP/s, "
        f"{report['peak_source']}.",
        "",
    ]
    torch = report.get("torch")
    head = "| task | step s (median, min-max) |"
    rule = "|---|---|"
    if torch:
        head += " PyTorch s | JAX / PyTorch |"
        rule += "---:|---:|"
    head += (
        " examples/s | positions/s | GFLOP/step | GFLOP/s | of peak | compile s | "
        "recompiles | peak mem GiB |"
    )
    rule += "---:|---:|---:|---:|---:|---:|---:|---:|"
    lines += [head, rule]
    for task, r in report["tasks"].items():
        s = r["step_s"]
        row = f"| {task} | {s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f}) |"
        if torch:
            theirs = torch["step_s"]["median"]
            row += f" {theirs:.3f} | {s['median'] / theirs:.2f} |"
        row += (
            f" {r['examples_per_s']:.1f} | {r['positions_per_s']:.0f} | "
            f"{r['flops_per_step'] / 1e9:.4g} | {r['flops_per_s'] / 1e9:.1f} | "
            f"{r['flops_per_s'] / report['peak_flops']:.2f} | {r['compile_s']:.1f} | "
            f"{r['recompilations']} | {r['peak_memory_gib']:.2f} |"
        )
        lines.append(row)
    lines.append("")
    if torch:
        lines.append(
            f"PyTorch side: {torch['framework']}, {torch['threads']} threads, the same "
            f"positions, an ITM-like loss; min-max {torch['step_s']['min']:.3f}-"
            f"{torch['step_s']['max']:.3f} s; the AdamW update is "
            f"{100 * torch['update_share']:.1f}% of its step."
        )
    if "wra_share" in report:
        lines.append(
            f"WRA (OT distance and gradient, jitted alone): {report['wra_s'] * 1e3:.1f} ms, "
            f"{100 * report['wra_share']:.2f}% of the ITM step."
        )
    pipe = report.get("pipeline")
    if pipe:
        step_rate = min(r["examples_per_s"] for r in report["tasks"].values())
        lines.append(
            f"Input pipeline (benchmarks/input_pipeline.py): {pipe['examples_per_s']:.0f} "
            f"examples/s, {pipe['examples_per_s'] / step_rate:.0f}x the slowest step's; "
            f"padding waste of the default buckets on a COCO-like mix "
            f"{100 * pipe['padding_waste']:.1f}%."
        )
    lines.append(f"Model: {model}.")
    return "\n".join(lines)


def main() -> None:
    args = parse()
    model = UniterConfig.preset(args.preset, dtype=args.dtype, scan_layers=args.scan)
    tasks = TaskSettings(
        mask_id=103, special_ids=(101, 102, 0), random_range=(999, model.vocab_size)
    )
    settings = steps.StepSettings(model, tasks, OptimSettings(warmup_steps=0))
    device = jax.devices()[0].device_kind
    peak, source = matmul_peak()
    print(f"{device}: peak {peak / 1e9:.0f} GFLOP/s ({source})", flush=True)
    batch = host_batch(model, args.batch, args.text, args.regions)
    report = {
        "argv": sys.argv[1:],
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "model": f"{model.num_layers} layers, hidden {model.hidden_size}, "
        f"{model.num_heads} heads, scan {args.scan}",
        "peak_flops": peak,
        "peak_source": source,
        "tasks": {},
    }
    if args.torch:
        # First, in a child process, before this one holds models or tf.data threads.
        report["torch"] = torch_side(args)
        if report["torch"]:
            print(f"torch: {report['torch']['step_s']}", flush=True)
    for task in args.tasks.split(","):
        result = bench_task(task, settings, args, batch)
        report["tasks"][task] = result
        print(
            f"{task}: {result['step_s']['median']:.3f} s/step, "
            f"{result['flops_per_s'] / peak:.2f} of peak, compile {result['compile_s']:.1f} s, "
            f"{result['recompilations']} recompilations",
            flush=True,
        )
    if "itm" in report["tasks"]:
        report["wra_s"] = wra_seconds(model, tasks, args)
        report["wra_share"] = report["wra_s"] / report["tasks"]["itm"]["step_s"]["median"]
        print(f"WRA: {100 * report['wra_share']:.2f}% of the ITM step", flush=True)
    if args.pipeline:
        from input_pipeline import measure

        report["pipeline"] = measure()
        print(f"pipeline: {report['pipeline']}", flush=True)
    table = markdown(report, args)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if args.out:
        write_section(args.out, "bench_step.py", table)


if __name__ == "__main__":
    main()
