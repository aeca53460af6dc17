"""UNITER in JAX: the one entry point.

python main.py --config=configs/pretrain.py --workdir=DIR
python main.py --config=configs/pretrain.py:tiny --workdir=DIR --config.seed=1
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and reports")
flags.mark_flags_as_required(["config", "workdir"])

JOBS = ("forward_check",)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
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
    if config.job == "forward_check":
        from uniter_jax import forward_check

        forward_check.run(config, _WORKDIR.value)
    else:
        raise app.UsageError(f"unknown job {config.job!r}; known: {JOBS}")


if __name__ == "__main__":
    app.run(main)
