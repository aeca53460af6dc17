"""NLVR2 JSON Lines (`train.json`, `dev.json`, `test1.json`) -> a grouped text store.

Read: one JSON object per line (the files are JSON Lines despite the `.json`
name) with `"identifier"` (`"<split>-<set>-<pair>-<sentence>"`, e.g.
`"train-10171-0-0"`), `"sentence"` (the statement) and `"label"` (`"True"` or
`"False"`: whether the statement holds for the pair of images); the other keys
(`left_url`, `right_url`, `writer`, `synset`, `query`, validations) are not
read. The two images of a statement are the identifier without its last
`-<sentence>` part plus `-img0` (left) and `-img1` (right), e.g.
`"train-10171-0-img0"`, the image file names without extension; each goes
through `image_id_format`.

Written, task `nlvr2`, a grouped store of group size 2: for N statements, 2N
examples, the statement with its left image, then with its right image.
  text_id   [2N]  `<identifier>#0` and `<identifier>#1`
  image_id  [2N]  the `-img0` and `-img1` image
  input_ids       the statement's tokens, the same in both rows
  label     int64 [2N]  1 if the statement is true of the pair, else 0; the
                        same in both rows
  group     int64 [2N]  the statement's index among those written: 0, 0, 1, 1, ...
  slot      int64 [2N]  0 for the left image, 1 for the right
A bad statement (wrong label, either image missing from `--images`, ...) is
dropped with both its rows, so the store never holds half a group.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from uniter_jax.data.convert.coco_captions import format_image_id
from uniter_jax.data.convert.jsonl import convert_jsonl, string_field
from uniter_jax.data.convert.texts import Text, TextOptions, TextSummary
from uniter_jax.data.errors import DataError

GROUP_SIZE = 2
# `<split>-<set>-<pair>-<sentence>`: the images are named after all but the last part.
_IDENTIFIER = re.compile(r"(.+)-[0-9]+")


def image_names(identifier: str) -> tuple[str, str]:
    """The left and right image names of a statement, `<split>-<set>-<pair>-img0/1`."""
    match = _IDENTIFIER.fullmatch(identifier)
    if match is None:
        raise DataError(
            f"expected an identifier like 'train-10171-0-0', got {identifier!r}",
            field="identifier",
        )
    return f"{match[1]}-img0", f"{match[1]}-img1"


def truth_label(record: dict[str, Any]) -> int:
    """1 for the label `"True"`, 0 for `"False"`."""
    value = record.get("label")
    if value not in ("True", "False"):
        found = "missing" if "label" not in record else f"{value!r}"
        raise DataError(f"label {found}, expected 'True' or 'False'", field="label")
    return int(value == "True")


def _parse(record: dict[str, Any], image_id_format: str) -> list[Text]:
    identifier = string_field(record, "identifier")
    names = image_names(identifier)
    sentence = string_field(record, "sentence")
    label = np.int64(truth_label(record))
    # `group` and `slot` are numbered by write_text_store, over the groups it writes.
    return [
        Text(
            f"{identifier}#{slot}",
            format_image_id(image_id_format, name),
            sentence,
            {"label": label},
        )
        for slot, name in enumerate(names)
    ]


def convert_nlvr2(
    jsonl_path: str | os.PathLike, out_dir: str | os.PathLike, **options: Any
) -> TextSummary:
    """NLVR2 JSON Lines -> a grouped text store (see the module docstring).

    `options`: the fields of `TextOptions`, as keywords (`vocab` required).
    """
    source = {"format": "nlvr2", "group_size": GROUP_SIZE}
    return convert_jsonl(
        jsonl_path, out_dir, _parse, TextOptions(**options), task="nlvr2", source=source
    )
