"""Each format's records, as the in-process converters list them, built on the workers.

Two kinds of functions, both run on workers:
- loaders, for `ReadList`: read a whole input and return its records in
  input order (the COCO and VG JSON, the SBU file pair, an .npz folder);
- record makers, for `CheckRecords`: turn one item read in a byte range
  (a TSV line) or one row into a record; `setup()` loads what they need
  once per worker (the URL map of the web captions).

A record is the converters' own `TextRecord` or `Record`, parsed by the
converters' own functions, so checks and messages are theirs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

from uniter_jax.data.beam.elements import AFTER_RECORDS, Bad, Order, count_total
from uniter_jax.data.convert import butd_tsv, coco_captions, npz_dir, tsv, vg_regions, web_captions
from uniter_jax.data.convert.common import Record
from uniter_jax.data.convert.jsonl import text_lines
from uniter_jax.data.convert.texts import TextRecord
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import read_json

# ---------------------------------------------------------------- loaders


def coco_records(path: str, image_id_format: str) -> list[TextRecord]:
    """One record per annotation of a COCO caption JSON."""
    return coco_captions.records(path, image_id_format)


def vg_records(path: str, image_id_format: str) -> list[TextRecord]:
    """One record per region description (or per malformed image) of VG's JSON."""
    images = read_json(path)
    if not isinstance(images, list):
        raise DataError("expected a JSON list of images", file=path)
    return vg_regions.records(path, images, image_id_format)


def sbu_rows(urls_path: str, captions_path: str) -> list[web_captions.Row]:
    """SBU's two line-aligned files as `(file, line number, [caption, url])` rows."""
    urls, captions = text_lines(urls_path), text_lines(captions_path)
    if len(urls) != len(captions):
        raise DataError(
            f"{len(urls)} URL lines but {len(captions)} caption lines in {captions_path}; "
            "the two files must be line-aligned",
            file=urls_path,
        )
    # A record is located in the file its fault is in: an empty URL in the URL file.
    return [
        (captions_path if url.strip() else urls_path, n, [caption.rstrip("\r"), url])
        for n, (url, caption) in enumerate(zip(urls, captions, strict=True), 1)
    ]


def npz_paths(directory: str) -> list[str]:
    """The `.npz` files directly in `directory`, in name order (as the converter lists them)."""
    names = sorted(name for name in os.listdir(directory) if name.endswith(".npz"))
    return [os.path.join(directory, name) for name in names]


def npz_records(directory: str, parse: functools.partial) -> list[Record]:
    """One record per `.npz` file of `directory`, in name order."""
    paths = npz_paths(directory)
    return [Record(path, npz_dir.file_stem(path), functools.partial(parse, path)) for path in paths]


# ---------------------------------------------------------------- record makers


class AsIs:
    """Items that are records already (from the loaders)."""

    def setup(self) -> None:
        pass

    def __call__(self, order: Order, item: object) -> Iterator[tuple[Order, object]]:
        yield order, item


class WebRecords:
    """Web-caption rows -> records; `None` for a URL the map lacks.

    `lines`: the items are Conceptual Captions lines `(path, n, text)` (blank
    ones make no record), else SBU rows. The URL map (millions of entries for
    CC) is read once per worker, in `setup`, and never pickled.
    """

    def __init__(self, url_map: str, image_id_format: str, *, lines: bool):
        self.url_map, self.image_id_format, self.lines = url_map, image_id_format, lines
        self._mapping: dict[str, str] | None = None

    def setup(self) -> None:
        if self._mapping is None:
            self._mapping = web_captions.read_url_map(self.url_map)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mapping": None}

    def __call__(self, order: Order, item: tuple) -> Iterator[tuple[Order, TextRecord | None]]:
        if self.lines:
            path, n, text = item
            if not text.strip():
                return
            item = (path, n, text.rstrip("\r").split("\t"))
        file, n, fields = item
        url = fields[1].strip() if len(fields) == 2 else ""
        if url and url not in self._mapping:
            yield order, None
            return
        parse = functools.partial(
            web_captions.parse_row, n, fields, self._mapping, self.image_id_format
        )
        yield order, TextRecord(file, f"line {n}", parse)


class ButdRecords:
    """BUTD TSV lines -> records (blank lines are none); `parse` is the converter's."""

    def __init__(self, parse: functools.partial):
        self.parse = parse

    def setup(self) -> None:
        pass

    def __call__(
        self, order: Order, item: tuple[str, int, bytes]
    ) -> Iterator[tuple[Order, Record]]:
        path, number, line = item
        line = line.rstrip(b"\r\n")
        if line:
            split = functools.partial(tsv.split_columns, line, butd_tsv.COLUMNS, self.parse)
            yield order, Record(path, f"line {number}", split)


Records = AsIs | WebRecords | ButdRecords


# ---------------------------------------------------------------- input-level errors
# Found from the counts of all records (see `elements.count_total`).


def no_input_errors(counts: dict) -> list[Bad]:
    del counts
    return []


def empty_files(paths: list[str], counts: dict) -> list[Bad]:
    """BUTD: a TSV file without records, placed where the in-process read meets it."""
    return [
        Bad.of((index, -1), DataError("empty: no records", file=path), fatal=True)
        for index, path in enumerate(paths)
        if not counts.get(("records", index))
    ]


def none_mapped(url_map: str, counts: dict) -> list[Bad]:
    """Web captions: no row whose URL the map holds."""
    if count_total(counts, "records"):
        return []
    unmapped = count_total(counts, "unmapped")
    error = DataError(f"none of the {unmapped} URLs is in the URL map", file=url_map)
    return [Bad.of(AFTER_RECORDS, error, fatal=True)]
