"""The `forward_check` job: one batch through the input pipeline and the model.

A quick end-to-end look at a configuration (parameter overview, output
statistics, timing) on the built-in synthetic world or the configured stores.
Statistics cover only valid (unpadded) positions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview
from flax import nnx

from uniter_jax.data import synthetic
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.pipeline import Bucket, Pipeline, PipelineConfig
from uniter_jax.data.text_store import TextStore
from uniter_jax.model import UniterConfig, UniterForPretraining, get_params


def model_config(section: ml_collections.ConfigDict) -> UniterConfig:
    """`UniterConfig` from a config's `model` section: a preset plus overrides."""
    values = section.to_dict()
    preset = values.pop("preset", "base")
    return UniterConfig.preset(preset, **values)


def input_pipeline(config: ml_collections.ConfigDict, workdir: str) -> Pipeline:
    """The configured stores, or the synthetic world (written once into `workdir`)."""
    data = config.data
    if bool(data.images) != bool(data.texts):
        raise ValueError("set both data.images and data.texts, or neither (synthetic data)")
    images, texts = data.images, data.texts
    if not images:
        root = os.path.join(workdir, "synthetic")
        world = synthetic.WorldConfig(num_images=data.synthetic_images, seed=config.seed)
        marker = os.path.join(root, "world.json")
        wanted = json.dumps(dataclasses.asdict(world), sort_keys=True)
        if not os.path.exists(marker) or pathlib.Path(marker).read_text() != wanted:
            logging.info("writing the synthetic world (%d images) to %s", world.num_images, root)
            synthetic.write_world(root, world, overwrite=True)
            pathlib.Path(marker).write_text(wanted)
        images = os.path.join(root, "images")
        texts = os.path.join(root, "texts", "captions_train")
    pipeline_config = PipelineConfig(
        buckets=tuple(Bucket(*b) for b in data.buckets),
        conf_th=data.conf_th,
        min_bb=data.min_bb,
        max_bb=data.max_bb,
        itm_neg_prob=data.itm_neg_prob,
        seed=config.seed,
    )
    return Pipeline(TextStore(texts), ImageStore(images), pipeline_config)


def _stats(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, np.float64)
    return dict(mean=float(x.mean()), std=float(x.std()), min=float(x.min()), max=float(x.max()))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the check, logs a report and writes it to `workdir/forward_check.json`."""
    model_cfg = model_config(config.model)
    start = time.perf_counter()
    # One compiled init program: faster than op-by-op, and how sharded init runs.
    model = nnx.jit(lambda: UniterForPretraining(model_cfg, nnx.Rngs(config.seed)))()
    init_s = time.perf_counter() - start
    logging.info("model config: %s", model_cfg)
    logging.info("parameters:\n%s", parameter_overview.get_parameter_overview(get_params(model)))

    pipeline = input_pipeline(config, workdir)
    if pipeline.images.feature_dim != model_cfg.img_dim:
        raise ValueError(
            f"the image store has {pipeline.images.feature_dim}-d features, the model "
            f"img_dim {model_cfg.img_dim}"
        )
    store_vocab = pipeline.texts.manifest["vocab"]["size"]
    if store_vocab > model_cfg.vocab_size:
        raise ValueError(
            f"the text store's vocabulary has {store_vocab} ids, the model {model_cfg.vocab_size}"
        )
    batch = next(pipeline)
    pipeline.close()
    inputs = {k: batch[k] for k in ("input_ids", "text_mask", "img_feat", "img_pos", "img_mask")}

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
    lt = inputs["input_ids"].shape[1]
    report = {
        "model": dataclasses.asdict(model_cfg),
        "num_params": int(sum(x.size for x in jax.tree.leaves(get_params(model)))),
        "devices": [str(d) for d in jax.devices()],
        "input_shapes": {k: list(v.shape) for k, v in inputs.items()},
        "itm_labels": batch["itm_label"].tolist(),
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
