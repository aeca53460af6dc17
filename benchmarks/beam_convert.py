"""Records/s of the Beam conversions on the DirectRunner's engine, 1 and 2 workers,
next to the in-process converters, on generated inputs.

  python benchmarks/beam_convert.py                       # 4000 captions, 300 images
  python benchmarks/beam_convert.py --captions 20000 --images 1000 --workers 1 2 4

Inputs (in a temporary folder): a Conceptual Captions TSV of `--captions`
lines with a URL map holding all of them, and a BUTD TSV of `--images`
images of `--boxes` regions x `--dim` features. Each conversion runs once
per setting: in process, then Beam on `FnApiRunner` with 1 worker (in
memory) and with N worker processes (`multi_processing`). Times are wall
clock for the whole call, Beam's start-up (a second or two, more for worker
processes) included, so small inputs understate what more workers give.
Files are read in 8 byte ranges each (the default range is 8 MiB), so that
even these inputs are shared between workers.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uniter_jax.data import beam
from uniter_jax.data.convert import convert_butd_tsv, convert_cc
from uniter_jax.data.tokenizer import build_vocab

WORDS = ["a", "man", "woman", "dog", "riding", "horse", "on", "the", "red", "beach", "kitchen"]


def write_inputs(folder: str, captions: int, images: int, boxes: int, dim: int) -> dict:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, rng.integers(5, 20))) for _ in range(captions)]
    vocab = build_vocab(texts, os.path.join(folder, "vocab.txt"))
    cc, url_map = os.path.join(folder, "cc.tsv"), os.path.join(folder, "map.tsv")
    with open(cc, "w") as f, open(url_map, "w") as m:
        for i, text in enumerate(texts):
            f.write(f"{text}\thttp://x/{i}.jpg\n")
            m.write(f"http://x/{i}.jpg\t{i}\n")
    butd = os.path.join(folder, "butd.tsv")
    with open(butd, "w") as f:
        for i in range(images):
            xy = rng.uniform(0, 200, (boxes, 2))
            xyxy = np.concatenate([xy, xy + rng.uniform(1, 200, (boxes, 2))], 1)
            features = rng.uniform(0, 5, (boxes, dim))
            columns = [f"img{i}", 400, 400, boxes]
            columns += [
                base64.b64encode(a.astype("<f4").tobytes()).decode() for a in (xyxy, features)
            ]
            f.write("\t".join(map(str, columns)) + "\n")
    return {"vocab": vocab, "cc": cc, "url_map": url_map, "butd": butd, "dim": dim}


def eighth(path: str) -> int:
    """Ranges of an eighth of the file, so that several workers share even a small input."""
    return os.path.getsize(path) // 8 + 1


def timed(convert, out: str, *args) -> float:
    start = time.perf_counter()
    convert(out, *args)
    return time.perf_counter() - start


def measure(inputs: dict, folder: str, workers: list[int]) -> dict:
    text = {"url_map": inputs["url_map"], "vocab": inputs["vocab"]}
    runs = {
        "cc": (
            lambda out: convert_cc(inputs["cc"], out, **text, progress=False),
            lambda out, flags: beam.convert_cc(
                inputs["cc"], out, **text, pipeline_options=flags, range_bytes=eighth(inputs["cc"])
            ),
        ),
        "butd-tsv": (
            lambda out: convert_butd_tsv(
                inputs["butd"], out, feature_dim=inputs["dim"], progress=False
            ),
            lambda out, flags: beam.convert_butd_tsv(
                inputs["butd"],
                out,
                feature_dim=inputs["dim"],
                pipeline_options=flags,
                range_bytes=eighth(inputs["butd"]),
            ),
        ),
    }
    results = {}
    for fmt, (in_process, with_beam) in runs.items():
        seconds = {"in process": timed(in_process, os.path.join(folder, f"{fmt}-in"))}
        for n in workers:
            flags = ["--runner=FnApiRunner", f"--direct_num_workers={n}"]
            if n > 1:
                flags.append("--direct_running_mode=multi_processing")
            out = os.path.join(folder, f"{fmt}-{n}")
            seconds[f"beam, {n} worker{'s' * (n > 1)}"] = timed(with_beam, out, flags)
        results[fmt] = seconds
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--captions", type=int, default=4000)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--boxes", type=int, default=36)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        inputs = write_inputs(folder, args.captions, args.images, args.boxes, args.dim)
        results = measure(inputs, folder, args.workers)
    records = {"cc": args.captions, "butd-tsv": args.images}
    print(f"{os.cpu_count()} CPUs; {args.captions} captions, {args.images} images")
    print(f"{args.boxes} x {args.dim} regions each\n")
    print("| format | run | seconds | records/s |\n|---|---|---:|---:|")
    for fmt, seconds in results.items():
        for run, s in seconds.items():
            print(f"| {fmt} | {run} | {s:.2f} | {records[fmt] / s:,.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "seconds": results}, f, indent=2)


if __name__ == "__main__":
    main()
