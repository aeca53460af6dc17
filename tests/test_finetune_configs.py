"""Every fine-tuning config variant builds, names a known task, and its batch
sizes hold whole groups of the task's rows."""

import importlib

import pytest

from uniter_jax.downstream import finetune
from uniter_jax.train import inputs
from uniter_jax.train.state import optim_settings

TASKS = ("vqa", "ve", "refexp", "nlvr2", "vcr", "retrieval")
# Rows that must stay together in a batch: NLVR2's two images, VCR's four
# candidates, a retrieval text with its sampled images.
WIDTH = {"nlvr2": lambda o: 2, "vcr": lambda o: 4, "retrieval": lambda o: 1 + o["negatives"]}


@pytest.mark.parametrize("variant", ["tiny", "base", "large"])
@pytest.mark.parametrize("task", TASKS)
def test_config_variants_are_consistent(task, variant):
    config = importlib.import_module(f"configs.finetune_{task}").get_config(variant)
    assert config.job == "finetune" and config.task == task
    assert finetune.task_module(task) is finetune.TASKS[task]
    assert (
        inputs.model_config(config.model).num_layers
        == {"tiny": 2, "base": 12, "large": 24}[variant]
    )
    optim_settings(config.optim)  # validates
    options = config.task_options.to_dict() if "task_options" in config else {}
    width = WIDTH.get(task, lambda o: 1)(options)
    for text_len, regions, batch in config.data.buckets:
        assert batch % width == 0, (text_len, regions, batch)
    for suffix in finetune.subtasks(config).values():
        for kind in ("train", "val", "test"):
            assert f"{kind}_texts{suffix}" in config.data


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variant"):
        importlib.import_module("configs.finetune_vqa").get_config("huge")


@pytest.mark.parametrize("variant", ["tiny", "base"])
def test_retrieval_defaults_are_the_original_objective_and_full_ranking(variant):
    """The dual loss weakens the cross-encoder (docs/results.md): it and the
    two-stage ranking it feeds are opt-in."""
    config = importlib.import_module("configs.finetune_retrieval").get_config(variant)
    assert config.task_options.dual_weight == 0.0
    assert config.eval.two_stage_k == 0
