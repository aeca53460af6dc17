"""Run a trained encoder on examples and keep what people want to look at:
every layer's attention, the final hidden states and the word-region
alignment (WRA) transport plan.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uniter_jax import param_checkpoint
from uniter_jax.analysis.example import Example, model_inputs
from uniter_jax.convert.pytorch import import_checkpoint
from uniter_jax.model import Uniter, UniterConfig, get_params, set_params
from uniter_jax.objectives.wra import WraSettings, alignment


def load_encoder(path: str, config: UniterConfig | None = None) -> Uniter:
    """The UNITER encoder of any checkpoint: a parameter checkpoint folder (a
    run's `workdir/model`, pretrained or fine-tuned, or a converted one) or
    an original `.pt` file, whose sizes come from `config` (the original
    JSON config or a preset). Heads are ignored; the image embedder must be
    there (a BERT file has none)."""
    if os.path.isdir(path):
        loaded, config, _ = param_checkpoint.load(path)
    elif os.path.isfile(path):
        if config is None:
            raise ValueError(f"{path}: a PyTorch file needs the model config (JSON or preset)")
        loaded, config, _ = import_checkpoint(path, config, drop_unknown=True, sizes_from_file=True)
    else:
        raise FileNotFoundError(f"no checkpoint file or folder at {path}")
    # Inspection runs in fp32 on one device, whatever the training settings.
    config = config.replace(dtype="float32", scan_layers=False, remat="none")
    model = Uniter(config, nnx.Rngs(0))
    merged, _ = param_checkpoint.overlay(
        {"uniter": get_params(model)},
        {"uniter": loaded.get("uniter", {})},
        where=path,
        optional=("uniter/pooler",),
    )
    set_params(model, merged["uniter"])
    return model


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What the encoder made of one example (positions: its tokens, then its regions)."""

    example: Example
    attention: np.ndarray  # [layers, heads, L, L] fp32, rows = queries, L = Lt + Nr
    hidden: np.ndarray  # [L, H] final hidden states

    @property
    def text_hidden(self) -> np.ndarray:
        return self.hidden[: self.example.num_text]

    @property
    def region_hidden(self) -> np.ndarray:
        return self.hidden[self.example.num_text :]


@nnx.jit
def _forward(model: Uniter, inputs: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    return model(**inputs, return_attention=True)


def inspect(model: Uniter, examples: Sequence[Example], batch_size: int = 16) -> list[Inspection]:
    """Attention and hidden states of each example, cut to its own positions."""
    return list(iter_inspect(model, examples, batch_size))


def iter_inspect(
    model: Uniter, examples: Sequence[Example], batch_size: int = 16
) -> Iterator[Inspection]:
    """`inspect`, one example at a time (a batch of `batch_size` runs at once)."""
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        inputs = model_inputs(chunk)
        hidden, attention = jax.device_get(_forward(model, inputs))
        text_len = inputs["input_ids"].shape[1]
        for b, e in enumerate(chunk):
            # Text positions, then region positions (after the padded text).
            keep = np.concatenate([np.arange(e.num_text), text_len + np.arange(e.num_regions)])
            att = attention[:, b][:, :, keep][:, :, :, keep]
            yield Inspection(e, att.astype(np.float32), hidden[b, keep].astype(np.float32))


def transport_plan(inspection: Inspection, settings: WraSettings | None = None) -> np.ndarray:
    """The WRA plan `[Lt, Nr]` between the example's final word and region
    states, computed as in pretraining (cosine cost, uniform marginals, the
    run's solver: pass its `TaskSettings.wra`); each row sums to `1 / Lt`,
    each column to `1 / Nr`."""
    text, regions = jnp.asarray(inspection.text_hidden), jnp.asarray(inspection.region_hidden)
    _, plan = alignment(
        text,
        jnp.ones(text.shape[0]),
        regions,
        jnp.ones(regions.shape[0]),
        settings or WraSettings(),
    )
    return np.asarray(plan)
