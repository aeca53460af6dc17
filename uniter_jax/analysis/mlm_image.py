"""Does MLM read a masked word from the image? Own image against another.

Each word of a chosen kind (a colour, a shape, ...) is masked alone, and the
pretraining model's MLM head predicts it twice: with the caption's own
image, and with the regions of another image (the next example whose image
differs) under the same masked text. Where the model reads the word from the
image, the own image's accuracy is well above the other's; where it guesses
from the caption's other words, the two are equal. On the `clutter`
synthetic world MLM's accuracy beats a text-only n-gram predictor while it
reads no attribute from the image (docs/results.md, "Harder ITM negatives, a
third layer, and what MLM reads").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from uniter_jax.analysis.example import Example, model_inputs
from uniter_jax.model.inputs import encode
from uniter_jax.model.pretraining import UniterForPretraining


@dataclasses.dataclass(frozen=True)
class MaskedWord:
    own: Example  # the caption, one word masked, with its own image
    other: Example  # the same masked caption with another image's regions
    position: int  # where the masked word is, [CLS] at 0
    target: int  # the word's id
    kind: str


def masked_words(
    examples: Sequence[Example], kinds: Mapping[int, str], mask_id: int
) -> list[MaskedWord]:
    """One `MaskedWord` for each token of `examples` whose id `kinds` names.
    The other image of example `i` is that of the first example after it
    (cyclically) with another image id."""
    image_ids = [e.image_id for e in examples]
    if len(set(image_ids)) < 2:
        raise ValueError("examples of at least two images are needed")
    out = []
    for i, example in enumerate(examples):
        j = (i + 1) % len(examples)
        while image_ids[j] == image_ids[i]:
            j = (j + 1) % len(examples)
        for position, token in enumerate(example.input_ids):
            if int(token) not in kinds:
                continue
            ids = example.input_ids.copy()
            ids[position] = mask_id
            own = dataclasses.replace(example, input_ids=ids)
            other = dataclasses.replace(
                examples[j], text_id=example.text_id, tokens=example.tokens, input_ids=ids
            )
            out.append(MaskedWord(own, other, position, int(token), kinds[int(token)]))
    return out


@nnx.jit
def _mlm_argmax(model: UniterForPretraining, batch: dict) -> jnp.ndarray:
    sequence = encode(model, batch, dropout_key=None)
    text_len = batch["input_ids"].shape[1]
    return jnp.argmax(model.mlm_logits(sequence[:, :text_len]), axis=-1)


def predictions(
    model: UniterForPretraining, words: Sequence[MaskedWord], batch_size: int = 64
) -> np.ndarray:
    """`[M, 2]` the MLM head's top id at each masked word, with the own image
    (column 0) and with the other image (column 1)."""
    out = np.zeros((len(words), 2), np.int64)
    for column, side in enumerate(("own", "other")):
        for start in range(0, len(words), batch_size):
            chunk = words[start : start + batch_size]
            examples = [getattr(w, side) for w in chunk]
            # Whole batches only, so that one program serves every chunk of a shape.
            examples += [examples[-1]] * (batch_size - len(examples))
            top = np.asarray(_mlm_argmax(model, model_inputs(examples, multiple=16)))
            out[start : start + len(chunk), column] = [
                top[k, w.position] for k, w in enumerate(chunk)
            ]
    return out


def image_use(
    model: UniterForPretraining,
    examples: Sequence[Example],
    kinds: Mapping[int, str],
    mask_id: int,
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """Per kind: MLM accuracy on its masked words with the own image (`own`)
    and with another image (`other`), and how many words (`count`)."""
    words = masked_words(examples, kinds, mask_id)
    if not words:
        raise ValueError("no word of the given kinds in the examples: nothing to measure")
    top = predictions(model, words, batch_size)
    targets = np.array([w.target for w in words])
    word_kinds = np.array([w.kind for w in words])
    out = {}
    for kind in sorted(set(word_kinds)):
        chosen = word_kinds == kind
        out[str(kind)] = {
            "own": float(np.mean(top[chosen, 0] == targets[chosen])),
            "other": float(np.mean(top[chosen, 1] == targets[chosen])),
            "count": int(chosen.sum()),
        }
    return out
