"""Visual Genome regions, Conceptual Captions and SBU -> captions stores, against
expectations written out by hand and HuggingFace's tokenizer."""

import json

import numpy as np
import pytest
from stores import image_store

from uniter_jax.data.convert.vg_regions import convert_vg_regions
from uniter_jax.data.convert.web_captions import convert_cc, convert_sbu, read_url_map
from uniter_jax.data.errors import DataError
from uniter_jax.data.text_store import TextStore

CAPTIONS = [
    "the clock is green in colour",
    "A man riding a horse on the beach.",
    "Two dogs play with a red frisbee.",
    "a kitchen with a stove and a sink",
]
VOCAB_TEXTS = CAPTIONS  # the `vocab` fixture's corpus (conftest.py)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def region(region_id, image_id, phrase):
    return {
        "region_id": region_id,
        "width": 82,
        "height": 139,
        "image_id": image_id,
        "phrase": phrase,
        "y": 57,
        "x": 421,
    }


def assert_store(out, want, reference):
    """`want`: (text id, image id, caption) in store order."""
    store = TextStore(str(out))
    assert store.manifest["task"] == "captions"
    assert list(store.text_ids) == [t for t, _, _ in want]
    assert list(store.image_ids) == [i for _, i, _ in want]
    for n, (_, _, caption) in enumerate(want):
        expected = reference.encode(caption, add_special_tokens=False)
        np.testing.assert_array_equal(store.input_ids(n), expected)
    return store


def test_vg_regions_round_trip(tmp_path, vocab, reference):
    images = [
        {"id": 1, "regions": [region(1382, 1, CAPTIONS[0]), region(1383, 1, CAPTIONS[1])]},
        {"id": 2, "regions": []},
        {"id": 30, "regions": [region(9, 30, CAPTIONS[2])]},
    ]
    src = write(tmp_path / "region_descriptions.json", json.dumps(images))
    summary = convert_vg_regions(
        src, tmp_path / "out", vocab=vocab, image_id_format="vg_{id:04d}", progress=False
    )
    assert summary.texts == 3 and not summary.skipped
    want = [
        ("1382", "vg_0001", CAPTIONS[0]),
        ("1383", "vg_0001", CAPTIONS[1]),
        ("9", "vg_0030", CAPTIONS[2]),
    ]
    store = assert_store(tmp_path / "out", want, reference)
    assert store.manifest["source"]["format"] == "vg-regions"


@pytest.mark.parametrize(
    "image, record, field",
    [
        ({"id": 5, "regions": [region(2, 5, "  \t ")]}, "image 1 region 0", "phrase"),
        ({"id": 5, "regions": [region(2, 6, "a horse")]}, "image 1 region 0", "image_id"),
        ({"id": 5, "regions": [{"region_id": 2, "image_id": 5}]}, "image 1 region 0", "phrase"),
        ({"id": 5, "regions": [region(None, 5, "a horse")]}, "image 1 region 0", "region_id"),
        ({"regions": [region(2, 5, "a horse")]}, "image 1 region 0", "id"),
        ({"id": 5, "regions": "a horse"}, "image 1", "regions"),
        ({"id": 5, "regions": [region(1, 5, "a horse")]}, "image 1 region 0", "text_id"),
        ({"id": 404, "regions": [region(2, 404, "a horse")]}, "image 1 region 0", "image_id"),
    ],
)
def test_vg_bad_records_name_file_record_and_field(tmp_path, vocab, image, record, field):
    images = [{"id": 5, "regions": [region(1, 5, CAPTIONS[0])]}, image]
    src = write(tmp_path / "vg.json", json.dumps(images))
    store = image_store(tmp_path / "img", ["5", "6"])
    with pytest.raises(DataError) as err:
        convert_vg_regions(src, tmp_path / "out", vocab=vocab, images=store, progress=False)
    assert "vg.json" in str(err.value) and f"record {record}," in str(err.value)
    assert err.value.field == field
    assert not (tmp_path / "out").exists()
    summary = convert_vg_regions(
        src, tmp_path / "out", vocab=vocab, images=store, skip_bad=True, progress=False
    )
    assert summary.texts == 1 and [s.field for s in summary.skipped] == [field]


def test_vg_not_a_list(tmp_path, vocab):
    src = write(tmp_path / "vg.json", json.dumps({"id": 1, "regions": []}))
    with pytest.raises(DataError, match="JSON list of images"):
        convert_vg_regions(src, tmp_path / "out", vocab=vocab, progress=False)
    assert not (tmp_path / "out").exists()


URL_MAP = "http://a/1.jpg\timg_a\nhttp://b/2.jpg\timg_b\n\nhttp://c/3.jpg\timg_c\r\n"


def test_cc_round_trip_counts_unmapped_urls(tmp_path, vocab, reference):
    lines = [
        f"{CAPTIONS[1]}\thttp://a/1.jpg",
        f"{CAPTIONS[2]}\thttp://dead/9.jpg",  # not downloaded: left out, counted
        "",
        f"{CAPTIONS[3]}\thttp://c/3.jpg\r",
        f"{CAPTIONS[0]}\thttp://gone/8.jpg",
        f"{CAPTIONS[0]}\thttp://a/1.jpg",  # one image, two captions
    ]
    src = write(tmp_path / "Train_GCC-training.tsv", "\n".join(lines) + "\n")
    url_map = write(tmp_path / "map.tsv", URL_MAP)
    summary = convert_cc(
        src, tmp_path / "out", url_map=url_map, vocab=vocab, image_id_format="cc_{id}"
    )
    assert summary.texts == 3 and summary.unmapped == 2 and not summary.skipped
    assert "left out 2 texts whose URL is not in the image map" in summary.report()
    want = [
        ("1", "cc_img_a", CAPTIONS[1]),
        ("4", "cc_img_c", CAPTIONS[3]),
        ("6", "cc_img_a", CAPTIONS[0]),
    ]
    store = assert_store(tmp_path / "out", want, reference)
    assert store.manifest["source"]["unmapped"] == 2


@pytest.mark.parametrize(
    "line, field",
    [
        ("a horse", "url"),  # one field
        ("a horse\tthe beach\thttp://a/1.jpg", "caption"),  # three fields
        ("   \thttp://a/1.jpg", "caption"),
        ("a horse\t ", "url"),
        ("a horse\thttp://b/2.jpg", "image_id"),  # mapped, but not in the image store
    ],
)
def test_cc_bad_lines_name_file_line_and_field(tmp_path, vocab, line, field):
    src = write(tmp_path / "cc.tsv", f"{CAPTIONS[1]}\thttp://a/1.jpg\n{line}\n")
    url_map = write(tmp_path / "map.tsv", URL_MAP)
    store = image_store(tmp_path / "img", ["img_a", "img_c"])
    kwargs = {"url_map": url_map, "vocab": vocab, "images": store, "progress": False}
    with pytest.raises(DataError) as err:
        convert_cc(src, tmp_path / "out", **kwargs)
    assert "cc.tsv" in str(err.value) and "record line 2," in str(err.value)
    assert err.value.field == field
    assert not (tmp_path / "out").exists()
    summary = convert_cc(src, tmp_path / "out", skip_bad=True, **kwargs)
    assert summary.texts == 1 and [s.field for s in summary.skipped] == [field]


@pytest.mark.parametrize(
    "url_map, line, field",
    [
        ("http://a/1.jpg\n", 1, "image_id"),
        ("http://a/1.jpg\t \n", 1, "image_id"),
        ("\timg_a\n", 1, "url"),
        ("http://a/1.jpg\timg_a\nhttp://a/1.jpg\timg_b\n", 2, "url"),
    ],
)
def test_bad_url_maps_always_raise(tmp_path, vocab, url_map, line, field):
    path = write(tmp_path / "map.tsv", url_map)
    with pytest.raises(DataError) as err:
        read_url_map(path)
    assert "map.tsv" in str(err.value) and f"record line {line}," in str(err.value)
    assert err.value.field == field
    src = write(tmp_path / "cc.tsv", f"{CAPTIONS[1]}\thttp://a/1.jpg\n")
    with pytest.raises(DataError):
        convert_cc(src, tmp_path / "out", url_map=path, vocab=vocab, skip_bad=True)
    assert not (tmp_path / "out").exists()


def test_cc_with_no_mapped_url(tmp_path, vocab):
    src = write(tmp_path / "cc.tsv", f"{CAPTIONS[1]}\thttp://dead/1.jpg\n")
    url_map = write(tmp_path / "map.tsv", URL_MAP)
    with pytest.raises(DataError, match="none of the 1 URLs") as err:
        convert_cc(src, tmp_path / "out", url_map=url_map, vocab=vocab, progress=False)
    assert "map.tsv" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_sbu_round_trip(tmp_path, vocab, reference):
    urls = ["http://c/3.jpg", "http://dead/7.jpg", "http://b/2.jpg", "http://a/1.jpg"]
    urls_path = write(tmp_path / "SBU_captioned_photo_dataset_urls.txt", "\n".join(urls) + "\n")
    captions = write(
        tmp_path / "SBU_captioned_photo_dataset_captions.txt", "\r\n".join(CAPTIONS) + "\r\n"
    )
    url_map = write(tmp_path / "map.tsv", URL_MAP)
    summary = convert_sbu(
        urls_path, captions, tmp_path / "out", url_map=url_map, vocab=vocab, progress=False
    )
    assert summary.texts == 3 and summary.unmapped == 1
    want = [("1", "img_c", CAPTIONS[0]), ("3", "img_b", CAPTIONS[2]), ("4", "img_a", CAPTIONS[3])]
    assert_store(tmp_path / "out", want, reference)


@pytest.mark.parametrize(
    "urls, captions, bad_file, field",
    [
        (["http://a/1.jpg", "http://b/2.jpg"], [CAPTIONS[0], " "], "captions.txt", "caption"),
        (["http://a/1.jpg", ""], [CAPTIONS[0], CAPTIONS[1]], "urls.txt", "url"),
    ],
)
def test_sbu_bad_lines_name_file_line_and_field(tmp_path, vocab, urls, captions, bad_file, field):
    urls_path = write(tmp_path / "urls.txt", "\n".join(urls) + "\n")
    captions_path = write(tmp_path / "captions.txt", "\n".join(captions) + "\n")
    url_map = write(tmp_path / "map.tsv", URL_MAP)
    with pytest.raises(DataError) as err:
        convert_sbu(urls_path, captions_path, tmp_path / "out", url_map=url_map, vocab=vocab)
    assert f"file {tmp_path / bad_file}, record line 2," in str(err.value)
    assert err.value.field == field
    assert not (tmp_path / "out").exists()


def test_sbu_files_of_different_lengths(tmp_path, vocab):
    urls_path = write(tmp_path / "urls.txt", "http://a/1.jpg\nhttp://b/2.jpg\n")
    captions_path = write(tmp_path / "captions.txt", f"{CAPTIONS[0]}\n")
    url_map = write(tmp_path / "map.tsv", URL_MAP)
    with pytest.raises(DataError, match="line-aligned") as err:
        convert_sbu(urls_path, captions_path, tmp_path / "out", url_map=url_map, vocab=vocab)
    assert "urls.txt" in str(err.value) and "captions.txt" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_corpora(tmp_path, vocab, capsys):
    from uniter_jax.data.convert.__main__ import main

    common = ["--vocab", vocab, "--no-progress"]
    vg = write(tmp_path / "vg.json", json.dumps([{"id": 1, "regions": [region(3, 1, "a")]}]))
    assert main(["vg-regions", vg, "--out", str(tmp_path / "vg"), *common]) == 0
    url_map = write(tmp_path / "map.tsv", URL_MAP)
    cc = write(tmp_path / "cc.tsv", f"{CAPTIONS[1]}\thttp://a/1.jpg\nx\thttp://dead/1.jpg\n")
    args = ["cc", cc, "--url-map", url_map, "--out", str(tmp_path / "cc"), *common]
    assert main(args) == 0
    assert "left out 1 texts" in capsys.readouterr().out
    urls = write(tmp_path / "urls.txt", "http://b/2.jpg\n")
    captions = write(tmp_path / "captions.txt", f"{CAPTIONS[2]}\n")
    args = ["sbu", urls, captions, "--url-map", url_map, "--out", str(tmp_path / "sbu")]
    assert main([*args, "--image-id-format", "sbu_{id}", *common]) == 0
    assert list(TextStore(str(tmp_path / "sbu")).image_ids) == ["sbu_img_b"]
    assert main([*args, *common]) == 2  # the store exists
    assert "already exists" in capsys.readouterr().err
