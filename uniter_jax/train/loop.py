"""The training loop: runs (or resumes) one `Job` (`train/job.py`), pretraining's
or a fine-tuning task's; `main.py` picks which.

One stream (a task, or pretraining's dataset and task) per micro-step,
drawn by mix ratio from `(seed, step)`; gradients of
`optim.accumulation` micro-steps make one update. The run resumes from the
newest checkpoint in `workdir/checkpoints` with params, optimiser state, step,
PRNG key, every pipeline's position and the partly filled metric window, so
an interrupted run continues exactly as if it had not stopped. SIGTERM saves
and returns, at a step all processes agree on (`preemption`); a non-finite
loss or gradient raises `NonFiniteError` naming the step and task, leaving
the last checkpoint as the newest.

Written to the workdir: TensorBoard events and `metrics.jsonl` (one JSON
object per logged step), `checkpoints/`, `<job>_report.json` and, when the
run finishes, `model/` (the parameters alone, the `init_from` format).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from etils import epath

from uniter_jax import param_checkpoint
from uniter_jax.data.errors import DataError
from uniter_jax.model.config import ConfigError
from uniter_jax.seeds import train_key
from uniter_jax.sharding import Layout, check_divisible, to_host
from uniter_jax.train.checkpoint import Checkpoints
from uniter_jax.train.history import History, Window
from uniter_jax.train.job import Job, JobFactory
from uniter_jax.train.optimizer import OptimSettings, learning_rate
from uniter_jax.train.preemption import Interrupted, Preemption
from uniter_jax.train.state import MODEL_DIR, layout_from_config
from uniter_jax.train.step import TRACES, abstract_state, batch_fields, init_state, train_step


class NonFiniteError(FloatingPointError):
    """A step produced a non-finite loss or gradient norm."""


def _start_job(
    config: ml_collections.ConfigDict, workdir: str, make_job: JobFactory
) -> tuple[Layout, Job]:
    """The layout and the job; a run that cannot start (a config or data
    mismatch) leaves no half-made workdir behind for the next try to trip over."""
    root = epath.Path(workdir)  # a local folder or gs://bucket/...
    fresh = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        layout = layout_from_config(config.mesh)
        logging.info("mesh %s, rules %s", dict(layout.mesh.shape), layout.rules)
        return layout, make_job(config, workdir, layout)
    except Exception:
        if fresh and jax.process_index() == 0:
            root.rmtree(missing_ok=True)
        raise


@dataclasses.dataclass
class _Run:
    """One run's state between micro-steps and what it writes to.

    A step's outputs are read after the next step is dispatched (`pending`),
    so the host never waits for the device between steps; logging,
    evaluation, saving and stopping first `settle` the pending step.
    """

    job: Job
    layout: Layout
    state: dict
    key: jax.Array
    window: Window
    checkpoints: Checkpoints
    history: History
    writer: Any
    pending: tuple[int, str, Any] | None = None

    def step(self, step: int, stream: str, batch: dict) -> None:
        """Dispatches micro-step `step` on a batch of `stream` (its metrics are
        logged under the stream's name, e.g. `train/coco/itm/loss`)."""
        task = self.job.task(stream)
        fields = self.layout.global_batch(
            {k: batch[k] for k in batch_fields(task, self.job.settings.tasks)}
        )
        self.state, out = train_step(
            self.state, fields, self.key, task=task, settings=self.job.settings, layout=self.layout
        )
        self.settle()
        self.pending = (step + 1, stream, out)

    def settle(self) -> None:
        if self.pending is None:
            return
        step, stream, out = self.pending
        self.pending = None
        out = to_host(out)
        if not out["finite"]:
            objective, grad_norm = out["metrics"]["objective"][0], out["metrics"]["grad_norm"][0]
            newest = self.checkpoints.latest_step()
            raise NonFiniteError(
                f"non-finite {'loss' if not np.isfinite(objective) else 'gradient'} at step "
                f"{step} (task {stream}): loss {objective}, gradient norm {grad_norm}; the update "
                "was not applied; "
                + (f"the newest checkpoint is step {newest}" if newest else "no checkpoint yet")
            )
        self.window.add(stream, out["metrics"])

    def log(self, step: int) -> None:
        self.settle()
        scalars = self.window.flush()
        optim = self.job.settings.optim
        scalars["train/lr"] = float(learning_rate(optim)((step - 1) // optim.accumulation))
        self.writer.write_scalars(step, scalars)
        self.history.write(step, scalars)

    def validate(self, step: int) -> dict[str, float]:
        self.settle()
        if self.job.validate is None:
            return {}
        metrics = self.job.validate(self.state["params"])
        self.writer.write_scalars(step, metrics)
        self.history.write(step, metrics)
        return metrics

    def save(self, step: int) -> None:
        self.settle()
        meta = {
            "key": to_host(self.key).tolist(),
            "data": {t: p.state() for t, p in self.job.pipelines.items()},
            "window": self.window.state(),
            "draw_every": self.job.mix.draw_every,
            "moments": moment_layout(self.job.settings.optim),
        }
        self.checkpoints.save(step, self.state, meta)


def _restore(
    checkpoints: Checkpoints, job: Job, layout: Layout, seed: int
) -> tuple[int, dict, np.ndarray, Window]:
    """`(step, state, key, window)` of the newest readable checkpoint (restored
    straight into this run's shards, whatever mesh saved it; an unreadable
    newest step gives way to the one before), else of a fresh start."""
    abstract = abstract_state(job.settings, layout)
    check_divisible(abstract, jax.tree.map(lambda a: a.sharding, abstract))
    latest = checkpoints.latest_step()
    if latest:
        _check_moments(checkpoints, latest, job.settings.optim)
    newest = checkpoints.restore_newest(abstract) if latest else None
    if not newest:
        key = train_key(seed)  # apart from nnx.Rngs(seed)'s init stream
        state = init_state(job.initial_params(), job.settings, layout)
        overview = parameter_overview.get_parameter_overview(
            state["params"], include_stats="sharding"
        )
        logging.info("parameters:\n%s", overview)
        return 0, state, key, Window()
    start, state, meta = newest
    if set(meta["data"]) != set(job.pipelines):
        raise ConfigError(
            f"{checkpoints.directory}/{start} was saved by a run with streams "
            f"{sorted(meta['data'])}; this config trains {sorted(job.pipelines)}: resume with "
            "the same tasks.mix and data.datasets (or use a new workdir)"
        )
    # Checkpoints from before the option drew a task per micro-step.
    saved, draw_every = meta.get("draw_every", 1), job.mix.draw_every
    if saved != draw_every:
        raise ConfigError(
            f"{checkpoints.directory}/{start} was saved by a run drawing a task every {saved} "
            f"micro-step(s); this config draws one every {draw_every}: resume with "
            f"--config.tasks.draw={'micro_step' if saved == 1 else 'update'} (and the same "
            "optim.accumulation), or use a new workdir"
        )
    for stream, pipeline in job.pipelines.items():
        try:
            pipeline.restore(meta["data"][stream])
        except DataError as e:
            raise DataError(
                f"cannot resume the {stream} pipeline from {checkpoints.directory}/{start}: "
                f"{e.message}"
            ) from None
    return start, state, np.asarray(meta["key"], np.uint32), Window(meta["window"])


def moment_layout(optim: OptimSettings) -> list[str] | None:
    """The tasks that own optimiser moments; None: one state shared by all."""
    return list(optim.moment_tasks) if optim.per_task_moments else None


def _check_moments(checkpoints: Checkpoints, step: int, optim: OptimSettings) -> None:
    """Refuses, before any array is read, a checkpoint whose optimiser state
    is laid out for other tasks: its restore would fail and move every step
    aside as unreadable."""
    try:
        saved = checkpoints.meta(step).get("moments")
    except Exception:  # unreadable: restore_newest names it and moves it aside
        return
    want = moment_layout(optim)
    if saved != want:

        def described(layout: list[str] | None) -> str:
            return f"per task {layout}" if layout else "shared by all tasks"

        raise ConfigError(
            f"{checkpoints.directory}/{step} holds optimiser moments {described(saved)}; "
            f"this config's are {described(want)}: resume with the same "
            "optim.per_task_moments and task mix (or use a new workdir)"
        )


def _every(n: int, step: int, total: int) -> bool:
    """Whether a periodic action with period `n` (0 = never) runs after `step`."""
    return bool(n) and (step % n == 0 or step == total)


def _loop(
    run: _Run,
    config: ml_collections.ConfigDict,
    start: int,
    total: int,
    on_step: Callable[[int], None] | None,
) -> tuple[str, dict[str, float]]:
    """Micro-steps `start` to `total`; returns `(status, last validation metrics)`."""
    progress = periodic_actions.ReportProgress(
        num_train_steps=total, writer=run.writer, every_steps=config.log.every_steps or None
    )
    metrics: dict[str, float] = {}
    with Preemption() as preemption:
        for step in range(start, total):
            stream = run.job.mix.stream(step, config.seed)
            run.step(step, stream, next(run.job.pipelines[stream]))
            done = step + 1  # steps are counted as done: logs, checkpoints, errors
            progress(done)
            if _every(config.log.every_steps, done, total):
                run.log(done)
            # Agreed by all processes; before validation: save within the grace period.
            stop = preemption.stop()
            if _every(config.eval.every_steps, done, total) and not stop:
                try:
                    metrics = run.validate(done)
                except Interrupted:
                    stop = True
                    logging.warning("validation at step %d interrupted by SIGTERM", done)
            if _every(config.checkpoint.every_steps, done, total) or stop or done == total:
                run.save(done)
            if on_step is not None:
                on_step(done)
            if stop:
                logging.warning("stopped at step %d after SIGTERM; checkpoint saved", done)
                return "preempted", metrics
        run.settle()
    return "finished", metrics


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    make_job: JobFactory,
    *,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the job `make_job` makes of `config`; returns the report
    also written to the workdir.

    `on_step(step)` is called after each micro-step (tests use it to interrupt).
    """
    root = epath.Path(workdir)
    layout, job = _start_job(config, workdir, make_job)
    settings = job.settings
    total = settings.optim.total_steps * settings.optim.accumulation  # micro-steps
    checkpoints = Checkpoints(
        str(root / "checkpoints"),
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    report_path = root / f"{job.name}_report.json"
    newest = checkpoints.latest_step() or 0
    if newest >= total and report_path.exists():
        logging.info("the newest checkpoint is step %d of %d: nothing to train", newest, total)
        checkpoints.close()
        job.close()
        return json.loads(report_path.read_text())
    start, state, key, window = _restore(checkpoints, job, layout, config.seed)
    if start:
        logging.info("resumed from step %d of %d", start, total)
    writes = jax.process_index() == 0  # one process writes logs and reports
    run = _Run(
        job=job,
        layout=layout,
        state=state,
        key=jax.device_put(np.asarray(key), layout.replicated),
        window=window,
        checkpoints=checkpoints,
        history=History(root / "metrics.jsonl", start, enabled=writes),
        writer=metric_writers.create_default_writer(
            workdir, just_logging=not writes, asynchronous=False
        ),
    )
    logging.info("training %s for %d micro-steps, mix %s", settings.model, total, job.mix)
    try:
        status, metrics = _loop(run, config, start, total, on_step)
    finally:
        checkpoints.wait()
        checkpoints.close()
        run.writer.flush()
        job.close()
    return _finish(run, workdir, status, metrics, total, report_path if writes else None)


def _finish(
    run: _Run,
    workdir: str,
    status: str,
    metrics: dict[str, float],
    total: int,
    report_path: epath.Path | None,
) -> dict[str, Any]:
    """Writes `model/` (a finished run's parameters alone, the `init_from`
    format: fine-tuning and prediction start from it) and the report."""
    if status == "finished":
        param_checkpoint.save(
            str(epath.Path(workdir) / MODEL_DIR),
            to_host(run.state["params"]),
            run.job.settings.model,
            source={"job": run.job.name, "workdir": workdir, "step": total},
            overwrite=True,
        )
    report = {
        "status": status,
        "step": int(to_host(run.state["step"])),
        "total_steps": total,
        "validation": metrics,
        "compilations": {f"{kind}/{task}": n for (kind, task), n in sorted(TRACES.items())},
    }
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=2))
    if metrics:
        width = max(map(len, metrics))
        logging.info(
            "validation at step %d:\n%s",
            report["step"],
            "\n".join(f"  {k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())),
        )
    return report
