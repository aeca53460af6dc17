"""Web caption corpora named by image URL (Conceptual Captions, SBU) -> captions stores.

Their images are URLs that users download themselves and name as they
like, so an image id comes from the user's URL map: a TSV with no header,
one `url<TAB>image_id` a line (blank lines ignored; the same URL twice with
two ids is an error). The id then goes through `image_id_format`, as a string.

- Conceptual Captions (`Train_GCC-training.tsv`, `Validation_GCC-1.1.0-Validation.tsv`):
  no header, one `caption<TAB>url` a line; blank lines are ignored.
- SBU (`SBU_captioned_photo_dataset_urls.txt` and `..._captions.txt`): two
  files, line n of one the URL of line n of the other; their line counts
  must agree.

Written: task "captions" with no task fields, as the COCO caption converter
writes; the text id is the caption's line number, counted from 1 as an
editor shows it, so it is stable across runs and maps.

A line whose URL is not in the map (a dead link, an image not downloaded)
is the common case, not an error: it is left out and counted in the summary
(`TextSummary.unmapped`) and in the store's source. A malformed line (not
two fields, an empty caption or URL) is bad, named by file, line and field;
`skip_bad` skips it. A URL map error always raises.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from typing import Any

from uniter_jax.data.convert.coco_captions import format_image_id
from uniter_jax.data.convert.jsonl import text_lines
from uniter_jax.data.convert.texts import Text, TextOptions, TextRecord, TextSummary
from uniter_jax.data.errors import DataError
from uniter_jax.data.tokenizer import Tokenizer

# (file, line number, [caption, url] as read: a malformed line has other than two)
Row = tuple[str, int, list[str]]


def read_url_map(path: str | os.PathLike) -> dict[str, str]:
    """The user's `url<TAB>image_id` TSV as {url: image id}; any bad line raises."""
    path = os.fspath(path)
    mapping: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for n, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        where = f"line {n}"
        if len(fields) != 2:
            raise DataError(
                f"expected 2 tab-separated fields (url, image id), got {len(fields)}",
                file=path,
                record=where,
                field="image_id",
            )
        url, image_id = (field.strip() for field in fields)
        for name, value in (("url", url), ("image_id", image_id)):
            if not value:
                raise DataError(f"empty {name}", file=path, record=where, field=name)
        if mapping.get(url, image_id) != image_id:
            raise DataError(
                f"{url!r} maps to {image_id!r} here but to {mapping[url]!r} on line "
                f"{first_line[url]}",
                file=path,
                record=where,
                field="url",
            )
        mapping[url], first_line[url] = image_id, first_line.get(url, n)
    if not mapping:
        raise DataError("the URL map is empty", file=path)
    return mapping


def _records(
    rows: Iterable[Row], mapping: dict[str, str], image_id_format: str
) -> tuple[list[TextRecord], int]:
    """The records of the mapped rows, and how many well-formed rows were unmapped."""
    records, unmapped = [], 0
    for file, n, fields in rows:
        url = fields[1].strip() if len(fields) == 2 else ""
        if url and url not in mapping:
            unmapped += 1
            continue
        parse = functools.partial(parse_row, n, fields, mapping, image_id_format)
        records.append(TextRecord(file, f"line {n}", parse))
    return records, unmapped


def parse_row(n: int, fields: list[str], mapping: dict[str, str], image_id_format: str) -> Text:
    """The text of line `n`, `fields` = `[caption, url]` as split on tabs.

    Text id = `n`; image id = `mapping[url]` through `image_id_format`. The
    URL must be in `mapping` (the caller leaves unmapped rows out). Raises
    DataError, naming the field, for other than two fields or an empty
    caption or URL.
    """
    if len(fields) != 2:
        raise DataError(
            f"expected 2 tab-separated fields (caption, url), got {len(fields)}",
            field="url" if len(fields) < 2 else "caption",
        )
    caption, url = fields[0], fields[1].strip()
    if not url:
        raise DataError("empty url", field="url")
    if not caption.strip():
        raise DataError("empty caption", field="caption")
    return Text(str(n), format_image_id(image_id_format, mapping[url]), caption, {})


def _convert(
    rows: Iterable[Row],
    out_dir: str | os.PathLike,
    url_map: str | os.PathLike,
    options: dict[str, Any],
    source: dict[str, Any],
) -> TextSummary:
    opts = TextOptions(**options)
    url_map = os.fspath(url_map)
    records, unmapped = _records(rows, read_url_map(url_map), opts.image_id_format)
    if not records:
        raise DataError(f"none of the {unmapped} URLs is in the URL map", file=url_map)
    summary = opts.write(
        records,
        out_dir,
        task="captions",
        tokenizer=Tokenizer(opts.vocab),
        images=opts.image_store(),
        source={
            **source,
            "url_map": url_map,
            "unmapped": unmapped,
            "image_id_format": opts.image_id_format,
        },
    )
    summary.unmapped = unmapped
    return summary


def convert_cc(
    tsv_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    url_map: str | os.PathLike,
    **options: Any,
) -> TextSummary:
    """Conceptual Captions TSV -> a captions store; see the module docstring.

    `options`: the fields of `TextOptions`, as keywords (`vocab` required).
    """
    path = os.fspath(tsv_path)
    rows = [
        (path, n, line.rstrip("\r").split("\t"))
        for n, line in enumerate(text_lines(path), 1)
        if line.strip()
    ]
    return _convert(rows, out_dir, url_map, options, {"format": "cc", "file": path})


def convert_sbu(
    urls_path: str | os.PathLike,
    captions_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    url_map: str | os.PathLike,
    **options: Any,
) -> TextSummary:
    """SBU's line-aligned URL and caption files -> a captions store; see the module docstring.

    `options`: the fields of `TextOptions`, as keywords (`vocab` required).
    """
    urls_path, captions_path = os.fspath(urls_path), os.fspath(captions_path)
    urls, captions = text_lines(urls_path), text_lines(captions_path)
    if len(urls) != len(captions):
        raise DataError(
            f"{len(urls)} URL lines but {len(captions)} caption lines in {captions_path}; "
            "the two files must be line-aligned",
            file=urls_path,
        )
    # A record is located in the file its fault is in: an empty URL in the URL file.
    rows = [
        (captions_path if url.strip() else urls_path, n, [caption.rstrip("\r"), url])
        for n, (url, caption) in enumerate(zip(urls, captions, strict=True), 1)
    ]
    source = {"format": "sbu", "urls": urls_path, "captions": captions_path}
    return _convert(rows, out_dir, url_map, options, source)
