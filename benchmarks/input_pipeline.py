"""Input pipeline throughput and padding waste on base-shaped data.

  python benchmarks/input_pipeline.py [--num-images 400 --steps 30]

Writes a temporary store of COCO-like examples (fp16 2048-d features, 10-100
regions kept per image, captions of 8-30 tokens, 5 per image), then reports
the padding waste of the default buckets on a large plan of that length mix
and the examples/s of the real pipeline (read, decode, pad, batch) on this
machine. Compare the throughput with the base train step's examples/s: the
target is at least 3x.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from uniter_jax.data.image_store import ImageStore, ImageStoreWriter
from uniter_jax.data.pipeline import (
    Pipeline,
    PipelineConfig,
    default_buckets,
    padding_waste,
    plan_epoch,
)
from uniter_jax.data.regions import make_regions
from uniter_jax.data.text_store import TextStore, TextStoreWriter

VOCAB = {"size": 28996, "pad_id": 0, "cls_id": 101, "sep_id": 102, "mask_id": 103}


def coco_like_lengths(rng: np.random.Generator, num_texts: int, num_images: int):
    text_lens = rng.integers(8, 31, num_texts)
    kept = rng.integers(10, 101, num_images)
    return text_lens, kept


def write_stores(root: str, num_images: int, rng: np.random.Generator) -> tuple[str, str]:
    text_lens, kept = coco_like_lengths(rng, num_images * 5, num_images)
    images, texts = os.path.join(root, "images"), os.path.join(root, "texts")
    with ImageStoreWriter(images, feature_dim=2048) as writer:
        for i in range(num_images):
            # 100 detections, of which `kept[i]` are confident enough to keep.
            conf = np.where(np.arange(100) < kept[i], 0.9, 0.1)
            feats = rng.standard_normal((100, 2048), dtype=np.float32)
            boxes = rng.uniform(0, 1, (100, 7))
            writer.add(make_regions(f"img{i}", feats, boxes, conf, feature_dim=2048))
    with TextStoreWriter(texts, task="captions", vocab=VOCAB, max_txt_len=60) as writer:
        for t, n in enumerate(text_lens):
            writer.add(f"cap{t}", f"img{t // 5}", rng.integers(999, 28996, n))
    return texts, images


def measure(num_images: int = 400, global_batch: int = 64, steps: int = 30) -> dict:
    """Padding waste of the default buckets on a COCO-like mix, and the real
    pipeline's examples/s on a temporary store of `num_images` images."""
    rng = np.random.default_rng(0)
    buckets = default_buckets(global_batch)
    config = PipelineConfig(buckets=buckets, itm_neg_prob=0.5)

    # Padding waste: a plan over a large COCO-like mix (no I/O).
    text_lens, kept = coco_like_lengths(rng, 200_000, 40_000)
    plan = plan_epoch(text_lens, rng.integers(0, 40_000, 200_000), kept.astype(np.int32), config, 0)
    waste = padding_waste(plan, buckets)

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        texts, images = write_stores(root, num_images, rng)
        write_s = time.perf_counter() - start
        pipeline = Pipeline(TextStore(texts), ImageStore(images), config)
        next(pipeline)  # warm-up: tracing and the first reads
        start, examples = time.perf_counter(), 0
        for _ in range(steps):
            examples += len(next(pipeline)["itm_label"])
        seconds = time.perf_counter() - start
        pipeline.close()
    return {
        "buckets (text x regions: global batch)": ", ".join(
            f"{b.text_len}x{b.num_regions}:{b.batch_size}" for b in buckets
        ),
        "padding_waste": round(waste, 4),
        "dropped_fraction": round(plan.dropped / len(text_lens), 4),
        "examples_per_s": round(examples / seconds, 1),
        "steps": steps,
        "store_write_s": round(write_s, 1),
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=400)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(json.dumps(measure(args.num_images, args.global_batch, args.steps), indent=2))


if __name__ == "__main__":
    main()
