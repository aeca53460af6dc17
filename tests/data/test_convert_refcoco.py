"""RefCOCO (refer toolkit layout) -> refexp text store, against IoUs computed here.

The refs pickle is written as the toolkit ships it (a list of ref dicts), with
Python 3's pickle at several protocols and, for Python 2's layout, opcode by
opcode (py2 `str` is a byte string). Targets are recomputed in pixels from the
boxes the image store was built from, sorted by confidence here.
"""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
from stores import write_image_store

from uniter_jax.data.convert.__main__ import main
from uniter_jax.data.convert.refcoco import convert_refcoco, load_plain_pickle
from uniter_jax.data.convert.refexp_json import convert_refexp_json
from uniter_jax.data.errors import DataError
from uniter_jax.data.regions import box_features, make_regions
from uniter_jax.data.text_store import TextStore
from uniter_jax.downstream import refexp

SIZES = {1: (640, 480), 2: (500, 375), 3: (300, 300), 4: (400, 300)}
# ann id -> (image id, [x, y, w, h] pixels)
ANNS = {
    11: (1, [100.0, 50.0, 200.0, 150.0]),
    12: (4, [200.5, 150.0, 120.0, 80.25]),  # the only ref on its image
    21: (2, [10.0, 20.0, 100.0, 200.0]),
    22: (2, [250.0, 100.0, 200.0, 150.0]),
    31: (3, [0.0, 0.0, 300.0, 300.0]),
}
REFS = [  # (ref_id, ann_id, split, sentences)
    (1, 11, "train", ["the man on the left", "guy in red"]),
    (2, 12, "train", ["small dog on the right"]),
    (3, 21, "train", ["left horse", "brown horse", "horse eating"]),
    (4, 22, "val", ["right horse"]),
    (5, 31, "testA", ["whole picture"]),
]
WORDS = [s for *_, sents in REFS for s in sents]
VOCAB_TEXTS = [*WORDS, "café", "é"]  # the `vocab` fixture's corpus (conftest.py)


def refs(rows=REFS):
    out, sent_id = [], 100
    for ref_id, ann_id, split, sents in rows:
        sentences = []
        for s in sents:
            sentences.append({"sent": s, "raw": s.title(), "tokens": s.split(), "sent_id": sent_id})
            sent_id += 1
        out.append(
            {
                "ref_id": ref_id,
                "ann_id": ann_id,
                "image_id": ANNS[ann_id][0],
                "split": split,
                "category_id": 1,
                "file_name": f"COCO_train2014_{ANNS[ann_id][0]:012d}_{ann_id}.jpg",
                "sentences": sentences,
                "sent_ids": [s["sent_id"] for s in sentences],
            }
        )
    return out


def instances():
    return {
        "images": [
            {"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"}
            for i, (w, h) in SIZES.items()
        ],
        "annotations": [
            {"id": a, "image_id": i, "bbox": bbox, "category_id": 1, "area": bbox[2] * bbox[3]}
            for a, (i, bbox) in ANNS.items()
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }


def write(tmp_path, ref_list, inst=None, protocol=2):
    refs_path = tmp_path / "refs(unc).p"
    with open(refs_path, "wb") as f:
        pickle.dump(ref_list, f, protocol=protocol)
    inst_path = tmp_path / "instances.json"
    inst_path.write_text(json.dumps(instances() if inst is None else inst))
    return str(refs_path), str(inst_path)


def pixel_boxes(kind, seed=0):
    """image id -> ([n, 4] pixel xyxy boxes, [n] confidences), unsorted."""
    rng = np.random.default_rng(seed)
    out = {}
    for image_id, (w, h) in SIZES.items():
        if kind == "gt":
            boxes = [[x, y, x + bw, y + bh] for i, (x, y, bw, bh) in ANNS.values() if i == image_id]
            boxes.append([1.0, 2.0, 30.0, 40.0])  # one box that is no annotation
            boxes = np.array(boxes)
        else:
            x1 = rng.uniform(0, w * 0.6, 6)
            y1 = rng.uniform(0, h * 0.6, 6)
            boxes = np.stack(
                [x1, y1, x1 + rng.uniform(10, w * 0.4, 6), y1 + rng.uniform(10, h * 0.4, 6)], 1
            )
            if image_id == 2:  # near misses of its annotations: targets with a high IoU
                near = [[x + 6, y - 4, x + bw, y + bh + 3] for i, (x, y, bw, bh) in ANNS.values()]
                near = [box for box, (i, _) in zip(near, ANNS.values(), strict=True) if i == 2]
                boxes = np.concatenate([boxes, near])
        out[image_id] = (boxes, rng.permutation(len(boxes)).astype(np.float32) / 10)
    return out


def box_store(path, boxes_by_image, fmt="{id}"):
    """A store of regions at pixel boxes `{image id: (xyxy, conf)}`, features all ones."""
    images = (
        make_regions(
            fmt.format(id=image_id),
            np.ones((len(xyxy), 4)),
            box_features(xyxy, *SIZES[image_id]),
            conf,
        )
        for image_id, (xyxy, conf) in boxes_by_image.items()
    )
    return write_image_store(path, images)


def iou_pixels(a, b):
    """IoU of two [x1, y1, x2, y2] boxes, written out by hand."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def expected(ref, boxes_by_image):
    """(gt_box normalised, target, IoU), the target among regions sorted by confidence."""
    image_id, (x, y, w, h) = ANNS[ref["ann_id"]]
    width, height = SIZES[image_id]
    gt = np.array([x / width, y / height, (x + w) / width, (y + h) / height])
    xyxy, conf = boxes_by_image[image_id]
    ordered = xyxy[np.argsort(-conf, kind="stable")]
    ious = [iou_pixels([x, y, x + w, y + h], b) for b in ordered]
    return gt, int(np.argmax(ious)), max(ious)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_detected_boxes_round_trip(tmp_path, vocab, reference, protocol):
    ref_list = refs()
    refs_path, inst_path = write(tmp_path, ref_list, protocol=protocol)
    boxes = pixel_boxes("detected")
    images = box_store(tmp_path / "img", boxes, fmt="COCO_{id:06d}")
    summary = convert_refcoco(
        refs_path,
        inst_path,
        tmp_path / "out",
        split="train",
        vocab=vocab,
        images=images,
        image_id_format="COCO_{id:06d}",
        progress=False,
    )
    assert summary.texts == 6 and not summary.skipped
    store = TextStore(str(tmp_path / "out"))
    assert store.manifest["task"] == "refexp"
    assert sorted(store.fields) == ["gt_box", "image_size", "target", "target_iou"]
    sizes = [
        SIZES[ANNS[r["ann_id"]][0]] for r in refs() if r["split"] == "train" for _ in r["sentences"]
    ]
    np.testing.assert_array_equal(store.arrays["image_size"], sizes)
    source = store.manifest["source"]
    assert source["format"] == "refcoco" and source["split"] == "train"
    assert source["boxes"] == "detected"
    assert (source["refs"], source["instances"], source["images"]) == (
        refs_path,
        inst_path,
        images,
    )
    assert store.arrays["gt_box"].dtype == np.float32 and store.arrays["gt_box"].shape == (6, 4)
    assert store.arrays["target"].dtype == np.int64 and store.arrays["target"].shape == (6,)
    assert store.arrays["target_iou"].dtype == np.float32
    i = 0
    for ref in ref_list[:3]:
        gt, target, iou = expected(ref, boxes)
        for sentence in ref["sentences"]:
            assert store.text_ids[i] == f"{ref['ref_id']}-{sentence['sent_id']}"
            assert store.image_ids[i] == f"COCO_{ref['image_id']:06d}"
            want = reference.encode(sentence["sent"], add_special_tokens=False)
            np.testing.assert_array_equal(store.input_ids(i), want)
            np.testing.assert_allclose(store.field("gt_box", i), gt, rtol=1e-6)
            assert store.field("target", i) == target
            assert store.field("target_iou", i) == pytest.approx(iou, abs=1e-5)
            i += 1
    ious = store.arrays["target_iou"]
    assert 0 < ious.min() < 0.5 and 0.8 < ious.max() < 1  # random boxes and near misses


def test_gt_boxes_find_the_annotation(tmp_path, vocab):
    ref_list = refs()
    refs_path, inst_path = write(tmp_path, ref_list)
    boxes = pixel_boxes("gt")
    images = box_store(tmp_path / "img", boxes)
    for split, rows in (("train", ref_list[:3]), ("val", ref_list[3:4]), ("testA", ref_list[4:])):
        out = tmp_path / split
        convert_refcoco(
            refs_path,
            inst_path,
            out,
            split=split,
            vocab=vocab,
            images=images,
            boxes="gt",
            progress=False,
        )
        store = TextStore(str(out))
        assert store.manifest["source"]["boxes"] == "gt"
        i = 0
        for ref in rows:
            image_id, (x, y, w, h) = ANNS[ref["ann_id"]]
            xyxy, conf = boxes[image_id]
            ordered = xyxy[np.argsort(-conf, kind="stable")]
            position = int(np.flatnonzero((ordered == [x, y, x + w, y + h]).all(1))[0])
            for _ in ref["sentences"]:
                assert store.field("target", i) == position
                assert store.field("target_iou", i) >= 0.99
                i += 1
        assert i == len(store)


def test_gt_boxes_refuse_a_store_of_detections(tmp_path, vocab):
    refs_path, inst_path = write(tmp_path, refs())
    images = box_store(tmp_path / "img", pixel_boxes("detected"))
    with pytest.raises(DataError, match="does not hold the ground-truth boxes") as err:
        convert_refcoco(
            refs_path,
            inst_path,
            tmp_path / "o",
            split="train",
            vocab=vocab,
            images=images,
            boxes="gt",
            progress=False,
        )
    assert err.value.field == "gt_box"
    assert not (tmp_path / "o").exists()


def _py2(value) -> bytes:
    """Python 2's protocol-2 opcodes for plain data; `bytes` plays py2 `str`."""
    if isinstance(value, dict):
        body = b"".join(_py2(k) + _py2(v) for k, v in value.items())
        return b"}(" + body + b"u"  # EMPTY_DICT, MARK, ..., SETITEMS
    if isinstance(value, list):
        return b"](" + b"".join(_py2(v) for v in value) + b"e"  # EMPTY_LIST, MARK, APPENDS
    if isinstance(value, bytes):
        return b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
    if isinstance(value, str):
        data = value.encode("utf-8")
        return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)  # BININT
    raise TypeError(value)


def _as_py2_str(value):
    if isinstance(value, dict):
        return {_as_py2_str(k): _as_py2_str(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_py2_str(v) for v in value]
    return value.encode("utf-8") if isinstance(value, str) else value


def test_python2_pickle_with_byte_strings(tmp_path, vocab, reference):
    ref_list = refs([(1, 11, "train", ["café on the left", "the man"])])
    py2 = _as_py2_str(ref_list)
    py2[0][b"sentences"][1][b"sent"] = "é".encode("latin1")  # not UTF-8: read as Latin-1
    py2[0][b"sentences"][1][b"raw"] = "The man"  # py2 unicode
    refs_path, inst_path = write(tmp_path, [])
    with open(refs_path, "wb") as f:
        f.write(b"\x80\x02" + _py2(py2) + b".")
    loaded = load_plain_pickle(refs_path)
    assert loaded[0]["sentences"][0]["sent"] == "café on the left"
    assert loaded[0]["sentences"][1]["sent"] == "é"
    assert all(isinstance(k, str) for k in loaded[0])
    images = box_store(tmp_path / "img", pixel_boxes("gt"))
    convert_refcoco(
        refs_path,
        inst_path,
        tmp_path / "o",
        split="train",
        vocab=vocab,
        images=images,
        boxes="gt",
        progress=False,
    )
    store = TextStore(str(tmp_path / "o"))
    assert list(store.text_ids) == ["1-100", "1-101"]
    want = reference.encode("café on the left", add_special_tokens=False)
    np.testing.assert_array_equal(store.input_ids(0), want)


def test_plain_containers_load_at_every_protocol(tmp_path):
    value = {"a": {1, 2}, "b": (1.5, None, True), "c": frozenset({"x"}), "d": b"bytes", 7: [-1]}
    want = {**value, "d": "bytes"}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        assert load_plain_pickle(str(path)) == want


class Payload:
    """Unpickling this would run a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Plain:
    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickles_with_globals_are_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "ran"
    cases = {  # name -> (value, the global refused first)
        "system": ([{"ref_id": 1, "x": Payload(marker)}], "system"),
        # Below protocol 2 an instance is rebuilt by copy_reg._reconstructor.
        "Plain": ([Plain()], "Plain" if protocol >= 2 else "_reconstructor"),
        "eval": ([eval], "eval"),
        "getattr": ([getattr], "getattr"),
    }
    for name, (value, refused) in cases.items():
        path = tmp_path / f"{name}.p"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        with pytest.raises(DataError, match=rf"refused global [\w.]+\.{refused}:") as err:
            load_plain_pickle(str(path))
        assert err.value.file == str(path)
    assert not marker.exists()
    # _codecs.encode is taken only for how protocol 2 stores bytes: str in Latin-1.
    path = tmp_path / "codec.p"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(DataError, match=r"refused _codecs\.encode"):
        load_plain_pickle(str(path))


def test_refused_pickle_leaves_no_store(tmp_path, vocab):
    marker = tmp_path / "ran"
    refs_path, inst_path = write(tmp_path, [Payload(marker)])
    images = box_store(tmp_path / "img", pixel_boxes("gt"))
    with pytest.raises(DataError, match="refused global") as err:
        convert_refcoco(
            refs_path, inst_path, tmp_path / "o", split="train", vocab=vocab, images=images
        )
    assert "refs(unc).p" in str(err.value)
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_unreadable_files(tmp_path, vocab):
    refs_path, inst_path = write(tmp_path, refs())
    images = box_store(tmp_path / "img", pixel_boxes("gt"))

    def convert(refs_path=refs_path, inst_path=inst_path):
        convert_refcoco(
            refs_path,
            inst_path,
            tmp_path / "o",
            split="train",
            vocab=vocab,
            images=images,
            progress=False,
        )

    good = (tmp_path / "refs(unc).p").read_bytes()
    (tmp_path / "cut.p").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="not a readable pickle"):
        convert(str(tmp_path / "cut.p"))
    (tmp_path / "dict.p").write_bytes(pickle.dumps({"refs": []}))
    with pytest.raises(DataError, match="expected a list of refs"):
        convert(str(tmp_path / "dict.p"))
    with pytest.raises(DataError, match="cannot read"):
        convert(str(tmp_path / "missing.p"))
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(DataError, match="expected a COCO object"):
        convert(inst_path=str(tmp_path / "bad.json"))
    (tmp_path / "bad.json").write_text('{"images": [], "annotations": {}}')
    with pytest.raises(DataError, match="'annotations' list"):
        convert(inst_path=str(tmp_path / "bad.json"))
    assert not (tmp_path / "o").exists()


def test_unknown_split_lists_the_splits_present(tmp_path, vocab):
    refs_path, inst_path = write(tmp_path, refs())
    images = box_store(tmp_path / "img", pixel_boxes("gt"))
    with pytest.raises(DataError) as err:
        convert_refcoco(
            refs_path, inst_path, tmp_path / "o", split="testB", vocab=vocab, images=images
        )
    assert "no refs in split 'testB'" in str(err.value)
    assert "['testA', 'train', 'val']" in str(err.value)
    assert err.value.file == refs_path


def _set(ref, **values):
    ref.update(values)


BAD = {  # name -> (change the second train ref or the instances, field, message)
    "unknown ann": (lambda r, i: _set(r, ann_id=999), "ann_id", "unknown ann_id 999"),
    "ann of another image": (lambda r, i: _set(r, ann_id=21), "image_id", "is of image 2"),
    "ann with no image": (lambda r, i: i["annotations"][1].pop("image_id"), "image_id", "None"),
    "image not in instances": (
        lambda r, i: i.update(images=[im for im in i["images"] if im["id"] != 4]),
        "image_id",
        "image 4 is not in instances.json",
    ),
    "no width": (lambda r, i: i["images"][3].pop("width"), "width", "no positive 'width'"),
    "zero height": (lambda r, i: i["images"][3].update(height=0), "height", "'height'"),
    "degenerate box": (
        lambda r, i: i["annotations"][1].update(bbox=[200, 150, 0, 80]),
        "bbox",
        "degenerate bbox",
    ),
    "short box": (lambda r, i: i["annotations"][1].update(bbox=[1, 2, 3]), "bbox", "four"),
    "no sentences": (lambda r, i: _set(r, sentences=[]), "sentences", "non-empty list"),
    "sentences missing": (lambda r, i: r.pop("sentences"), "sentences", "non-empty list"),
    "sentence without sent": (
        lambda r, i: _set(r, sentences=[{"raw": "dog", "sent_id": 5}]),
        "sent",
        "no 'sent' string",
    ),
    "sent not a string": (
        lambda r, i: _set(r, sentences=[{"sent": 5, "sent_id": 5}]),
        "sent",
        "no 'sent' string",
    ),
    "empty sent": (lambda r, i: _set(r, sentences=[{"sent": "  ", "sent_id": 5}]), "text", "empty"),
    "no sent_id": (lambda r, i: _set(r, sentences=[{"sent": "dog"}]), "sent_id", "'sent_id'"),
    "unhashable ann_id": (lambda r, i: _set(r, ann_id=[12]), "ann_id", "an int or string"),
    "no split": (lambda r, i: r.pop("split"), "split", "split string"),
    "image not in store": (
        lambda r, i: _set(r, image_id=3, ann_id=31),
        "image_id",
        "not in the image store",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_refs_name_file_record_and_field(tmp_path, vocab, name):
    change, field, message = BAD[name]
    ref_list, inst = refs(), instances()
    change(ref_list[1], inst)
    refs_path, inst_path = write(tmp_path, ref_list, inst)
    boxes = pixel_boxes("gt")
    boxes.pop(3)  # image 3 stays out of the store
    images = box_store(tmp_path / "img", boxes)

    def convert(**kw):
        return convert_refcoco(
            refs_path,
            inst_path,
            tmp_path / "out",
            split="train",
            vocab=vocab,
            images=images,
            progress=False,
            **kw,
        )

    with pytest.raises(DataError) as err:
        convert()
    assert err.value.field == field and message in str(err.value)
    assert err.value.file == refs_path
    whole_ref = field in ("sentences", "split")  # one record for the ref, not per sentence
    assert err.value.record == "ref 1 (ref_id 2)" + ("" if whole_ref else " sentence 0")
    assert not (tmp_path / "out").exists()
    summary = convert(skip_bad=True)
    assert summary.texts == 5 and [s.field for s in summary.skipped] == [field]
    assert list(TextStore(str(tmp_path / "out")).text_ids) == [
        "1-100",
        "1-101",
        "3-103",
        "3-104",
        "3-105",
    ]


def test_a_ref_that_is_not_a_dict(tmp_path, vocab):
    refs_path, inst_path = write(tmp_path, [*refs(), ["not", "a", "ref"]])
    images = box_store(tmp_path / "img", pixel_boxes("gt"))
    with pytest.raises(DataError, match="expected a dict, got list") as err:
        convert_refcoco(
            refs_path,
            inst_path,
            tmp_path / "o",
            split="val",
            vocab=vocab,
            images=images,
            progress=False,
        )
    assert err.value.record == "ref 5"


def test_a_bad_ref_fails_in_each_sentence_a_bad_sentence_alone(tmp_path, vocab):
    ref_list = refs()
    ref_list[2]["ann_id"] = 999  # ref_id 3, three sentences
    ref_list[0]["sentences"][1]["sent"] = None  # ref_id 1, its second sentence
    refs_path, inst_path = write(tmp_path, ref_list)
    images = box_store(tmp_path / "img", pixel_boxes("gt"))
    summary = convert_refcoco(
        refs_path,
        inst_path,
        tmp_path / "o",
        split="train",
        vocab=vocab,
        images=images,
        skip_bad=True,
        progress=False,
    )
    assert [(s.record, s.field) for s in summary.skipped] == [
        ("ref 0 (ref_id 1) sentence 1", "sent"),
        ("ref 2 (ref_id 3) sentence 0", "ann_id"),
        ("ref 2 (ref_id 3) sentence 1", "ann_id"),
        ("ref 2 (ref_id 3) sentence 2", "ann_id"),
    ]
    store = TextStore(str(tmp_path / "o"))
    assert list(store.text_ids) == ["1-100", "2-102"]
    assert "group" not in store.fields and "slot" not in store.fields


def test_duplicate_sentence_ids_are_refused(tmp_path, vocab):
    ref_list = refs()
    ref_list[0]["sentences"][1]["sent_id"] = 100  # as its first sentence: text id 1-100 twice
    refs_path, inst_path = write(tmp_path, ref_list)
    images = box_store(tmp_path / "img", pixel_boxes("gt"))
    with pytest.raises(DataError, match="duplicate text id") as err:
        convert_refcoco(
            refs_path,
            inst_path,
            tmp_path / "o",
            split="train",
            vocab=vocab,
            images=images,
            progress=False,
        )
    assert err.value.record == "ref 0 (ref_id 1) sentence 1"


def test_cli(tmp_path, vocab, capsys):
    refs_path, inst_path = write(tmp_path, refs())
    images = box_store(tmp_path / "img", pixel_boxes("gt"))
    out = str(tmp_path / "out")
    args = ["refcoco", refs_path, inst_path, "--split", "train", "--vocab", vocab, "--out", out]
    args += ["--no-progress", "--boxes", "gt"]
    assert main([*args, "--images", images]) == 0
    assert "wrote 6 texts" in capsys.readouterr().out
    assert TextStore(out).manifest["source"]["boxes"] == "gt"
    assert main([*args, "--images", images]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--force"])
    assert exit_.value.code == 2
    assert "needs --images" in capsys.readouterr().err


def expressions(split):
    """The refs of `split` as plain JSON expressions, one per sentence."""
    out = []
    for ref in refs():
        if ref["split"] != split:
            continue
        image_id, bbox = ANNS[ref["ann_id"]]
        w, h = SIZES[image_id]
        for s in ref["sentences"]:
            out.append(
                {
                    "ref_id": ref["ref_id"],
                    "image_id": image_id,
                    "sentence": s["sent"],
                    "bbox": bbox,
                    "width": w,
                    "height": h,
                    "sent_id": s["sent_id"],
                }
            )
    return out


@pytest.mark.parametrize("kind", ["detected", "gt"])
@pytest.mark.parametrize("lines", [False, True], ids=["json", "jsonl"])
def test_plain_json_expressions_give_the_store_the_refer_toolkit_gives(
    tmp_path, vocab, kind, lines
):
    store = box_store(tmp_path / "img", pixel_boxes(kind))
    refs_path, inst_path = write(tmp_path, refs())
    convert_refcoco(
        refs_path,
        inst_path,
        tmp_path / "toolkit",
        split="train",
        vocab=vocab,
        images=store,
        boxes=kind,
        progress=False,
    )
    items = expressions("train")
    path = tmp_path / ("e.jsonl" if lines else "e.json")
    path.write_text("".join(json.dumps(e) + "\n" for e in items) if lines else json.dumps(items))
    args = [
        "refexp-json",
        str(path),
        "--vocab",
        vocab,
        "--images",
        store,
        "--boxes",
        kind,
        "--out",
        str(tmp_path / "plain"),
        "--no-progress",
    ]
    assert main(args) == 0
    want, got = TextStore(str(tmp_path / "toolkit")), TextStore(str(tmp_path / "plain"))
    assert list(got.text_ids) == list(want.text_ids) and list(got.image_ids) == list(want.image_ids)
    for i in range(len(want)):
        np.testing.assert_array_equal(got.input_ids(i), want.input_ids(i))
        for name in ("gt_box", "target", "target_iou"):
            np.testing.assert_array_equal(got.field(name, i), want.field(name, i), err_msg=name)
    # Without sent_id, sentences are numbered per ref.
    for e in items:
        del e["sent_id"]
    path.write_text(json.dumps(items))
    convert_refexp_json(path, tmp_path / "numbered", vocab=vocab, images=store, progress=False)
    assert list(TextStore(str(tmp_path / "numbered")).text_ids) == [
        "1-0",
        "1-1",
        "2-0",
        "3-0",
        "3-1",
        "3-2",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox": [1, 2, 3]}, "expression 1, field bbox: .*four finite numbers"),
        ({"width": 0}, "expression 1, field width: .*no positive 'width'"),
        ({"sentence": " "}, "expression 1, field sentence: expected a non-empty string"),
        ({"image_id": 99}, "expression 1, field image_id: image '99' is not in the image store"),
        ({"ref_id": None}, "expression 1, field ref_id: expected an int or string"),
    ],
)
def test_bad_json_expressions_are_named(tmp_path, vocab, change, message):
    store = box_store(tmp_path / "img", pixel_boxes("detected"))
    items = expressions("train")
    items[1].update(change)
    path = tmp_path / "e.json"
    path.write_text(json.dumps(items))
    with pytest.raises(DataError, match=f"file {path}, record {message}"):
        convert_refexp_json(path, tmp_path / "o", vocab=vocab, images=store, progress=False)
    assert not (tmp_path / "o").exists()
    del items[1]["sentence"]
    path.write_text(json.dumps(items))
    with pytest.raises(DataError, match="missing keys \\['sentence'\\]"):
        convert_refexp_json(path, tmp_path / "o", vocab=vocab, images=store, progress=False)


def test_results_give_the_annotated_box_in_pixels_keyed_by_sentence(tmp_path, vocab):
    store = box_store(tmp_path / "img", pixel_boxes("gt"))
    refs_path, inst_path = write(tmp_path, refs())
    convert_refcoco(
        refs_path,
        inst_path,
        tmp_path / "t",
        split="train",
        vocab=vocab,
        images=store,
        boxes="gt",
        progress=False,
    )
    texts = TextStore(str(tmp_path / "t"))
    # Predict each target region's own box: pred_box is then the annotation too.
    refexp.write_results(
        {"refexp": {"box": texts.arrays["gt_box"]}}, {"refexp": texts}, str(tmp_path / "r.json")
    )
    results = json.loads((tmp_path / "r.json").read_text())
    sent_ids = [str(s["sent_id"]) for r in refs() if r["split"] == "train" for s in r["sentences"]]
    assert list(results) == sent_ids
    by_sent = {str(s["sent_id"]): r["ann_id"] for r in refs() for s in r["sentences"]}
    for sent, boxes in results.items():
        annotated = ANNS[by_sent[sent]][1]  # [x, y, w, h] pixels, from instances.json
        np.testing.assert_allclose(boxes["tgt_box"], annotated, atol=1e-3)
        np.testing.assert_allclose(boxes["pred_box"], annotated, atol=1e-3)
