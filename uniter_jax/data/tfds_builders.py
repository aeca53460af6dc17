"""tensorflow-datasets builders over our stores, for users who work with tfds.

Each example joins a text with its image's regions (features are repeated
for every text of an image: convenient, not compact; training reads the stores
directly through `uniter_jax.data.pipeline`). Built offline from a folder laid
out as converters and `uniter_jax.data.synthetic` write it:

  DIR/images/                 image store
  DIR/texts/<task>_<split>/   text stores, e.g. captions_train, vqa_val

  import tensorflow_datasets as tfds
  import uniter_jax.data.tfds_builders  # registers the builders
  builder = tfds.builder("uniter_data/captions", data_dir=TFDS_DIR)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=DIR))
  ds = builder.as_dataset(split="train")
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore

# Task fields per config: name -> (per-example shape, dtype).
TASK_FIELDS: dict[str, dict[str, tuple[tuple, np.dtype]]] = {
    "captions": {},
    # counts / humans: how many of how many annotators gave each answer, for the
    # official accuracy; empty and 0 for stores that lack them (the original's LMDB).
    "vqa": {
        "answers": ((None,), np.int64),
        "scores": ((None,), np.float64),
        "counts": ((None,), np.int32),
        "humans": ((), np.int32),
    },
    "refexp": {
        "target": ((), np.int64),
        "gt_box": ((4,), np.float32),
        "target_iou": ((), np.float32),
        "image_size": ((2,), np.float32),  # zeros for stores without it
    },
    "ve": {"label": ((), np.int64)},
}


def _tensor(shape: tuple, dtype) -> tfds.features.Tensor:
    dynamic = sum(d is None for d in shape) > 1
    encoding = tfds.features.Encoding.BYTES if dynamic else tfds.features.Encoding.NONE
    return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=encoding)


class UniterData(tfds.core.GeneratorBasedBuilder):
    """Texts of one task joined with their images' region features."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Text and image stores of uniter_jax, format version 1."
    }
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(name=task) for task in TASK_FIELDS
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point manual_dir at a folder with images/ and texts/<task>_<split>/ as written by "
        "`python -m uniter_jax.data.convert` or `python -m uniter_jax.data.synthetic`."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "text_id": tfds.features.Text(),
            "image_id": tfds.features.Text(),
            "input_ids": _tensor((None,), np.int32),
            "img_feat": _tensor((None, None), np.float16),
            "img_pos": _tensor((None, 7), np.float32),
            "conf": _tensor((None,), np.float32),
            "soft_labels": _tensor((None, None), np.float16),
        }
        for name, (shape, dtype) in TASK_FIELDS[self.builder_config.name].items():
            features[name] = _tensor(shape, dtype)
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = os.fspath(dl_manager.manual_dir)
        task = self.builder_config.name
        texts_dir = os.path.join(root, "texts")
        prefix = f"{task}_"
        # tf.io.gfile: manual_dir may be on gs://.
        found = tf.io.gfile.listdir(texts_dir) if tf.io.gfile.isdir(texts_dir) else []
        names = sorted(n.rstrip("/") for n in found if n.startswith(prefix))
        if not names:
            raise DataError(f"no text stores {prefix}<split> under {texts_dir}")
        images = ImageStore(os.path.join(root, "images"))
        return {
            name[len(prefix) :]: self._generate_examples(
                TextStore(os.path.join(texts_dir, name)), images
            )
            for name in names
        }

    def _generate_examples(self, texts: TextStore, images: ImageStore):
        fields = TASK_FIELDS[self.builder_config.name]
        for i in range(len(texts)):
            regions = images.get(str(texts.image_ids[i]))
            soft = regions.soft_labels
            example = {
                "text_id": str(texts.text_ids[i]),
                "image_id": str(texts.image_ids[i]),
                "input_ids": texts.input_ids(i).astype(np.int32),
                "img_feat": regions.features,
                "img_pos": regions.boxes,
                "conf": regions.conf,
                "soft_labels": np.zeros((0, 0), np.float16) if soft is None else soft,
            }
            for name, (shape, dtype) in fields.items():
                if name in texts.fields:
                    example[name] = np.asarray(texts.field(name, i), dtype)
                else:  # an optional field this store lacks
                    example[name] = np.zeros([0 if d is None else d for d in shape], dtype)
            yield example["text_id"], example
