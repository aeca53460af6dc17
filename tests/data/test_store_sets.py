"""Stores read as one (a dataset's several stores, sharded stores) against the
single store they were split from."""

import itertools
import json
import os
import shutil

import numpy as np
import pytest

from uniter_jax.data import synthetic
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore, ImageStoreWriter
from uniter_jax.data.pipeline import Bucket, Pipeline, PipelineConfig
from uniter_jax.data.store_sets import (
    SHARDS,
    open_images,
    open_texts,
    shard_name,
    write_shard_index,
)
from uniter_jax.data.text_store import TextStore, TextStoreWriter

WORLD = synthetic.WorldConfig(num_images=30, feature_dim=16, num_labels=61, seed=3)
CONFIG = PipelineConfig(
    buckets=(Bucket(14, 12, 8),),
    min_bb=3,
    max_bb=12,
    conf_th=0.5,
    itm_neg_prob=0.5,
    soft_labels=True,
    seed=2,
)


def copy_texts(texts: TextStore, index: range, path: str) -> str:
    manifest = texts.manifest
    with TextStoreWriter(
        path,
        task=manifest["task"],
        vocab=manifest["vocab"],
        max_txt_len=manifest["max_txt_len"],
        ragged=manifest["ragged"],
    ) as writer:
        for i in index:
            fields = {name: texts.field(name, i) for name in texts.fields}
            writer.add(
                str(texts.text_ids[i]), str(texts.image_ids[i]), texts.input_ids(i), **fields
            )
    return path


def copy_images(images: ImageStore, index: range, path: str) -> str:
    with ImageStoreWriter(
        path, feature_dim=images.feature_dim, num_labels=images.num_labels
    ) as writer:
        for i in index:
            writer.add(images.get(str(images.ids[i])))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    paths = synthetic.write_world(str(root / "world"), WORLD)
    texts, images = TextStore(paths["captions_train"]), ImageStore(paths["images"])
    # Split points that fall inside a blob shard of neither part and
    # separate texts from their images' part: any text may use any image.
    cut_t, cut_i = len(texts) // 3, 17
    parts = {
        "texts": [
            copy_texts(texts, range(cut_t), str(root / "t0")),
            copy_texts(texts, range(cut_t, len(texts)), str(root / "t1")),
        ],
        "images": [
            copy_images(images, range(cut_i), str(root / "i0")),
            copy_images(images, range(cut_i, len(images)), str(root / "i1")),
        ],
    }
    return texts, images, parts, root


def batches(texts, images, n=6):
    return list(itertools.islice(Pipeline(texts, images, CONFIG), n))


def test_joined_stores_give_the_batches_of_the_store_they_were_split_from(world):
    texts, images, parts, _ = world
    joined_texts, joined_images = open_texts(parts["texts"]), open_images(parts["images"])
    assert len(joined_texts) == len(texts) and len(joined_images) == len(images)
    assert [d for d, _ in joined_images.parts] == parts["images"]
    want, got = batches(texts, images), batches(joined_texts, joined_images)
    assert {b["itm_label"].min() for b in got} == {0}  # negatives read the other part too
    for expected, actual in zip(want, got, strict=True):
        assert expected.keys() == actual.keys()
        for key in expected:
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
    position = len(images) - 1
    regions = joined_images.get(str(images.ids[position]))
    np.testing.assert_array_equal(regions.features, images.get(str(images.ids[position])).features)


def test_a_single_path_reads_the_store_itself(world):
    texts, images, _, _ = world
    assert open_texts(texts.directory).manifest == texts.manifest
    assert open_images(images.directory).manifest == images.manifest


def test_sharded_stores_read_as_one_and_a_replaced_shard_is_caught(world, tmp_path):
    texts, images, parts, _ = world
    for kind, sources in parts.items():
        sharded = tmp_path / kind
        names = [shard_name(i, len(sources)) for i in range(len(sources))]
        for source, name in zip(sources, names, strict=True):
            shutil.copytree(source, sharded / name)
        write_shard_index(str(sharded), kind[:-1], names)
    got = batches(open_texts(str(tmp_path / "texts")), open_images(str(tmp_path / "images")), 3)
    for expected, actual in zip(batches(texts, images, 3), got, strict=True):
        np.testing.assert_array_equal(actual["img_feat"], expected["img_feat"])
    with pytest.raises(DataError, match="sharded text store where a image"):
        open_images(str(tmp_path / "texts"))
    # A shard swapped for another store: counts and checksum no longer match.
    first = tmp_path / "images" / shard_name(0, 2)
    shutil.rmtree(first)
    shutil.copytree(parts["images"][1], first)
    with pytest.raises(DataError, match="the shard index says") as error:
        open_images(str(tmp_path / "images"))
    assert error.value.file == str(first)


def test_ids_in_two_stores_are_an_error_naming_both(world):
    _, _, parts, _ = world
    with pytest.raises(DataError, match="image id also in") as error:
        open_images([parts["images"][0], parts["images"][0]])
    assert error.value.file == parts["images"][0] and error.value.record is not None
    with pytest.raises(DataError, match="text id also in"):
        open_texts([parts["texts"][1], parts["texts"][1]])


def test_stores_that_disagree_are_an_error(world, tmp_path):
    texts, _, parts, _ = world
    other = str(tmp_path / "other")
    shutil.copytree(parts["texts"][1], other)
    manifest = json.loads((tmp_path / "other" / "manifest.json").read_text())
    manifest["vocab"] = {**manifest["vocab"], "size": manifest["vocab"]["size"] + 1}
    (tmp_path / "other" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="vocab differs") as error:
        open_texts([parts["texts"][0], other])
    assert error.value.file == other and error.value.field == "vocab"
    with pytest.raises(DataError, match="no text store"):
        open_texts([])
    with pytest.raises(DataError, match="not a version-1"):
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / SHARDS).write_text("{}")
        open_texts(str(bad))
    assert os.path.exists(texts.directory)
