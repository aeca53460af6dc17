"""The expensive, parallel part: every record parsed, tokenized or decoded, and checked.

`CheckRecords` runs on the workers over `(order, item)` elements; what it
needs that is heavy (the tokenizer, the image store's ids, a URL map) is
built in `setup`, once per worker, never pickled with the elements. The
checks are the in-process converters' own (`checked_ids`, the parse
functions), and errors are located as `write_text_store` and `write_store`
locate them, so a bad record reads the same either way.
"""

from __future__ import annotations

import apache_beam as beam

from uniter_jax.data.beam.elements import Bad, Parsed
from uniter_jax.data.convert.common import Record
from uniter_jax.data.convert.texts import TextRecord, checked_ids
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.tokenizer import Tokenizer


class TextCheck:
    """A text record -> `(text id, (text id, image id, token ids, fields))`."""

    def __init__(self, vocab: str, images: str | None):
        self.vocab, self.images = vocab, images
        self._tokenizer: Tokenizer | None = None
        self._image_store: ImageStore | None = None

    def setup(self) -> None:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(self.vocab)
            self._image_store = ImageStore(self.images) if self.images else None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None, "_image_store": None}

    def __call__(self, record: TextRecord) -> tuple[str, tuple]:
        try:
            text = record.parse()
            if isinstance(text, list):
                raise TypeError(f"{record.where}: grouped texts are not converted by Beam")
            ids = checked_ids(text, record, self._tokenizer, self._image_store)
        except DataError as e:
            raise DataError(
                e.message, file=record.file, record=record.where, field=e.field
            ) from None
        return text.text_id, (text.text_id, text.image_id, list(ids), text.fields)


class RegionCheck:
    """A region record -> `(image id, ImageRegions)`."""

    def setup(self) -> None:
        pass

    def __call__(self, record: Record) -> tuple[str, object]:
        try:
            regions = record.parse()
        except DataError as e:
            # Errors in a file the record points to (a soft-label .npy) say which record.
            file = e.file or record.file
            where = record.where if file == record.file else f"{record.where} of {record.file}"
            raise DataError(e.message, file=file, record=where, field=e.field) from None
        return regions.image_id, regions


class CheckRecords(beam.DoFn):
    """`(order, item)` -> `Parsed` (main output), `Bad` ("bad") and counts ("counts").

    `records(order, item)` makes the item's records (None for a web caption
    whose URL the map lacks); `check(record)` parses and checks one. Counts
    are `(("records" | "unmapped", file index), 1)`.
    """

    def __init__(self, records, check: TextCheck | RegionCheck):
        self._records, self._check = records, check

    def setup(self) -> None:
        self._records.setup()
        self._check.setup()

    def process(self, element):
        for order, record in self._records(*element):
            file_index = order[0]
            if record is None:
                yield beam.pvalue.TaggedOutput("counts", (("unmapped", file_index), 1))
                continue
            yield beam.pvalue.TaggedOutput("counts", (("records", file_index), 1))
            try:
                key, value = self._check(record)
            except DataError as e:
                yield beam.pvalue.TaggedOutput("bad", Bad.of(order, e))
                continue
            yield Parsed(order, record.file, record.where, key, value)
