"""Writing a benchmark's markdown table into its marked section of a file."""

from __future__ import annotations

import os
import pathlib


def write_section(path: str, name: str, table: str) -> None:
    """Replaces the text between `<!-- NAME: start -->` and `<!-- NAME: end -->`
    in `path` with `table` (appends the marked block when absent)."""
    start, end = f"<!-- {name}: start -->", f"<!-- {name}: end -->"
    block = f"{start}\n{table}\n{end}"
    text = pathlib.Path(path).read_text() if os.path.exists(path) else ""
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    pathlib.Path(path).write_text(text)
