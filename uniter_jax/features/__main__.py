"""Region features from images, into a sharded image store.

  python -m uniter_jax.features extract --images data/coco/val2014 \\
      --weights bua-caffe-frcn-r101_with_attributes.pth --out data/coco_val2014_img
  python -m uniter_jax.features extract --images 'photos/**/*.jpg' --images more.txt \\
      --weights faster_rcnn_from_caffe_attr.pkl --out data/my_img --num-boxes 36 \\
      --dtype bfloat16 --batch-size 16 --skip-bad

--images: a folder (its image files), a glob pattern (quote it) or a list file
(one path a line); repeatable. Image ids are the file names without extension.
--weights: bottom-up-attention.pytorch `.pth`, py-bottom-up-attention `.pkl` or
HuggingFace's `frcnn-vg-finetuned` `pytorch_model.bin` (`features/weights.py`).
--random-weights: a random ResNet-101 detector (for timing and plumbing; the
labels are meaningless, and the store's manifests say so).

Rerunning the same command resumes: images in finished shards are skipped.
--batch-size is images per step (one dispatch and transfer; rounded up to a
multiple of the local devices), which each device runs one at a time: the
stored bytes do not depend on it (`features/extract.py`). Bad images stop the
run (exit 2, the file named, finished shards kept) unless --skip-bad lists them.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
import os
import sys
from typing import Any

import jax
from flax import nnx

from uniter_jax.data.errors import DataError
from uniter_jax.features import detections
from uniter_jax.features.detector import Detector
from uniter_jax.features.detector_config import DTYPES, DetectorConfig
from uniter_jax.features.extract import Summary, extract_images
from uniter_jax.features.extract_config import ExtractConfig
from uniter_jax.features.image_files import list_images
from uniter_jax.features.random_weights import RANDOM_WEIGHTS, random_detector
from uniter_jax.features.weights import load_detector

log = logging.getLogger("uniter_jax.features")


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m uniter_jax.features",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    e = commands.add_parser("extract", help="images -> a sharded image store")
    e.add_argument(
        "--images",
        action="append",
        required=True,
        help="DIR, GLOB, LIST_FILE or an image; repeatable",
    )
    weights = e.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", metavar="FILE", help="the detector's checkpoint")
    weights.add_argument("--random-weights", action="store_true", help="a random detector")
    e.add_argument("--seed", type=int, default=0, help="with --random-weights")
    e.add_argument("--out", required=True, help="the sharded store folder (created or resumed)")
    e.add_argument("--num-boxes", type=int, help="exactly this many regions (min = max)")
    e.add_argument("--min-boxes", type=int, help=f"default {detections.MIN_BOXES}")
    e.add_argument("--max-boxes", type=int, help=f"default {detections.MAX_BOXES}")
    e.add_argument(
        "--conf",
        type=float,
        default=detections.CONF_THRESHOLD,
        help="keep regions whose max class confidence is at least this (0.2)",
    )
    e.add_argument(
        "--batch-size", type=int, default=8, help="images per step (the bytes do not depend on it)"
    )
    e.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype")
    e.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    e.add_argument("--workers", type=int, default=8, help="host threads decoding images")
    e.add_argument("--skip-bad", action="store_true", help="skip bad images, list them")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument(
        "--detector",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --random-weights: a DetectorConfig field (depth=50)",
    )
    e.add_argument(
        "--distributed",
        choices=("auto", "on", "off"),
        default="auto",
        help="start jax's distributed runtime (several hosts): auto = when "
        "--coordinator-address is given or on a multi-host TPU slice",
    )
    e.add_argument("--coordinator-address", help="HOST:PORT of process 0")
    e.add_argument("--num-processes", type=int, help="processes in the run")
    e.add_argument("--process-id", type=int, help="this process's index")
    return p


def _start_distributed(args: argparse.Namespace) -> None:
    multi_host_tpu = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if args.distributed == "on" or (
        args.distributed == "auto" and (args.coordinator_address or multi_host_tpu)
    ):
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )


def _detector(args: argparse.Namespace) -> tuple[Any, DetectorConfig, dict[str, Any]]:
    """The detector, its config and what the store's source says about it."""
    if args.random_weights:
        config = DetectorConfig(**{**dict(args.detector), "dtype": args.dtype})
        banner = f"RANDOM WEIGHTS (seed {args.seed}): {RANDOM_WEIGHTS}"
        log.warning("%s\n%s\n%s", "!" * len(banner), banner, "!" * len(banner))
        detector = random_detector(config, args.seed)
        return detector, config, {"weights": f"{RANDOM_WEIGHTS} (seed {args.seed})"}
    if args.detector:
        raise DataError("--detector applies to --random-weights; a checkpoint has its own")
    detector, config, info = load_detector(args.weights)
    if config.dtype != args.dtype:  # params stay fp32; only the compute dtype changes
        config = dataclasses.replace(config, dtype=args.dtype)
        target = nnx.eval_shape(lambda: Detector(config, nnx.Rngs(0)))
        nnx.update(target, nnx.state(detector))
        detector = target
    log.info("loaded %s (%s layout, %s anchors)", args.weights, info.layout, config.anchors)
    return detector, config, {"weights": args.weights, "layout": info.layout}


def extract(args: argparse.Namespace) -> Summary:
    if args.num_boxes is not None:
        if args.min_boxes is not None or args.max_boxes is not None:
            raise DataError("--num-boxes or --min-boxes / --max-boxes, not both")
        low = high = args.num_boxes
    else:
        low = detections.MIN_BOXES if args.min_boxes is None else args.min_boxes
        high = detections.MAX_BOXES if args.max_boxes is None else args.max_boxes
    try:
        config = ExtractConfig(
            min_boxes=low,
            max_boxes=high,
            conf_threshold=args.conf,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            workers=args.workers,
        )
    except ValueError as error:
        raise DataError(str(error)) from None
    _start_distributed(args)
    images = list_images(args.images)
    log.info("%d images from %s", len(images), ", ".join(args.images))
    try:
        detector, detector_config, source = _detector(args)
    except TypeError as error:  # an unknown --detector key
        raise DataError(f"--detector: {error}") from None
    source["detector"] = dataclasses.asdict(detector_config)
    return extract_images(
        images,
        args.out,
        detector,
        config=config,
        cell_anchors=detector_config.cell_anchors(),
        source=source,
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    try:
        summary = extract(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary.report(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
