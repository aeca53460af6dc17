"""From a config's `data` and `tasks` sections to input pipelines and task settings.

Each task reads its own pipeline, as the original gives each task its own
loader: ITM batches pair texts with random other images, masked-modelling
batches are all matched pairs, and only MRC batches carry soft labels.
Without configured stores the built-in synthetic world is written once into
`workdir/synthetic` and used for training and validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from uniter_jax.data import files, synthetic
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.pipeline import Bucket, Pipeline, PipelineConfig
from uniter_jax.data.text_store import TextStore
from uniter_jax.model import UniterConfig
from uniter_jax.model.config import ConfigError
from uniter_jax.objectives.tasks import TASKS, TaskSettings, needs_soft_labels
from uniter_jax.seeds import pipeline_seed
from uniter_jax.sharding import Layout


@dataclasses.dataclass(frozen=True)
class Stores:
    images: str
    texts: str
    val_images: str  # "" with val_texts "": no validation data
    val_texts: str


def model_config(section: ml_collections.ConfigDict) -> UniterConfig:
    """`UniterConfig` from a config's `model` section: a preset plus overrides."""
    values = section.to_dict()
    preset = values.pop("preset", "base")
    return UniterConfig.preset(preset, **values)


def resolve_stores(config: ml_collections.ConfigDict, workdir: str) -> Stores:
    """The configured store folders, or the synthetic world's (written if needed)."""
    data = config.data
    if bool(data.images) != bool(data.texts):
        raise ConfigError("set both data.images and data.texts, or neither (synthetic data)")
    if data.val_images and not data.val_texts:
        raise ConfigError("data.val_images is set but data.val_texts is not: set both, or neither")
    if data.images:
        if data.val_texts and not files.exists(data.val_texts):  # local or gs://
            raise FileNotFoundError(f"data.val_texts: no text store at {data.val_texts}")
        return Stores(data.images, data.texts, data.val_images or data.images, data.val_texts)
    root = synthetic_world(config, workdir)
    images = os.path.join(root, "images")
    texts = os.path.join(root, "texts")
    return Stores(
        images, os.path.join(texts, "captions_train"), images, os.path.join(texts, "captions_val")
    )


def synthetic_world(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The folder of the built-in synthetic world of `config.data.synthetic_images`
    images, written on first use (by process 0, or by each host when the
    workdir is remote)."""
    world = synthetic.WorldConfig(num_images=config.data.synthetic_images, seed=config.seed)
    # The generator's version too: a world written by an older one lacks stores.
    wanted = json.dumps(
        {**dataclasses.asdict(world), "version": synthetic.WORLD_VERSION}, sort_keys=True
    )
    if "://" in workdir:
        # A bucket workdir: each host writes the (small, deterministic) world to
        # its own disk, as the store readers want local files here.
        digest = hashlib.sha256(wanted.encode()).hexdigest()[:12]
        root, writer = os.path.join(tempfile.gettempdir(), f"uniter_jax_synthetic_{digest}"), True
    else:
        root, writer = os.path.join(workdir, "synthetic"), jax.process_index() == 0
    marker = os.path.join(root, "world.json")
    if writer and (not os.path.exists(marker) or pathlib.Path(marker).read_text() != wanted):
        logging.info("writing the synthetic world (%d images) to %s", world.num_images, root)
        synthetic.write_world(root, world, overwrite=True)
        pathlib.Path(marker).write_text(wanted)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("synthetic world written")
    return root


def pipeline_config(
    data: ml_collections.ConfigDict,
    *,
    seed: int,
    itm_neg_prob: float,
    soft_labels: bool,
    shuffle: bool = True,
) -> PipelineConfig:
    return PipelineConfig(
        buckets=tuple(Bucket(*b) for b in data.buckets),
        conf_th=data.conf_th,
        min_bb=data.min_bb,
        max_bb=data.max_bb,
        itm_neg_prob=itm_neg_prob,
        shuffle=shuffle,
        seed=seed,
        soft_labels=soft_labels,
    )


def check_compatible(texts: TextStore, images: ImageStore, model: UniterConfig) -> None:
    """Raises ConfigError, naming the store and the flag to set, when the stores
    do not fit the model."""
    if images.feature_dim != model.img_dim:
        raise ConfigError(
            f"{images.directory}: {images.feature_dim}-d region features, but the model's "
            f"img_dim is {model.img_dim}: set --config.model.img_dim={images.feature_dim}"
        )
    if images.num_labels and images.num_labels != model.num_region_labels:
        raise ConfigError(
            f"{images.directory}: {images.num_labels} soft-label classes, but the model's "
            f"num_region_labels is {model.num_region_labels}: set "
            f"--config.model.num_region_labels={images.num_labels}"
        )
    vocab = texts.manifest["vocab"]
    if vocab["size"] > model.vocab_size:
        raise ConfigError(
            f"{texts.directory}: its vocabulary ({vocab.get('path')}) has {vocab['size']} ids, "
            f"the model's embedding only {model.vocab_size}: set "
            f"--config.model.vocab_size={vocab['size']} (or convert with a smaller --vocab)"
        )


def train_pipelines(
    config: ml_collections.ConfigDict,
    stores: Stores,
    tasks: tuple[str, ...],
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, Pipeline]:
    """One pipeline per active task, each with its own seed."""
    texts, images = TextStore(stores.texts), ImageStore(stores.images)
    out = {}
    for task in tasks:
        settings = pipeline_config(
            config.data,
            seed=pipeline_seed(config.seed, TASKS.index(task), len(TASKS)),
            itm_neg_prob=config.data.itm_neg_prob if task == "itm" else 0.0,
            soft_labels=needs_soft_labels(task),
        )
        out[task] = Pipeline(
            texts, images, settings, process_index=process_index, process_count=process_count
        )
    return out


def val_pipeline(
    config: ml_collections.ConfigDict,
    stores: Stores,
    *,
    model: UniterConfig,
    train_vocab: dict,
    soft_labels: bool,
    process_index: int = 0,
    process_count: int = 1,
) -> Pipeline | None:
    """The validation pipeline (negatives as in training, fixed order), or None."""
    if not stores.val_texts:
        logging.warning("no validation data (data.val_texts is empty): no validation metrics")
        return None
    settings = pipeline_config(
        config.data,
        seed=config.seed,
        itm_neg_prob=config.data.itm_neg_prob,
        soft_labels=soft_labels,
        shuffle=False,
    )
    texts, images = TextStore(stores.val_texts), ImageStore(stores.val_images)
    check_compatible(texts, images, model)
    if texts.manifest["vocab"] != train_vocab:
        raise ConfigError(
            f"{stores.val_texts}: tokenized with another vocabulary than the training texts "
            f"({texts.manifest['vocab'].get('path')} vs {train_vocab.get('path')})"
        )
    return Pipeline(
        texts,
        images,
        settings,
        process_index=process_index,
        process_count=process_count,
    )


def check_batches(data: ml_collections.ConfigDict, layout: Layout) -> None:
    """Raises ConfigError unless every bucket's batch splits evenly over hosts and devices."""
    ways = layout.batch_shards
    hosts = jax.process_count()
    for text_len, num_regions, batch_size in data.buckets:
        if batch_size % ways or batch_size % hosts:
            raise ConfigError(
                f"data.buckets: batch size {batch_size} of bucket ({text_len}, {num_regions}) "
                f"does not divide into {ways} batch shards (mesh {dict(layout.mesh.shape)}) "
                f"and {hosts} hosts"
            )


# Fields of `TaskSettings` that come from the text store, not the config.
_VOCAB_FIELDS = ("mask_id", "special_ids", "random_range")
# Keys of the `tasks` section that schedule the tasks (`job.mix_schedule`).
_MIX_KEYS = ("mix", "first_mix", "first_steps")


def task_settings(section: ml_collections.ConfigDict, vocab: dict) -> TaskSettings:
    """`TaskSettings` from the `tasks` section and a text store's vocabulary.

    Keys the section leaves out take `TaskSettings`' defaults; a key it does
    not know (besides the mix schedule's keys, read by the loop) is an error."""
    fields = [f.name for f in dataclasses.fields(TaskSettings) if f.name not in _VOCAB_FIELDS]
    unknown = sorted(set(section.keys()) - set(fields) - set(_MIX_KEYS))
    if unknown:
        raise ConfigError(f"config tasks: unknown keys {unknown}; known: {[*_MIX_KEYS, *fields]}")
    return TaskSettings(
        mask_id=vocab["mask_id"],
        special_ids=(vocab["cls_id"], vocab["sep_id"], vocab["pad_id"]),
        random_range=tuple(vocab["random_range"]),
        **{name: section[name] for name in fields if name in section},
    )
