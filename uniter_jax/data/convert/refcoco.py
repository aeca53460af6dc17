"""RefCOCO / RefCOCO+ / RefCOCOg (the refer toolkit's layout) -> a refexp text store.

Read, from one dataset folder of the refer toolkit (lichengunc/refer):

- `refs(unc).p`, `refs(umd).p` or `refs(google).p`: a pickle (written by
  Python 2 or 3) of a list of refs, each `{"ref_id", "ann_id", "image_id",
  "split", "category_id", "sentences": [{"sent", "raw", "tokens", "sent_id"}],
  ...}`. It is read by an unpickler that refuses every global (so no code
  runs; only the names older protocols use to rebuild a set or bytes are
  mapped to our own harmless callables): only dicts, lists, tuples, sets,
  strings, bytes, numbers, booleans and None load, and bytes (Python 2 `str`)
  become UTF-8 (else Latin-1) text.
- `instances.json`: COCO style, `"images": [{"id", "width", "height"}]` and
  `"annotations": [{"id", "image_id", "bbox": [x, y, w, h]}]` in pixels.
- An image store of the same images (required): its regions are the
  candidates the model scores.

Written: one example per sentence of every ref in `split`, text id
`"<ref_id>-<sent_id>"`, image id `image_id_format` applied to the ref's
`image_id`, the text its `"sent"`; task `"refexp"`, fields:

- `gt_box` float32 `[N, 4]`: the referred annotation's box as `[x1, y1, x2, y2]`
  divided by the image's width and height (the units of the first four of the
  image store's 7-d box features).
- `target` int64 `[N]`: the index, in stored order (by confidence), of the
  image's region with the highest IoU with `gt_box` (the first on ties).
- `target_iou` float32 `[N]`: that IoU. With `boxes="gt"` (a store made from
  the ground-truth boxes) it must be at least 0.99; with `"detected"` any value
  is kept, and the metric later asks IoU >= 0.5 of the predicted box.
- `image_size` float32 `[N, 2]`: the image's width and height in pixels (the
  results file gives boxes in pixels, as the original's).

Each sentence is one input record (`"ref N (ref_id R) sentence K"`), so the
store has no `group`/`slot` fields: refs hold one to many sentences. A ref
whose annotation, image or box is bad fails in every sentence (with
`skip_bad`, all are skipped and listed); a bad sentence fails alone.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from uniter_jax.data.convert.coco_captions import format_image_id
from uniter_jax.data.convert.texts import Text, TextOptions, TextRecord, TextSummary
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import read_bytes, read_json
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.regions import box_iou
from uniter_jax.data.store_sets import open_images
from uniter_jax.data.tokenizer import Tokenizer

BOXES = ("detected", "gt")
# With boxes="gt" the store holds the annotation's own box; float32 rounding
# of the normalised coordinates is all that may separate them.
GT_MIN_IOU = 0.99


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    """How Python 3 pickles `bytes` below protocol 3: `_codecs.encode(str, "latin1")`."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({text!r}, {encoding!r})")
    return text.encode("latin1")


# Below protocol 4 a set is rebuilt by calling `set(list)` and bytes by
# `_codecs.encode`: plain data all the same, so these names map to our own
# harmless callables. Every other global is refused.
_PLAIN_GLOBALS = {
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_bytes,
}


class _PlainUnpickler(pickle.Unpickler):
    """Loads plain data only: any class or function in the pickle is refused."""

    def __init__(self, data: bytes, path: str):
        # Python 2 `str` arrives as bytes and is decoded afterwards, so UTF-8
        # sentences are not misread as Latin-1.
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        safe = _PLAIN_GLOBALS.get((module, name))
        if safe is None:
            raise DataError(
                f"refused global {module}.{name}: only plain data (dict, list, tuple, set, "
                "str, bytes, int, float, bool, None) is loaded",
                file=self.path,
            )
        return safe

    def persistent_load(self, pid: Any) -> Any:
        raise DataError("refused a persistent id: only plain data is loaded", file=self.path)


def _text(value: Any) -> Any:
    """`value` with every bytes (Python 2 `str`) decoded: UTF-8, else Latin-1."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_text(v) for v in value)
    if isinstance(value, set | frozenset):
        return type(value)(_text(v) for v in value)
    return value


def load_plain_pickle(path: str) -> Any:
    """A pickle of plain data, loaded without running anything; see the module docstring."""
    data = read_bytes(path)
    try:
        return _text(_PlainUnpickler(data, path).load())
    except DataError:
        raise
    except RecursionError:
        raise DataError("the pickle is nested too deeply", file=path) from None
    except Exception as e:  # a truncated or corrupt pickle fails in many ways
        raise DataError(f"not a readable pickle ({type(e).__name__}: {e})", file=path) from None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _index(instances_path: str) -> tuple[dict, dict]:
    """instances.json -> (annotations by id, images by id); malformed entries are left out."""
    data = read_json(instances_path)
    if not isinstance(data, dict):
        raise DataError(
            "expected a COCO object with 'images' and 'annotations'", file=instances_path
        )
    tables = []
    for key in ("annotations", "images"):
        items = data.get(key)
        if not isinstance(items, list):
            raise DataError(f"expected an object with an {key!r} list", file=instances_path)
        tables.append(
            {
                item["id"]: item
                for item in items
                if isinstance(item, dict) and isinstance(item.get("id"), int | str)
            }
        )
    return tables[0], tables[1]


def gt_box_of(ann: dict, image: dict, image_id: object) -> np.ndarray:
    """The annotation's `[x1, y1, x2, y2]` over the image's width and height, `[4]` float32."""
    for key in ("width", "height"):
        if not _number(image.get(key)) or image[key] <= 0:
            raise DataError(
                f"image {image_id!r} in instances.json has no positive {key!r} "
                f"(got {image.get(key)!r})",
                field=key,
            )
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list | tuple) and len(bbox) == 4 and all(map(_number, bbox))):
        raise DataError(
            f"annotation {ann['id']!r} needs a bbox of four finite numbers, got {bbox!r}",
            field="bbox",
        )
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        raise DataError(f"annotation {ann['id']!r} has a degenerate bbox {bbox!r}", field="bbox")
    width, height = image["width"], image["height"]
    return np.array([x / width, y / height, (x + w) / width, (y + h) / height], np.float32)


@dataclasses.dataclass(frozen=True)
class _Resolver:
    """What a ref is checked against: instances.json's tables and the image store."""

    anns: dict
    images_by_id: dict
    boxes_of: Callable[[str], np.ndarray]
    image_id_format: str
    boxes: str


def _ref_fields(ref: dict, resolve: _Resolver) -> tuple[str, dict[str, np.ndarray]]:
    """A ref's store image id and the fields all its sentences share."""
    missing = sorted({"ref_id", "ann_id", "image_id"} - set(ref))
    if missing:
        raise DataError(f"missing keys {missing}", field=missing[0])
    for key in ("ref_id", "ann_id", "image_id"):
        if not isinstance(ref[key], int | str):
            raise DataError(f"expected an int or string, got {ref[key]!r}", field=key)
    ann = resolve.anns.get(ref["ann_id"])
    if ann is None:
        raise DataError(f"unknown ann_id {ref['ann_id']!r}: not in instances.json", field="ann_id")
    if ann.get("image_id") != ref["image_id"]:
        raise DataError(
            f"annotation {ref['ann_id']!r} is of image {ann.get('image_id')!r}, "
            f"the ref of image {ref['image_id']!r}",
            field="image_id",
        )
    image = resolve.images_by_id.get(ref["image_id"])
    if image is None:
        raise DataError(f"image {ref['image_id']!r} is not in instances.json", field="image_id")
    gt_box = gt_box_of(ann, image, ref["image_id"])
    image_id = format_image_id(resolve.image_id_format, ref["image_id"])
    fields = target_fields(gt_box, resolve.boxes_of(image_id), image_id, resolve.boxes)
    return image_id, {**fields, "image_size": image_size(image)}


def image_size(image: dict) -> np.ndarray:
    """`[width, height]` float32 of a checked image entry: result files give
    boxes in pixels, as the original's."""
    return np.array([image["width"], image["height"]], np.float32)


def target_fields(
    gt_box: np.ndarray, regions: np.ndarray, image_id: str, boxes: str
) -> dict[str, np.ndarray]:
    """The refexp fields of a referred box: `gt_box`, the index of the stored
    region (`regions`, `[n, 4]` normalised) that overlaps it most, and that IoU;
    with `boxes="gt"` that IoU must show the store holds the annotated box."""
    iou = box_iou(gt_box, regions)
    target = int(np.argmax(iou))
    if boxes == "gt" and iou[target] < GT_MIN_IOU:
        raise DataError(
            f"no region of image {image_id!r} matches the annotation's box (best IoU "
            f"{iou[target]:.3f} < {GT_MIN_IOU}): the image store does not hold the "
            "ground-truth boxes",
            field="gt_box",
        )
    return {"gt_box": gt_box, "target": np.int64(target), "target_iou": np.float32(iou[target])}


def _parse_sentence(
    ref_fields: Callable[[], tuple[str, dict]], ref: dict, sentence: object, n: int
) -> Text:
    image_id, fields = ref_fields()
    if not isinstance(sentence, dict) or not isinstance(sentence.get("sent"), str):
        raise DataError(f"sentence {n} has no 'sent' string", field="sent")
    if not isinstance(sentence.get("sent_id"), int | str):
        raise DataError(f"sentence {n} has no int or string 'sent_id'", field="sent_id")
    text_id = f"{ref['ref_id']}-{sentence['sent_id']}"
    return Text(text_id, image_id, sentence["sent"], dict(fields))


def _bad_ref(message: str, field: str | None) -> Text:
    raise DataError(message, field=field)


def _ref_records(path: str, n: int, ref: object, resolve: _Resolver) -> list[TextRecord]:
    """One record per sentence (a bad ref fails in each); one failing record for a ref
    that has no sentences, is not a dict or has no split."""
    if not isinstance(ref, dict):
        message = f"expected a dict, got {type(ref).__name__}"
        return [TextRecord(path, f"ref {n}", functools.partial(_bad_ref, message, None))]
    where = f"ref {n}" if "ref_id" not in ref else f"ref {n} (ref_id {ref['ref_id']})"
    sentences = ref.get("sentences")
    if not isinstance(ref.get("split"), str):
        message = f"expected a split string, got {ref.get('split')!r}"
        return [TextRecord(path, where, functools.partial(_bad_ref, message, "split"))]
    if not isinstance(sentences, list) or not sentences:
        message = f"a ref needs a non-empty list of sentences, got {sentences!r}"
        return [TextRecord(path, where, functools.partial(_bad_ref, message, "sentences"))]
    # Checked and matched against the image's regions once, for the first sentence.
    ref_fields = functools.cache(functools.partial(_ref_fields, ref, resolve))
    return [
        TextRecord(
            path,
            f"{where} sentence {k}",
            functools.partial(_parse_sentence, ref_fields, ref, sentence, k),
        )
        for k, sentence in enumerate(sentences)
    ]


def boxes_of(store: ImageStore) -> Callable[[str], np.ndarray]:
    """image id -> its stored `[n, 4]` normalised boxes, read once per image (refs share images)."""

    @functools.lru_cache(maxsize=4096)
    def boxes(image_id: str) -> np.ndarray:
        if image_id not in store:
            raise DataError(f"image {image_id!r} is not in the image store", field="image_id")
        return np.array(store.get(image_id).boxes[:, :4])

    return boxes


def convert_refcoco(
    refs_path: str | os.PathLike,
    instances_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str,
    images: str,
    boxes: str = "detected",
    **options: Any,
) -> TextSummary:
    """One split of a refer-toolkit dataset -> a refexp text store; see the module docstring.

    `options`: the other fields of `TextOptions`, as keywords (`vocab` required).
    """
    opts = TextOptions(images=images, **options)
    if boxes not in BOXES:
        raise ValueError(f"boxes must be one of {BOXES}, got {boxes!r}")
    refs_path, instances_path = os.fspath(refs_path), os.fspath(instances_path)
    refs = load_plain_pickle(refs_path)
    if not isinstance(refs, list):
        raise DataError(f"expected a list of refs, got {type(refs).__name__}", file=refs_path)
    splits = [ref.get("split") if isinstance(ref, dict) else None for ref in refs]
    if split not in splits:
        present = sorted({s for s in splits if isinstance(s, str)})
        raise DataError(
            f"no refs in split {split!r}; the splits present: {present}", file=refs_path
        )
    anns, images_by_id = _index(instances_path)
    store = open_images(images)
    resolve = _Resolver(anns, images_by_id, boxes_of(store), opts.image_id_format, boxes)
    records = [
        record
        for n, (ref, ref_split) in enumerate(zip(refs, splits, strict=True))
        # A ref that is not a dict, or has no split string, is bad in every split.
        if not isinstance(ref_split, str) or ref_split == split
        for record in _ref_records(refs_path, n, ref, resolve)
    ]
    source = {
        "format": "refcoco",
        "split": split,
        "boxes": boxes,
        "refs": refs_path,
        "instances": instances_path,
    }
    return write_refexp_store(records, out_dir, opts, store, source)


def write_refexp_store(
    records: list[TextRecord],
    out_dir: str | os.PathLike,
    opts: TextOptions,
    store: ImageStore,
    source: dict[str, Any],
) -> TextSummary:
    """The refexp store of `records`, whose targets index the regions of `store`.

    `source` says what was read; the image store and `image_id_format` are added.
    """
    return opts.write(
        records,
        out_dir,
        task="refexp",
        tokenizer=Tokenizer(opts.vocab),
        images=store,
        source={
            **source,
            "images": os.fspath(opts.images),
            "image_id_format": opts.image_id_format,
        },
    )
