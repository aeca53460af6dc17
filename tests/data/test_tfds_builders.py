"""The tfds builder over a synthetic world: tfds.builder / as_dataset as users expect."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import uniter_jax.data.tfds_builders  # noqa: F401  (registers the builder)
from uniter_jax.data import synthetic
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore


@pytest.mark.parametrize("task", ["captions", "vqa", "refexp", "ve"])
def test_tfds_dataset_equals_the_stores(tmp_path, task):
    world = synthetic.WorldConfig(num_images=12, feature_dim=8, num_labels=61, seed=2)
    paths = synthetic.write_world(str(tmp_path / "world"), world)
    builder = tfds.builder(f"uniter_data/{task}", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "world"))
    )
    texts, images = TextStore(paths[f"{task}_train"]), ImageStore(paths["images"])
    assert builder.info.splits["train"].num_examples == len(texts)
    rows = {str(texts.text_ids[i]): i for i in range(len(texts))}
    for example in tfds.as_numpy(builder.as_dataset(split="train")):
        i = rows[example["text_id"].decode()]
        regions = images.get(example["image_id"].decode())
        np.testing.assert_array_equal(example["input_ids"], texts.input_ids(i))
        np.testing.assert_array_equal(example["img_feat"], regions.features)
        np.testing.assert_array_equal(example["img_pos"], regions.boxes)
        np.testing.assert_array_equal(example["soft_labels"], regions.soft_labels)
        for name in texts.fields:
            np.testing.assert_array_equal(example[name], texts.field(name, i))
