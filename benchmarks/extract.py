"""Region-extraction speed: images/s and the time of each stage.

  python benchmarks/extract.py [--sizes 640x480 --batch-size 2 --repeats 3 --proposals 36]
  python benchmarks/extract.py --device-check    # gpu_check.sh's run: 2 sizes, fp32 and bf16

The full ResNet-101 detector (`DetectorConfig()`) with random weights
(`random_detector`: the same work as the published weights, labels
meaningless) on generated JPEG files of COCO-like sizes (width x height;
640x480 and 480x640 become 800x600 / 600x800, 500x375 becomes 800x600 too).
Per size and dtype, a batch of `--batch-size` images of that size:

- `host`: decode, BGR mean subtraction, resize (`preprocess.prepare_image`) and
  `pad_batch`, one thread (the extractor runs `workers` of them, overlapped
  with the device);
- `step`: the extractor's real jitted step (`extract_step.make_step` on one
  device: one image at a time), the numbers images/s is computed from;
- the step's stages, each jitted alone over the whole batch, fed the previous
  stage's outputs: `backbone_rpn` (ResNet res2-res4 and the RPN head),
  `proposals` (decode, top-k, NMS), `roi_heads` (RoIPool and res5 with the
  class, box and attribute heads), `select` (per-class NMS and the selection of
  10-100 regions). Their sum differs from `step` by the per-image loop and
  what XLA fuses across stage boundaries.

Every timed call is preceded by `--warmup` untimed calls; the first call's
time (compilation included, where the bucket's program is new) is reported as
`compile_s`. Prints JSON (and each case's images/s to stderr as it
finishes); a case that fails (out of memory) records its error, the others
still run. `--proposals 36` gives a quicker look on a CPU, where RoI pooling
and res5 over 300 proposals take about 17 s an image (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uniter_jax.features import detections, extract_step, preprocess
from uniter_jax.features.detector_config import DetectorConfig
from uniter_jax.features.extract_config import ExtractConfig
from uniter_jax.features.extract_step import feature_map_size, make_step
from uniter_jax.features.random_weights import RANDOM_WEIGHTS, random_detector

COCO_SIZES = ("640x480", "480x640", "500x375")  # width x height


def parse_size(text: str) -> tuple[int, int]:
    """`"WxH"` -> (height, width)."""
    width, height = (int(v) for v in text.lower().split("x"))
    return height, width


def write_images(folder: str, height: int, width: int, count: int, seed: int) -> list[str]:
    """`count` JPEG files of smooth random colour (so JPEG decoding costs what a photo's does)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        noisy = np.asarray(image, np.int16) + rng.integers(-20, 21, (height, width, 3))
        path = os.path.join(folder, f"img_{height}x{width}_{i}.jpg")
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _timed(fn, *args, warmup: int, repeats: int) -> tuple[float, list[float], object]:
    """(first call's seconds, the timed calls' seconds, the last output)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, times, out


def _stats(first: float, times: list[float], images: int) -> dict:
    median = float(np.median(times))
    return {
        "compile_s": round(first, 3),
        "median_s": round(median, 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "ms_per_image": round(1e3 * median / images, 2),
    }


def stage_functions(detector, config: ExtractConfig, cell_anchors: np.ndarray) -> tuple:
    """`extract_step.detect`'s four stages, each jitted alone: built once per
    detector, so same-bucket sizes share their programs."""
    graphdef = nnx.graphdef(detector)

    @jax.jit
    def backbone_rpn(state, images):
        return nnx.merge(graphdef, state)(images)

    @jax.jit
    def propose(logits, deltas, image_sizes, scales, feature_sizes):
        return extract_step.propose(
            detector,
            logits,
            deltas,
            image_sizes,
            scales,
            feature_sizes,
            config=config,
            cell_anchors=cell_anchors,
        )

    @jax.jit
    def roi_heads(state, features, boxes):
        return nnx.merge(graphdef, state).regions(features, boxes)

    @jax.jit
    def select(class_logits, attribute_logits, features, boxes, valid, scales):
        kept = detections.select_regions(
            class_logits,
            boxes,
            valid,
            scales,
            attribute_logits,
            conf_threshold=config.conf_threshold,
            min_boxes=config.min_boxes,
            max_boxes=config.max_boxes,
        )
        chosen = jnp.take_along_axis(features, kept.indices[..., None], axis=1)
        return kept.count, jnp.where(kept.valid[..., None], chosen, 0.0)

    return backbone_rpn, propose, roi_heads, select


def time_stages(
    functions: tuple, state, padded: preprocess.ImageBatch, *, warmup: int, repeats: int
) -> tuple[dict, np.ndarray]:
    """Each stage's timing, fed the previous stage's outputs, and the regions
    kept per image."""
    batch = len(padded.images)
    backbone_rpn, propose, roi_heads, select = functions
    sizes = np.array([feature_map_size(h, w) for h, w in padded.image_sizes.tolist()], np.int32)
    images, image_sizes, scales = (jnp.asarray(x) for x in padded[:3])
    stages = {}
    first, times, rpn = _timed(backbone_rpn, state, images, warmup=warmup, repeats=repeats)
    stages["backbone_rpn"] = _stats(first, times, batch)
    args = (rpn.objectness_logits, rpn.anchor_deltas, image_sizes, scales, jnp.asarray(sizes))
    first, times, proposed = _timed(propose, *args, warmup=warmup, repeats=repeats)
    stages["proposals"] = _stats(first, times, batch)
    args = (state, rpn.features, proposed.boxes)
    first, times, heads = _timed(roi_heads, *args, warmup=warmup, repeats=repeats)
    stages["roi_heads"] = _stats(first, times, batch)
    args = (
        heads.class_logits,
        heads.attribute_logits,
        heads.features,
        proposed.boxes,
        proposed.valid,
        scales,
    )
    first, times, (count, _) = _timed(select, *args, warmup=warmup, repeats=repeats)
    stages["select"] = _stats(first, times, batch)
    return stages, np.asarray(count)


def measure_case(
    detector,
    config: ExtractConfig,
    paths: list[str],
    *,
    cell_anchors: np.ndarray,
    functions: tuple,
    warmup: int,
    repeats: int,
) -> dict:
    """One batch of same-size images: host preparation, the step and its stages."""
    batch = len(paths)
    # Host: decode + resize + pad, one thread, timed over every image.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        prepared = [preprocess.prepare_image(p, config.short_side, config.max_side) for p in paths]
        bucket = preprocess.choose_bucket(*prepared[0].pixels.shape[:2], config.buckets)
        padded = preprocess.pad_batch(prepared, bucket)
        times.append(time.perf_counter() - start)
    host = _stats(times[0], times, batch)
    host.pop("compile_s")

    # One device: the stages below run on the default one as well.
    step, _ = make_step(detector, config, cell_anchors=cell_anchors, devices=jax.devices()[:1])
    first, times, out = _timed(step, padded, batch, warmup=warmup, repeats=repeats)
    whole = _stats(first, times, batch)

    result = {
        "bucket": list(bucket),
        "images_per_s": round(batch / whole["median_s"], 3),
        "step": whole,
        "host": host,
        "regions_per_image": [int(c) for c in np.asarray(out["count"])],
    }
    try:
        stages, count = time_stages(
            functions, nnx.state(detector), padded, warmup=warmup, repeats=repeats
        )
    except Exception as error:  # e.g. the whole batch's RoIPool out of memory: keep the step's
        result["stages_error"] = f"{type(error).__name__}: {str(error)[:500]}"
        return result
    stage_sum = sum(s["median_s"] for s in stages.values())
    return result | {
        "stages": stages,
        "stage_sum_s": round(stage_sum, 4),
        "stage_shares": {k: round(s["median_s"] / stage_sum, 3) for k, s in stages.items()},
        "stage_regions_per_image": [int(c) for c in count],
    }


def measure(
    sizes: tuple[str, ...] = COCO_SIZES,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    batch_size: int = 1,
    *,
    warmup: int = 1,
    repeats: int = 3,
    detector_config: DetectorConfig | None = None,
    extract_config: ExtractConfig | None = None,
) -> dict:
    """Every (size, dtype) case; `detector_config` and `extract_config` default
    to the full model and the original's extraction settings."""
    base = detector_config or DetectorConfig()
    config = dataclasses.replace(extract_config or ExtractConfig(), batch_size=batch_size)
    cases = {}
    with tempfile.TemporaryDirectory() as folder:
        files = {
            size: write_images(folder, *parse_size(size), batch_size, seed=k)
            for k, size in enumerate(sizes)
        }
        for dtype in dtypes:
            start = time.perf_counter()
            detector_cfg = dataclasses.replace(base, dtype=dtype)
            detector = random_detector(detector_cfg)
            build_s = time.perf_counter() - start
            functions = stage_functions(detector, config, detector_cfg.cell_anchors())
            for size in sizes:
                try:
                    case = measure_case(
                        detector,
                        config,
                        files[size],
                        cell_anchors=detector_cfg.cell_anchors(),
                        functions=functions,
                        warmup=warmup,
                        repeats=repeats,
                    )
                except Exception as error:  # an OOM in one case: the others still report
                    case = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
                case["detector_build_s"] = round(build_s, 2)
                cases[f"{size}/{dtype}"] = case
                print(
                    f"{size}/{dtype}: {case.get('images_per_s', case.get('error'))}",
                    file=sys.stderr,
                )
    return {
        "weights": RANDOM_WEIGHTS,
        "detector": {"depth": base.depth, "blocks_per_stage": list(base.stage_blocks)},
        "extract": {
            "batch_size": batch_size,
            "max_boxes": config.max_boxes,
            "pre_nms_top_n": config.pre_nms_top_n,
            "post_nms_top_n": config.post_nms_top_n,
        },
        "warmup": warmup,
        "repeats": repeats,
        "cases": cases,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.local_devices()],
        "device_kind": jax.local_devices()[0].device_kind,
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(COCO_SIZES), help="WxH each")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=1, help="images per step")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after the first")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls")
    parser.add_argument(
        "--device-check",
        action="store_true",
        help="gpu_check.sh's run: 640x480 and 500x375 (one bucket, one compile per dtype), "
        "fp32 and bf16, batch 8, 1 warm-up, 3 repeats",
    )
    parser.add_argument(
        "--proposals",
        type=int,
        help="proposals per image into the box head (default 300, the original's); RoI "
        "pooling and res5's time is linear in it",
    )
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    if args.device_check:
        args.sizes, args.dtypes = ["640x480", "500x375"], ["float32", "bfloat16"]
        args.batch_size, args.warmup, args.repeats = 8, 1, 3
    config = ExtractConfig()
    if args.proposals:
        config = dataclasses.replace(
            config,
            post_nms_top_n=args.proposals,
            min_boxes=min(config.min_boxes, args.proposals),
            max_boxes=min(config.max_boxes, args.proposals),
        )
    result = measure(
        tuple(args.sizes),
        tuple(args.dtypes),
        args.batch_size,
        warmup=args.warmup,
        repeats=args.repeats,
        extract_config=config,
    )
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
