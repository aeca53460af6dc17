"""One image-text example, readable by people: the tokens as strings, the
regions with their boxes and detector labels, and the model inputs.

Examples come from the stores (a text and its image, selected as the
pipeline selects them) or from a sentence typed in for a stored image.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.regions import num_kept
from uniter_jax.data.text_store import TextStore
from uniter_jax.data.tokenizer import CLS, SEP, Tokenizer


@dataclasses.dataclass(frozen=True)
class RegionSelection:
    """Which regions of an image the model sees, as the pipeline keeps them."""

    conf_th: float = 0.2
    min_bb: int = 10
    max_bb: int = 100


@dataclasses.dataclass(frozen=True)
class Example:
    """One text with its image's regions, unpadded.

    Positions: the `num_text` tokens (`[CLS]` first, `[SEP]` last) come
    first, then the `num_regions` regions, as the encoder sees them.
    """

    text_id: str
    image_id: str
    tokens: tuple[str, ...]  # [Lt] word pieces, [CLS] ... [SEP]
    input_ids: np.ndarray  # [Lt] int32
    features: np.ndarray  # [Nr, img_dim] float32
    boxes: np.ndarray  # [Nr, 7] normalised box features (x1, y1, x2, y2 in [0, 1] first)
    labels: tuple[str, ...]  # [Nr] detector class names ("region 3" where unknown)

    @property
    def num_text(self) -> int:
        return len(self.tokens)

    @property
    def num_regions(self) -> int:
        return len(self.labels)

    @property
    def special(self) -> tuple[int, int]:
        """Positions of `[CLS]` and `[SEP]`."""
        return (0, self.num_text - 1)


class Vocabulary:
    """Token ids <-> word pieces of a `vocab.txt` (one piece per line)."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise DataError("vocabulary file not found", file=path)
        with open(path, encoding="utf-8") as f:
            self.pieces = [line.rstrip("\n") for line in f]
        self.path = path
        self.ids = {piece: i for i, piece in enumerate(self.pieces)}
        for piece in (CLS, SEP):
            if piece not in self.ids:
                raise DataError(f"the vocabulary lacks {piece}", file=path)

    def decode(self, ids: Sequence[int]) -> tuple[str, ...]:
        return tuple(self.pieces[i] if 0 <= i < len(self.pieces) else f"[{i}?]" for i in ids)


def store_vocabulary(texts: TextStore, path: str | None = None) -> Vocabulary:
    """The vocabulary a text store was tokenized with: `path`, else the one its
    manifest records."""
    if path is not None:
        return Vocabulary(path)
    recorded = (texts.manifest.get("vocab") or {}).get("path")
    if not recorded or not os.path.isfile(recorded):
        raise DataError(
            f"the vocabulary it was tokenized with ({recorded!r}) is not there: pass its vocab.txt",
            file=texts.directory,
        )
    return Vocabulary(recorded)


def label_names(num_labels: int, path: str | None = None) -> list[str]:
    """Detector class names, background first: from a file of one name per
    line (with or without the background line), else `class k`."""
    if path is None:
        return ["background"] + [f"class {k}" for k in range(1, num_labels)]
    with open(path, encoding="utf-8") as f:
        names = [line.strip().split(",")[0] for line in f if line.strip()]
    if len(names) == num_labels - 1:
        names = ["background", *names]
    if len(names) != num_labels:
        raise DataError(
            f"{len(names)} names for {num_labels} detector classes "
            f"(or {num_labels - 1} without background)",
            file=path,
        )
    return names


def _regions(
    images: ImageStore,
    image_id: str,
    selection: RegionSelection,
    names: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    if image_id not in images:
        raise DataError(f"image {image_id!r} is not in the image store", file=images.directory)
    regions = images.get(image_id)
    kept = num_kept(regions.conf, selection.conf_th, selection.min_bb, selection.max_bb)
    features = regions.features[:kept].astype(np.float32)
    if not np.isfinite(features).all():
        raise DataError("non-finite region features", record=image_id, field="features")
    if regions.soft_labels is not None:
        classes = np.argmax(regions.soft_labels[:kept], axis=-1)
        names = names or label_names(regions.soft_labels.shape[-1])
        labels = tuple(f"{i}: {names[c]}" for i, c in enumerate(classes))
    else:
        labels = tuple(f"region {i}" for i in range(kept))
    return features, regions.boxes[:kept].astype(np.float32), labels


def from_store(
    texts: TextStore,
    images: ImageStore,
    index: int,
    vocab: Vocabulary,
    *,
    max_text_len: int = 60,
    selection: RegionSelection = RegionSelection(),
    names: Sequence[str] | None = None,
) -> Example:
    """Text `index` of the store with its image; the text is cut to
    `max_text_len` positions ([CLS] and [SEP] included) as the pipeline does."""
    if not 0 <= index < len(texts):
        raise IndexError(f"{texts.directory}: no text {index} (the store holds {len(texts)})")
    pieces = texts.input_ids(index)[: max_text_len - 2]
    ids = np.concatenate([[vocab.ids[CLS]], pieces, [vocab.ids[SEP]]]).astype(np.int32)
    image_id = str(texts.image_ids[index])
    features, boxes, labels = _regions(images, image_id, selection, names)
    return Example(
        str(texts.text_ids[index]), image_id, vocab.decode(ids), ids, features, boxes, labels
    )


def from_sentence(
    sentence: str,
    image_id: str,
    images: ImageStore,
    vocab: Vocabulary,
    *,
    lowercase: bool = False,
    max_text_len: int = 60,
    selection: RegionSelection = RegionSelection(),
    names: Sequence[str] | None = None,
) -> Example:
    """A sentence of one's own, tokenized with `vocab`, with a stored image."""
    pieces = Tokenizer(vocab.path, lowercase=lowercase).encode(sentence)
    if not pieces:
        raise DataError("the sentence has no tokens", field="text")
    pieces = pieces[: max_text_len - 2]
    ids = np.asarray([vocab.ids[CLS], *pieces, vocab.ids[SEP]], np.int32)
    features, boxes, labels = _regions(images, image_id, selection, names)
    return Example("typed", image_id, vocab.decode(ids), ids, features, boxes, labels)


def model_inputs(examples: Sequence[Example], multiple: int = 8) -> dict[str, np.ndarray]:
    """A padded batch `[B, Lt]` / `[B, Nr, ...]` of `examples`; lengths are
    rounded up to `multiple` so that batches of similar examples share one
    compiled program."""

    def padded(n: int) -> int:
        return -(-n // multiple) * multiple

    text_len = padded(max(e.num_text for e in examples))
    num_regions = padded(max(e.num_regions for e in examples))
    img_dim = examples[0].features.shape[-1]
    out = {
        "input_ids": np.zeros((len(examples), text_len), np.int32),
        "text_mask": np.zeros((len(examples), text_len), np.int32),
        "img_feat": np.zeros((len(examples), num_regions, img_dim), np.float32),
        "img_pos": np.zeros((len(examples), num_regions, 7), np.float32),
        "img_mask": np.zeros((len(examples), num_regions), np.int32),
    }
    for b, e in enumerate(examples):
        out["input_ids"][b, : e.num_text] = e.input_ids
        out["text_mask"][b, : e.num_text] = 1
        out["img_feat"][b, : e.num_regions] = e.features
        out["img_pos"][b, : e.num_regions] = e.boxes
        out["img_mask"][b, : e.num_regions] = 1
    return out
