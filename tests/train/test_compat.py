"""Runs saved by older code still restore and continue exactly.

`tests/fixtures/compat_run` was written by `tests/fixtures/make_compat_run.py`
at the commit named in its `expected.json`: a run stopped after 4 of 6
micro-steps, the parameters of the same run trained to the end, and the
metrics and final parameter sums of that uninterrupted run. Resuming the
stopped run with today's code must reproduce them, and today's `init_from`
must read the old parameter checkpoint.
"""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs.pretrain import get_config
from uniter_jax.objectives.tasks import PRETRAINING
from uniter_jax.train import loop
from uniter_jax.train.inputs import model_config
from uniter_jax.train.pretrain import pretraining_job
from uniter_jax.train.state import initial_params

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "compat_run")


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(FIXTURE, "expected.json")) as f:
        return json.load(f)


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "compat")
    return tmp_path / "compat"


def old_config(root, overrides):
    """The config the fixture was written with: tiny plus its overrides, so a
    renamed or removed key fails here."""
    config = get_config("tiny")
    for key, value in overrides.items():
        section, name = key.split(".")
        # `model` holds a preset's overrides, any `UniterConfig` field.
        assert section == "model" or name in config[section], f"{key} of the old run is gone"
        config[section][name] = tuple(map(tuple, value)) if key == "data.buckets" else value
    config.data.images = str(root / "world" / "images")
    config.data.texts = str(root / "world" / "texts" / "captions_train")
    return config


def assert_sums(params, expected, **tolerance):
    """Every parameter array is there, under its path, with its recorded sum."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    sums = {jax.tree_util.keystr(p): float(np.sum(np.asarray(x, np.float64))) for p, x in flat}
    assert sums.keys() == expected.keys()
    np.testing.assert_allclose([sums[k] for k in sums], [expected[k] for k in sums], **tolerance)


def test_an_old_checkpoint_resumes_to_the_old_runs_end(copy, expected):
    config = old_config(copy, expected["overrides"])
    report = loop.train(config, str(copy / "run"), pretraining_job)
    assert report["status"] == "finished" and report["step"] == expected["final_step"] == 6
    with open(copy / "run" / "metrics.jsonl") as f:
        got = [json.loads(line) for line in f]
    assert [m["step"] for m in got] == [m["step"] for m in expected["metrics"]]
    for new, old in zip(got, expected["metrics"], strict=True):
        assert new.keys() == old.keys()
        np.testing.assert_allclose([new[k] for k in new], [old[k] for k in new], rtol=1e-5)
    with ocp.StandardCheckpointer() as checkpointer:
        final = checkpointer.restore(str(copy / "run" / "checkpoints" / "6" / "state"))
    assert_sums(final["params"], expected["final_param_sums"], rtol=1e-4, atol=1e-6)


def test_an_old_parameter_checkpoint_initialises_todays_model(copy, expected):
    config = old_config(copy, expected["overrides"])
    params = initial_params(
        model_config(config.model), 1, str(copy / "model"), objective=PRETRAINING
    )
    assert_sums(jax.device_get(params), expected["final_param_sums"], rtol=1e-6, atol=1e-9)
