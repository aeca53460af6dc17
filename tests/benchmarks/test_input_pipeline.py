"""input_pipeline.py's four-dataset mode on small stores: draws, shares and rates add up."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import input_pipeline  # noqa: E402
from input_pipeline import Corpus, measure_datasets  # noqa: E402

from configs.pretrain import SETUPS, get_config  # noqa: E402
from uniter_jax.objectives.tasks import task_for_step  # noqa: E402

# Seconds to a minute of compiling; the slow tier (CI runs it).
pytestmark = pytest.mark.slow

# Big enough for whole batches of every stream at a global batch of 8.
SMALL = {
    "coco": Corpus(images=8, texts=200, text_len=(8, 31), kept=(10, 101)),
    "vg": Corpus(images=6, texts=200, text_len=(3, 13), kept=(36, 101)),
    "cc": Corpus(images=12, texts=200, text_len=(5, 26), kept=(10, 61)),
    "sbu": Corpus(images=12, texts=200, text_len=(8, 41), kept=(10, 51)),
}
STEPS = 40


def test_four_datasets_mode_reports_shares_and_rates():
    assert set(input_pipeline.CORPORA) == set(SETUPS["alldata"]) == set(SMALL)
    report = measure_datasets(global_batch=8, steps=STEPS, corpora=SMALL, alone_steps=1)
    json.dumps(report)  # the script prints it as JSON

    # Every stream of the alldata setup, its share of the ratios, and the steps
    # drawn as the train loop draws them: seed 0, one draw per update of
    # `accumulation` micro-steps (tasks.draw = "update", the original's MetaLoader).
    ratios = {f"{d}/{t}": r for d, e in SETUPS["alldata"].items() for t, r in e["mix"].items()}
    total = sum(ratios.values())
    streams = report["per_stream"]
    assert set(streams) == set(ratios) and report["streams"] == 16
    accumulation = get_config("alldata").optim.accumulation
    assert accumulation > 1  # else the per-update draw is not exercised
    drawn = [task_for_step(ratios, 0, step // accumulation) for step in range(STEPS)]
    for name, stream in streams.items():
        assert stream["ratio"] == ratios[name]
        assert stream["ratio_share"] == pytest.approx(ratios[name] / total, abs=1e-4)
        assert stream["steps"] == drawn.count(name)
        assert stream["measured_share"] == pytest.approx(drawn.count(name) / STEPS, abs=1e-4)
        assert stream["examples_per_s_alone"] > 0
        assert stream["examples"] >= 8 * stream["steps"]  # whole batches of at least 8

    datasets = report["per_dataset"]
    assert set(datasets) == set(SMALL)
    assert sum(d["steps"] for d in datasets.values()) == STEPS
    assert sum(d["examples"] for d in datasets.values()) == sum(
        s["examples"] for s in streams.values()
    )
    assert sum(d["ratio_share"] for d in datasets.values()) == pytest.approx(1, abs=1e-3)
    for name, dataset in datasets.items():
        mine = [s for s in streams if s.startswith(f"{name}/")]
        assert dataset["steps"] == sum(streams[s]["steps"] for s in mine)
        assert dataset["examples_per_s_alone"] > 0
        if dataset["steps"]:
            assert dataset["examples_per_s"] > 0
    assert report["examples_per_s"] > 0 and report["examples_per_s_vs_alone"] > 0
    assert report["max_abs_share_error"] == pytest.approx(
        max(abs(s["measured_share"] - s["ratio_share"]) for s in streams.values())
    )
