"""The parameters a run ended (or stopped) with, for the modes that use a
trained model rather than train one (`--mode=predict`, `--mode=score`)."""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
from etils import epath

from uniter_jax.model.config import ConfigError
from uniter_jax.sharding import Layout
from uniter_jax.train.checkpoint import Checkpoints
from uniter_jax.train.state import MODEL_DIR, initial_params
from uniter_jax.train.step import Objective, StepSettings, abstract_state


def trained_params(
    config: ml_collections.ConfigDict,
    workdir: str,
    settings: StepSettings,
    layout: Layout,
    objective: Objective,
    *,
    require: Sequence[str] = (),
    hint: str = "",
) -> tuple[dict, str]:
    """`workdir/model`, else the newest checkpoint in `workdir/checkpoints`, else
    `config.init_from`, as parameters of `objective`'s model; and where they
    came from.

    A source without one of the parameter groups `require` (a head) is an
    error that names the source, the missing groups and `hint`.
    """
    root = epath.Path(workdir)
    if (root / MODEL_DIR).exists():
        source = str(root / MODEL_DIR)
    elif (root / "checkpoints").exists():
        checkpoints = Checkpoints(str(root / "checkpoints"), async_save=False)
        step = checkpoints.latest_step()
        if step is not None:
            state, _ = checkpoints.restore(step, abstract_state(settings, layout))
            checkpoints.close()
            return state["params"], f"{checkpoints.directory}/{step}"
        checkpoints.close()
        source = config.init_from
    else:
        source = config.init_from
    if not source:
        raise FileNotFoundError(
            f"no trained model: {workdir} has no {MODEL_DIR}/ or checkpoints/ and "
            "config.init_from is empty"
        )
    try:
        params = initial_params(
            settings.model, config.seed, source, layout, objective=objective, require=require
        )
    except ValueError as error:
        raise ConfigError(f"{error}: {hint}" if hint else str(error)) from None
    return params, source
