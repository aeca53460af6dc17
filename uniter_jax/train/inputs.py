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
from collections.abc import Callable

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from uniter_jax.data import files, synthetic, synthetic_corpora
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.pipeline import Bucket, Pipeline, PipelineConfig
from uniter_jax.data.store_sets import open_images, open_texts
from uniter_jax.data.text_store import TextStore
from uniter_jax.data.tokenizer import same_vocab
from uniter_jax.model import UniterConfig
from uniter_jax.model.config import ConfigError
from uniter_jax.objectives.tasks import TASKS, TaskSettings, needs_soft_labels
from uniter_jax.seeds import pipeline_seed
from uniter_jax.sharding import Layout
from uniter_jax.train.datasets import Dataset, configured_datasets, stream_seed_index


def model_config(section: ml_collections.ConfigDict) -> UniterConfig:
    """`UniterConfig` from a config's `model` section: a preset plus overrides."""
    values = section.to_dict()
    preset = values.pop("preset", "base")
    return UniterConfig.preset(preset, **values)


def resolve_datasets(config: ml_collections.ConfigDict, workdir: str) -> list[Dataset]:
    """The run's datasets (`train/datasets.py`), synthetic ones' stores written
    into the workdir on first use and their paths filled in."""
    out = []
    for dataset in configured_datasets(config):
        if not dataset.synthetic:
            for path in dataset.val_texts:
                if not files.exists(path):  # local or gs://
                    raise FileNotFoundError(f"data.val_texts: no text store at {path}")
            out.append(dataset)
            continue
        if dataset.name:
            root = synthetic_corpus(config, workdir, dataset.name)
            texts, images = os.path.join(root, "texts"), os.path.join(root, "images")
            train, val = os.path.join(texts, "train"), os.path.join(texts, "val")
        else:
            root = synthetic_world(config, workdir)
            images = os.path.join(root, "images")
            train = os.path.join(root, "texts", "captions_train")
            val = os.path.join(root, "texts", "captions_val")
        out.append(
            dataclasses.replace(
                dataset, texts=(train,), images=(images,), val_texts=(val,), val_images=(images,)
            )
        )
    return out


def single_dataset(config: ml_collections.ConfigDict, workdir: str) -> Dataset:
    """The one dataset of a tool that reads one text and one image store."""
    datasets = resolve_datasets(config, workdir)
    if len(datasets) > 1 or datasets[0].name:
        raise ConfigError(
            f"this reads one text and one image store, the config lists datasets "
            f"{[d.name for d in datasets]}: set data.texts and data.images (and "
            "--config.data.datasets='{}')"
        )
    return datasets[0]


def synthetic_world(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The folder of the built-in synthetic world of `config.data.synthetic_images`
    images, written on first use."""
    world = synthetic.WorldConfig(num_images=config.data.synthetic_images, seed=config.seed)
    # The generator's version too: a world written by an older one lacks stores.
    return _written_once(
        workdir,
        "synthetic",
        "world.json",
        {**dataclasses.asdict(world), "version": synthetic.WORLD_VERSION},
        lambda root: synthetic.write_world(root, world, overwrite=True),
    )


def synthetic_corpus(config: ml_collections.ConfigDict, workdir: str, name: str) -> str:
    """The folder of built-in synthetic corpus `name` (coco, vg, cc or sbu; its
    public formats converted into stores), written on first use."""
    corpus = synthetic_corpora.CorpusConfig.named(
        name, num_images=config.data.synthetic_images, seed=config.seed
    )
    return _written_once(
        workdir,
        os.path.join("synthetic_corpora", name),
        "corpus.json",
        {**dataclasses.asdict(corpus), "version": synthetic_corpora.VERSION},
        lambda root: synthetic_corpora.write_corpus(root, corpus, overwrite=True),
    )


def _written_once(
    workdir: str, name: str, marker: str, described: dict, write: Callable[[str], object]
) -> str:
    """`workdir/name`, written by `write(root)` unless its `marker` file already
    holds `described`: by process 0, or, when the workdir is remote, by each
    host to its own disk (small and deterministic; the store readers want
    local files here)."""
    wanted = json.dumps(described, sort_keys=True)
    if "://" in workdir:
        digest = hashlib.sha256(wanted.encode()).hexdigest()[:12]
        folder = f"uniter_jax_{name.replace(os.sep, '_')}_{digest}"
        root, writer = os.path.join(tempfile.gettempdir(), folder), True
    else:
        root, writer = os.path.join(workdir, name), jax.process_index() == 0
    marker = os.path.join(root, marker)
    if writer and (not os.path.exists(marker) or pathlib.Path(marker).read_text() != wanted):
        logging.info("writing %s to %s", name, root)
        write(root)
        pathlib.Path(marker).write_text(wanted)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"{name} written")
    return root


def pipeline_config(
    data: ml_collections.ConfigDict,
    *,
    seed: int,
    itm_neg_prob: float,
    soft_labels: bool,
    shuffle: bool = True,
    selection: tuple[float, int, int] | None = None,
) -> PipelineConfig:
    """The pipeline settings of `data`; `selection` (conf_th, min_bb, max_bb)
    where a dataset selects regions its own way."""
    conf_th, min_bb, max_bb = selection or (data.conf_th, data.min_bb, data.max_bb)
    return PipelineConfig(
        buckets=tuple(Bucket(*b) for b in data.buckets),
        conf_th=conf_th,
        min_bb=min_bb,
        max_bb=max_bb,
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


def open_stores(dataset: Dataset, *, val: bool = False) -> tuple[TextStore, ImageStore]:
    """A dataset's training (or validation) text and image stores, each read as one."""
    texts, images = (
        (dataset.val_texts, dataset.val_images) if val else (dataset.texts, dataset.images)
    )
    label = f"{dataset.name or 'data'}{' validation' if val else ''}"
    return open_texts(texts, name=f"{label} texts {list(texts)}"), open_images(
        images, name=f"{label} images {list(images)}"
    )


def train_pipelines(
    config: ml_collections.ConfigDict,
    datasets: list[Dataset],
    stores: dict[str, tuple[TextStore, ImageStore]],
    streams: dict[str, str],
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, Pipeline]:
    """One pipeline per stream (a dataset's task), each with its own seed."""
    out = {}
    for dataset in datasets:
        texts, images = stores[dataset.name]
        for task in TASKS:
            stream = dataset.stream(task)
            if stream not in streams:
                continue
            settings = pipeline_config(
                config.data,
                seed=pipeline_seed(config.seed, *stream_seed_index(datasets, dataset, task)),
                itm_neg_prob=config.data.itm_neg_prob if task == "itm" else 0.0,
                soft_labels=needs_soft_labels(task),
                selection=dataset.selection,
            )
            out[stream] = Pipeline(
                texts, images, settings, process_index=process_index, process_count=process_count
            )
    return out


def val_pipeline(
    config: ml_collections.ConfigDict,
    dataset: Dataset,
    *,
    model: UniterConfig,
    train_vocab: dict,
    soft_labels: bool,
    process_index: int = 0,
    process_count: int = 1,
) -> Pipeline | None:
    """A dataset's validation pipeline (negatives as in training, fixed order), or None."""
    if not dataset.val_texts:
        return None
    settings = pipeline_config(
        config.data,
        seed=config.seed,
        itm_neg_prob=config.data.itm_neg_prob,
        soft_labels=soft_labels,
        shuffle=False,
        selection=dataset.selection,
    )
    texts, images = open_stores(dataset, val=True)
    check_compatible(texts, images, model)
    check_vocab(texts, train_vocab)
    return Pipeline(
        texts,
        images,
        settings,
        process_index=process_index,
        process_count=process_count,
    )


def check_vocab(texts: TextStore, vocab: dict) -> None:
    """Raises ConfigError unless `texts` was tokenized with `vocab`."""
    if not same_vocab(texts.manifest["vocab"], vocab):
        raise ConfigError(
            f"{texts.directory}: tokenized with another vocabulary than the first training "
            f"texts ({texts.manifest['vocab'].get('path')} vs {vocab.get('path')})"
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
_MIX_KEYS = ("mix", "first_mix", "first_steps", "second_mix", "second_steps", "draw")


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
