"""The `forward_check` job: build the model, run it once, report what came out.

A quick end-to-end look at a configuration (parameter overview, output
statistics, timing) on synthetic inputs, with no data on disk. Padding is
part of the inputs, so the statistics cover only valid positions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview
from flax import nnx

from uniter_jax.model import UniterConfig, UniterForPretraining, get_params

# Fields of the `model` config section that are not UniterConfig fields.
_NOT_MODEL_FIELDS = ("preset",)


def model_config(section: ml_collections.ConfigDict) -> UniterConfig:
    """`UniterConfig` from a config's `model` section: a preset plus overrides."""
    values = section.to_dict()
    preset = values.pop("preset", "base")
    return UniterConfig.preset(preset, **values)


def synthetic_inputs(
    config: UniterConfig, batch: int, text_len: int, num_regions: int, seed: int
) -> dict[str, np.ndarray]:
    """Random padded inputs: `[CLS] ... [SEP]` texts and boxes of varied lengths."""
    rng = np.random.default_rng(seed)
    text_lens = rng.integers(3, text_len + 1, batch)
    region_counts = rng.integers(1, num_regions + 1, batch)
    ids = rng.integers(999, config.vocab_size, (batch, text_len)).astype(np.int32)
    ids[:, 0] = 101
    ids[np.arange(batch), text_lens - 1] = 102
    text_mask = np.arange(text_len)[None] < text_lens[:, None]
    ids[~text_mask] = 0
    xy = np.sort(rng.uniform(0, 1, (batch, num_regions, 2, 2)), axis=2)
    (x1, y1), (x2, y2) = xy[:, :, 0].transpose(2, 0, 1), xy[:, :, 1].transpose(2, 0, 1)
    w, h = x2 - x1, y2 - y1
    img_pos = np.stack([x1, y1, x2, y2, w, h, w * h], -1).astype(np.float32)
    img_mask = np.arange(num_regions)[None] < region_counts[:, None]
    feat = np.maximum(rng.standard_normal((batch, num_regions, config.img_dim)), 0)
    feat = np.where(img_mask[..., None], feat, 0).astype(np.float16)
    return dict(
        input_ids=ids,
        text_mask=text_mask.astype(np.int32),
        img_feat=feat,
        img_pos=img_pos,
        img_mask=img_mask.astype(np.int32),
    )


def _stats(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, np.float64)
    return dict(mean=float(x.mean()), std=float(x.std()), min=float(x.min()), max=float(x.max()))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the check, logs a report and writes it to `workdir/forward_check.json`."""
    model_cfg = model_config(config.model)
    check = config.forward_check
    start = time.perf_counter()
    # One compiled init program: faster than op-by-op, and how sharded init runs.
    model = nnx.jit(lambda: UniterForPretraining(model_cfg, nnx.Rngs(config.seed)))()
    init_s = time.perf_counter() - start
    logging.info("model config: %s", model_cfg)
    logging.info("parameters:\n%s", parameter_overview.get_parameter_overview(get_params(model)))

    inputs = synthetic_inputs(
        model_cfg, check.batch_size, check.text_len, check.num_regions, config.seed
    )

    @nnx.jit
    def forward(model, inputs):
        seq = model(**inputs)
        return seq, model.itm_logits(seq), model.mlm_logits(seq[:, 1]), model.mrc_logits(seq)

    start = time.perf_counter()
    outputs = jax.block_until_ready(forward(model, inputs))
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    seq, itm, mlm, mrc = jax.block_until_ready(forward(model, inputs))
    step_s = time.perf_counter() - start
    del outputs

    seq = np.asarray(seq.astype(jnp.float32))
    lt = check.text_len
    report = {
        "model": dataclasses.asdict(model_cfg),
        "num_params": int(sum(x.size for x in jax.tree.leaves(get_params(model)))),
        "devices": [str(d) for d in jax.devices()],
        "input_shapes": {k: list(v.shape) for k, v in inputs.items()},
        "text_hidden": _stats(seq[:, :lt][inputs["text_mask"].astype(bool)]),
        "region_hidden": _stats(seq[:, lt:][inputs["img_mask"].astype(bool)]),
        "itm_match_prob": _stats(jax.nn.softmax(itm)[:, 1]),
        "mlm_logits": _stats(mlm),
        "mrc_logits": _stats(mrc),
        "finite": bool(np.isfinite(seq).all()),
        "seconds": {"init": init_s, "compile_and_first_run": first_s, "forward": step_s},
    }
    for key in ("text_hidden", "region_hidden", "itm_match_prob", "mlm_logits", "mrc_logits"):
        s = report[key]
        logging.info(
            "%-15s mean %+.4f std %.4f min %+.4f max %+.4f",
            key,
            s["mean"],
            s["std"],
            s["min"],
            s["max"],
        )
    logging.info(
        "%s parameters; init %.1fs, compile+run %.1fs, forward %.3fs",
        f"{report['num_params']:,}",
        init_s,
        first_s,
        step_s,
    )
    if not report["finite"]:
        raise FloatingPointError("forward pass produced non-finite hidden states")
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "forward_check.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    logging.info("wrote %s", path)
    return report
