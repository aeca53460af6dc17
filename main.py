"""UNITER in JAX: the one entry point.

python main.py --config=configs/pretrain.py --workdir=DIR
python main.py --config=configs/pretrain.py:tiny --workdir=DIR --config.seed=1
"""

import logging as std_logging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and reports")
flags.mark_flags_as_required(["config", "workdir"])

JOBS = ("pretrain",)


class _QuietOrbax(std_logging.Filter):
    """Drops orbax's per-save INFO lines (a dozen per checkpoint); keeps its warnings."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietOrbax())
    config = _CONFIG.value
    logging.info("config:\n%s", config)
    logging.info(
        "process %d of %d; %d local / %d global devices: %s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices(),
    )
    if config.job == "pretrain":
        from uniter_jax.train import loop

        report = loop.train(config, _WORKDIR.value)
        if report["status"] == "preempted":
            sys.exit(143)  # as if killed by SIGTERM: schedulers requeue, shells see it
    else:
        raise app.UsageError(f"unknown job {config.job!r}; known: {JOBS}")


if __name__ == "__main__":
    app.run(main)
