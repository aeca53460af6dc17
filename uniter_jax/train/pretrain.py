"""The pretraining job: the tasks of `config.tasks.mix` on the configured (or
synthetic) stores, validated on the validation store (`train/job.py`)."""

from __future__ import annotations

import jax
import ml_collections

from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore
from uniter_jax.model import UniterConfig
from uniter_jax.model.config import ConfigError
from uniter_jax.sharding import Layout
from uniter_jax.train import inputs, shapes
from uniter_jax.train.evaluate import eval_tasks, evaluate
from uniter_jax.train.image_init import principal_directions
from uniter_jax.train.job import Job, mix_schedule
from uniter_jax.train.state import initial_params, optim_settings
from uniter_jax.train.step import StepSettings


def pretraining_job(config: ml_collections.ConfigDict, workdir: str, layout: Layout) -> Job:
    """The pretraining tasks of `config.tasks.mix` on the configured (or synthetic) stores."""
    model_cfg = inputs.model_config(config.model)
    mix = mix_schedule(config.tasks)
    tasks = mix.tasks
    stores = inputs.resolve_stores(config, workdir)
    read = [(stores.texts, stores.images)] + (
        [(stores.val_texts, stores.val_images)] if stores.val_texts else []
    )
    buckets = shapes.run_buckets(
        config.data,
        workdir,
        lambda: [(TextStore(t), ImageStore(i)) for t, i in read],
        ways=layout.batch_shards * jax.process_count(),
    )
    config = shapes.with_buckets(config, buckets)
    inputs.check_batches(config.data, layout)
    hosts = dict(process_index=jax.process_index(), process_count=jax.process_count())
    pipelines = inputs.train_pipelines(config, stores, tasks, **hosts)
    any_pipeline = pipelines[tasks[0]]
    inputs.check_compatible(any_pipeline.texts, any_pipeline.images, model_cfg)
    has_soft = bool(any_pipeline.images.num_labels)
    if any(t in ("mrc", "mrc_kl") for t in tasks) and not has_soft:
        raise ConfigError(f"{stores.images}: MRC tasks need soft labels, the image store has none")
    val = inputs.val_pipeline(
        config,
        stores,
        model=model_cfg,
        train_vocab=any_pipeline.texts.manifest["vocab"],
        soft_labels=has_soft,
        **hosts,
    )
    settings = StepSettings(
        model=model_cfg,
        tasks=inputs.task_settings(config.tasks, any_pipeline.texts.manifest["vocab"]),
        optim=optim_settings(config.optim),
    )

    def validate(params: dict) -> dict[str, float]:
        return evaluate(
            params,
            val,
            settings,
            jax.random.PRNGKey(config.eval.seed),
            tasks=eval_tasks(has_soft),
            num_batches=config.eval.num_batches,
            layout=layout,
        )

    def close() -> None:
        for p in (*pipelines.values(), val):
            if p is not None:
                p.close()

    return Job(
        name="pretrain",
        settings=settings,
        mix=mix,
        pipelines=pipelines,
        validate=validate if val is not None else None,
        initial_params=lambda: initial_params(
            model_cfg,
            config.seed,
            config.init_from,
            layout,
            objective=settings.tasks,
            image_directions=_image_directions(config, any_pipeline, model_cfg),
        ),
        close=close,
    )


def _image_directions(config: ml_collections.ConfigDict, pipeline, model_cfg: UniterConfig):
    """`config.image_init`: None for "random", the training regions' principal
    directions for "pca"."""
    if config.image_init == "random":
        return None
    if config.image_init != "pca":
        raise ConfigError(f"config.image_init is {config.image_init!r}: choose random or pca")
    data = config.data
    return principal_directions(
        pipeline.images,
        [str(i) for i in pipeline.texts.image_ids],
        model_cfg.hidden_size,
        selection=(data.conf_th, data.min_bb, data.max_bb),
        seed=config.seed,
    )
