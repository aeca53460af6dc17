"""Input pipeline throughput and padding waste on base-shaped data.

  python benchmarks/input_pipeline.py [--num-images 400 --steps 30]
  python benchmarks/input_pipeline.py --datasets 4 [--steps 300]

Writes a temporary store of COCO-like examples (fp16 2048-d features, 10-100
regions kept per image, captions of 8-30 tokens, 5 per image), then reports
the padding waste of the default buckets on a large plan of that length mix
and the examples/s of the real pipeline (read, decode, pad, batch) on this
machine. Compare the throughput with the base train step's examples/s: the
target is at least 3x.

`--datasets 4` measures pretraining's mixed input instead: four small stores
shaped like the `alldata` setup's corpora (`CORPORA`: COCO captions, VG
region descriptions, CC and SBU web captions, each its own text-length and
region-count mix, soft labels included), one pipeline per (dataset, task)
stream built as pretraining builds them (`train_pipelines`), and `--steps`
streams drawn by configs/pretrain.py's `alldata` ratios as the train loop
draws them (`MixSchedule.stream`). It reports examples/s overall and per dataset: in the mix
(examples over the time spent waiting for that dataset's batches, the other
pipelines prefetching meanwhile, as in training) and alone (each stream read
back to back while the others are idle, combined by the ratios), and each
stream's measured share of the steps against its ratio's share.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.pretrain import get_config
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
from uniter_jax.train.datasets import configured_datasets, stream_schedule
from uniter_jax.train.inputs import open_stores, train_pipelines

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


@dataclasses.dataclass(frozen=True)
class Corpus:
    """One dataset's shape: its images and texts and their length mixes."""

    images: int
    texts: int  # assigned to the images in turn
    text_len: tuple[int, int]  # word pieces per text, [lo, hi)
    kept: tuple[int, int]  # regions kept per image (of 100 detections), [lo, hi)


# The `alldata` datasets: COCO captions (5 per image), VG region descriptions
# (short, many per crowded image), CC and SBU web captions (one per image in
# the corpora; here 3 share an image, so that small stores fill whole batches
# of every stream: each example still reads its image's regions).
CORPORA = {
    "coco": Corpus(images=160, texts=800, text_len=(8, 31), kept=(10, 101)),
    "vg": Corpus(images=80, texts=1200, text_len=(3, 13), kept=(36, 101)),
    "cc": Corpus(images=300, texts=900, text_len=(5, 26), kept=(10, 61)),
    "sbu": Corpus(images=300, texts=900, text_len=(8, 41), kept=(10, 51)),
}
NUM_LABELS = 1601  # soft-label classes: the MRC-kl streams read them


def write_corpus(root: str, corpus: Corpus, rng: np.random.Generator) -> tuple[str, str]:
    """A text and an image store shaped like `corpus` (soft labels included)."""
    images, texts = os.path.join(root, "images"), os.path.join(root, "texts")
    kept = rng.integers(*corpus.kept, corpus.images)
    with ImageStoreWriter(images, feature_dim=2048, num_labels=NUM_LABELS) as writer:
        for i in range(corpus.images):
            conf = np.where(np.arange(100) < kept[i], 0.9, 0.1)
            feats = rng.standard_normal((100, 2048), dtype=np.float32)
            boxes = rng.uniform(0, 1, (100, 7))
            soft = rng.random((100, NUM_LABELS), dtype=np.float32)
            soft /= soft.sum(-1, keepdims=True)
            writer.add(
                make_regions(
                    f"img{i}", feats, boxes, conf, soft, feature_dim=2048, num_labels=NUM_LABELS
                )
            )
    text_lens = rng.integers(*corpus.text_len, corpus.texts)
    with TextStoreWriter(texts, task="captions", vocab=VOCAB, max_txt_len=60) as writer:
        for t, n in enumerate(text_lens):
            writer.add(f"cap{t}", f"img{t % corpus.images}", rng.integers(999, 28996, n))
    return texts, images


def _settle(timeout_s: float = 30.0) -> None:
    """Waits until the process is idle: every pipeline's background reads are done."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        cpu = time.process_time()  # all threads
        time.sleep(0.1)
        if time.process_time() - cpu < 0.01:  # under a tenth of a core
            return


def _alone(pipeline, drain: int = 3, steps: int = 5) -> tuple[int, float]:
    """`(examples, seconds)` of `steps` back-to-back batches of one pipeline, the
    others idle: its prefetched batches drained first, so it reads at its own pace."""
    _settle()
    for _ in range(drain):
        next(pipeline)
    start, examples = time.perf_counter(), 0
    for _ in range(steps):
        examples += len(next(pipeline)["itm_label"])
    return examples, time.perf_counter() - start


def _rate(weights: dict[str, float], alone: dict[str, tuple[int, float]]) -> float:
    """Examples/s of streams drawn by `weights`, each at its alone pace."""
    examples = sum(w * alone[s][0] for s, w in weights.items())
    return examples / sum(w * alone[s][1] for s, w in weights.items())


def measure_datasets(
    global_batch: int = 64,
    steps: int = 300,
    *,
    corpora: dict[str, Corpus] = CORPORA,
    alone_steps: int = 5,
) -> dict:
    """Mixed-stream throughput of pretraining's `alldata` setup on `corpora`
    (one per alldata dataset: coco, vg, cc, sbu)."""
    rng = np.random.default_rng(0)
    buckets = default_buckets(global_batch)
    config = get_config("alldata")
    config.data.buckets = tuple((b.text_len, b.num_regions, b.batch_size) for b in buckets)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        for name, corpus in corpora.items():
            texts, images = write_corpus(os.path.join(root, name), corpus, rng)
            entry = config.data.datasets[name]
            entry.texts, entry.images = (texts,), (images,)
            entry.val_texts, entry.val_images = (), ()
        write_s = time.perf_counter() - start

        # As pretraining builds its inputs and draws its streams (uniter_jax/train/loop.py).
        datasets = configured_datasets(config)
        schedule, streams = stream_schedule(datasets, config.tasks, config.optim.accumulation)
        stores = {d.name: open_stores(d) for d in datasets}
        pipelines = train_pipelines(config, datasets, stores, streams)
        start = time.perf_counter()
        for pipeline in pipelines.values():
            next(pipeline)  # warm-up: tracing and the first reads of every stream
        warmup_s = time.perf_counter() - start

        draws, examples = collections.Counter(), collections.Counter()
        waited = collections.defaultdict(float)
        start = time.perf_counter()
        for step in range(steps):
            stream = schedule.stream(step, config.seed)
            before = time.perf_counter()
            batch = next(pipelines[stream])
            waited[stream] += time.perf_counter() - before
            draws[stream] += 1
            examples[stream] += len(batch["itm_label"])
        seconds = time.perf_counter() - start

        # Each stream alone: what its batches cost without the others' overlap.
        alone = {
            stream: _alone(pipeline, steps=alone_steps)
            for stream, pipeline in sorted(pipelines.items())
        }
        for pipeline in pipelines.values():
            pipeline.close()

    total_ratio = sum(schedule.mix.values())
    per_stream = {}
    for stream, ratio in sorted(schedule.mix.items()):
        per_stream[stream] = {
            "ratio": ratio,
            "ratio_share": round(ratio / total_ratio, 4),
            "measured_share": round(draws[stream] / steps, 4),
            "steps": draws[stream],
            "examples": examples[stream],
            "examples_per_s_alone": round(alone[stream][0] / alone[stream][1], 1),
        }
    per_dataset = {}
    for d in datasets:
        mine = {d.stream(task): ratio for task, ratio in d.mix.items()}
        done = sum(examples[s] for s in mine)
        wait = sum(waited[s] for s in mine)
        per_dataset[d.name] = {
            "examples_per_s": round(done / wait, 1) if wait else None,
            "examples_per_s_alone": round(_rate(mine, alone), 1),
            "examples": done,
            "wait_s": round(wait, 2),
            "steps": sum(draws[s] for s in mine),
            "ratio_share": round(sum(mine.values()) / total_ratio, 4),
            "measured_share": round(sum(draws[s] for s in mine) / steps, 4),
        }
    # A stream's draws are binomial(steps, share): its share's error in standard deviations.
    z = [
        (s["measured_share"] - s["ratio_share"])
        / np.sqrt(s["ratio_share"] * (1 - s["ratio_share"]) / steps)
        for s in per_stream.values()
    ]
    return {
        "datasets": {name: dataclasses.asdict(corpus) for name, corpus in corpora.items()},
        "buckets (text x regions: global batch)": ", ".join(
            f"{b.text_len}x{b.num_regions}:{b.batch_size}" for b in buckets
        ),
        "examples_per_s": round(sum(examples.values()) / seconds, 1),
        # The same draws with each stream at its alone pace: above 1, the
        # pipelines' prefetching overlaps; below, the 16 pipelines contend.
        "examples_per_s_vs_alone": round(
            sum(examples.values()) / seconds / _rate(schedule.mix, alone), 3
        ),
        "steps": steps,
        "streams": len(pipelines),
        "per_dataset": per_dataset,
        "per_stream": per_stream,
        "max_abs_share_error": round(
            max(abs(s["measured_share"] - s["ratio_share"]) for s in per_stream.values()), 4
        ),
        "max_abs_share_z": round(float(np.max(np.abs(z))), 2),
        "warmup_s": round(warmup_s, 1),
        "store_write_s": round(write_s, 1),
        "cpu_count": os.cpu_count(),
    }


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
    parser.add_argument("--num-images", type=int, default=400, help="the one store's images")
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, help="30; with --datasets 4: 300 stream draws")
    parser.add_argument(
        "--datasets",
        type=int,
        choices=(1, 4),
        default=1,
        help="4: the alldata setup's four datasets, one pipeline per stream (see above)",
    )
    args = parser.parse_args()
    if args.datasets == 4:
        result = measure_datasets(args.global_batch, args.steps or 300)
    else:
        result = measure(args.num_images, args.global_batch, args.steps or 30)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
