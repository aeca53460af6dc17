"""The pretraining loop: `python main.py --config=configs/pretrain.py --workdir=DIR`.

One task per micro-step, drawn by mix ratio from `(seed, step)`; gradients of
`optim.accumulation` micro-steps make one update. The run resumes from the
newest checkpoint in `workdir/checkpoints` with params, optimiser state, step,
PRNG key, every pipeline's position and the partly filled metric window, so
an interrupted run continues exactly as if it had not stopped. SIGTERM saves
and returns, at a step all processes agree on (`preemption`); a non-finite
loss or gradient raises `NonFiniteError` naming the step and task, leaving
the last checkpoint as the newest.

Written to the workdir: TensorBoard events and `metrics.jsonl` (one JSON
object per logged step), `checkpoints/`, `pretrain_report.json`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from etils import epath

from uniter_jax import param_checkpoint
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore
from uniter_jax.model import OPTIONAL_GROUPS, UniterConfig
from uniter_jax.model.config import ConfigError
from uniter_jax.objectives.tasks import MixSchedule, check_mix, task_for_step
from uniter_jax.sharding import Layout, check_divisible, make_mesh, to_host
from uniter_jax.train import inputs, shapes
from uniter_jax.train.checkpoint import Checkpoints
from uniter_jax.train.evaluate import eval_tasks, evaluate
from uniter_jax.train.image_init import principal_directions, with_principal_projection
from uniter_jax.train.optimizer import OptimSettings, learning_rate
from uniter_jax.train.preemption import Interrupted, Preemption
from uniter_jax.train.step import (
    TRACES,
    Objective,
    StepSettings,
    abstract_state,
    batch_fields,
    init_params,
    init_state,
    param_shardings,
    train_step,
)

_TRAIN_STREAM = 0x7472_6169  # "trai"
MODEL_DIR = "model"  # workdir/model: the final parameters, a parameter checkpoint


class NonFiniteError(FloatingPointError):
    """A step produced a non-finite loss or gradient norm."""


class History:
    """`metrics.jsonl`: one line per logged step; lines past a resumed step are dropped."""

    def __init__(self, path: epath.Path, resume_step: int, *, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if resume_step and path.exists():
            with path.open() as f:
                kept = [line for line in f if _logged_step(line) <= resume_step]
        with path.open("w") as f:
            f.writelines(kept)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **scalars}, sort_keys=True) + "\n")


def _logged_step(line: str) -> float:
    """The step of a `metrics.jsonl` line; a line cut off by a kill sorts last."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return float("inf")


class Window:
    """Training metrics since the last log line, as float64 `(sum, count)` per name."""

    def __init__(self, saved: dict[str, list[float]] | None = None):
        self.sums = collections.defaultdict(lambda: [0.0, 0.0], saved or {})

    def add(self, task: str, metrics: dict[str, Any]) -> None:
        self.sums[f"train/{task}/steps"][0] += 1.0
        self.sums[f"train/{task}/steps"][1] = 1.0
        for name, (total, count) in metrics.items():
            entry = self.sums[f"train/{task}/{name}"]
            entry[0] += float(total)
            entry[1] += float(count)

    def flush(self) -> dict[str, float]:
        out = {k: s / c for k, (s, c) in sorted(self.sums.items()) if c > 0}
        self.sums.clear()
        return out

    def state(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.sums.items()}


def optim_settings(section: ml_collections.ConfigDict) -> OptimSettings:
    return OptimSettings(**section.to_dict())


def layout_from_config(config: ml_collections.ConfigDict) -> Layout:
    """The mesh over all devices (all hosts) and the rules of the `mesh` section."""
    rules = tuple(
        (name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in config.rules
    )
    return Layout(make_mesh(config.shape.to_dict()), rules)


def initial_params(
    config: UniterConfig,
    seed: int,
    init_from: str,
    layout: Layout | None = None,
    objective: Objective | None = None,
    image_directions: tuple[np.ndarray, np.ndarray] | None = None,
    require: Sequence[str] = (),
) -> dict:
    """Fresh parameters of `objective`'s model (pretraining when None), overlaid
    with `init_from` (a parameter checkpoint folder such as a run's
    `workdir/model` or a converted UNITER, or a UNITER `.pt` / BERT `.bin` /
    `.safetensors` file) when given, laid out by `layout` (one device by
    default). Fine-tuning keeps its fresh head and drops pretraining heads.
    `image_directions` (mean, directions) start the fresh image projection
    from the features' principal directions (`train/image_init.py`). A group
    of `require` that `init_from` lacks is an error naming both."""
    layout = layout or Layout.single_device()
    fresh = init_params(config, seed, layout, objective)
    if image_directions is not None:
        start = with_principal_projection(
            to_host(fresh), *image_directions, config.initializer_range
        )
        fresh = jax.device_put(start, param_shardings(config, layout, objective))
    if not init_from:
        if require:
            raise ConfigError(f"no parameters to read {list(require)} from: init_from is empty")
        return fresh
    if os.path.isdir(init_from):
        loaded, _, _ = param_checkpoint.load(init_from)
    elif os.path.isfile(init_from):
        from uniter_jax.convert.pytorch import import_checkpoint

        # The file's own sizes: a fine-tuned NLVR2 or VCR file has more token
        # types (the overlay below extends a pretrained table to the model's).
        loaded, _, report = import_checkpoint(
            init_from, config, drop_unknown=True, sizes_from_file=True
        )
        logging.info("imported %s: %s", init_from, report.summary())
    else:
        raise FileNotFoundError(f"init_from: no checkpoint file or folder at {init_from}")
    heads = getattr(objective, "head_groups", ())
    # Heads the model lacks (pretraining heads when fine-tuning, another task's
    # head) are left out, and said so.
    unused = tuple(g for g in loaded if g != "uniter" and g not in fresh)
    if unused:
        logging.info("not used from %s: the heads %s", init_from, list(unused))
    merged, absent = param_checkpoint.overlay(
        to_host(fresh),
        loaded,
        where=init_from,
        optional=(*OPTIONAL_GROUPS, *heads),
        unused=unused,
    )
    missing = [g for g in require if g in absent]
    if missing:
        raise ConfigError(f"{init_from} has no {missing} parameters")
    logging.info(
        "initialised from %s; freshly initialised groups: %s", init_from, list(absent) or "none"
    )
    return jax.device_put(merged, param_shardings(config, layout, objective))


@dataclasses.dataclass
class Job:
    """What one training run trains: the part that differs between pretraining and
    each fine-tuning task; `train` runs any job the same way.

    `pipelines` maps each task to an iterator of host batches with
    `state()` / `restore(state)` / `close()` (a `Pipeline` or a wrapper);
    `validate(params)` returns `{"val/...": value}`; `initial_params()`
    creates (or loads) the parameters of a fresh run.
    """

    name: str  # the report is `<name>_report.json`
    settings: StepSettings
    mix: MixSchedule
    pipelines: dict[str, Any]
    validate: Callable[[dict], dict[str, float]] | None
    initial_params: Callable[[], dict]
    close: Callable[[], None]


def mix_schedule(section: ml_collections.ConfigDict) -> MixSchedule:
    """`tasks.mix`, after `tasks.first_mix` for `tasks.first_steps` micro-steps."""
    first_steps = int(section.get("first_steps", 0))
    first = section.get("first_mix")
    return MixSchedule(
        mix=check_mix(section.mix.to_dict()),
        first=check_mix(first.to_dict()) if first_steps and first is not None else {},
        first_steps=first_steps,
    )


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


def make_job(config: ml_collections.ConfigDict, workdir: str, layout: Layout) -> Job:
    """The job `config.job` names: pretraining or fine-tuning on a downstream task."""
    if config.job == "pretrain":
        return pretraining_job(config, workdir, layout)
    if config.job == "finetune":
        from uniter_jax.downstream import finetune

        return finetune.finetuning_job(config, workdir, layout)
    raise ConfigError(f"unknown job {config.job!r}; known: pretrain, finetune")


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the config's job; returns the report also written to the workdir.

    `on_step(step)` is called after each micro-step (tests use it to interrupt).
    """
    root = epath.Path(workdir)  # a local folder or gs://bucket/...
    fresh = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    # ---- configuration --------------------------------------------------
    try:
        layout = layout_from_config(config.mesh)
        logging.info("mesh %s, rules %s", dict(layout.mesh.shape), layout.rules)
        job = make_job(config, workdir, layout)
    except Exception:
        # A run that cannot start (a config or data mismatch) leaves no
        # half-made workdir behind for the next try to trip over.
        if fresh and jax.process_index() == 0:
            root.rmtree(missing_ok=True)
        raise
    settings, mix, pipelines = job.settings, job.mix, job.pipelines
    model_cfg = settings.model
    total = settings.optim.total_steps * settings.optim.accumulation  # micro-steps
    abstract = abstract_state(settings, layout)
    check_divisible(abstract, jax.tree.map(lambda a: a.sharding, abstract))
    writes = jax.process_index() == 0  # one process writes logs and reports

    def every(n: int, step: int) -> bool:
        """Whether a periodic action with period `n` (0 = never) runs after `step`."""
        return bool(n) and (step % n == 0 or step == total)

    # ---- state: fresh, or the newest checkpoint ---------------------------
    checkpoints = Checkpoints(
        str(root / "checkpoints"),
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )

    start = checkpoints.latest_step() or 0
    report_path = root / f"{job.name}_report.json"
    if start >= total and report_path.exists():
        logging.info("the newest checkpoint is step %d of %d: nothing to train", start, total)
        checkpoints.close()
        job.close()
        return json.loads(report_path.read_text())
    # Masking and dropout keys: apart from nnx.Rngs(seed)'s init stream.
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _TRAIN_STREAM)
    window = Window()
    # Restored straight into this run's shards, whatever mesh saved them; an
    # unreadable newest step gives way to the one before.
    newest = checkpoints.restore_newest(abstract) if start else None
    start = newest[0] if newest else 0
    if newest:
        _, state, meta = newest
        key = np.asarray(meta["key"], np.uint32)
        if set(meta["data"]) != set(pipelines):
            raise ConfigError(
                f"{checkpoints.directory}/{start} was saved by a run with tasks "
                f"{sorted(meta['data'])}; this config trains {sorted(pipelines)}: resume with "
                "the same tasks.mix (or use a new workdir)"
            )
        for task, pipeline in pipelines.items():
            try:
                pipeline.restore(meta["data"][task])
            except DataError as e:
                raise DataError(
                    f"cannot resume the {task} pipeline from {checkpoints.directory}/{start}: "
                    f"{e.message}"
                ) from None
        window = Window(meta["window"])
        logging.info("resumed from step %d of %d", start, total)
    else:
        state = init_state(job.initial_params(), settings, layout)
        logging.info(
            "parameters:\n%s",
            parameter_overview.get_parameter_overview(state["params"], include_stats="sharding"),
        )
    key = jax.device_put(np.asarray(key), layout.replicated)
    history = History(root / "metrics.jsonl", start, enabled=writes)
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False
    )
    progress = periodic_actions.ReportProgress(
        num_train_steps=total, writer=writer, every_steps=config.log.every_steps or None
    )
    schedule = learning_rate(settings.optim)

    def save(step: int) -> None:
        meta = {
            "key": to_host(key).tolist(),
            "data": {t: p.state() for t, p in pipelines.items()},
            "window": window.state(),
        }
        checkpoints.save(step, state, meta)

    def validate(step: int) -> dict[str, float]:
        if job.validate is None:
            return {}
        metrics = job.validate(state["params"])
        writer.write_scalars(step, metrics)
        history.write(step, metrics)
        return metrics

    # ---- the loop ---------------------------------------------------------
    # A step's outputs are read after the next step is dispatched, so the host
    # never waits for the device between steps; logging, evaluation, saving
    # and stopping first settle the pending step.
    pending: tuple[int, str, Any] | None = None

    def settle() -> None:
        nonlocal pending
        if pending is None:
            return
        step, task, out = pending
        pending = None
        out = to_host(out)
        if not out["finite"]:
            objective, grad_norm = out["metrics"]["objective"][0], out["metrics"]["grad_norm"][0]
            newest = checkpoints.latest_step()
            raise NonFiniteError(
                f"non-finite {'loss' if not np.isfinite(objective) else 'gradient'} at step "
                f"{step} (task {task}): loss {objective}, gradient norm {grad_norm}; the update "
                "was not applied; "
                + (f"the newest checkpoint is step {newest}" if newest else "no checkpoint yet")
            )
        window.add(task, out["metrics"])

    status, metrics = "finished", {}
    logging.info("training %s for %d micro-steps, mix %s", model_cfg, total, mix)
    try:
        with Preemption() as preemption:
            for step in range(start, total):
                task = task_for_step(mix.at(step), config.seed, step)
                batch = next(pipelines[task])
                fields = layout.global_batch(
                    {k: batch[k] for k in batch_fields(task, settings.tasks)}
                )
                state, out = train_step(
                    state, fields, key, task=task, settings=settings, layout=layout
                )
                done = step + 1  # steps are counted as done: logs, checkpoints, errors
                settle()
                pending = (done, task, out)
                progress(done)
                if every(config.log.every_steps, done):
                    settle()
                    scalars = window.flush()
                    scalars["train/lr"] = float(schedule((done - 1) // settings.optim.accumulation))
                    writer.write_scalars(done, scalars)
                    history.write(done, scalars)
                # Agreed by all processes; before validation: save within the grace period.
                stop = preemption.stop()
                if every(config.eval.every_steps, done) and not stop:
                    settle()
                    try:
                        metrics = validate(done)
                    except Interrupted:
                        stop = True
                        logging.warning("validation at step %d interrupted by SIGTERM", done)
                if every(config.checkpoint.every_steps, done) or stop or done == total:
                    settle()
                    save(done)
                if on_step is not None:
                    on_step(done)
                if stop:
                    status = "preempted"
                    logging.warning("stopped at step %d after SIGTERM; checkpoint saved", done)
                    break
            settle()
    finally:
        checkpoints.wait()
        checkpoints.close()
        writer.flush()
        job.close()

    if status == "finished":
        # The trained parameters alone, in the `init_from` format: fine-tuning
        # and prediction start from `workdir/model`.
        param_checkpoint.save(
            str(root / MODEL_DIR),
            to_host(state["params"]),
            model_cfg,
            source={"job": job.name, "workdir": workdir, "step": total},
            overwrite=True,
        )
    report = {
        "status": status,
        "step": int(to_host(state["step"])),
        "total_steps": total,
        "validation": metrics,
        "compilations": {f"{kind}/{task}": n for (kind, task), n in sorted(TRACES.items())},
    }
    if writes:
        report_path.write_text(json.dumps(report, indent=2))
    if metrics:
        width = max(map(len, metrics))
        logging.info(
            "validation at step %d:\n%s",
            report["step"],
            "\n".join(f"  {k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())),
        )
    return report
