"""UNITER in JAX: the one entry point.

python main.py --config=configs/pretrain.py --workdir=DIR
python main.py --config=configs/pretrain.py:tiny --workdir=DIR --config.seed=1
python main.py --config=configs/finetune_vqa.py --workdir=DIR --config.init_from=PRETRAINED
python main.py --config=configs/finetune_vqa.py --workdir=DIR --mode=predict
python main.py --config=configs/pretrain.py --workdir=DIR --mode=score --pairs=PAIRS.jsonl

On a TPU pod slice, run the same command on every worker (run_tpu.sh does);
the processes find each other by themselves. Elsewhere, start one process per
host with --coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""

import importlib
import logging as std_logging
import os
import sys

from uniter_jax.host import reexec_with_huge_pages

if __name__ == "__main__":
    reexec_with_huge_pages()  # before jax and its threads: see uniter_jax/host.py

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and reports")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "start jax's distributed runtime: auto = when --coordinator_address is given or on a "
    "multi-host TPU slice",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for runs launched by hand"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the run")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "predict", "score"],
    "train: run (or resume) the config's job; predict: write a fine-tuned model's "
    "results file for data.test_texts (fine-tuning configs only); score: ITM scores "
    "of a pretrained model for the (image_id, text) pairs of --pairs (pretraining configs)",
)
_PAIRS = flags.DEFINE_string(
    "pairs", None, "--mode=score: JSON Lines file of {image_id, text} objects"
)
_OUT = flags.DEFINE_string("out", None, "--mode=score: output JSON Lines (WORKDIR/scores.jsonl)")
_WRA = flags.DEFINE_bool("wra", False, "--mode=score: add each pair's WRA distance")
flags.mark_flags_as_required(["config", "workdir"])

# config.job -> the module and function that make its `Job` (uniter_jax/train/job.py).
JOBS = {
    "pretrain": ("uniter_jax.train.pretrain", "pretraining_job"),
    "finetune": ("uniter_jax.downstream.finetune", "finetuning_job"),
}


class _QuietOrbax(std_logging.Filter):
    """Drops orbax's per-save INFO lines (a dozen per checkpoint); keeps its warnings."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _multi_host_tpu() -> bool:
    """A TPU VM that is one worker of several (the slice's metadata lists them)."""
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def _start_distributed() -> bool:
    """Starts jax's distributed runtime when wanted; True if it was started."""
    wanted = _DISTRIBUTED.value == "on" or (
        _DISTRIBUTED.value == "auto" and (_COORDINATOR.value is not None or _multi_host_tpu())
    )
    if wanted:
        # With no arguments jax reads the cluster (TPU metadata, SLURM, ...).
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    return wanted


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, where a `--config.*` override that names a key the
    config lacks ends in one line, not in ml_collections' traceback."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as error:
        inner = error.args[0] if error.args and isinstance(error.args[0], KeyError) else error
        text = str(inner.args[0]) if inner.args else ""
        key, _, hint = text.partition("\n")
        key = key.strip("'\"")
        overrides = [
            arg
            for arg in argv[1:]
            if arg.startswith("--config.") and key in arg.split("=", 1)[0].split(".")
        ]
        if not key or not overrides:
            raise  # not an override's missing key: a bug worth its traceback
        message = f"{overrides[0]}: the config has no key {key!r}"
        sys.exit(f"FATAL Flags parsing error: {message}. {hint}".strip())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietOrbax())
    distributed = _start_distributed()
    from uniter_jax.data.errors import DataError
    from uniter_jax.model.config import ConfigError
    from uniter_jax.train.checkpoint import CheckpointError

    try:
        code = _run(_CONFIG.value, _WORKDIR.value)
    # A full disk, unreadable checkpoints, bad input data, a config that does
    # not fit the data: one line that says what, where and the fix.
    except (CheckpointError, ConfigError, DataError, FileNotFoundError) as error:
        sys.exit(f"FATAL {error}")
    if distributed:
        # Every process waits here for the others before process 0 takes the
        # coordination service down; without it a process still leaving
        # Python finds the service gone and aborts (SIGABRT) after a run that
        # succeeded. A failed run raises before this, so its peers are not
        # kept waiting at the barrier.
        jax.distributed.shutdown()
    if code:
        sys.exit(code)


def _run(config, workdir: str) -> int:
    """Runs the config's job; returns the process exit code."""
    if jax.process_index() > 0:
        logging.set_verbosity(logging.WARNING)  # process 0 tells the story
    logging.info("config:\n%s", config)
    logging.info(
        "process %d of %d; %d local / %d global devices: %s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices(),
    )
    if config.job not in JOBS:
        raise app.UsageError(f"unknown job {config.job!r}; known: {list(JOBS)}")
    if _MODE.value == "predict":
        if config.job != "finetune":
            raise app.UsageError("--mode=predict needs a fine-tuning config (finetune_<task>.py)")
        from uniter_jax.downstream.results import run_predict

        run_predict(config, workdir)
        return 0
    if _MODE.value == "score":
        if config.job != "pretrain":
            raise app.UsageError("--mode=score needs a pretraining config (configs/pretrain.py)")
        if not _PAIRS.value:
            raise app.UsageError("--mode=score needs --pairs=FILE (JSON Lines of image_id, text)")
        from uniter_jax.analysis.score_file import run_score

        run_score(config, workdir, _PAIRS.value, _OUT.value, wra=_WRA.value)
        return 0
    from uniter_jax.train import loop

    module, name = JOBS[config.job]
    report = loop.train(config, workdir, getattr(importlib.import_module(module), name))
    # 143 = as if killed by SIGTERM: schedulers requeue, shells see it.
    return 143 if report["status"] == "preempted" else 0


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
