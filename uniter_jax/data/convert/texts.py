"""What the text converters share: tokenize, check, skip-or-raise, summarize.

A text converter turns its input into `TextRecord`s; `write_text_store`
tokenizes each (unless it arrives tokenized, as in the original UNITER text
db), checks it (empty text, unknown image, duplicate id) and writes the
store, never partially. Texts over `max_txt_len` tokens are cut and counted.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tqdm import tqdm

from uniter_jax.data.convert.common import Skipped, skipped_lines
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.store_sets import open_images
from uniter_jax.data.text_store import TextStoreWriter
from uniter_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Text:
    text_id: str
    image_id: str
    text: str
    fields: dict[str, Any]
    # Token ids when the input is already tokenized; `text` is then not used.
    input_ids: Sequence[int] | None = None


@dataclasses.dataclass(frozen=True)
class TextRecord:
    """One input record, parsed lazily so a bad one fails where it can be skipped."""

    file: str
    where: str  # e.g. "annotation 12"
    # One Text, or several (a group: an NLVR2 statement with each of its two
    # images, a VCR question with each candidate) that are all checked before
    # any is written, so a bad record never leaves half a group behind. The
    # Texts of a list get the fields `group` (the group's index among those
    # written: 0, 0, 1, 1, ...) and `slot` (the position in the list).
    parse: Callable[[], Text | list[Text]]


@dataclasses.dataclass
class TextSummary:
    out_dir: str
    texts: int = 0
    truncated: int = 0
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    # Texts left out, not as bad, but because their image is not held: the
    # web-caption converters' URLs missing from the user's URL -> image map.
    unmapped: int = 0

    def report(self, max_listed: int = 20) -> str:
        head = (
            f"wrote {self.texts} texts to {self.out_dir} "
            f"({self.truncated} cut to the maximum length)"
        )
        lines = [head]
        if self.unmapped:
            lines.append(f"left out {self.unmapped} texts whose URL is not in the image map")
        return "\n".join([*lines, *skipped_lines(self.skipped, max_listed)])


@dataclasses.dataclass(frozen=True)
class TextOptions:
    """What every text converter takes besides its input and its own settings.

    A converter's signature is `convert_<format>(inputs, out_dir, *, <its own>,
    **options)`, `options` being these fields as keywords: the command line's
    `--vocab`, `--images`, `--image-id-format`, `--max-txt-len`, `--skip-bad`,
    `--force` (`overwrite`) and `--no-progress`.
    """

    vocab: str  # WordPiece vocab.txt
    images: str | None = None  # our image store: a text whose image it lacks is bad
    image_id_format: str = "{id}"  # input image id -> store id, e.g. COCO_train2014_{id:012d}
    max_txt_len: int = 60  # tokens kept per text; longer texts are cut and counted
    skip_bad: bool = False  # skip and list bad records instead of failing
    overwrite: bool = False  # replace an existing store at `out_dir`
    progress: bool = True  # show a progress bar

    def image_store(self) -> ImageStore | None:
        """The store every text's image must be in; None (no `images`): not checked."""
        return open_images(self.images) if self.images else None

    def write(
        self,
        records: Sequence[TextRecord],
        out_dir: str | os.PathLike,
        *,
        task: str,
        tokenizer: Tokenizer,
        images: ImageStore | None,
        source: dict[str, Any],
        ragged: tuple[str, ...] = (),
    ) -> TextSummary:
        """`write_text_store` under these options."""
        return write_text_store(
            records,
            out_dir,
            task=task,
            tokenizer=tokenizer,
            max_txt_len=self.max_txt_len,
            images=images,
            ragged=ragged,
            source=source,
            skip_bad=self.skip_bad,
            overwrite=self.overwrite,
            progress=self.progress,
            total=len(records),
        )


def write_text_store(
    records: Iterable[TextRecord],
    out_dir: str | os.PathLike,
    *,
    task: str,
    tokenizer: Tokenizer | None,
    max_txt_len: int,
    images: ImageStore | None,
    ragged: tuple[str, ...] = (),
    source: dict[str, Any],
    skip_bad: bool,
    overwrite: bool,
    progress: bool,
    total: int | None = None,
    vocab: dict[str, Any] | None = None,
) -> TextSummary:
    """Tokenizes, checks and writes every record; see the module docstring.

    Without a `tokenizer` every record must carry `input_ids`, and `vocab`
    (`Vocab.to_json()`'s layout) describes the vocabulary they index.
    """
    if (tokenizer is None) == (vocab is None):
        raise ValueError("pass a tokenizer or, for pre-tokenized texts, a vocab")
    out_dir = os.fspath(out_dir)
    summary = TextSummary(out_dir)
    vocab = tokenizer.vocab.to_json() if tokenizer is not None else vocab
    writer = TextStoreWriter(
        out_dir,
        task=task,
        vocab=vocab,
        max_txt_len=max_txt_len,
        ragged=ragged,
        source=source,
        overwrite=overwrite,
    )
    groups = 0
    with writer, tqdm(total=total, unit="text", disable=not progress) as bar:
        for record in records:
            bar.update()
            try:
                parsed = record.parse()
                group = parsed if isinstance(parsed, list) else [parsed]
                checked = [checked_ids(text, record, tokenizer, images) for text in group]
                ids = [text.text_id for text in group]
                if len(set(ids)) < len(ids) or any(i in writer for i in ids):
                    raise DataError("duplicate text id", field="text_id")
                for slot, (text, ids) in enumerate(zip(group, checked, strict=True)):
                    fields = text.fields
                    if isinstance(parsed, list):  # numbered here, so skipped groups leave no gap
                        fields = {**fields, "group": groups, "slot": slot}
                    summary.truncated += writer.add(text.text_id, text.image_id, ids, **fields)
            except DataError as e:
                located = DataError(e.message, file=record.file, record=record.where, field=e.field)
                if not skip_bad:
                    raise located from None
                summary.skipped.append(
                    Skipped(located.file, located.record, located.field, located.message)
                )
                continue
            summary.texts += len(group)
            groups += isinstance(parsed, list)
        if not summary.texts:
            raise DataError("no good texts to write", file=out_dir)
    return summary


def checked_ids(
    text: Text, record: TextRecord, tokenizer: Tokenizer | None, images: ImageStore | None
) -> Sequence[int]:
    """The token ids of one parsed text, after the checks every converter shares.

    The text must be non-empty and its image in `images` (when given); its
    own `input_ids` are returned as they are, else `tokenizer` encodes it
    (untruncated; the writer truncates). Raises DataError (field `text` or
    `image_id`), or ValueError for an untokenized text without a tokenizer
    (`record` names it).
    """
    if text.input_ids is None and not text.text.strip():
        raise DataError("empty text", field="text")
    if images is not None and text.image_id not in images:
        raise DataError(f"image {text.image_id!r} is not in the image store", field="image_id")
    if text.input_ids is not None:
        return text.input_ids
    if tokenizer is None:
        raise ValueError(f"{record.where}: no tokenizer for an untokenized text")
    ids = tokenizer.encode(text.text)
    if not ids:
        raise DataError("the text has no tokens", field="text")
    return ids
