"""The learning check: `make run`'s tiny pretraining learns the synthetic world.

Slow (about nine minutes on two cores); `make test-slow` and `.ci/run` run it.
Numbers and timings are recorded in docs/results.md.
"""

import collections
import json
from pathlib import Path

import numpy as np
import pytest
from test_main import run_main


def token_counts(store: Path) -> collections.Counter:
    """Token frequencies of a text store's captions ([CLS]/[SEP] are not stored)."""
    with np.load(store / "examples.npz") as arrays:
        return collections.Counter(arrays["input_ids"].tolist())


def unigram_baseline(texts: Path) -> float:
    """Accuracy of always predicting the training captions' most frequent token."""
    top, _ = token_counts(texts / "captions_train").most_common(1)[0]
    val = token_counts(texts / "captions_val")
    return val[top] / sum(val.values())


@pytest.mark.slow
def test_tiny_pretraining_learns_the_synthetic_world(tmp_path):
    # What `make run` runs on this one-device CPU. (On 8 forced devices the run
    # is the same computation split 8 ways, and 2.5x slower on 2 cores.)
    result = run_main(tmp_path, timeout=1800, devices=1)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "pretrain_report.json").read_text())
    val = report["validation"]
    baseline = unigram_baseline(tmp_path / "synthetic" / "texts")
    print(json.dumps({"unigram_baseline": baseline, **val}, indent=2))
    assert report["status"] == "finished"
    assert val["val/itm/accuracy"] >= 0.90
    assert val["val/mlm/accuracy"] >= 2 * baseline
    assert val["val/mrc/accuracy"] >= 0.80
    assert val["val/itm/wra_matched"] < val["val/itm/wra_mismatched"]
