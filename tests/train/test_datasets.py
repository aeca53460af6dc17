"""Several pretraining datasets in one run: the config, the streams, and a run
that resumes exactly with per-dataset metrics."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import scipy.stats
from test_loop import interrupt_at_2, saved_state

from configs.pretrain import SETUPS, get_config
from uniter_jax.data import synthetic_corpora
from uniter_jax.model.config import ConfigError
from uniter_jax.objectives.tasks import TASKS
from uniter_jax.sharding import Layout
from uniter_jax.train import loop
from uniter_jax.train.datasets import configured_datasets, stream_schedule
from uniter_jax.train.inputs import resolve_datasets
from uniter_jax.train.pretrain import pretraining_job
from uniter_jax.train.step import TRACES


def test_the_original_setups_as_streams():
    config = get_config("alldata")
    datasets = configured_datasets(config)
    assert [d.name for d in datasets] == ["cc", "coco", "sbu", "vg"]
    coco = datasets[1]
    assert coco.texts == ("data/txt/coco_train", "data/txt/coco_restval")
    assert coco.images == ("data/img/coco_train2014", "data/img/coco_val2014")
    assert coco.val_images == ("data/img/coco_val2014",)
    assert datasets[3].val_images == datasets[3].images == ("data/img/vg",)
    schedule, streams = stream_schedule(datasets, config.tasks)
    # The original's ratios, over all 16 (dataset, task) pairs.
    want = {
        f"{name}/{task}": float(ratio)
        for name, entry in SETUPS["alldata"].items()
        for task, ratio in entry["mix"].items()
    }
    assert schedule.mix == want and len(want) == 16
    assert streams["coco/mrc_kl"] == "mrc_kl" and streams["sbu/itm"] == "itm"
    assert [d.name for d in configured_datasets(get_config("indomain_large"))] == ["coco", "vg"]


def test_the_presets_draw_one_task_per_update():
    for name, every in (("alldata", 6), ("indomain", 2), ("", 2), ("tiny", 1), ("alldata_tiny", 1)):
        config = get_config(name)
        schedule, _ = stream_schedule(
            configured_datasets(config), config.tasks, config.optim.accumulation
        )
        assert config.tasks.draw == "update" and schedule.draw_every == every, name
    config.tasks.draw = "epoch"
    with pytest.raises(ConfigError, match=r"tasks\.draw must be one of"):
        stream_schedule(configured_datasets(config), config.tasks, 4)
    config.tasks.draw = "micro_step"
    assert stream_schedule(configured_datasets(config), config.tasks, 4)[0].draw_every == 1


def test_without_datasets_the_streams_are_the_tasks():
    config = get_config("tiny")
    (dataset,) = configured_datasets(config)
    schedule, streams = stream_schedule([dataset], config.tasks)
    assert dataset.name == "" and set(schedule.mix) == {"itm", "mlm", "mrfr", "mrc"}
    assert all(stream == task for stream, task in streams.items())


def test_the_first_mix_is_shared_by_each_dataset_ratio():
    config = get_config("alldata_tiny")
    config.tasks.first_steps = 100
    config.tasks.first_mix = {"itm": 1.0}
    schedule, _ = stream_schedule(configured_datasets(config), config.tasks)
    total = 6 + 9 + 9 + 6
    assert schedule.first == pytest.approx(
        {"coco/itm": 6 / total, "vg/itm": 9 / total, "cc/itm": 9 / total, "sbu/itm": 6 / total}
    )
    assert schedule.at(99) == schedule.first and schedule.at(100) == schedule.mix


def test_the_second_mix_is_shared_by_each_dataset_ratio_after_the_first():
    config = get_config("alldata_tiny")
    config.tasks.first_steps = 100
    config.tasks.first_mix = {"itm": 1.0}
    config.tasks.second_steps = 50
    config.tasks.second_mix = {"mlm": 1.0, "mrc": 0.5}
    schedule, streams = stream_schedule(configured_datasets(config), config.tasks)
    # No dataset mixes MRC in (the setup's ratios are ITM, MLM, MRFR, MRC-kl):
    # its weight is shared evenly, and each dataset gets an MRC stream.
    mlm = {"coco": 8, "vg": 12, "cc": 12, "sbu": 8}
    expected = {f"{n}/mlm": r / sum(mlm.values()) for n, r in mlm.items()}
    expected.update({f"{n}/mrc": 0.5 / 4 for n in mlm})
    assert schedule.second == pytest.approx(expected)
    assert all(streams[f"{n}/mrc"] == "mrc" for n in mlm)
    assert (schedule.at(99), schedule.at(100), schedule.at(149)) == (
        schedule.first,
        schedule.second,
        schedule.second,
    )
    assert schedule.at(150) == schedule.mix


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.data.datasets.coco.update(colour=1), r"coco: unknown keys \['colour'\]"),
        (lambda c: setattr(c.data.datasets.coco, "images", ()), "set both texts and images"),
        (lambda c: setattr(c.data.datasets.vg, "mix", {"itm": -1.0}), "vg.mix: task mix"),
        (lambda c: setattr(c.data.datasets.vg, "mix", {"nsp": 1.0}), "vg.mix: unknown tasks"),
        (lambda c: setattr(c.data.datasets.vg, "texts", ("a", 3)), "vg.texts: expected a path"),
        (lambda c: setattr(c.data, "texts", "t"), "set data.datasets or data.texts"),
    ],
)
def test_bad_dataset_entries_are_named(change, message):
    config = get_config("indomain")
    change(config)
    with pytest.raises(ConfigError, match=message):
        configured_datasets(config)


def small_config(*, datasets=("cc", "coco", "sbu", "vg"), total_steps: int = 8):
    """alldata_tiny on small synthetic corpora (`datasets` of them) and a fixed bucket.
    (`corpora` below writes the four once; a workdir they are copied into reuses them.)"""
    config = get_config("alldata_tiny")
    for name in set(config.data.datasets) - set(datasets):
        del config.data.datasets[name]
    config.data.synthetic_images = 100
    config.data.buckets = ((16, 20, 8),)
    config.optim.total_steps = total_steps
    config.optim.warmup_steps = 2
    config.log.every_steps = 2
    config.eval.every_steps = 4
    config.eval.num_batches = 1
    config.checkpoint.every_steps = 4
    return config


def history(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """`small_config`'s four synthetic corpora, converted through Beam once (half
    a minute on two cores), and a function that copies them into a workdir:
    the run finds them there, marked as written for its config, and reads them."""
    root = tmp_path_factory.mktemp("corpora")
    resolve_datasets(small_config(), str(root))
    assert synthetic_corpora.BEAM_INSTALLED  # converted through Beam

    def into(workdir):
        shutil.copytree(root / "synthetic_corpora", workdir / "synthetic_corpora")
        return str(workdir)

    return into


def test_each_stream_reads_its_own_dataset_in_its_own_order(tmp_path):
    config = small_config(datasets=("coco", "vg"))
    config.data.datasets.vg.max_bb = 7  # its own region selection
    job = pretraining_job(config, str(tmp_path), Layout.single_device())
    try:
        assert set(job.pipelines) == {f"{d}/{t}" for d in ("coco", "vg") for t in TASKS} - {
            "coco/mrc",
            "vg/mrc",
        }
        seeds = set()
        for stream, pipeline in job.pipelines.items():
            dataset = stream.split("/")[0]
            assert all(str(i).startswith(f"{dataset}_") for i in pipeline.texts.image_ids)
            assert all(str(i).startswith(f"{dataset}_") for i in pipeline.images.ids)
            assert job.task(stream) == stream.split("/")[1]
            assert pipeline.config.max_bb == (7 if dataset == "vg" else config.data.max_bb)
            seeds.add(pipeline.config.seed)
        assert len(seeds) == len(job.pipelines)
    finally:
        job.close()


@pytest.mark.slow
def test_four_datasets_resume_exactly_with_metrics_by_dataset(corpora, tmp_path):
    config = small_config()
    traces = TRACES.copy()
    whole = loop.train(config, corpora(tmp_path / "whole"), pretraining_job)
    split = corpora(tmp_path / "split")
    first = loop.train(config, split, pretraining_job, on_step=interrupt_at_2)
    assert first["status"] == "preempted"
    second = loop.train(config, split, pretraining_job)
    assert second["status"] == whole["status"] == "finished"
    for a, b in zip(
        jax.tree.leaves(saved_state(tmp_path / "whole", 8)),
        jax.tree.leaves(saved_state(split, 8)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert history(tmp_path / "whole") == history(split)
    assert second["validation"] == whole["validation"]
    validation = set(whole["validation"])
    for name in ("cc", "coco", "sbu", "vg"):
        assert {f"val/{name}/itm/accuracy", f"val/{name}/mlm/accuracy"} <= validation
    trained = {k for line in history(split) for k in line if k.endswith("/steps")}
    assert len({k.split("/")[1] for k in trained}) > 1
    # Streams of both datasets share one compiled program per task.
    compiled = {k[1]: TRACES[k] - traces[k] for k in TRACES if k[0] == "train"}
    assert all(compiled[t] <= 1 for t in compiled if t in TASKS)


@pytest.mark.slow
def test_the_measured_mix_matches_the_ratios(corpora, tmp_path):
    """The four corpora's 16 streams, drawn over 400 micro-steps, against the
    configured ratios (chi-square goodness of fit)."""
    config = small_config(total_steps=400)
    config.optim.warmup_steps = 10
    config.log.every_steps = 400
    config.eval.every_steps = 0
    config.checkpoint.every_steps = 400
    loop.train(config, corpora(tmp_path / "run"), pretraining_job)
    (line,) = history(tmp_path / "run")
    ratios = {
        f"{name}/{task}": ratio
        for name, entry in config.data.datasets.items()
        for task, ratio in entry.mix.items()
    }
    counts = np.array([line.get(f"train/{n}/steps", 0.0) for n in sorted(ratios)])
    ratios = np.array([ratios[n] for n in sorted(ratios)], np.float64)
    assert counts.sum() == 400
    expected = 400 * ratios / ratios.sum()
    assert scipy.stats.chisquare(counts, expected).pvalue > 1e-3
