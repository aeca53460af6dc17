"""Fine-tuning end to end on a small synthetic world: every task trains through the
shared loop, validates, and `--mode=predict` writes its official results file
whose metrics agree with the run's last validation."""

import csv
import importlib
import json
import os
import shutil

import jax
import numpy as np
import pytest

from uniter_jax import param_checkpoint
from uniter_jax.data import synthetic
from uniter_jax.data.convert.snli_ve import LABELS
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore
from uniter_jax.downstream import finetune, vqa
from uniter_jax.downstream.metrics import recall_at_k
from uniter_jax.downstream.results import run_predict
from uniter_jax.model import OPTIONAL_GROUPS
from uniter_jax.objectives.tasks import PRETRAINING
from uniter_jax.train import inputs, loop
from uniter_jax.train.state import initial_params
from uniter_jax.train.step import init_params

# Two tasks run in the default suite (a plain and a grouped store); the others,
# a minute or more each on two cores, in the slow suite.
TASKS = [
    pytest.param("ve"),
    pytest.param("nlvr2"),
    *(pytest.param(t, marks=pytest.mark.slow) for t in ("vqa", "refexp", "vcr", "retrieval")),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return synthetic.write_world(str(root), synthetic.WorldConfig(num_images=60))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A (randomly initialised) tiny pretraining model, saved as `init_from` reads it."""
    config = importlib.import_module("configs.finetune_vqa").get_config("tiny")
    model_cfg = inputs.model_config(config.model)
    path = str(tmp_path_factory.mktemp("pretrained") / "model")
    param_checkpoint.save(path, _host(init_params(model_cfg, 3, objective=PRETRAINING)), model_cfg)
    return path


def _host(tree):
    import jax

    return jax.tree.map(np.asarray, tree)


def small_config(task, world, pretrained):
    config = importlib.import_module(f"configs.finetune_{task}").get_config("tiny")
    config.init_from = pretrained
    config.data.images = world["images"]
    names = {"vcr": {"": "vcr_qa", "_qar": "vcr_qar"}}.get(task, {"": task})
    for suffix, store in names.items():
        config.data[f"train_texts{suffix}"] = world[f"{store}_train"]
        config.data[f"val_texts{suffix}"] = world[f"{store}_val"]
    config.optim.total_steps = 3
    config.optim.warmup_steps = 1
    config.eval.every_steps = 3
    config.checkpoint.every_steps = 3
    config.log.every_steps = 3
    if task == "retrieval":
        config.eval.two_stage_k = 2
    return config


@pytest.mark.parametrize("task", TASKS)
def test_finetune_then_predict_writes_results_matching_validation(
    task, world, pretrained, tmp_path
):
    config = small_config(task, world, pretrained)
    workdir = str(tmp_path / task)
    report = loop.train(config, workdir, finetune.finetuning_job)
    assert report["status"] == "finished" and report["step"] == 3
    assert os.path.isdir(os.path.join(workdir, "model", "params"))
    validation = {k.split("/", 2)[2]: v for k, v in report["validation"].items()}
    assert validation

    predicted = run_predict(config, workdir)
    # The same parameters on the same split: the same metrics.
    assert predicted["params"].endswith("model")
    for name, value in predicted["metrics"].items():
        assert value == pytest.approx(validation[name], abs=1e-9), name
    results = predicted["results"]
    check_results(task, results, world)
    if task == "retrieval":
        check_ranking_resumes_from_its_chunks(config, workdir, predicted["metrics"])


def check_ranking_resumes_from_its_chunks(config, workdir, metrics):
    """A second predict reads the saved chunks of scores instead of scoring again."""
    chunks = sorted(os.listdir(os.path.join(workdir, "ranking_retrieval_val")))
    assert "meta.json" in chunks and "chunk_000000.npy" in chunks
    path = os.path.join(workdir, "ranking_retrieval_val", "chunk_000000.npy")
    scores = np.load(path)
    texts = TextStore(config.data.val_texts)
    assert scores.shape[0] == len(texts)  # one chunk holds the whole split
    positions = ImageStore(config.data.images).positions(texts.image_ids)
    text_image = np.searchsorted(np.unique(positions), positions)
    assert metrics["t2i_r1"] == pytest.approx(recall_at_k(scores, text_image)["t2i_r1"])
    # Reverse every text's ranking in the saved chunk: the rerun must read it.
    np.save(path, -scores)
    again = run_predict(config, workdir)["metrics"]
    reversed_ = recall_at_k(-scores, text_image)
    for name in ("t2i_r1", "i2t_r1", "t2i_r5", "i2t_r5"):
        assert again[name] == pytest.approx(reversed_[name]), name
    # Trained again into the same folder: other parameters, so the saved
    # chunks are stale and the ranking is scored afresh.
    model = os.path.join(workdir, "model")
    params, model_cfg, _ = param_checkpoint.load(model)
    shutil.rmtree(model)
    param_checkpoint.save(model, jax.tree.map(lambda x: x * 1.5, params), model_cfg)
    fresh = run_predict(config, workdir)["metrics"]
    rescored = np.load(path)
    assert not np.allclose(rescored, -scores) and not np.allclose(rescored, scores)
    assert fresh["t2i_r1"] == pytest.approx(recall_at_k(rescored, text_image)["t2i_r1"])


def check_results(task, path, world):
    """Each results file in its task's official layout, one entry per example."""
    if task == "nlvr2":
        texts = TextStore(world["nlvr2_val"])
        with open(path) as f:
            rows = list(csv.reader(f))
        assert [r[0] for r in rows] == [t.rsplit("#", 1)[0] for t in texts.text_ids[0::2]]
        assert {r[1] for r in rows} <= {"True", "False"}
        return
    with open(path) as f:
        results = json.load(f)
    if task == "vqa":
        texts = TextStore(world["vqa_val"])
        answers = vqa.answer_vocab(texts)
        assert [r["question_id"] for r in results] == [int(t) for t in texts.text_ids]
        assert all(r["answer"] in answers for r in results)
    elif task == "ve":
        texts = TextStore(world["ve_val"])
        assert list(results) == list(texts.text_ids)
        assert set(results.values()) <= set(LABELS)
    elif task == "refexp":
        texts = TextStore(world["refexp_val"])
        assert list(results) == [t.rsplit("-", 1)[1] for t in texts.text_ids]
        size = np.tile(texts.arrays["image_size"], 2)
        for (pred, truth), box, wh in zip(
            ((r["pred_box"], r["tgt_box"]) for r in results.values()),
            texts.arrays["gt_box"] * size,
            size,
            strict=True,
        ):
            np.testing.assert_allclose(truth, [*box[:2], *(box[2:] - box[:2])], atol=1e-3)
            assert 0 <= pred[0] <= wh[0] and 0 <= pred[1] <= wh[1] and min(pred[2:]) > 0
    elif task == "vcr":
        texts = TextStore(world["vcr_qa_val"])
        assert len(results) == len(texts) // 4
        assert all(r["answer"] in range(4) and r["rationale"] in range(4) for r in results)
    else:
        texts = TextStore(world["retrieval_val"])
        assert set(results["t2i"]) == set(texts.text_ids)
        images = set(texts.image_ids)
        assert set(results["i2t"]) == images
        assert all(len(v) == min(10, len(images)) for v in results["t2i"].values())


def test_fine_tuning_keeps_the_encoder_and_starts_a_fresh_head(pretrained):
    config = small_config(
        "vqa", {"images": "", **{f"vqa_{s}": "" for s in ("train", "val")}}, pretrained
    )
    model_cfg = inputs.model_config(config.model)
    loaded, _, _ = param_checkpoint.load(pretrained)
    objective = vqa.Vqa(num_answers=7)
    params = _host(initial_params(model_cfg, 5, pretrained, objective=objective))
    assert set(params) == {"uniter", "vqa"}  # pretraining heads dropped
    for group in ("embeddings", "encoder", "pooler", "img_embeddings"):
        for a, b in zip(
            _leaves(params["uniter"][group]), _leaves(loaded["uniter"][group]), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    fresh = _host(init_params(model_cfg, 5, objective=objective))
    for a, b in zip(_leaves(params["vqa"]), _leaves(fresh["vqa"]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert "vqa" not in OPTIONAL_GROUPS


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_predict_without_a_model_says_what_is_missing(world, tmp_path):
    config = small_config("ve", world, "")
    with pytest.raises(FileNotFoundError, match=r"no trained model: .* config.init_from is empty"):
        run_predict(config, str(tmp_path / "empty"))


def test_unknown_task_and_wrong_store_are_refused(world, pretrained, tmp_path):
    config = small_config("ve", world, pretrained)
    config.data.train_texts = world["vqa_train"]  # a VQA store for SNLI-VE
    with pytest.raises(Exception, match="not an SNLI-VE text store"):
        loop.train(config, str(tmp_path / "w"), finetune.finetuning_job)
    config = small_config("ve", world, pretrained)
    config.task = "nope"
    with pytest.raises(ValueError, match="unknown downstream task 'nope'"):
        loop.train(config, str(tmp_path / "w2"), finetune.finetuning_job)
