"""Image-text matching scores of a pretrained checkpoint for given (image, text) pairs.

The ITM head's match margin (logit of "match" minus logit of "no match") for
each pair, with the regions selected as the pipeline selects them. Used by
the learning check to compare a true caption with its hard negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from uniter_jax import param_checkpoint
from uniter_jax.analysis.example import RegionSelection, Vocabulary, from_sentence, model_inputs
from uniter_jax.data.image_store import ImageStore
from uniter_jax.model.pretraining import UniterForPretraining, get_params, set_params


def load_pretraining(directory: str) -> UniterForPretraining:
    """The encoder and pretraining heads of a parameter checkpoint folder (a
    pretraining run's `workdir/model`), in fp32 with unrolled layers."""
    loaded, config, _ = param_checkpoint.load(directory)
    config = config.replace(dtype="float32", scan_layers=False, remat="none")
    model = UniterForPretraining(config, nnx.Rngs(0))
    merged, _ = param_checkpoint.overlay(get_params(model), loaded, where=directory)
    set_params(model, merged)
    return model


@nnx.jit
def _margins(model: UniterForPretraining, batch: dict) -> jax.Array:
    sequence = model(
        batch["input_ids"],
        batch["text_mask"],
        batch["img_feat"],
        batch["img_pos"],
        batch["img_mask"],
    )
    logits = model.itm_logits(sequence)
    return logits[:, 1] - logits[:, 0]


def itm_margins(
    model: UniterForPretraining,
    images: ImageStore,
    vocab: Vocabulary,
    pairs: Sequence[tuple[str, str]],
    *,
    selection: RegionSelection | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """`[len(pairs)]` ITM margins of `(image_id, text)` pairs; > 0 means "match".
    Regions are selected as `selection` says (default: the pipeline's)."""
    selection = selection or RegionSelection()
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        examples = [
            from_sentence(text, image_id, images, vocab, selection=selection)
            for image_id, text in chunk
        ]
        # Whole batches only, so that one program serves every chunk.
        examples += [examples[-1]] * (batch_size - len(examples))
        batch = model_inputs(examples, multiple=16)
        out.append(np.asarray(_margins(model, batch))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros(0, np.float32)
