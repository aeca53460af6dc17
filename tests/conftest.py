"""Test setup: 8 host devices for mesh tests, set before jax is imported, and
the `heavy` mark that `make test-quick` leaves out."""

import os
import shutil
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One persistent compilation cache for the whole run, inherited by pytest-xdist
# workers and by the processes the tests start (main.py runs, multi-host
# workers): many tests compile the same tiny-model programs, and XLA's cache
# key is the program, so a hit is the executable a fresh compile would give.
# A size cap turns on the cache's file lock, which the workers share. Removed
# at the end by the process that made it; set UNITER_TEST_JAX_CACHE=0 to turn
# it off (timing one test's compile, say).
_OWN_CACHE = None
if (
    os.environ.get("UNITER_TEST_JAX_CACHE", "1") != "0"
    and "JAX_COMPILATION_CACHE_DIR" not in os.environ
):
    _OWN_CACHE = tempfile.mkdtemp(prefix="uniter-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

# Marked `heavy` (node id prefixes): the checks that compile whole models or
# run end to end, seconds to a minute each on 2 CPU cores, about three
# quarters of `make test`'s time. `make test` runs them; `make test-quick`
# (`-m "not slow and not heavy"`) leaves them out, which keeps it under three
# minutes on 2 cores. Listed here rather than marked in the files so the
# quick tier reads in one place.
HEAVY = (
    # End to end: the train loop, main.py, fine-tuning, old runs resumed,
    # trained checkpoints inspected, the converter's command line.
    "tests/train/test_loop.py",
    "tests/train/test_compat.py",
    "tests/test_main.py",
    "tests/downstream/test_finetune.py",
    "tests/analysis/test_itm_scores.py",
    "tests/analysis/test_visualize.py",
    "tests/convert/test_convert.py::test_cli_import_then_export",
    "tests/features/test_extract.py",
    # Jitted train steps: one device, a 2x2x2 mesh, the image-embedder init;
    # the layer stack scanned and rematerialised.
    "tests/train/test_step.py",
    "tests/test_sharding.py::test_state_is_created_in_its_shards",
    "tests/test_sharding.py::test_itm_and_mlm_steps_on_a_2x2x2_mesh",
    "tests/test_sharding.py::test_a_non_finite_step_on_a_mesh",
    "tests/train/test_image_init.py::test_initial_params_start_from_the_directions",
    "tests/train/test_attention_init.py",
    "tests/model/test_model_numerics.py::test_scan_and_remat_match_plain_stack",
    # Objectives against numpy and PyTorch, the text stack against HuggingFace
    # (the encoder and heads against numpy stay in the quick tier).
    "tests/convert/test_hf_bert.py",
    "tests/objectives/test_tasks.py",
    "tests/objectives/test_task_gradients.py",
    "tests/downstream/test_objectives.py",
    "tests/downstream/test_nlvr2_vcr.py",
    "tests/downstream/test_retrieval.py",
)


def pytest_collection_modifyitems(config, items):
    for entry in HEAVY:  # a renamed test would join the quick tier unnoticed
        path, _, name = entry.partition("::")
        file = config.rootpath / path
        if not file.is_file() or f"def {name}" not in file.read_text():
            raise pytest.UsageError(f"tests/conftest.py: HEAVY entry {entry} names no test")
    for item in items:
        if item.nodeid.startswith(HEAVY):
            item.add_marker(pytest.mark.heavy)


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
