"""The PyTorch side of bench_step.py: a HuggingFace BertModel train step.

  python benchmarks/torch_baseline.py --preset base --batch 16 --positions 76
  python benchmarks/torch_baseline.py --device cuda --dtype bfloat16 --batch 256 --positions 162

Eager, train mode (dropout on), the sizes of a UNITER preset, every position
a real token: forward, an ITM-like 2-way loss on the pooled output, backward
and an AdamW update, the work of the original UNITER's ITM, MRFR and MRC-kl
steps (within 7% of them on a CPU, issue #8). Parameters and the update are
fp32; `--dtype bfloat16` runs the forward and backward under autocast, as the
original's mixed precision did in fp16. Prints one JSON object: step seconds
(median, min, max over `--repeats` steps after `--warmup`; on a GPU each step
ends with a synchronisation), the share of the update in it, and the machine.

torch is a test extra; bench_step.py runs this script in a child process so
that both sides are measured in one run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# Sizes of the UNITER presets (uniter_jax.model.config.PRESETS) and BERT's vocabulary.
PRESETS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
    "base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
    "large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
}


def build(preset: str, batch: int, positions: int, device: str = "cpu", dtype: str = "float32"):
    """`(step, about)`: `step()` runs one train step and returns its seconds and
    its update's seconds; `about` describes the framework, device and threads."""
    import contextlib

    import torch
    import transformers

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch_baseline.py: --device cuda, but torch sees no CUDA device")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=28996, attn_implementation="eager", **PRESETS[preset]
    )
    model = transformers.BertModel(config).train().to(device)
    head = torch.nn.Linear(config.hidden_size, 2).to(device)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=5e-5, betas=(0.9, 0.98), weight_decay=0.01)
    ids = torch.randint(999, config.vocab_size, (batch, positions), device=device)
    mask = torch.ones(batch, positions, dtype=torch.long, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)

    def autocast():
        if dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device, dtype=getattr(torch, dtype))

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def step() -> tuple[float, float]:
        sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            pooled = model(input_ids=ids, attention_mask=mask).pooler_output
            loss = torch.nn.functional.cross_entropy(head(pooled).float(), labels)
        loss.backward()
        sync()
        middle = time.perf_counter()
        optimizer.step()
        sync()
        end = time.perf_counter()
        return end - start, end - middle

    where = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    about = {
        "framework": f"torch {torch.__version__} eager, HuggingFace transformers "
        f"{transformers.__version__} BertModel, {dtype} on {where}",
        "device": where,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "preset": preset,
        "batch": batch,
        "positions": positions,
        "cpu_count": os.cpu_count(),
    }
    return step, about


def measure(
    preset: str,
    batch: int,
    positions: int,
    repeats: int,
    warmup: int,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    step, about = build(preset, batch, positions, device, dtype)
    for _ in range(warmup):
        step()
    times, updates = zip(*(step() for _ in range(repeats)), strict=True)
    return {
        **about,
        "repeats": repeats,
        "step_s": {
            "median": statistics.median(times),
            "min": min(times),
            "max": max(times),
        },
        "update_share": statistics.median(updates) / statistics.median(times),
    }


def serve(preset: str, batch: int, positions: int, warmup: int, device: str, dtype: str) -> None:
    step, about = build(preset, batch, positions, device, dtype)
    for _ in range(warmup):
        step()
    print(json.dumps(about), flush=True)
    for line in sys.stdin:
        step()
        times, updates = zip(*(step() for _ in range(int(line))), strict=True)
        print(json.dumps({"step_s": times, "update_s": updates}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--positions", type=int, default=76, help="text + region positions")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--serve", action="store_true", help="run k steps per stdin line")
    args = parser.parse_args()
    sizes = (args.preset, args.batch, args.positions)
    if args.serve:
        serve(*sizes, args.warmup, args.device, args.dtype)
        return
    result = measure(*sizes, args.repeats, args.warmup, args.device, args.dtype)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
