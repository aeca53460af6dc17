"""Convert checkpoints between the original PyTorch layout and ours.

Import (UNITER `.pt`, or BERT `.bin`/`.safetensors`) into an orbax checkpoint
that training and fine-tuning start from:

  python -m uniter_jax.convert --pytorch-checkpoint uniter-base.pt \
      --model-config uniter-base.json --out ckpt/uniter-base

Export one of ours back to the original `.pt` layout:

  python -m uniter_jax.convert --to-pytorch ckpt/uniter-base --out uniter-base.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np

from uniter_jax import param_checkpoint
from uniter_jax.convert.layout import CheckpointError
from uniter_jax.convert.pytorch import export_checkpoint, import_checkpoint
from uniter_jax.model.config import PRESETS, ConfigError, UniterConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m uniter_jax.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pytorch-checkpoint", help="UNITER .pt or BERT .bin/.safetensors")
    source.add_argument("--to-pytorch", metavar="DIR", help="our checkpoint directory to export")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--model-config", help="the original JSON config (uniter-base.json)")
    shape.add_argument("--preset", choices=sorted(PRESETS), help="instead of --model-config")
    p.add_argument("--out", required=True, help="output directory (import) or .pt file (export)")
    p.add_argument(
        "--drop-unknown",
        action="store_true",
        help="skip keys with no place in the model (a downstream head) instead of failing",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="export")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def _log(message: str) -> None:
    print(message, flush=True)


def _import(args: argparse.Namespace) -> None:
    if args.model_config:
        config = UniterConfig.from_json(args.model_config)
    elif args.preset:
        config = UniterConfig.preset(args.preset)
    else:
        raise ConfigError("importing needs --model-config X.json or --preset NAME")
    start = time.perf_counter()
    _log(f"reading {args.pytorch_checkpoint} as a {config.num_layers}-layer UNITER ...")
    params, config, report = import_checkpoint(
        args.pytorch_checkpoint, config, drop_unknown=args.drop_unknown, sizes_from_file=True
    )
    count = sum(np.size(x) for x in jax.tree.leaves(params))
    _log(
        f"  {count:,} parameters read (img_dim {config.img_dim}, {config.num_region_labels} "
        "region labels)\n  " + report.summary().replace("\n", "\n  ")
    )
    source = {"file": args.pytorch_checkpoint, **dataclasses.asdict(report)}
    param_checkpoint.save(args.out, params, config, source=source, overwrite=args.force)
    _log(f"wrote {args.out} in {time.perf_counter() - start:.1f}s")


def _export(args: argparse.Namespace) -> None:
    if args.model_config or args.preset:
        raise ConfigError("--to-pytorch reads the model config from the checkpoint directory")
    if os.path.exists(args.out) and not args.force:
        raise CheckpointError(f"{args.out} already exists (pass --force)")
    params, config, _ = param_checkpoint.load(args.to_pytorch)
    _log(f"exporting {args.to_pytorch} ({config.num_layers} layers) to {args.out} ...")
    count = export_checkpoint(params, config, args.out, dtype=args.dtype)
    _log(f"wrote {count} tensors ({args.dtype}) to {args.out}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.pytorch_checkpoint:
            _import(args)
        else:
            _export(args)
    except (CheckpointError, ConfigError, param_checkpoint.ParamCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
