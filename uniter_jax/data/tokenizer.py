"""BERT WordPiece tokenization (the `tokenizers` library), cased by default as UNITER.

Special ids follow bert-base-cased: `[PAD]`=0, `[UNK]`=100, `[CLS]`=101,
`[SEP]`=102, `[MASK]`=103. `build_vocab` writes a vocabulary in the same
layout from any corpus (tests and synthetic data: no bert-base-cased vocab can
be downloaded here); a real `vocab.txt` path works unchanged.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from collections.abc import Iterable

from tokenizers import BertWordPieceTokenizer
from tokenizers.pre_tokenizers import BertPreTokenizer

from uniter_jax.data.errors import DataError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# bert-base-cased: [PAD], [unused1..99], [UNK], [CLS], [SEP], [MASK], then words.
SPECIAL_LAYOUT = [PAD] + [f"[unused{i}]" for i in range(1, 100)] + [UNK, CLS, SEP, MASK]


@dataclasses.dataclass(frozen=True)
class Vocab:
    """What the model and masking need to know about a vocabulary."""

    path: str
    size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    random_range: tuple[int, int]  # [lo, hi): ids MLM may draw as random replacements
    lowercase: bool
    # sha256 of the tokens, one per line: the same vocabulary wherever its file
    # lies ("" in stores written before it was recorded).
    tokens_sha256: str = ""

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "random_range": list(self.random_range)}


def same_vocab(a: dict, b: dict) -> bool:
    """Whether two stores' vocabulary records (`Vocab.to_json`) are the same
    vocabulary: by its tokens' checksum where both record it, wherever the file
    lay; otherwise (a store written before the checksum) by every field, path
    included."""
    ignore = "path" if a.get("tokens_sha256") and b.get("tokens_sha256") else "tokens_sha256"
    return {k: v for k, v in a.items() if k != ignore} == {
        k: v for k, v in b.items() if k != ignore
    }


class Tokenizer:
    """Text -> WordPiece ids (no special tokens; the pipeline adds `[CLS]`/`[SEP]`)."""

    def __init__(self, vocab_path: str, *, lowercase: bool = False):
        if not os.path.isfile(vocab_path):
            raise DataError(
                "vocabulary file not found: captions need a cased WordPiece vocab.txt; for "
                "English captions and UNITER's weights, bert-base-cased's (huggingface-cli "
                "download bert-base-cased vocab.txt --local-dir data/), or one built from your "
                "captions (python -m uniter_jax.data.vocab)",
                file=vocab_path,
            )
        with open(vocab_path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
        ids = {t: i for i, t in enumerate(tokens)}
        missing = [t for t in (PAD, UNK, CLS, SEP, MASK) if t not in ids]
        if missing:
            raise DataError(f"vocabulary lacks {missing}", file=vocab_path)
        # Random MLM replacements skip the special and [unusedN] block (in
        # bert-base-cased, ids below 999).
        unused = [i for t, i in ids.items() if t.startswith("[unused")]
        first = max([ids[MASK], *unused]) + 1
        self.vocab = Vocab(
            path=vocab_path,
            size=len(tokens),
            pad_id=ids[PAD],
            cls_id=ids[CLS],
            sep_id=ids[SEP],
            mask_id=ids[MASK],
            random_range=(first, len(tokens)),
            lowercase=lowercase,
            tokens_sha256=hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest(),
        )
        self._tokenizer = BertWordPieceTokenizer(
            vocab_path, lowercase=lowercase, strip_accents=lowercase
        )

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]


def build_vocab(texts: Iterable[str], path: str, *, vocab_size: int = 2000) -> str:
    """Writes a cased vocabulary for `texts` in bert-base-cased's id layout.

    Deterministic: every character (alone and as a `##` continuation), then
    the most frequent whole words (ties broken alphabetically) up to
    `vocab_size`. Words are split as BERT's pre-tokenizer splits them.
    """
    split = BertPreTokenizer()
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(word for word, _ in split.pre_tokenize_str(text))
    chars = sorted({c for word in counts for c in word})
    pieces = chars + [f"##{c}" for c in chars]
    room = max(0, vocab_size - len(SPECIAL_LAYOUT) - len(pieces))
    ranked = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(SPECIAL_LAYOUT + pieces + ranked[:room]) + "\n")
    return path
