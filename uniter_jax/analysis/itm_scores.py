"""Image-text matching scores of a pretrained model for given (image, text) pairs.

The ITM head's match margin (logit of "match" minus logit of "no match") and
probability for each pair, optionally the WRA distance, with the regions
selected as the pipeline selects them. The learning check compares a true
caption with its hard negative by the margin; `--mode=score`
(`uniter_jax/analysis/score_file.py`) writes them for a file of pairs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uniter_jax import param_checkpoint
from uniter_jax.analysis.example import RegionSelection, Vocabulary, from_sentence, model_inputs
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.model.pretraining import UniterForPretraining, get_params, set_params
from uniter_jax.objectives.tasks import TaskSettings
from uniter_jax.objectives.wra import wra_distance


def load_pretraining(directory: str) -> UniterForPretraining:
    """The encoder and pretraining heads of a parameter checkpoint folder (a
    pretraining run's `workdir/model`), in fp32 with unrolled layers."""
    loaded, config, _ = param_checkpoint.load(directory)
    config = config.replace(dtype="float32", scan_layers=False, remat="none")
    model = UniterForPretraining(config, nnx.Rngs(0))
    merged, _ = param_checkpoint.overlay(get_params(model), loaded, where=directory)
    set_params(model, merged)
    return model


@functools.partial(nnx.jit, static_argnames="wra")
def _scores(model: UniterForPretraining, batch: dict, wra: TaskSettings | None) -> dict:
    sequence = model(
        batch["input_ids"],
        batch["text_mask"],
        batch["img_feat"],
        batch["img_pos"],
        batch["img_mask"],
    )
    logits = model.itm_logits(sequence).astype(jnp.float32)
    out = {"margin": logits[:, 1] - logits[:, 0], "probability": jax.nn.softmax(logits)[:, 1]}
    if wra is not None:
        text_len = batch["input_ids"].shape[1]
        out["wra_distance"] = wra_distance(
            sequence[:, :text_len].astype(jnp.float32),
            batch["text_mask"],
            sequence[:, text_len:].astype(jnp.float32),
            batch["img_mask"],
            wra.wra,
        )
    return out


def itm_scores(
    model: UniterForPretraining,
    images: ImageStore,
    vocab: Vocabulary,
    pairs: Sequence[tuple[str, str]],
    *,
    selection: RegionSelection | None = None,
    wra: TaskSettings | None = None,
    lowercase: bool = False,
    max_text_len: int = 60,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """ITM scores of `(image_id, text)` pairs, each `[len(pairs)]`: `margin`
    (logit of "match" minus "no match"; > 0 means match), `probability` (of
    "match") and, when `wra` gives the run's WRA settings, `wra_distance`
    (the optimal-transport distance between the text's and the regions'
    final states, lower for matched pairs). Regions are selected as
    `selection` says (default: the pipeline's); texts are cut to
    `max_text_len` tokens with `[CLS]` and `[SEP]`. `progress(n)` is called
    with the number of pairs done after each batch."""
    selection = selection or RegionSelection()
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        examples = []
        for n, (image_id, text) in enumerate(chunk, start):
            try:
                examples.append(
                    from_sentence(
                        text,
                        image_id,
                        images,
                        vocab,
                        lowercase=lowercase,
                        max_text_len=max_text_len,
                        selection=selection,
                    )
                )
            except DataError as error:
                raise error.located(record=f"pair {n}") from None
        # Whole batches only, so that one program serves every chunk of a shape.
        examples += [examples[-1]] * (batch_size - len(examples))
        batch = model_inputs(examples, multiple=16)
        for name, values in _scores(model, batch, wra).items():
            out.setdefault(name, []).append(np.asarray(values)[: len(chunk)])
        if progress is not None:
            progress(start + len(chunk))
    names = ("margin", "probability") + (("wra_distance",) if wra is not None else ())
    return {k: np.concatenate(out[k]) if out else np.zeros(0, np.float32) for k in names}


def itm_margins(
    model: UniterForPretraining,
    images: ImageStore,
    vocab: Vocabulary,
    pairs: Sequence[tuple[str, str]],
    *,
    selection: RegionSelection | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """`[len(pairs)]` ITM margins of `(image_id, text)` pairs; > 0 means "match"."""
    scores = itm_scores(model, images, vocab, pairs, selection=selection, batch_size=batch_size)
    return scores["margin"]
