"""The extraction's output folder: shards, their label files, reports, the index.

  p0000-00000/           a complete image store (`ImageStoreWriter`), named
                         `p<process>-<serial>`: each process numbers its own
  labels/p0000-00000.npz that shard's object and attribute labels (`read_labels`)
  bad-images-p0000.txt   `id<TAB>file<TAB>reason` of that process's last run
  shards.json            the shard index (`store_sets.py`) over every complete shard

A shard is complete when its manifest exists: `ImageStoreWriter` writes it last
and renames the folder into place, so a killed run leaves only a hidden
temporary folder (`.p0000-00003.tmp-...`), which `clean_leftovers` removes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence

import numpy as np

from uniter_jax.data import region_labels, store_sets
from uniter_jax.data.convert.common import Skipped
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import MANIFEST, read_json
from uniter_jax.data.image_store import ImageStore
from uniter_jax.features.image_files import ImageFile

log = logging.getLogger(__name__)

# Per region, in the side file `labels/<shard>.npz` (`region_labels`).
LABELS, LABEL_FIELDS = region_labels.LABELS, region_labels.LABEL_FIELDS
labels_path, write_labels = region_labels.labels_path, region_labels.write_labels
_SHARD = re.compile(r"^p(\d{4})-(\d{5})$")


def shard_folder_name(process_index: int, serial: int) -> str:
    return f"p{process_index:04d}-{serial:05d}"


def finished_shards(out_dir: str) -> list[str]:
    """Names of the complete shards in `out_dir`, in name order."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(
        name
        for name in os.listdir(out_dir)
        if _SHARD.match(name) and os.path.isfile(os.path.join(out_dir, name, MANIFEST))
    )


def next_serial(out_dir: str, process_index: int) -> int:
    """The serial of the next shard of process `process_index`."""
    serials = [
        int(m.group(2))
        for m in map(_SHARD.match, finished_shards(out_dir))
        if int(m.group(1)) == process_index
    ]
    return max(serials, default=-1) + 1


def report_path(out_dir: str, process_index: int) -> str:
    return os.path.join(out_dir, f"bad-images-p{process_index:04d}.txt")


def check_output(out_dir: str) -> None:
    """Raises DataError unless `out_dir` is absent, a folder of ours, or empty."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError("exists and is not a folder", file=out_dir)
    if os.path.isfile(os.path.join(out_dir, MANIFEST)):
        raise DataError("is a plain store; extraction writes a sharded one", file=out_dir)
    index = store_sets.read_shard_index(out_dir) if os.path.isdir(out_dir) else None
    if index is not None and index["kind"] != "image":
        raise DataError("holds a sharded text store", file=out_dir)


def clean_leftovers(out_dir: str, process_index: int) -> None:
    """Removes what a killed run of this process left: temporary shard folders,
    and label files of shards that were never completed. Other processes' files
    are theirs (they may be running)."""
    prefix = f"p{process_index:04d}-"
    done = set(finished_shards(out_dir))
    for name in os.listdir(out_dir):
        if name.startswith(f".{prefix}") and ".tmp-" in name:
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
    labels = os.path.join(out_dir, LABELS)
    for name in os.listdir(labels) if os.path.isdir(labels) else []:
        if name.startswith(prefix) and name.split(".")[0] not in done:
            os.remove(os.path.join(labels, name))


def stored_ids(out_dir: str, shards: Sequence[str]) -> dict[str, str]:
    """Image id -> shard, over `shards`; an id in two shards is a DataError."""
    owner: dict[str, str] = {}
    for shard in shards:
        for image_id in ImageStore(os.path.join(out_dir, shard), verify_index=False).ids:
            image_id = str(image_id)
            if image_id in owner:
                raise DataError(
                    f"image {image_id!r} is in shards {owner[image_id]} and {shard}: remove one",
                    file=out_dir,
                )
            owner[image_id] = shard
    return owner


def _difference(key: str, there: object, now: object) -> str:
    """`key: a there, b now`, by field where both are dicts."""
    if isinstance(there, dict) and isinstance(now, dict):
        fields = sorted(f for f in {*there, *now} if there.get(f) != now.get(f))
        return "; ".join(f"{key}.{f}: {there.get(f)!r} there, {now.get(f)!r} now" for f in fields)
    return f"{key}: {there!r} there, {now!r} now"


# What a resumed run must share with the shards already there (the weights'
# path may differ: the same file copied elsewhere).
_RESUME_KEYS = ("layout", "detector", "extraction")


def check_resumable(out_dir: str, shards: Sequence[str], source: dict) -> None:
    """Raises DataError unless the shards already in `out_dir` were made as
    `source` (a shard manifest's `source`) says this run makes its own: one
    store must not mix selections, detectors or proposal procedures. Shards
    from before `box_convention` was recorded made Caffe-convention proposals."""
    if not shards:
        return
    path = os.path.join(out_dir, shards[0], MANIFEST)
    found = read_json(path).get("source", {})
    settings = found.get("extraction")
    if isinstance(settings, dict):
        found = {**found, "extraction": {"box_convention": "caffe", **settings}}
    now = json.loads(json.dumps(source))  # tuples as the manifest holds them: lists
    differ = [k for k in _RESUME_KEYS if k in now and found.get(k) != now[k]]
    if differ:
        detail = "; ".join(_difference(k, found.get(k), now[k]) for k in differ)
        raise DataError(
            f"its shards were made with other settings ({detail}): extract into a new --out, "
            "or rerun with the settings the shards record",
            file=path,
            field=differ[0],
        )


def read_labels(out_dir: str) -> dict[str, dict[str, np.ndarray]]:
    """Image id -> its regions' `object_class`, `object_conf`, `attribute`,
    `attribute_conf` `[n]` (those present; in the store's region order), over
    every complete shard of an extraction output."""
    return region_labels.read_labels(out_dir, finished_shards(out_dir))


def write_report(out_dir: str, process_index: int, skipped: Sequence[Skipped]) -> None:
    """This process's bad-images report (removed when there were none)."""
    path = report_path(out_dir, process_index)
    if not skipped:
        if os.path.exists(path):
            os.remove(path)
        return
    with open(f"{path}.tmp", "w") as f:
        for s in skipped:
            f.write(f"{s.record}\t{s.file}\t{s.reason}\n")
    os.replace(f"{path}.tmp", path)


def write_index(out_dir: str, images: Sequence[ImageFile]) -> bool:
    """Writes `shards.json` over every complete shard, if each of `images` is
    stored or in a bad-images report; returns whether it did."""
    shards = finished_shards(out_dir)
    stored = stored_ids(out_dir, shards)
    reported: set[str] = set()
    for name in os.listdir(out_dir):
        if name.startswith("bad-images-p") and name.endswith(".txt"):
            with open(os.path.join(out_dir, name)) as f:
                reported.update(line.split("\t", 1)[0] for line in f if line.strip())
    missing = [
        i.image_id for i in images if i.image_id not in stored and i.image_id not in reported
    ]
    if missing or not shards:
        log.info("%d images not extracted yet (e.g. %s): no shards.json", len(missing), missing[:1])
        return False
    store_sets.write_shard_index(out_dir, "image", shards)
    return True
