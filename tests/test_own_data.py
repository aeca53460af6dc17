"""A new user's first run: a dataset in the public formats whose captions and
region counts differ from the built-in world, trained with the tiny presets
and only its paths (and a short step count) set."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from uniter_jax.data import scenes, synthetic
from uniter_jax.data.convert.coco_captions import convert_coco_captions
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore

ROOT = Path(__file__).resolve().parents[1]
SHORT = ("--config.optim.total_steps=3", "--config.optim.warmup_steps=1")


def main_py(config, workdir, *flags):
    return subprocess.run(
        [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The `middle` world (up to 22 regions an image) with captions of two
    sentences each, longer than the built-in world's, in COCO caption JSON
    converted by the converter users run."""
    world = dataclasses.replace(scenes.WORLDS["middle"], num_images=80)
    root = tmp_path_factory.mktemp("own") / "data"
    paths = synthetic.write_world(str(root), world, keep_raw=True)
    for split in ("train", "val"):
        coco = json.loads((root / "raw" / f"captions_{split}.json").read_text())
        notes = coco["annotations"]
        for note, other in zip(notes, notes[1:] + notes[:1], strict=True):
            note["caption"] = f"{note['caption']} {other['caption']}"
        (root / "raw" / f"long_{split}.json").write_text(json.dumps(coco))
        paths[f"captions_{split}"] = str(root / "texts" / f"long_{split}")
        convert_coco_captions(
            root / "raw" / f"long_{split}.json",
            paths[f"captions_{split}"],
            vocab=paths["vocab"],
            images=paths["images"],
            image_id_format="synth{id:06d}",  # as the world names its images
            progress=False,
        )
    return paths


@pytest.mark.slow  # 85 s on two cores
def test_pretraining_then_vqa_with_only_the_data_paths(dataset, tmp_path):
    texts, images = TextStore(dataset["captions_train"]), ImageStore(dataset["images"])
    lengths = np.diff(texts.arrays["input_ids__offsets"]) + 2
    # The tiny world's bucket holds 16 tokens and 12 regions.
    assert lengths.max() > 16 and images.num_boxes.max() > 12
    paths = (
        f"--config.data.images={dataset['images']}",
        f"--config.data.texts={dataset['captions_train']}",
        f"--config.data.val_texts={dataset['captions_val']}",
    )
    # The fixed shape of the built-in world does not hold this data: one line
    # naming the setting, and no half-made workdir.
    fixed = main_py(
        "configs/pretrain.py:tiny",
        tmp_path / "fixed",
        *paths,
        *SHORT,
        "--config.data.buckets=((16, 12, 32),)",
    )
    assert fixed.returncode != 0 and "Traceback" not in fixed.stderr
    assert "fits no bucket" in fixed.stderr and "--config.data.buckets" in fixed.stderr
    assert not (tmp_path / "fixed").exists()

    pre = main_py("configs/pretrain.py:tiny", tmp_path / "pre", *paths, *SHORT)
    assert pre.returncode == 0, pre.stderr[-3000:]
    chosen = json.loads((tmp_path / "pre" / "buckets.json").read_text())["buckets"]
    assert chosen == [
        [-(-int(lengths.max()) // 8) * 8, -(-int(images.num_boxes.max()) // 4) * 4, 32]
    ]
    report = json.loads((tmp_path / "pre" / "pretrain_report.json").read_text())
    assert report["status"] == "finished" and "val/itm/accuracy" in report["validation"]

    vqa = main_py(
        "configs/finetune_vqa.py:tiny",
        tmp_path / "vqa",
        f"--config.data.images={dataset['images']}",
        f"--config.data.train_texts={dataset['vqa_train']}",
        f"--config.data.val_texts={dataset['vqa_val']}",
        f"--config.init_from={tmp_path / 'pre' / 'model'}",
        *SHORT,
    )
    assert vqa.returncode == 0, vqa.stderr[-3000:]
    report = json.loads((tmp_path / "vqa" / "finetune_vqa_report.json").read_text())
    assert 0 <= report["validation"]["val/vqa/accuracy"] <= 1
