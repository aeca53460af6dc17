"""Builds a WordPiece vocabulary from your own caption files.

  python -m uniter_jax.data.vocab --out data/vocab.txt --size 8000 \\
      captions_train2014.json questions.json more_captions.jsonl

Real English captions with UNITER's released weights need the vocabulary
those weights were trained with, bert-base-cased's `vocab.txt` (28,996 ids;
see the README): do not build one for them. Build one for a model trained
from scratch on a corpus of your own (another language, another domain, or a
small model whose embedding table should hold only the words it sees).

Input files, by their content:
  COCO caption JSON    {"annotations": [{"caption": ...}]}
  VQA question JSON    {"questions": [{"question": ...}]}
  Karpathy split JSON  {"images": [{"sentences": [{"raw": ...}]}]}
  JSON Lines           one object a line with "caption", "text", "sentence"
                       or "question"
  plain text           one text a line (any other file)

The vocabulary keeps bert-base-cased's id layout ([PAD] 0, [unused1-99],
[UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, then the pieces), so every
part of the project that reads ids from a vocabulary works with it. It
prints the flag the model needs: `--config.model.vocab_size=<ids>`.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import itertools
import json
import os
from collections.abc import Sequence

from tokenizers import BertWordPieceTokenizer
from tokenizers.pre_tokenizers import BertPreTokenizer

from uniter_jax.data import files
from uniter_jax.data.errors import DataError
from uniter_jax.data.tokenizer import SPECIAL_LAYOUT, UNK

_TEXT_KEYS = ("caption", "text", "sentence", "question")


def read_texts(path: str) -> list[str]:
    """The texts of one caption file (formats in the module docstring)."""
    raw = files.read_bytes(path)
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text ({error})", file=path) from None
    stripped = content.lstrip()
    if stripped.startswith("{"):
        try:
            data = json.loads(content)
        except json.JSONDecodeError:
            return _from_json_lines(path, content)  # several objects: one a line
        return _from_json(path, data)
    if stripped.startswith("["):
        raise DataError(
            "a JSON list: expected an object (COCO, VQA, Karpathy) or JSON Lines", file=path
        )
    return [line.strip() for line in content.splitlines() if line.strip()]


def _from_json(path: str, data: dict) -> list[str]:
    if isinstance(data.get("annotations"), list):
        items, key = data["annotations"], "caption"
    elif isinstance(data.get("questions"), list):
        items, key = data["questions"], "question"
    elif isinstance(data.get("images"), list):
        items = [s for image in data["images"] for s in image.get("sentences", [])]
        key = "raw"
    else:
        raise DataError(
            "no 'annotations', 'questions' or 'images' list: not a COCO caption, VQA or "
            "Karpathy file",
            file=path,
        )
    texts = []
    for n, item in enumerate(items):
        text = item.get(key) if isinstance(item, dict) else None
        if not isinstance(text, str):
            raise DataError("expected a string", file=path, record=n, field=key)
        texts.append(text)
    return texts


def _from_json_lines(path: str, content: str) -> list[str]:
    texts = []
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"not valid JSON ({error})", file=path, record=f"line {number}"
            ) from None
        key = next((k for k in _TEXT_KEYS if isinstance(record, dict) and k in record), None)
        if key is None or not isinstance(record[key], str):
            raise DataError(
                f"expected an object with a string {' or '.join(map(repr, _TEXT_KEYS))}",
                file=path,
                record=f"line {number}",
            )
        texts.append(record[key])
    return texts


def train_wordpiece(
    texts: Sequence[str],
    path: str,
    *,
    vocab_size: int = 8000,
    min_frequency: int = 2,
) -> int:
    """Learns a WordPiece vocabulary of at most `vocab_size` ids (the special
    block included) from `texts`, cased as UNITER's, and writes it to `path`;
    returns its size.

    Words are split as BERT splits them; every character seen is a piece
    (alone and as a `##` continuation); then the most frequent adjacent pair
    of pieces is merged, over and over (ties: the alphabetically first pair),
    while pairs occur at least `min_frequency` times and room is left. The
    same texts give the same file.
    """
    if not texts:
        raise ValueError("no texts to build a vocabulary from")
    room = vocab_size - len(SPECIAL_LAYOUT)
    if room <= 0:
        raise ValueError(f"vocab_size must be above {len(SPECIAL_LAYOUT)} (the special ids)")
    split = BertPreTokenizer()
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(word for word, _ in split.pre_tokenize_str(text))
    words = [[w[0], *(f"##{c}" for c in w[1:])] for w in sorted(counts)]
    freq = [counts[w] for w in sorted(counts)]
    pieces = sorted({p for word in words for p in word})
    pieces += _merges(words, freq, room - len(pieces), min_frequency)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(SPECIAL_LAYOUT + pieces[:room]) + "\n")
    return len(SPECIAL_LAYOUT) + len(pieces[:room])


def _merges(words: list[list[str]], freq: list[int], limit: int, min_frequency: int) -> list[str]:
    """Up to `limit` new pieces, merging the most frequent pair each time;
    `words` (pieces per distinct word, with its frequency) are merged in place.

    Pair counts are kept up to date incrementally, with a heap of
    (-count, pair) entries checked against the counts when popped.
    """
    pairs: collections.Counter[tuple[str, str]] = collections.Counter()
    where: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    for i, word in enumerate(words):
        for pair in itertools.pairwise(word):
            pairs[pair] += freq[i]
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    new: list[str] = []
    known: set[str] = {p for word in words for p in word}
    while len(new) < limit and heap:
        count, pair = heapq.heappop(heap)
        if -count != pairs.get(pair, 0):
            continue  # stale: the pair's count changed since this entry
        if -count < min_frequency:
            break
        merged = pair[0] + pair[1].removeprefix("##")
        if merged not in known:
            known.add(merged)
            new.append(merged)
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            word = words[i]
            for old in itertools.pairwise(word):
                pairs[old] -= freq[i]
                touched.add(old)
            word[:] = _merge_word(word, pair, merged)
            for now in itertools.pairwise(word):
                pairs[now] += freq[i]
                where[now].add(i)
                touched.add(now)
        pairs.pop(pair, None)
        for changed in touched - {pair}:
            if pairs[changed] > 0:
                heapq.heappush(heap, (-pairs[changed], changed))
    return new


def _merge_word(word: list[str], pair: tuple[str, str], merged: str) -> list[str]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def unknown_share(texts: Sequence[str], path: str) -> float:
    """Fraction of the word pieces of `texts` that the vocabulary at `path` maps to [UNK]."""
    tokenizer = BertWordPieceTokenizer(path, lowercase=False, strip_accents=False)
    unk = tokenizer.token_to_id(UNK)
    ids = [i for e in tokenizer.encode_batch(list(texts), add_special_tokens=False) for i in e.ids]
    return sum(i == unk for i in ids) / max(len(ids), 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="caption files (formats: see the module doc)")
    parser.add_argument("--out", required=True, help="the vocab.txt to write")
    parser.add_argument("--size", type=int, default=8000, help="most ids, specials included")
    parser.add_argument("--min-frequency", type=int, default=2, help="rarest piece kept")
    args = parser.parse_args(argv)
    try:
        texts = [text for path in args.inputs for text in read_texts(path)]
        size = train_wordpiece(
            texts,
            args.out,
            vocab_size=args.size,
            min_frequency=args.min_frequency,
        )
    except (DataError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    share = unknown_share(texts, args.out)
    print(f"wrote {args.out}: {size} ids from {len(texts)} texts; [UNK] {share:.2%} of pieces")
    print(f"convert with --vocab {args.out} and train with --config.model.vocab_size={size}")


if __name__ == "__main__":
    main()
