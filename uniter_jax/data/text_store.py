"""The text store: tokenized examples of one task and split, keyed to image ids.

Layout of a store folder (written atomically, readable locally or from gs://):

  manifest.json   format, task, counts, vocabulary, truncation, sha256 of data
  examples.npz    text_id [N], image_id [N], input_ids (ragged) and task fields

Ragged arrays are stored flat with `<name>__offsets` `[N + 1]`. Token ids
exclude `[CLS]`/`[SEP]` (the pipeline adds them) and are cut to `max_txt_len`.
Task fields: fixed-size per example (`label` [N], `target` [N, K]) or ragged
(a list per example, e.g. VQA answer ids and their scores).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from uniter_jax.data.errors import DataError, check_unique
from uniter_jax.data.files import (
    MANIFEST,
    atomic_directory,
    close_atomic,
    joined_sha256,
    load_npz,
    read_manifest,
    sha256,
    write_json,
    write_npz,
)
from uniter_jax.data.tokenizer import same_vocab

FORMAT = "uniter_jax.text_store"
VERSION = 1
DATA = "examples.npz"
OFFSETS = "__offsets"


class TextStoreWriter:
    """Collects examples, then writes the store on a clean exit of the `with` block.

    with TextStoreWriter(out, task="captions", vocab=tok.vocab.to_json(),
                         max_txt_len=60, ragged=("answers",)) as w:
        w.add("cap1", "img1", ids, answers=[3, 7])
    """

    def __init__(
        self,
        directory: str,
        *,
        task: str,
        vocab: dict[str, Any],
        max_txt_len: int,
        ragged: Sequence[str] = (),
        source: dict[str, Any] | None = None,
        overwrite: bool = False,
    ):
        if max_txt_len < 1:
            raise ValueError(f"max_txt_len must be positive, got {max_txt_len}")
        self.directory, self.task, self.vocab = directory, task, vocab
        self.max_txt_len = max_txt_len
        self.ragged = tuple(ragged)
        self.source = source or {}
        self._overwrite = overwrite
        self._text_ids: dict[str, None] = {}
        self._image_ids: list[str] = []
        self._tokens: list[np.ndarray] = []
        self._fields: dict[str, list[Any]] | None = None
        self.truncated = 0

    def __enter__(self) -> TextStoreWriter:
        self._context = atomic_directory(self.directory, overwrite=self._overwrite)
        self._root = self._context.__enter__()
        return self

    def add(self, text_id: str, image_id: str, input_ids: Sequence[int], **fields: Any) -> bool:
        """Adds one example; returns whether its tokens were truncated.

        Raises DataError for a duplicate id, an empty text, ids outside the
        vocabulary, or task fields that differ from the first example's.
        """
        if text_id in self._text_ids:
            raise DataError("duplicate text id", record=text_id)
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise DataError("empty text (no tokens)", record=text_id, field="input_ids")
        if ids.min() < 0 or ids.max() >= self.vocab["size"]:
            raise DataError(
                f"token ids outside [0, {self.vocab['size']})", record=text_id, field="input_ids"
            )
        if self._fields is None:
            self._fields = {name: [] for name in fields}
        if set(fields) != set(self._fields):
            raise DataError(
                f"fields {sorted(fields)} differ from the store's {sorted(self._fields)}",
                record=text_id,
            )
        truncated = ids.size > self.max_txt_len
        self.truncated += truncated
        self._text_ids[text_id] = None
        self._image_ids.append(image_id)
        self._tokens.append(ids[: self.max_txt_len].astype(np.int32))
        for name, value in fields.items():
            self._fields[name].append(value)
        return bool(truncated)

    def __len__(self) -> int:
        return len(self._image_ids)

    def __contains__(self, text_id: str) -> bool:
        return text_id in self._text_ids

    def __exit__(self, exc_type, exc, tb) -> None:
        close_atomic(self._context, exc_type, exc, tb, self._finish)

    def _finish(self) -> None:
        if not self._image_ids:
            raise DataError("no examples to write", file=self.directory)
        arrays = {
            "text_id": np.array(list(self._text_ids), dtype=np.str_),
            "image_id": np.array(self._image_ids, dtype=np.str_),
        }
        arrays.update(_flatten("input_ids", self._tokens))
        for name, values in (self._fields or {}).items():
            if name in self.ragged:
                arrays.update(_flatten(name, [np.asarray(v) for v in values]))
            else:
                try:
                    arrays[name] = np.asarray(values)
                except ValueError as e:
                    raise DataError(f"values differ in shape ({e})", field=name) from None
                if arrays[name].dtype == object:
                    raise DataError("values differ in shape or type", field=name)
        data_path = os.path.join(self._root, DATA)
        write_npz(data_path, arrays)
        lengths = np.diff(arrays["input_ids" + OFFSETS])
        write_json(
            os.path.join(self._root, MANIFEST),
            {
                "format": FORMAT,
                "version": VERSION,
                "task": self.task,
                "num_examples": len(self._image_ids),
                "num_images": len(set(self._image_ids)),
                "max_txt_len": self.max_txt_len,
                "truncated": self.truncated,
                "token_length": {
                    "mean": float(lengths.mean()),
                    "max": int(lengths.max()),
                },
                "fields": sorted(self._fields or {}),
                "ragged": sorted(self.ragged),
                "vocab": self.vocab,
                "data_sha256": sha256(data_path),
                "source": self.source,
            },
        )


def _concatenate(key: str, values: list[np.ndarray]) -> np.ndarray:
    """One array of several stores'; ragged offsets are moved past the earlier values."""
    if not key.endswith(OFFSETS):
        return np.concatenate(values)
    ends = np.cumsum([0] + [int(v[-1]) for v in values[:-1]])
    return np.concatenate(
        [values[0]] + [v[1:] + end for v, end in zip(values[1:], ends[1:], strict=True)]
    )


def _flatten(name: str, values: list[np.ndarray]) -> dict[str, np.ndarray]:
    lengths = [len(v) for v in values]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # The dtype comes from the non-empty values: an empty `[]` (float64 to
    # numpy) must not turn integer ids into floats.
    filled = [v for v in values if len(v)] or values
    dtype = np.result_type(*[v.dtype for v in filled]) if filled else np.float64
    flat = np.concatenate([v.astype(dtype) for v in values]) if values else np.zeros(0, dtype)
    return {name: flat, name + OFFSETS: offsets}


class TextStore:
    """Reads a text store into memory (token ids are small next to region features)."""

    def __init__(self, directory: str, *, verify: bool = True):
        manifest = read_manifest(directory, FORMAT, VERSION)
        data_path = os.path.join(directory, DATA)
        arrays = load_npz(data_path, expect_sha256=manifest["data_sha256"] if verify else None)
        self._set(directory, manifest, arrays)

    def _set(self, directory: str, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.directory = directory  # a folder, or a name for several (`joined`)
        self.manifest = manifest
        self.arrays = arrays
        self.text_ids = arrays["text_id"]
        self.image_ids = arrays["image_id"]

    @classmethod
    def joined(cls, stores: Sequence[TextStore], *, name: str) -> TextStore:
        """Several stores read as one, examples in order. They must share the
        vocabulary and fields; a text id in two of them is a DataError."""
        if len(stores) == 1:
            return stores[0]
        first = stores[0]
        for store in stores[1:]:
            for key in ("vocab", "fields", "ragged"):
                same = same_vocab if key == "vocab" else operator.eq
                if not same(store.manifest[key], first.manifest[key]):
                    raise DataError(
                        f"its {key} differs from that of {first.directory}: the stores of "
                        f"{name} must agree",
                        file=store.directory,
                        field=key,
                    )
        arrays = {key: _concatenate(key, [s.arrays[key] for s in stores]) for key in first.arrays}
        check_unique(
            arrays["text_id"], [s.directory for s in stores], list(map(len, stores)), "text"
        )
        lengths = np.diff(arrays["input_ids" + OFFSETS])
        manifest = {
            **first.manifest,
            "num_examples": len(arrays["text_id"]),
            "num_images": len(np.unique(arrays["image_id"])),
            "max_txt_len": max(s.manifest["max_txt_len"] for s in stores),
            "truncated": sum(s.manifest["truncated"] for s in stores),
            "token_length": {"mean": float(lengths.mean()), "max": int(lengths.max())},
            "data_sha256": joined_sha256([s.manifest["data_sha256"] for s in stores]),
            "parts": [s.directory for s in stores],
        }
        out = cls.__new__(cls)
        out._set(name, manifest, arrays)
        return out

    def __len__(self) -> int:
        return len(self.text_ids)

    def field(self, name: str, i: int) -> np.ndarray:
        """Example `i`'s value of `name` (a slice for ragged fields)."""
        offsets = self.arrays.get(name + OFFSETS)
        if offsets is None:
            return self.arrays[name][i]
        return self.arrays[name][offsets[i] : offsets[i + 1]]

    def ragged(self, name: str, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The values of ragged field `name` for examples `index` `[b]`, flat:
        `(row [M], values [M])`, where `row` says which of the `b` each value is of."""
        offsets = self.arrays[name + OFFSETS]
        starts, lengths = offsets[index], offsets[index + 1] - offsets[index]
        rows = np.repeat(np.arange(len(index)), lengths)
        # Position inside each example's run, added to that example's start.
        first = np.cumsum(lengths) - lengths
        within = np.arange(int(lengths.sum())) - np.repeat(first, lengths)
        return rows, self.arrays[name][np.repeat(starts, lengths) + within]

    def input_ids(self, i: int) -> np.ndarray:
        return self.field("input_ids", i)

    @property
    def fields(self) -> list[str]:
        return list(self.manifest["fields"])
