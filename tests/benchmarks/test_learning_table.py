"""learning_table.py's verdicts: each metric against its strongest baseline plus its margin."""

import functools
import json
import os
import sys

import numpy as np
import pytest
from flax import nnx

from uniter_jax import param_checkpoint
from uniter_jax.analysis.encoder import inspect, load_encoder
from uniter_jax.analysis.example import Vocabulary, from_store
from uniter_jax.analysis.grounding import named_region_shares
from uniter_jax.data import scenes, synthetic
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore
from uniter_jax.model import UniterConfig, UniterForPretraining, get_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import learning_table  # noqa: E402


def row(**changes) -> dict:
    """A made-up row where every metric clears its baseline by 0.1."""
    base = {
        "world": "clutter",
        "seed": 0,
        "baselines": {
            "itm_rule": {"all": 0.80, "colour": 0.75, "shape": 0.85},
            "mlm_ngram": 0.60,
            "mrc_copy": 0.10,
            "mrc_prior": 0.12,
            "mrc_box": 0.20,
            "mrc_copy_box": 0.18,
            "vqa_type_prior": 0.55,
        },
        "pretrain": {
            "val/itm/wra_matched": 0.40,
            "val/itm/wra_mismatched": 0.50,
            "val/mlm/accuracy": 0.70,
            "val/mrc/accuracy": 0.30,
        },
        "itm_hard": {"all": 0.90, "colour": 0.70, "shape": 0.95},
        "vqa_pretrained": 0.75,
        "vqa_scratch": 0.65,
    }
    for key, value in changes.items():
        target = base
        *path, last = key.split(":")
        for part in path:
            target = target[part]
        target[last] = value
    return base


def test_every_metric_clears_its_baseline():
    verdicts = learning_table.checks(row())
    assert all(v["pass"] for v in verdicts.values()), verdicts
    assert verdicts["wra"]["value"] == pytest.approx(0.10)
    assert verdicts["vqa_scratch"]["baseline"] == 0.65


@pytest.mark.parametrize(
    "changes, metric",
    [
        # MRC must clear the strongest of the copy rule, the class prior, the box
        # prior and the joined copy/box rule.
        ({"pretrain:val/mrc/accuracy": 0.24}, "mrc"),
        ({"baselines:mrc_copy": 0.28}, "mrc"),
        ({"baselines:mrc_copy_box": 0.26}, "mrc"),
        ({"itm_hard:all": 0.81}, "itm_hard"),
        ({"pretrain:val/itm/wra_matched": 0.46}, "wra"),
        ({"pretrain:val/mlm/accuracy": 0.64}, "mlm"),
        ({"vqa_scratch": 0.74}, "vqa_scratch"),
        ({"baselines:vqa_type_prior": 0.71}, "vqa_prior"),
    ],
)
def test_a_metric_within_its_margin_fails_alone(changes, metric):
    verdicts = learning_table.checks(row(**changes))
    failed = [name for name, v in verdicts.items() if not v["pass"]]
    assert failed == [metric]


def test_markdown_lists_every_check_and_the_hard_negatives_by_kind():
    first = row()
    first["checks"] = learning_table.checks(first)
    second = row(seed=1, **{"pretrain:val/mrc/accuracy": 0.2})
    second["checks"] = learning_table.checks(second)
    text = learning_table.markdown([first, second])
    assert text.count("| clutter | 0 |") == 7  # six checks and the by-kind row
    assert "| clutter | 1 | mrc | 0.200 | 0.200 | 0.05 | **no** |" in text
    assert "| world | seed | colour | shape |" in text
    assert "| clutter | 0 | 0.700 / 0.750 | 0.950 / 0.850 |" in text  # no bag: an older row
    bagged = row(**{"baselines:itm_bag": {"all": 0.6, "colour": 0.55, "shape": 0.8}})
    bagged["checks"] = learning_table.checks(bagged)
    bagged["grounding"] = {"best": [0.111, 0.2274], "uniform": 0.0712}
    text = learning_table.markdown([bagged])
    assert "| clutter | 0 | 0.700 / 0.750 / 0.550 | 0.950 / 0.850 / 0.800 |" in text
    assert "- clutter 0: 0.111, 0.227 (uniform 0.071)" in text


def test_the_control_raises_the_mlm_and_mrc_baselines():
    # Without cross-modal attention the same recipe reached this MLM and MRC:
    # what the text and the other regions give without grounding.
    with_control = row(control={"val/mlm/accuracy": 0.68, "val/mrc/accuracy": 0.15})
    verdicts = learning_table.checks(with_control)
    assert verdicts["mlm"]["baseline"] == 0.68 and not verdicts["mlm"]["pass"]
    assert verdicts["mrc"]["baseline"] == 0.20 and verdicts["mrc"]["pass"]  # the box prior


def test_a_bar_above_one_is_marked_unreachable():
    # On a world with sibling boxes the copy rule is exact: no MRC can clear it.
    exact = row(**{"baselines:mrc_copy": 1.0, "pretrain:val/mrc/accuracy": 0.97})
    exact["checks"] = learning_table.checks(exact)
    assert not exact["checks"]["mrc"]["pass"] and not exact["checks"]["mrc"]["reachable"]
    assert all(v["reachable"] for k, v in exact["checks"].items() if k != "mrc")
    # WRA is a distance gap, not an accuracy: a large baseline is still a bar.
    assert learning_table.checks(row(**{"pretrain:val/itm/wra_mismatched": 2.5}))["wra"][
        "reachable"
    ]
    text = learning_table.markdown([exact])
    assert "| clutter | 0 | mrc | 0.970 | 1.000 | 0.05 | **no** (bar above 1) |" in text


def test_fine_tuning_seeds_start_at_the_row_seed_and_never_meet_another_rows():
    rows = {seed: learning_table.vqa_seeds(seed, 3) for seed in range(3)}
    assert [seeds[0] for seeds in rows.values()] == [0, 1, 2]  # one run: as before
    drawn = [s for seeds in rows.values() for s in seeds]
    assert len(set(drawn)) == len(drawn) == 9
    first = learning_table.vqa_workdir("r", "scratch", 1, 1)
    other = learning_table.vqa_workdir("r", "scratch", 101, 1)
    assert first == os.path.join("r", "vqa-scratch") and other.endswith("vqa-scratch-seed101")


def test_several_fine_tuning_runs_are_listed_and_checked_by_their_mean():
    runs = {"pretrained": {0: 0.70, 100: 0.60, 200: 0.62}, "scratch": {0: 0.55, 100: 0.61}}
    several = row(
        vqa_pretrained=sum(runs["pretrained"].values()) / 3,
        vqa_scratch=0.58,
        vqa_pretrained_runs=runs["pretrained"],
        vqa_scratch_runs=runs["scratch"],
    )
    several["checks"] = learning_table.checks(several)
    assert several["checks"]["vqa_scratch"]["value"] == pytest.approx(0.64)
    assert several["checks"]["vqa_scratch"]["pass"]  # 0.64 >= 0.58 + 0.02
    text = learning_table.markdown([several])
    assert "- clutter 0: pretrained 0.700, 0.600, 0.620; scratch 0.550, 0.610" in text
    assert "VQA by fine-tuning seed" not in learning_table.markdown([row() | {"checks": {}}])


def test_reuse_keeps_a_run_only_with_the_same_settings(tmp_path, monkeypatch):
    ran = []

    def fake_main_py(workdir, config, overrides, log):
        ran.append(dict(overrides))
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "report.json"), "w") as f:
            f.write('{"status": "finished"}')

    monkeypatch.setattr(learning_table, "main_py", fake_main_py)
    workdir = str(tmp_path / "vqa-scratch")
    once = functools.partial(learning_table.run_once, workdir, "configs/x.py:tiny")
    once({"seed": 0, "optim.total_steps": 30}, "report.json", reuse=True)  # nothing there yet
    once({"seed": 0, "optim.total_steps": 30}, "report.json", reuse=True)  # kept
    assert len(ran) == 1
    with pytest.raises(RuntimeError, match=r"other settings \(optim.total_steps\)"):
        once({"seed": 0, "optim.total_steps": 40}, "report.json", reuse=True)
    once({"seed": 0, "optim.total_steps": 40}, "report.json", reuse=False)  # runs again
    assert [r["optim.total_steps"] for r in ran] == [30, 40]
    os.remove(workdir + ".settings.json")
    with pytest.raises(RuntimeError, match="settings are unknown"):
        once({"seed": 0, "optim.total_steps": 40}, "report.json", reuse=True)


def test_reuse_resumes_an_interrupted_run_and_records_settings_before_it_starts(
    tmp_path, monkeypatch
):
    workdir = str(tmp_path / "vqa-pretrained")
    settings = {"seed": 1, "optim.total_steps": 30}

    def interrupted(workdir, config, overrides, log):
        # The record is already there when the run starts.
        with open(workdir + ".settings.json") as f:
            assert json.load(f)["optim.total_steps"] == 30
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "report.json"), "w") as f:
            f.write('{"status": "preempted", "step": 12}')
        raise KeyboardInterrupt  # the row was stopped mid-run

    monkeypatch.setattr(learning_table, "main_py", interrupted)
    once = functools.partial(learning_table.run_once, workdir, "configs/x.py:tiny")
    with pytest.raises(KeyboardInterrupt):
        once(settings, "report.json", reuse=True)
    resumed = []
    monkeypatch.setattr(learning_table, "main_py", lambda *a: resumed.append(a[0]))
    once(settings, "report.json", reuse=True)  # a preempted report is not a result
    assert resumed == [workdir]
    with pytest.raises(RuntimeError, match=r"other settings \(seed\)"):
        once({**settings, "seed": 2}, "report.json", reuse=True)


@pytest.mark.parametrize("flag", ["--vqa-runs", "--vqa-steps"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_no_fine_tuning_runs_or_updates_is_refused_before_any_work(
    tmp_path, capsys, monkeypatch, flag, value
):
    # The mean of no runs would be NaN in the table.
    monkeypatch.setattr(learning_table, "run", lambda *a, **k: pytest.fail("a row was run"))
    with pytest.raises(SystemExit):
        learning_table.main(["--out", str(tmp_path / "out"), flag, value])
    assert "at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def random_model_and_world(tmp_path, num_images: int) -> tuple[str, str]:
    """A random tiny pretraining model's folder and a small world's folder."""
    config = UniterConfig.preset(
        "tiny", vocab_size=256, img_dim=16, num_region_labels=61, initializer_range=0.2
    )
    model_dir = str(tmp_path / "model")
    param_checkpoint.save(model_dir, get_params(UniterForPretraining(config, nnx.Rngs(3))), config)
    world = str(tmp_path / "world")
    synthetic.write_world(
        world, synthetic.WorldConfig(num_images=num_images, feature_dim=16, num_labels=61, seed=2)
    )
    return model_dir, world


def test_grounding_reads_each_region_class_from_the_store(tmp_path):
    # A random tiny model on a small world: grounding() must pair each caption
    # with its own image's region classes, as read straight from the store.
    model_dir, world = random_model_and_world(tmp_path, num_images=30)
    got = learning_table.grounding(model_dir, world, max_texts=12)

    images = ImageStore(os.path.join(world, "images"))
    texts = TextStore(os.path.join(world, "texts", "captions_val"))
    vocab = Vocabulary(os.path.join(world, "vocab.txt"))
    names = scenes.label_names(61)
    examples = [from_store(texts, images, i, vocab) for i in range(12)]
    region_names = []
    for e in examples:
        soft = images.get(e.image_id).soft_labels[: e.num_regions].astype(np.float32)
        region_names.append([names[c] for c in np.argmax(soft, axis=1)])
    shares, uniform, tokens = named_region_shares(
        inspect(load_encoder(model_dir), examples), region_names
    )
    assert got["tokens"] == tokens > 0 and got["uniform"] == pytest.approx(uniform)
    np.testing.assert_allclose(got["shares"], shares, rtol=1e-6)
    np.testing.assert_allclose(got["best"], shares.max(axis=1), rtol=1e-6)


def test_mlm_image_masks_each_attribute_word_of_the_store(tmp_path):
    # A random tiny model on a small world: mlm_image() must mask every colour,
    # shape (singular or plural) and size word of the validation captions.
    model_dir, world = random_model_and_world(tmp_path, num_images=120)
    got = learning_table.mlm_image(model_dir, world, max_texts=60)

    vocab = Vocabulary(os.path.join(world, "vocab.txt"))
    texts = TextStore(os.path.join(world, "texts", "captions_val"))
    words = {**{c: "colour" for c in scenes.COLOURS}, **{z: "size" for z in scenes.SIZES}}
    words.update({s: "shape" for s in scenes.SHAPES})
    words.update({s + "s": "shape" for s in scenes.SHAPES})
    counts, plurals = {}, 0
    for i in range(min(60, len(texts))):
        for piece in vocab.decode(texts.input_ids(i)):
            if piece in words:
                counts[words[piece]] = counts.get(words[piece], 0) + 1
                plurals += piece.endswith("s") and piece[:-1] in scenes.SHAPES
    assert {k: v["count"] for k, v in got.items()} == counts
    assert plurals > 0 and counts["colour"] > 0 and counts["size"] > 0
