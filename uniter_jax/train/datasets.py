"""The pretraining datasets of a config: `data.datasets`, or the single store pair.

UNITER pretrains on several corpora at once (docs/original.md, Pretraining
data). `data.datasets` maps each dataset's name to its stores and task mix:

  config.data.datasets.coco = ConfigDict(dict(
      texts=("txt/coco_train", "txt/coco_restval"),     # text stores, read as one
      images=("img/coco_train2014", "img/coco_val2014"),  # image stores, read as one
      val_texts=("txt/coco_val",), val_images=("img/coco_val2014",),
      mix=dict(itm=2, mlm=2, mrfr=1, mrc_kl=1),         # this dataset's task ratios
  ))

Every (dataset, task) pair is one stream, `"<dataset>/<task>"`, drawn by its
ratio among all streams' ratios, as the original's loader draws them. A
dataset may also set `conf_th`, `min_bb` and `max_bb` where its region
features were extracted differently. Each path may be a store or a sharded
store (`uniter_jax/data/store_sets.py`). A dataset whose `texts` and `images`
are both empty reads a built-in synthetic corpus of that name (coco, vg, cc,
sbu; `uniter_jax/data/synthetic_corpora.py`).

Without `data.datasets`, `data.texts`/`data.images` (or the synthetic world)
make one unnamed dataset whose streams are the task names, as before.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from uniter_jax.model.config import ConfigError
from uniter_jax.objectives.tasks import TASKS, MixSchedule, check_mix

# What a `data.datasets` entry may set.
ENTRY_KEYS = ("texts", "images", "val_texts", "val_images", "mix", "conf_th", "min_bb", "max_bb")
SELECTION_KEYS = ("conf_th", "min_bb", "max_bb")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One pretraining dataset: its stores, task ratios and region selection."""

    name: str  # "" for the single unnamed dataset (streams named by task alone)
    texts: tuple[str, ...]
    images: tuple[str, ...]
    val_texts: tuple[str, ...]  # empty: no validation of this dataset
    val_images: tuple[str, ...]
    mix: dict[str, float]  # task -> ratio, the non-zero ones
    selection: tuple[float, int, int]  # conf_th, min_bb, max_bb

    def stream(self, task: str) -> str:
        """The name of this dataset's stream of `task` (its pipeline, its metrics)."""
        return f"{self.name}/{task}" if self.name else task

    @property
    def synthetic(self) -> bool:
        return not self.texts and not self.images


def _paths(value, where: str) -> tuple[str, ...]:
    """A path or a sequence of paths as a tuple, empty strings dropped."""
    values = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{where}: expected a path or a tuple of paths, got {value!r}")
    return tuple(v for v in values if v)


def configured_datasets(config: ml_collections.ConfigDict) -> list[Dataset]:
    """The datasets `config.data` describes, in name order (see the module docstring)."""
    data = config.data
    selection = tuple(data[k] for k in SELECTION_KEYS)
    entries = data.get("datasets") or {}
    if not entries:
        return [
            Dataset(
                name="",
                texts=_paths(data.texts, "data.texts"),
                images=_paths(data.images, "data.images"),
                val_texts=_paths(data.val_texts, "data.val_texts"),
                val_images=_paths(data.val_images or data.images, "data.val_images"),
                mix=check_mix(config.tasks.mix.to_dict()),
                selection=selection,
            )
        ]
    if data.texts or data.images:
        raise ConfigError(
            "set data.datasets or data.texts/data.images, not both (data.datasets lists every "
            "store of the run)"
        )
    return [_entry(name, entries[name], config, selection) for name in sorted(entries)]


def _entry(
    name: str,
    entry: ml_collections.ConfigDict,
    config: ml_collections.ConfigDict,
    selection: tuple[float, int, int],
) -> Dataset:
    where = f"data.datasets.{name}"
    if not name.isidentifier():
        raise ConfigError(f"{where}: a dataset name must be a plain identifier")
    unknown = sorted(set(entry.keys()) - set(ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {list(ENTRY_KEYS)}")
    texts = _paths(entry.get("texts", ()), f"{where}.texts")
    images = _paths(entry.get("images", ()), f"{where}.images")
    if bool(texts) != bool(images):
        raise ConfigError(f"{where}: set both texts and images, or neither (synthetic data)")
    val_texts = _paths(entry.get("val_texts", ()), f"{where}.val_texts")
    val_images = _paths(entry.get("val_images", ()), f"{where}.val_images") or images
    if val_texts and not val_images:
        raise ConfigError(f"{where}: val_texts is set but there are no images to read them with")
    mix = entry.get("mix") or config.tasks.mix
    try:
        checked = check_mix(mix.to_dict() if hasattr(mix, "to_dict") else dict(mix))
    except ConfigError as e:
        raise ConfigError(f"{where}.mix: {e}") from None
    return Dataset(
        name=name,
        texts=texts,
        images=images,
        val_texts=val_texts,
        val_images=val_images,
        mix=checked,
        selection=tuple(entry.get(k, v) for k, v in zip(SELECTION_KEYS, selection, strict=True)),
    )


DRAWS = ("micro_step", "update")


def stream_schedule(
    datasets: list[Dataset], section: ml_collections.ConfigDict, accumulation: int = 1
) -> tuple[MixSchedule, dict[str, str]]:
    """The mix schedule over every dataset's streams and the task of each stream.

    `tasks.draw`: "micro_step" (the default) draws a stream for each
    micro-step; "update" one for each update of `accumulation` micro-steps, as
    the original's `MetaLoader` does, so an update never mixes tasks.

    `tasks.first_mix` (for the first `tasks.first_steps` micro-steps) and
    `tasks.second_mix` (for the `tasks.second_steps` after them) name tasks;
    each task's weight is shared among the datasets that train it in
    proportion to their ratios for it (evenly where no dataset mixes it in)."""
    streams = {d.stream(t): t for d in datasets for t in d.mix}
    mix = {d.stream(t): r for d in datasets for t, r in d.mix.items()}
    draw = section.get("draw", "micro_step")
    if draw not in DRAWS:
        raise ConfigError(f"tasks.draw must be one of {DRAWS}, got {draw!r}")
    phases: dict = {}
    for phase in ("first", "second"):
        steps = int(section.get(f"{phase}_steps", 0))
        tasks = section.get(f"{phase}_mix")
        by_stream = phase_streams(datasets, tasks.to_dict()) if steps and tasks else {}
        streams.update({stream: task for stream, (task, _) in by_stream.items()})
        phases[phase] = {stream: weight for stream, (_, weight) in by_stream.items()}
        phases[f"{phase}_steps"] = steps
    draw_every = accumulation if draw == "update" else 1
    schedule = MixSchedule(mix=mix, draw_every=draw_every, **phases)
    return schedule, streams


def phase_streams(datasets: list[Dataset], tasks: dict[str, float]) -> dict[str, tuple[str, float]]:
    """Each stream of a phase's task weights, as `stream -> (task, weight)`:
    a task's weight shared among the datasets that mix it in, by their ratios
    for it (evenly where none does)."""
    by_stream = {}
    for task, weight in check_mix(tasks).items():
        having = {d.name: d.mix[task] for d in datasets if task in d.mix} or {
            d.name: 1.0 for d in datasets
        }
        total = sum(having.values())
        for d in datasets:
            if d.name in having:
                by_stream[d.stream(task)] = (task, weight * having[d.name] / total)
    return by_stream


def stream_seed_index(datasets: list[Dataset], dataset: Dataset, task: str) -> tuple[int, int]:
    """`(stream, streams)` for `pipeline_seed`: each stream reads in its own order.
    The unnamed dataset keeps the task's own index (saved runs resume)."""
    return datasets.index(dataset) * len(TASKS) + TASKS.index(task), len(datasets) * len(TASKS)
