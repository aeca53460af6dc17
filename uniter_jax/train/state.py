"""What every run starts from: the device layout, the optimiser settings and
the initial parameters (fresh, or read from a checkpoint or a converted
file), and where a finished run keeps its parameters."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from uniter_jax import param_checkpoint
from uniter_jax.convert.pytorch import import_checkpoint
from uniter_jax.model import OPTIONAL_GROUPS, UniterConfig
from uniter_jax.model.config import ConfigError
from uniter_jax.sharding import Layout, make_mesh, to_host
from uniter_jax.train.attention_init import with_mimetic_attention
from uniter_jax.train.image_init import with_principal_projection
from uniter_jax.train.optimizer import OptimSettings
from uniter_jax.train.step import Objective, init_params, param_shardings

MODEL_DIR = "model"  # workdir/model: the final parameters, a parameter checkpoint


def optim_settings(section: ml_collections.ConfigDict, **fields: Any) -> OptimSettings:
    """The `optim` section, with `fields` a job sets (not the config)."""
    return OptimSettings(**section.to_dict(), **fields)


def pretraining_optim(
    section: ml_collections.ConfigDict, streams: Mapping[str, str]
) -> OptimSettings:
    """The `optim` section of a pretraining run whose streams train `streams`
    (stream -> task): the tasks own moments with `per_task_moments`, and
    `task_lr_mul` (task -> multiplier) becomes sorted pairs."""
    fields = section.to_dict()
    multipliers = fields.pop("task_lr_mul", {})
    return OptimSettings(
        **fields,
        moment_tasks=tuple(sorted(set(streams.values()))),
        task_lr_mul=tuple(sorted(multipliers.items())),
    )


def layout_from_config(config: ml_collections.ConfigDict) -> Layout:
    """The mesh over all devices (all hosts) and the rules of the `mesh` section."""
    rules = tuple(
        (name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in config.rules
    )
    return Layout(make_mesh(config.shape.to_dict()), rules)


def initial_params(
    config: UniterConfig,
    seed: int,
    init_from: str,
    layout: Layout | None = None,
    *,
    objective: Objective,
    image_directions: tuple[np.ndarray, np.ndarray] | None = None,
    mimetic_attention: bool = False,
    require: Sequence[str] = (),
) -> dict:
    """Fresh parameters of `objective`'s model, overlaid
    with `init_from` (a parameter checkpoint folder such as a run's
    `workdir/model` or a converted UNITER, or a UNITER `.pt` / BERT `.bin` /
    `.safetensors` file) when given, laid out by `layout` (one device by
    default). Fine-tuning keeps its fresh head and drops pretraining heads.
    `image_directions` (mean, directions) start the fresh image projection
    from the features' principal directions (`train/image_init.py`);
    `mimetic_attention` starts the query-key products near the identity
    (`train/attention_init.py`). A group of `require` that `init_from` lacks
    is an error naming both."""
    layout = layout or Layout.single_device()
    fresh = init_params(config, seed, layout, objective=objective)
    if image_directions is not None or mimetic_attention:
        start = to_host(fresh)
        if image_directions is not None:
            start = with_principal_projection(start, *image_directions, config.initializer_range)
        if mimetic_attention:
            start = with_mimetic_attention(start, seed)
        fresh = jax.device_put(start, param_shardings(config, layout, objective))
    if not init_from:
        if require:
            raise ConfigError(f"no parameters to read {list(require)} from: init_from is empty")
        return fresh
    if os.path.isdir(init_from):
        loaded, _, _ = param_checkpoint.load(init_from)
    elif os.path.isfile(init_from):
        # The file's own sizes: a fine-tuned NLVR2 or VCR file has more token
        # types (the overlay below extends a pretrained table to the model's).
        loaded, _, report = import_checkpoint(
            init_from, config, drop_unknown=True, sizes_from_file=True
        )
        logging.info("imported %s: %s", init_from, report.summary())
    else:
        raise FileNotFoundError(f"init_from: no checkpoint file or folder at {init_from}")
    heads = objective.head_groups
    # Heads the model lacks (pretraining heads when fine-tuning, another task's
    # head) are left out, and said so.
    unused = tuple(g for g in loaded if g != "uniter" and g not in fresh)
    if unused:
        logging.info("not used from %s: the heads %s", init_from, list(unused))
    merged, absent = param_checkpoint.overlay(
        to_host(fresh),
        loaded,
        where=init_from,
        optional=(*OPTIONAL_GROUPS, *heads),
        unused=unused,
    )
    missing = [g for g in require if g in absent]
    if missing:
        raise ConfigError(f"{init_from} has no {missing} parameters")
    logging.info(
        "initialised from %s; freshly initialised groups: %s", init_from, list(absent) or "none"
    )
    return jax.device_put(merged, param_shardings(config, layout, objective))
