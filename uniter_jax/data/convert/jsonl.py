"""JSON Lines input for the text converters: one lazily parsed record per line.

Used by the formats published as one JSON object per line (SNLI-VE's
`snli_ve_<split>.jsonl`, NLVR2's `<split>.json`). Blank lines are skipped;
records are located as `line <n>`, counted from 1 over all lines, so the
number is the one an editor shows. A line that is not JSON, or not a JSON
object, fails as its own record (skippable with `skip_bad`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

from uniter_jax.data.convert.texts import Text, TextOptions, TextRecord, TextSummary
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import read_bytes
from uniter_jax.data.tokenizer import Tokenizer


def jsonl_records(
    path: str, parse: Callable[[dict[str, Any]], Text | list[Text]]
) -> list[TextRecord]:
    """One `TextRecord` per non-blank line of `path`; `parse` gets the line's object."""
    return [
        TextRecord(path, f"line {n}", functools.partial(_parse_line, line, parse))
        for n, line in enumerate(text_lines(path), start=1)
        if line.strip()
    ]


def text_lines(path: str) -> list[str]:
    """The lines of a UTF-8 file, blank ones kept so that line n is `lines[n - 1]`.

    Split on "\n" only: str.splitlines would also split on characters such as
    U+2028 that JSON allows unescaped inside a string (and captions may hold).
    A final newline ends the last line rather than starting an empty one; a
    "\r" before a newline stays, for the caller to strip where it matters.
    """
    try:
        content = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e})", file=path) from None
    lines = content.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def convert_jsonl(
    jsonl_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    parse: Callable[..., Text | list[Text]],
    options: TextOptions,
    *,
    task: str,
    source: dict[str, Any],
) -> TextSummary:
    """A JSON Lines file -> a text store: `parse(record, image_id_format=...)` per line."""
    path = os.fspath(jsonl_path)
    image_id_format = options.image_id_format
    records = jsonl_records(path, functools.partial(parse, image_id_format=image_id_format))
    return options.write(
        records,
        out_dir,
        task=task,
        tokenizer=Tokenizer(options.vocab),
        images=options.image_store(),
        source={"file": path, "image_id_format": image_id_format, **source},
    )


def _parse_line(
    line: str, parse: Callable[[dict[str, Any]], Text | list[Text]]
) -> Text | list[Text]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object, got {type(value).__name__}")
    return parse(value)


def string_field(record: dict[str, Any], key: str) -> str:
    """`record[key]`, which must be present and a string."""
    if key not in record:
        raise DataError(f"missing key {key!r}", field=key)
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", field=key)
    return value
