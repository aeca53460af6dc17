"""The pretraining job (`train/job.py`): one stream per (dataset, task) of the
configured (or synthetic) datasets (`train/datasets.py`), drawn by their mix
ratios, each dataset validated on its own validation stores."""

from __future__ import annotations

import jax
import ml_collections
from absl import logging

from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore
from uniter_jax.model import UniterConfig
from uniter_jax.model.config import ConfigError
from uniter_jax.sharding import Layout
from uniter_jax.train import attention_init, inputs, shapes
from uniter_jax.train.datasets import Dataset, stream_schedule
from uniter_jax.train.evaluate import eval_tasks, evaluate
from uniter_jax.train.image_init import class_directions, principal_directions
from uniter_jax.train.job import Job
from uniter_jax.train.state import initial_params, pretraining_optim
from uniter_jax.train.step import StepSettings


def pretraining_job(config: ml_collections.ConfigDict, workdir: str, layout: Layout) -> Job:
    """The pretraining streams of the configured (or synthetic) datasets."""
    if config.attention_init not in attention_init.STARTS:
        raise ConfigError(
            f"config.attention_init is {config.attention_init!r}: choose one of "
            f"{', '.join(attention_init.STARTS)}"
        )
    model_cfg = inputs.model_config(config.model)
    datasets = inputs.resolve_datasets(config, workdir)
    mix, streams = stream_schedule(datasets, config.tasks, config.optim.accumulation)
    per_task = ["optim.per_task_moments"] if config.optim.per_task_moments else []
    if any(m != 1 for m in config.optim.task_lr_mul.values()):
        per_task.append("optim.task_lr_mul")
    if per_task and mix.draw_every != config.optim.accumulation:
        raise ConfigError(
            f"{' and '.join(per_task)} with optim.accumulation > 1 needs tasks.draw='update': "
            "the micro-steps of an update must share a task, and so its moments and rate"
        )
    stores = {d.name: inputs.open_stores(d) for d in datasets}
    buckets = shapes.run_buckets(
        config.data,
        workdir,
        lambda: _shape_sources(datasets, stores),
        ways=layout.batch_shards * jax.process_count(),
    )
    config = shapes.with_buckets(config, buckets)
    inputs.check_batches(config.data, layout)
    vocab = _check_stores(datasets, stores, streams, model_cfg)
    hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
    pipelines = inputs.train_pipelines(config, datasets, stores, streams, **hosts)
    val = {}
    for dataset in datasets:
        soft = bool(stores[dataset.name][1].num_labels)
        pipeline = inputs.val_pipeline(
            config, dataset, model=model_cfg, train_vocab=vocab, soft_labels=soft, **hosts
        )
        if pipeline is not None:
            val[dataset.name] = (pipeline, eval_tasks(soft))
    if not val:
        logging.warning("no validation data (no validation texts configured): no val metrics")
    settings = StepSettings(
        model=model_cfg,
        tasks=inputs.task_settings(config.tasks, vocab),
        optim=pretraining_optim(config.optim, streams),
    )

    def validate(params: dict) -> dict[str, float]:
        metrics = {}
        for name, (pipeline, tasks) in val.items():
            metrics |= evaluate(
                params,
                pipeline,
                settings,
                jax.random.PRNGKey(config.eval.seed),
                tasks=tasks,
                num_batches=config.eval.num_batches,
                layout=layout,
                prefix=f"val/{name}" if name else "val",
            )
        return metrics

    def close() -> None:
        for p in (*pipelines.values(), *(p for p, _ in val.values())):
            p.close()

    first_texts, first_images = stores[datasets[0].name]
    return Job(
        name="pretrain",
        settings=settings,
        mix=mix,
        pipelines=pipelines,
        streams=streams,
        validate=validate if val else None,
        initial_params=lambda: initial_params(
            model_cfg,
            config.seed,
            config.init_from,
            layout,
            objective=settings.tasks,
            image_directions=_image_directions(
                config, first_texts, first_images, datasets[0].selection, model_cfg
            ),
            mimetic_attention=config.attention_init == "mimetic",
        ),
        close=close,
    )


def _shape_sources(datasets: list[Dataset], stores: dict) -> list[tuple]:
    """`(texts, images, selection)` of every store pair the run reads, for the buckets."""
    out = []
    for dataset in datasets:
        out.append((*stores[dataset.name], dataset.selection))
        if dataset.val_texts:
            out.append((*inputs.open_stores(dataset, val=True), dataset.selection))
    return out


def _check_stores(
    datasets: list[Dataset],
    stores: dict,
    streams: dict[str, str],
    model_cfg: UniterConfig,
) -> dict:
    """The training vocabulary, after checking that every dataset's stores fit
    the model, share it, and hold soft labels where an MRC task reads them."""
    vocab = stores[datasets[0].name][0].manifest["vocab"]
    for dataset in datasets:
        texts, images = stores[dataset.name]
        inputs.check_compatible(texts, images, model_cfg)
        inputs.check_vocab(texts, vocab)
        mrc = [t for t in ("mrc", "mrc_kl") if dataset.stream(t) in streams]
        if mrc and not images.num_labels:
            raise ConfigError(
                f"{images.directory}: {mrc} read soft labels, the image store has none"
            )
    return vocab


def _image_directions(
    config: ml_collections.ConfigDict,
    texts: TextStore,
    images: ImageStore,
    selection: tuple[float, int, int],
    model_cfg: UniterConfig,
):
    """`config.image_init`: None for "random"; for "pca" the (first dataset's)
    training regions' principal directions, for "classes" the directions that
    separate the detector's classes (`train/image_init.py`)."""
    if config.image_init == "random":
        return None
    starts = {"pca": principal_directions, "classes": class_directions}
    if config.image_init not in starts:
        raise ConfigError(
            f"config.image_init is {config.image_init!r}: choose random, pca or classes"
        )
    return starts[config.image_init](
        images,
        [str(i) for i in texts.image_ids],
        model_cfg.hidden_size,
        selection=selection,
        seed=config.seed,
    )
