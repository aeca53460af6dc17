"""`python main.py --config=configs/pretrain.py --workdir=DIR --mode=score --pairs=FILE`:
ITM scores of a trained model for a file of (image id, text) pairs.

The pairs file is JSON Lines, one object a line with `image_id` (in the image
store `data.images`) and `text`; other keys are copied to the output. Each
output line adds `itm_score` (the probability of "match"), `itm_margin` (the
match logit minus the no-match logit) and, with `--wra`, `wra_distance` (the
word-region transport distance under the run's WRA settings; lower for a
matched pair). The model is the workdir's `model/`, else its newest
checkpoint, else `config.init_from` (a converted UNITER or a `.pt`); texts
are tokenized with the vocabulary of `data.texts`, regions selected as in
training (`data.conf_th`, `min_bb`, `max_bb`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from uniter_jax.analysis.example import RegionSelection, store_vocabulary
from uniter_jax.analysis.itm_scores import itm_scores
from uniter_jax.data import files
from uniter_jax.data.errors import DataError
from uniter_jax.model.pretraining import UniterForPretraining, set_params
from uniter_jax.sharding import Layout, to_host
from uniter_jax.train import inputs
from uniter_jax.train.datasets import stream_schedule
from uniter_jax.train.state import pretraining_optim
from uniter_jax.train.step import StepSettings
from uniter_jax.train.trained import trained_params

OUTPUT = "scores.jsonl"  # default output, in the workdir


def read_pairs(path: str) -> list[dict[str, Any]]:
    """The records of a JSON Lines pairs file; a bad line is a DataError naming
    the file, the line and the field."""
    records = []
    text = files.read_bytes(path).decode("utf-8", errors="strict")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"not valid JSON ({error})", file=path, record=where) from None
        if not isinstance(record, dict):
            raise DataError("expected an object", file=path, record=where)
        for key in ("image_id", "text"):
            if key not in record:
                raise DataError("missing", file=path, record=where, field=key)
        if not isinstance(record["image_id"], (str, int)) or isinstance(record["image_id"], bool):
            raise DataError(
                "expected a string or an integer", file=path, record=where, field="image_id"
            )
        if not isinstance(record["text"], str) or not record["text"].strip():
            raise DataError("expected a non-empty string", file=path, record=where, field="text")
        records.append(record)
    if not records:
        raise DataError("no pairs to score", file=path)
    return records


def run_score(
    config: ml_collections.ConfigDict,
    workdir: str,
    pairs_path: str,
    out_path: str | None = None,
    *,
    wra: bool = False,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Scores every pair of `pairs_path` and writes them to `out_path` (default
    `workdir/scores.jsonl`); returns a report (where the model came from, how
    many pairs, the output path)."""
    if jax.process_count() > 1:
        raise ValueError("--mode=score runs in one process: start it on one host")
    pairs = read_pairs(pairs_path)
    dataset = inputs.single_dataset(config, workdir)
    texts, images = inputs.open_stores(dataset)
    vocab = store_vocabulary(texts)
    model_cfg = inputs.model_config(config.model)
    inputs.check_compatible(texts, images, model_cfg)
    settings = StepSettings(
        model=model_cfg,
        tasks=inputs.task_settings(config.tasks, texts.manifest["vocab"]),
        # The run's optimiser layout: a checkpoint without `model/` is read whole.
        optim=pretraining_optim(
            config.optim, stream_schedule([dataset], config.tasks, config.optim.accumulation)[1]
        ),
    )
    params, source = trained_params(
        config,
        workdir,
        settings,
        Layout.single_device(),
        settings.tasks,
        require=("itm",),
        hint="score with a pretrained model (a pretraining workdir, or config.init_from)",
    )
    model = UniterForPretraining(model_cfg.replace(dtype="float32", remat="none"), nnx.Rngs(0))
    set_params(model, to_host(params))
    keys = [(str(r["image_id"]), r["text"]) for r in pairs]
    missing = sorted({image for image, _ in keys if image not in images})
    if missing:
        line = next(n for n, (image, _) in enumerate(keys, 1) if image == missing[0])
        raise DataError(
            f"{len(missing)} image ids are not in the image store {images.directory} "
            f"(first: {missing[0]!r}); set data.images to the store that holds them",
            file=pairs_path,
            record=f"line {line}",
            field="image_id",
        )
    selection = RegionSelection(config.data.conf_th, config.data.min_bb, config.data.max_bb)
    with tqdm(total=len(keys), unit="pair", desc="scoring") as bar:
        scores = itm_scores(
            model,
            images,
            vocab,
            keys,
            selection=selection,
            wra=settings.tasks if wra else None,
            lowercase=bool(texts.manifest["vocab"].get("lowercase")),
            max_text_len=texts.manifest["max_txt_len"] + 2,
            batch_size=batch_size,
            progress=lambda done: bar.update(done - bar.n),
        )
    out_path = out_path or os.path.join(workdir, OUTPUT)
    _write_jsonl(out_path, pairs, scores)
    report = {"params": source, "pairs": len(pairs), "input": pairs_path, "output": out_path}
    logging.info("scored %d pairs with %s: %s", len(pairs), source, out_path)
    return report


def _write_jsonl(path: str, pairs: list[dict], scores: dict[str, np.ndarray]) -> None:
    """One line per pair, written to a temporary name and renamed at the end."""
    names = {"probability": "itm_score", "margin": "itm_margin", "wra_distance": "wra_distance"}
    lines = []
    for i, record in enumerate(pairs):
        added = {names[k]: float(v[i]) for k, v in scores.items()}
        lines.append(json.dumps({**record, **added}))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(partial, path)
