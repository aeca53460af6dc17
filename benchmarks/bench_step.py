"""Train-step speed of each pretraining task, side by side with PyTorch.

  python benchmarks/bench_step.py --out docs/benchmarks.md        # base, CPU: ~6-12 min
  python benchmarks/bench_step.py --preset tiny --batch 64 --no-torch
  python benchmarks/bench_step.py --dtype bfloat16 --batch 256 --text 62 --regions 100 \
      --repeats 10 --no-pipeline                                 # GPU: benchmarks/gpu_check.sh

For each task, the real jitted train step (masking, forward, loss, backward,
AdamW update; `uniter_jax.train.step.train_step`, as the loop calls it) on
one device with a fixed batch of `--batch` x (`--text` + `--regions`)
positions, all of them real, dropout on, the layers unrolled as the model's
default (`--scan` times the `lax.scan` stack instead). A shared machine has
slow and fast phases, so the sides take turns: each of `--rounds` rounds runs
`--repeats` steps of the PyTorch side (benchmarks/torch_baseline.py, a child
process started first; on a GPU it runs there too, under autocast to
`--dtype`), then `--repeats` steps of each task, and on a CPU measures the
matmul peak again. Each side's turn, and each task's, starts with one
untimed step: the first step after the other side ran was up to 2x slower
(its freed memory has to be compacted into huge pages again). Reported:
- step time: median, min and max over all timed steps after the first
  (compiling) call, each timed to its result;
- JAX / PyTorch: the median over rounds of the two sides' median step
  times within a round, with the rounds' range;
- compile: the first call's time less a median step;
- recompilations during the timed steps (must be 0);
- examples/s, positions/s, the analytic FLOPs of a step
  (`uniter_jax.model.flops`: matmuls, forward x 3; the MLM/MRM heads count
  the expected masked positions, not the gather's padding) and the achieved
  FLOP/s as a fraction of the peak: on a CPU, of the fp32 jnp matmul peak
  measured in the same round, the median over rounds; on an accelerator, of
  its nominal dense bf16 peak (MFU);
- peak memory: the process's resident set on a CPU, the device's peak bytes
  in use otherwise.
Then: the WRA share of the ITM step (the OT distance and its gradient, jitted
alone at the ITM step's shapes), the padding waste of the default buckets on a
COCO-like length mix and the input pipeline's examples/s
(benchmarks/input_pipeline.py).

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
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# tests/batches.py, the tests' random batch; appended, as tests/ holds folders
# named like modules (data, model).
sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from uniter_jax.host import reexec_with_huge_pages, without_huge_pages

if __name__ == "__main__":
    reexec_with_huge_pages()  # as main.py does; the PyTorch child runs without

import jax
import jax.numpy as jnp
import numpy as np
from batches import random_batch
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
    p.add_argument(
        "--scan",
        action=argparse.BooleanOptionalAction,
        default=UniterConfig.scan_layers,
        help="run the layers as lax.scan (default: the model's default, unrolled)",
    )
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2, help="steps of each side per round")
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", default="", help="write every number here")
    p.add_argument("--out", default="", help="rewrite the bench_step.py section of this file")
    return p.parse_args()


def host_batch(model: UniterConfig, batch: int, text: int, regions: int) -> dict:
    """Every pretraining field, every position valid, float16 as the pipeline's."""
    rng = np.random.default_rng(0)
    fields = random_batch(
        rng,
        [text] * batch,
        [regions] * batch,
        text=text,
        regions=regions,
        img_dim=model.img_dim,
        ids=(999, model.vocab_size),
        cls_id=101,
        sep_id=102,
        num_labels=model.num_region_labels,
        dtype=np.float16,
    )
    fields["itm_label"] = rng.integers(0, 2, batch).astype(np.int32)
    return fields


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def nominal_peak() -> tuple[float, str] | None:
    """The nominal dense bf16 FLOP/s of an accelerator; None on a CPU."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    kind = device.device_kind.lower()
    for name, peak in NOMINAL_BF16:
        if name in kind:
            return peak, f"nominal dense bf16 peak of {device.device_kind}"
    return None


def matmul_flops() -> float:
    """Measured fp32 FLOP/s of a 2048^3 jnp matmul (median of 10)."""
    n = 2048
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    return 2 * n**3 / statistics.median(timed(lambda: matmul(a), 10))


def peak_memory_gib() -> float:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return (device.memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**30


def prepare_task(task: str, settings: steps.StepSettings, batch: dict) -> dict:
    """The task's step as a no-argument callable, called once (compiled)."""
    layout = Layout.single_device()
    state = steps.init_state(
        steps.init_params(settings.model, 0, layout, objective=settings.tasks), settings, layout
    )
    key = jax.device_put(np.asarray(jax.random.PRNGKey(0)), layout.replicated)
    fields = layout.global_batch({k: batch[k] for k in steps.batch_fields(task, settings.tasks)})
    holder = {"state": state}

    def one():
        holder["state"], out = steps.train_step(
            holder["state"], fields, key, task=task, settings=settings, layout=layout
        )
        return out

    start = time.perf_counter()
    jax.block_until_ready(one())
    return {"step": one, "first_s": time.perf_counter() - start}


def task_report(task: str, first_s: float, rounds: list[list[float]], settings, args) -> dict:
    times = [t for r in rounds for t in r]
    median = statistics.median(times)
    flops = train_step_flops(
        settings.model, task, args.batch, args.text, args.regions, settings.tasks.mask_prob
    )
    return {
        "step_s": {"median": median, "min": min(times), "max": max(times)},
        "round_medians_s": [statistics.median(r) for r in rounds],
        "compile_s": first_s - median,
        "examples_per_s": args.batch / median,
        "positions_per_s": args.batch * (args.text + args.regions) / median,
        "flops_per_step": flops,
        "flops_per_s": flops / median,
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
            tasks.wra,
        )
        return jnp.sum(distance)

    grad = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))
    jax.block_until_ready(grad(text, regions))
    return statistics.median(timed(lambda: grad(text, regions), max(5, args.repeats)))


class TorchSide:
    """The PyTorch step in a child process (torch_baseline.py --serve), k steps at a time."""

    def __init__(self, args, platform: str):
        if platform not in ("cpu", "gpu"):
            raise RuntimeError(f"no PyTorch side on {platform}: it runs on a CPU or a CUDA GPU")
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_baseline.py")
        command = [
            sys.executable,
            script,
            "--serve",
            f"--preset={args.preset}",
            f"--batch={args.batch}",
            f"--positions={args.text + args.regions}",
            f"--device={'cuda' if platform == 'gpu' else 'cpu'}",
            f"--dtype={args.dtype}",
        ]
        self.errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (as long as the child)
        self.child = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            text=True,
            env=without_huge_pages(os.environ),  # measured slower with huge pages
        )
        self.about = self._answer()
        self.rounds: list[list[float]] = []
        self.update_s: list[float] = []

    def _answer(self) -> dict:
        for line in self.child.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.errors.seek(0)
        raise RuntimeError(f"torch side failed:\n{self.errors.read()[-2000:]}")

    def run(self, steps_: int) -> None:
        self.child.stdin.write(f"{steps_}\n")
        self.child.stdin.flush()
        answer = self._answer()
        self.rounds.append(answer["step_s"])
        self.update_s += answer["update_s"]

    def report(self) -> dict:
        self.child.stdin.close()
        self.child.wait()
        times = [t for r in self.rounds for t in r]
        return {
            **self.about,
            "step_s": {
                "median": statistics.median(times),
                "min": min(times),
                "max": max(times),
            },
            "round_medians_s": [statistics.median(r) for r in self.rounds],
            "update_share": statistics.median(self.update_s) / statistics.median(times),
        }


def ratios(ours: list[float], theirs: list[float]) -> dict:
    """JAX / PyTorch per round (medians within the round): median and range."""
    per_round = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}


def number(x: float) -> str:
    """Four significant digits, without an exponent: 635.5, 22,130."""
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


def section_name(platform: str) -> str:
    """The marked section of the markdown file: one per platform, so that a GPU
    run does not overwrite the CPU table."""
    return "bench_step.py" if platform == "cpu" else f"bench_step.py {platform}"


def markdown(report: dict, args) -> str:
    model, device = report["model"], report["device"]
    on_cpu = report.get("platform", "cpu") == "cpu"
    order = (
        f"{args.rounds} rounds of {args.repeats} steps per side; in each round the PyTorch "
        "side runs first, then every task, each after one untimed step."
    )
    if on_cpu:
        order += (
            f" GLIBC_TUNABLES: {report['tunables'] or 'none'} on the JAX side, "
            f"{report['torch_tunables'] or 'none'} on the PyTorch side."
        )
    lines = [
        f"`python benchmarks/bench_step.py {' '.join(report['argv'])}` on {device} "
        f"({report['cpu_count']} CPU cores, jax {report['jax']}), {report['date']}: "
        f"UNITER-{args.preset}, {args.dtype}, batch {args.batch} x ({args.text} text + "
        f"{args.regions} regions) = {args.batch * (args.text + args.regions)} positions, "
        "dropout on, one device.",
        order,
        f"Peak for the fractions: {number(report['peak_flops'] / 1e9)} GFLOP/s, "
        f"{report['peak_source']}.",
        "",
    ]
    torch = report.get("torch")
    head = "| task | step s (median, min-max) |"
    rule = "|---|---|"
    if torch:
        head += " PyTorch s | JAX / PyTorch (rounds' range) |"
        rule += "---:|---:|"
    head += " examples/s | positions/s | GFLOP/step | GFLOP/s | of peak | compile s | recompiles |"
    rule += "---:|---:|---:|---:|---:|---:|---:|"
    lines += [head, rule]
    for task, r in report["tasks"].items():
        s = r["step_s"]
        row = f"| {task} | {s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f}) |"
        if torch:
            ratio = r["vs_torch"]
            row += (
                f" {torch['step_s']['median']:.3f} | {ratio['median']:.2f} "
                f"({ratio['min']:.2f}-{ratio['max']:.2f}) |"
            )
        row += (
            f" {r['examples_per_s']:.1f} | {r['positions_per_s']:.0f} | "
            f"{number(r['flops_per_step'] / 1e9)} | {number(r['flops_per_s'] / 1e9)} | "
            f"{r['of_peak']:.2f} | {r['compile_s']:.1f} | "
            f"{r['recompilations']} |"
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
    memory = "of the process" if on_cpu else "in use on the device"
    lines.append(
        f"Peak memory {memory}, every task's state held: "
        f"{report['peak_memory_gib']:.2f} GiB. Model: {model}."
    )
    return "\n".join(lines)


def main() -> None:
    args = parse()
    model = UniterConfig.preset(args.preset, dtype=args.dtype, scan_layers=args.scan)
    tasks = TaskSettings(
        mask_id=103, special_ids=(101, 102, 0), random_range=(999, model.vocab_size)
    )
    settings = steps.StepSettings(model, tasks, OptimSettings(warmup_steps=0))
    device = jax.devices()[0].device_kind
    platform = jax.devices()[0].platform
    batch = host_batch(model, args.batch, args.text, args.regions)
    report = {
        "argv": sys.argv[1:],
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "platform": platform,
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "torch_tunables": without_huge_pages(os.environ).get("GLIBC_TUNABLES", ""),
        "model": f"{model.num_layers} layers, hidden {model.hidden_size}, "
        f"{model.num_heads} heads, scan {args.scan}",
        "tasks": {},
    }
    # The PyTorch child first, before this process holds models or tf.data threads.
    torch = None
    if args.torch:
        try:
            torch = TorchSide(args, platform)
        except (OSError, RuntimeError) as error:
            print(error, file=sys.stderr)
    task_names = args.tasks.split(",")
    prepared = {}
    for task in task_names:
        prepared[task] = prepare_task(task, settings, batch)
        print(f"{task}: compiled, first call {prepared[task]['first_s']:.1f} s", flush=True)
    traces = {task: steps.TRACES["train", task] for task in task_names}
    nominal = nominal_peak()
    peaks, rounds = [], {task: [] for task in task_names}
    for r in range(args.rounds):
        if nominal is None:
            peaks.append(matmul_flops())
        if torch:
            torch.run(args.repeats)
        for task in task_names:
            jax.block_until_ready(prepared[task]["step"]())  # untimed, see the docstring
            rounds[task].append(timed(prepared[task]["step"], args.repeats))
        summary = ", ".join(f"{t} {statistics.median(rounds[t][-1]):.2f}" for t in task_names)
        theirs = f"torch {statistics.median(torch.rounds[-1]):.2f}, " if torch else ""
        print(f"round {r + 1}/{args.rounds} (s/step): {theirs}{summary}", flush=True)
    peak, source = nominal or (
        statistics.median(peaks),
        f"measured fp32 2048^3 jnp matmul on {device} in each round "
        f"({min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f}, median shown); a task's fraction "
        "is the median over rounds of its FLOP/s over that round's peak",
    )
    report.update(
        peak_flops=peak,
        round_peaks=peaks or [peak] * args.rounds,
        peak_source=source,
        peak_memory_gib=peak_memory_gib(),
    )
    if torch:
        report["torch"] = torch.report()
    for task in task_names:
        result = task_report(task, prepared[task]["first_s"], rounds[task], settings, args)
        result["recompilations"] = steps.TRACES["train", task] - traces[task]
        result["of_peak"] = statistics.median(
            result["flops_per_step"] / seconds / round_peak
            for seconds, round_peak in zip(
                result["round_medians_s"], report["round_peaks"], strict=True
            )
        )
        if torch:
            result["vs_torch"] = ratios(
                result["round_medians_s"], report["torch"]["round_medians_s"]
            )
        report["tasks"][task] = result
        print(
            f"{task}: {result['step_s']['median']:.3f} s/step, "
            f"{result['of_peak']:.2f} of peak, compile {result['compile_s']:.1f} s, "
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
        write_section(args.out, section_name(platform), table)


if __name__ == "__main__":
    main()
