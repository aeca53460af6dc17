"""End to end on a small synthetic world: exact resume, SIGTERM, non-finite stop, init_from."""

import glob
import json
import os
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from trees import assert_trees_close, assert_trees_equal

from configs.pretrain import get_config
from uniter_jax import param_checkpoint
from uniter_jax.data import synthetic
from uniter_jax.data.errors import DataError
from uniter_jax.model import UniterForPretraining, get_params
from uniter_jax.model.config import ConfigError
from uniter_jax.objectives.tasks import PRETRAINING, task_for_step
from uniter_jax.train import evaluate, inputs, loop
from uniter_jax.train.checkpoint import CheckpointError
from uniter_jax.train.pretrain import pretraining_job
from uniter_jax.train.state import initial_params
from uniter_jax.train.step import TRACES


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return synthetic.write_world(str(root), synthetic.WorldConfig(num_images=40))


def small_config(world):
    config = get_config("tiny")
    config.data.images = world["images"]
    config.data.texts = world["captions_train"]
    config.data.val_texts = world["captions_val"]
    config.data.buckets = ((16, 20, 8),)
    config.optim.total_steps = 8
    config.optim.warmup_steps = 2
    config.log.every_steps = 2
    config.eval.every_steps = 4
    config.eval.num_batches = 1
    config.checkpoint.every_steps = 4
    return config


def saved_state(workdir, step):
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def history(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_interrupted_run_resumes_bit_for_bit(world, tmp_path):
    config = small_config(world)
    traces = TRACES.copy()
    whole = loop.train(config, str(tmp_path / "whole"), pretraining_job)
    assert whole["status"] == "finished" and whole["step"] == 8

    split = str(tmp_path / "split")
    first = loop.train(config, split, pretraining_job, on_step=interrupt_at_2)
    assert first["status"] == "preempted" and first["step"] == 3
    assert sorted(os.listdir(os.path.join(split, "checkpoints"))) == ["3"]
    second = loop.train(config, split, pretraining_job)
    assert second["status"] == "finished" and second["step"] == 8

    a, b = saved_state(tmp_path / "whole", 8), saved_state(split, 8)
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 50
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert history(tmp_path / "whole") == history(split)
    assert second["validation"] == whole["validation"]
    assert {"val/itm/accuracy", "val/mlm/accuracy", "val/mrc/accuracy"} <= set(whole["validation"])
    # Three runs, one compilation per task (and none for the resumed runs).
    compiled = {k[1]: TRACES[k] - traces[k] for k in TRACES if k[0] == "train"}
    drawn = {k.split("/")[1] for line in history(split) for k in line if k.endswith("/steps")}
    assert drawn and all(compiled[t] <= 1 for t in compiled)
    assert whole["compilations"] == second["compilations"]


@pytest.mark.slow  # three short runs: 47 s on 2 cores
def test_per_task_moments_resume_exactly_and_refuse_a_shared_state(world, tmp_path):
    config = small_config(world)
    config.optim.per_task_moments = True
    whole = loop.train(config, str(tmp_path / "whole"), pretraining_job)
    split = str(tmp_path / "split")
    loop.train(config, split, pretraining_job, on_step=interrupt_at_2)
    assert loop.train(config, split, pretraining_job)["step"] == 8
    a, b = saved_state(tmp_path / "whole", 8), saved_state(split, 8)
    assert sorted(a["opt_state"]) == ["itm", "mlm", "mrc", "mrfr"]  # the tiny mix's tasks
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert whole["status"] == "finished"
    # The other layout is refused before any array is read; the steps stay.
    config.optim.per_task_moments = False
    config.optim.total_steps = 12
    steps = sorted(os.listdir(os.path.join(split, "checkpoints")))
    with pytest.raises(ConfigError, match=r"moments per task \['itm', 'mlm', 'mrc', 'mrfr'\]"):
        loop.train(config, split, pretraining_job)
    assert sorted(os.listdir(os.path.join(split, "checkpoints"))) == steps
    config.optim.per_task_moments, config.optim.accumulation = True, 2
    config.tasks.draw = "micro_step"
    with pytest.raises(ConfigError, match=r"needs tasks\.draw='update'"):
        loop.train(config, str(tmp_path / "micro"), pretraining_job)
    config.optim.per_task_moments, config.optim.task_lr_mul.mrc = False, 3.0
    with pytest.raises(ConfigError, match=r"^optim\.task_lr_mul with .* needs tasks\.draw"):
        loop.train(config, str(tmp_path / "micro"), pretraining_job)


def interrupt_at_2(step):
    if step == 2:
        os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_validation_ends_it_saves_and_resumes_exactly(world, tmp_path, monkeypatch):
    """A SIGTERM that comes during a long validation stops it at the next
    batch (not after one more train step), saves that step and returns; the
    resumed run ends where an uninterrupted one does."""
    config = small_config(world)
    config.eval.num_batches = 3
    whole = loop.train(config, str(tmp_path / "whole"), pretraining_job)
    calls = []
    real_step = evaluate.eval_step

    def signalled_step(*args, **kwargs):
        if not calls:
            os.kill(os.getpid(), signal.SIGTERM)
        calls.append(kwargs["task"])
        return real_step(*args, **kwargs)

    monkeypatch.setattr(evaluate, "eval_step", signalled_step)
    split = str(tmp_path / "split")
    first = loop.train(config, split, pretraining_job)
    assert first["status"] == "preempted" and first["step"] == 4  # the first validation step
    assert first["validation"] == {}
    assert len(calls) == len(evaluate.eval_tasks(True))  # one batch of the three, then stop
    assert sorted(os.listdir(os.path.join(split, "checkpoints"))) == ["4"]
    monkeypatch.undo()
    second = loop.train(config, split, pretraining_job)
    assert second["status"] == "finished" and second["step"] == 8
    assert_trees_equal(saved_state(split, 8), saved_state(tmp_path / "whole", 8))
    assert second["validation"] == whole["validation"]


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced) devices")
def test_a_checkpoint_from_one_mesh_resumes_under_another(world, tmp_path):
    """Saved on 8-way data parallelism, resumed on fsdp 2 x tensor 4: the run
    continues as if uninterrupted, up to float reassociation."""
    config = small_config(world)
    config.eval.every_steps = 0
    config.mesh.shape = {"data": 8, "fsdp": 1, "tensor": 1}
    whole = loop.train(config, str(tmp_path / "whole"), pretraining_job)
    split = str(tmp_path / "split")
    assert loop.train(config, split, pretraining_job, on_step=interrupt_at_2)["step"] == 3
    config.mesh.shape = {"data": 1, "fsdp": 2, "tensor": 4}
    second = loop.train(config, split, pretraining_job)
    assert second["status"] == whole["status"] == "finished" and second["step"] == 8

    a, b = saved_state(tmp_path / "whole", 8), saved_state(split, 8)
    assert_trees_close(b, a)
    moved = jax.tree.map(
        lambda x, y: np.abs(x - y).max(), a["params"], saved_state(split, 3)["params"]
    )
    assert max(jax.tree.leaves(moved)) > 1e-3  # steps 4-8 changed the parameters
    lines_a, lines_b = history(tmp_path / "whole"), history(split)
    assert [sorted(x) for x in lines_a] == [sorted(x) for x in lines_b]
    for x, y in zip(lines_a, lines_b, strict=True):
        for name in x:
            np.testing.assert_allclose(x[name], y[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("draw", ["update", "micro_step"])
def test_the_loop_draws_one_stream_per_update_or_per_micro_step(world, tmp_path, monkeypatch, draw):
    """`tasks.draw = "update"`: the micro-steps of an update share a stream, as
    the original's MetaLoader; "micro_step": each draws its own (no training:
    the steps are recorded)."""
    seen = []
    monkeypatch.setattr(loop._Run, "step", lambda self, step, stream, batch: seen.append(stream))
    monkeypatch.setattr(loop._Run, "validate", lambda self, step: {})
    config = small_config(world)
    config.optim.accumulation = 4
    config.optim.total_steps = 12  # updates: 48 micro-steps
    config.tasks.draw = draw
    loop.train(config, str(tmp_path), pretraining_job)
    assert len(seen) == 48
    updates = [seen[i : i + 4] for i in range(0, 48, 4)]
    mixed = sum(len(set(update)) > 1 for update in updates)
    if draw == "update":
        assert mixed == 0 and len(set(seen)) > 1
        want = [task_for_step(config.tasks.mix.to_dict(), config.seed, u) for u in range(12)]
        assert [update[0] for update in updates] == want
    else:
        assert mixed > 0
        assert seen == [
            task_for_step(config.tasks.mix.to_dict(), config.seed, s) for s in range(48)
        ]
    # Resuming under the other draw would change the run's tasks mid-way: refused.
    config.tasks.draw = "micro_step" if draw == "update" else "update"
    config.optim.total_steps = 14
    with pytest.raises(ConfigError, match=f"drawing a task every {4 if draw == 'update' else 1}"):
        loop.train(config, str(tmp_path), pretraining_job)


def test_non_finite_loss_stops_naming_step_and_task(world, tmp_path, monkeypatch):
    real_step = loop.train_step

    def poisoned(state, batch, key, **kwargs):
        state, out = real_step(state, batch, key, **kwargs)
        if int(state["step"]) == 6:  # the sixth micro-step
            out = {**out, "finite": np.False_}
        return state, out

    monkeypatch.setattr(loop, "train_step", poisoned)
    config = small_config(world)
    with pytest.raises(loop.NonFiniteError, match=r"at step 6 \(task \w+\).*checkpoint is step 4"):
        loop.train(config, str(tmp_path), pretraining_job)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]


def test_init_from_a_parameter_checkpoint(world, tmp_path):
    config = small_config(world)
    model_cfg = inputs.model_config(config.model)
    other = get_params(UniterForPretraining(model_cfg, __import__("flax").nnx.Rngs(7)))
    partial = {"uniter": {k: other["uniter"][k] for k in ("embeddings", "encoder")}}
    param_checkpoint.save(str(tmp_path / "ckpt"), partial, model_cfg)
    params = initial_params(model_cfg, 0, str(tmp_path / "ckpt"), objective=PRETRAINING)
    fresh = initial_params(model_cfg, 0, "", objective=PRETRAINING)
    np.testing.assert_array_equal(
        params["uniter"]["encoder"]["layers"]["output"]["kernel"],
        other["uniter"]["encoder"]["layers"]["output"]["kernel"],
    )
    np.testing.assert_array_equal(params["itm"]["dense"]["kernel"], fresh["itm"]["dense"]["kernel"])
    with pytest.raises(FileNotFoundError, match="init_from"):
        initial_params(model_cfg, 0, str(tmp_path / "nothing"), objective=PRETRAINING)


def test_init_from_a_bert_file_loads_the_text_stack(world, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model_cfg = inputs.model_config(small_config(world).model)
    torch.manual_seed(0)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=model_cfg.vocab_size,
            hidden_size=model_cfg.hidden_size,
            num_hidden_layers=model_cfg.num_layers,
            num_attention_heads=model_cfg.num_heads,
            intermediate_size=model_cfg.intermediate_size,
        )
    )
    path = tmp_path / "bert.bin"
    torch.save(bert.state_dict(), path)
    params = initial_params(model_cfg, 0, str(path), objective=PRETRAINING)
    np.testing.assert_array_equal(
        params["uniter"]["embeddings"]["word"]["embedding"],
        bert.embeddings.word_embeddings.weight.detach().numpy(),
    )
    np.testing.assert_array_equal(  # our kernels are [in, out]: torch's weight transposed
        params["uniter"]["encoder"]["layers"]["attention"]["query"]["kernel"][1],
        bert.encoder.layer[1].attention.self.query.weight.detach().numpy().T,
    )
    fresh = initial_params(model_cfg, 0, "", objective=PRETRAINING)
    np.testing.assert_array_equal(  # the image embedder is not in a BERT file
        params["uniter"]["img_embeddings"]["img_linear"]["kernel"],
        fresh["uniter"]["img_embeddings"]["img_linear"]["kernel"],
    )


def truncate_arrays(step_dir):
    for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
        with open(path, "r+b") as f:
            f.truncate(10)


def test_unreadable_checkpoints_are_named_moved_aside_and_the_previous_one_used(world, tmp_path):
    config = small_config(world)
    config.optim.total_steps = 12
    config.eval.every_steps = 0
    whole = loop.train(config, str(tmp_path / "whole"), pretraining_job)
    split = str(tmp_path / "split")
    first = loop.train(config, split, pretraining_job, on_step=interrupt_at_8)
    assert first["status"] == "preempted"
    checkpoints = os.path.join(split, "checkpoints")
    assert sorted(os.listdir(checkpoints), key=int) == ["4", "8", "9"]
    truncate_arrays(os.path.join(checkpoints, "9"))  # truncated array files
    with open(os.path.join(checkpoints, "8", "meta", "metadata"), "w") as f:
        f.write('{"key": [0,')  # a cut-off JSON file
    second = loop.train(config, split, pretraining_job)
    assert second["status"] == "finished" and second["step"] == 12
    assert {"8.unreadable", "9.unreadable"} <= set(os.listdir(checkpoints))
    assert_trees_equal(saved_state(split, 12), saved_state(tmp_path / "whole", 12))
    assert whole["step"] == 12

    # Nothing readable: one error naming every checkpoint tried.
    for step in os.listdir(checkpoints):
        if step.isdigit():
            truncate_arrays(os.path.join(checkpoints, step))
    config.optim.total_steps = 16
    with pytest.raises(CheckpointError, match=r"no checkpoint could be read") as error:
        loop.train(config, split, pretraining_job)
    assert os.path.join(checkpoints, "12") in str(error.value)


def interrupt_at_8(step):
    if step == 8:
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_region_blob_deleted_mid_run_stops_it_naming_the_file(tmp_path):
    """No silent skipping: a blob that vanishes (a store on a flaky mount, or
    removed by hand) ends the run with a DataError naming the missing file."""
    world = synthetic.write_world(str(tmp_path / "world"), synthetic.WorldConfig(num_images=40))
    config = small_config(world)
    config.eval.every_steps = 0
    config.optim.total_steps = 30
    regions = os.path.join(world["images"], "regions")

    def delete_blobs(step):
        if step == 2:
            shutil.rmtree(regions)

    with pytest.raises(DataError, match=r"reading region blobs failed") as error:
        loop.train(config, str(tmp_path / "run"), pretraining_job, on_step=delete_blobs)
    message = str(error.value)
    assert world["images"] in message and ".rgn" in message, message
