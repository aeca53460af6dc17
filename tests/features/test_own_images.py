"""Issue #25's end to end: one's own image files -> `python -m uniter_jax.features
extract` -> a sharded image store -> `main.py` fine-tuning VQA on it, with the
store's folder passed straight as `data.images`.

The detector is random and tiny in width (the CLI's `--detector` overrides;
the full-width one needs tens of GB on CPU), at the real image sizes (600-px
short side, one size bucket). The model's `img_dim` and `num_region_labels`
come from the detector's config, not from the store, so a store of the wrong
width fails the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_detector import TINY_DETECTOR

from uniter_jax.data.convert.vqa import answer_vocab_from, convert_vqa
from uniter_jax.data.store_sets import open_images
from uniter_jax.data.tokenizer import build_vocab

ROOT = Path(__file__).resolve().parents[2]
SMALL = dataclasses.replace(TINY_DETECTOR, blocks_per_stage=(1, 1, 2, 2))
# The sizes the command line is given (`--detector KEY=VALUE`), from SMALL.
SIZES = ("blocks_per_stage", "stem_channels", "res2_channels", "bottleneck_channels")
SIZES += ("rpn_channels", "num_classes", "num_attributes", "class_embedding_size")
SIZES += ("attribute_hidden_size",)
DETECTOR = {name: getattr(SMALL, name) for name in SIZES}
# (file, height, width, PIL mode): sizes differ, aspects 1..4/3 share the
# 600 x 800 bucket (one compiled program).
IMAGES = (
    ("street.jpg", 48, 64, "RGB"),
    ("grey_cat.png", 90, 120, "L"),
    ("logo.png", 60, 72, "RGBA"),
    ("kitchen.jpg", 100, 110, "RGB"),
    ("beach.png", 75, 90, "RGB"),
)
QUESTIONS = (
    ("what color is it", "red"),
    ("how many are there", "2"),
    ("is it outside", "yes"),
)


def write_images(folder: Path) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, height, width, mode in IMAGES:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[height // 4 : height // 2, width // 4 : width // 2] = rng.integers(0, 256, 3)
        Image.fromarray(pixels).convert(mode).save(folder / name)
    return sorted(os.path.splitext(name)[0] for name, *_ in IMAGES)


def write_vqa(folder: Path, ids: list[str], split: str) -> tuple[Path, Path]:
    """VQA v2 questions and annotations JSON for `ids` (image_id = the file stem)."""
    questions, annotations = [], []
    for i, image_id in enumerate(ids):
        for j, (question, answer) in enumerate(QUESTIONS):
            qid = 100 * i + j
            questions.append({"question_id": qid, "image_id": image_id, "question": question})
            # Answers vary with the image, so the targets are not constant.
            answer = answer if (i + j) % 2 else "no"
            answers = [{"answer": answer, "answer_id": k + 1} for k in range(10)]
            annotations.append(
                {"question_id": qid, "answers": answers, "multiple_choice_answer": answer}
            )
    paths = folder / f"questions_{split}.json", folder / f"annotations_{split}.json"
    paths[0].write_text(json.dumps({"questions": questions}))
    paths[1].write_text(json.dumps({"annotations": annotations}))
    return paths


def extract(images: Path, out: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "uniter_jax.features", "extract", "--images", str(images)]
    argv += ["--random-weights", "--out", str(out), "--min-boxes", "4", "--max-boxes", "12"]
    argv += ["--batch-size", "2", "--shard-size", "3", "--workers", "2", "--no-progress"]
    for key, value in DETECTOR.items():
        argv += ["--detector", f"{key}={value!r}"]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_own_images_to_fine_tuning(tmp_path):
    ids = write_images(tmp_path / "photos")
    store = tmp_path / "my_img"
    done = extract(tmp_path / "photos", store)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stored 5 images" in done.stdout
    # Two shards of at most 3 images, their labels, and the index that opens them.
    assert json.loads((store / "shards.json").read_text())["kind"] == "image"
    assert sorted(p.name for p in (store / "labels").iterdir()) == [
        "p0000-00000.npz",
        "p0000-00001.npz",
    ]
    images = open_images(str(store))
    assert sorted(images.ids) == ids and 4 <= min(images.num_boxes) <= max(images.num_boxes) <= 12

    # VQA text stores for those images, through the converter users run.
    raw = tmp_path / "raw"
    raw.mkdir()
    vocab = build_vocab(
        [q for q, _ in QUESTIONS] + ["red", "yes", "no", "2"],
        str(raw / "vocab.txt"),
        vocab_size=512,
    )
    texts = {}
    for split, split_ids in (("train", ids), ("val", ids[:2])):
        questions, annotations = write_vqa(raw, split_ids, split)
        texts[split] = str(tmp_path / "texts" / f"vqa_{split}")
        convert_vqa(
            questions,
            texts[split],
            annotations_path=annotations,
            answer_vocab=answer_vocab_from(texts["train"]) if split == "val" else None,
            vocab=vocab,
            images=str(store),  # the sharded store: every question's image is in it
            progress=False,
        )

    detector = SMALL
    run = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--config=configs/finetune_vqa.py:tiny",
            f"--workdir={tmp_path / 'vqa'}",
            f"--config.data.images={store}",
            f"--config.data.train_texts={texts['train']}",
            f"--config.data.val_texts={texts['val']}",
            f"--config.model.img_dim={detector.res5_channels}",
            f"--config.model.num_region_labels={detector.num_classes}",
            "--config.data.buckets=((16, 12, 8),)",
            "--config.optim.total_steps=3",
            "--config.optim.warmup_steps=1",
            "--config.log.every_steps=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "vqa" / "finetune_vqa_report.json").read_text())
    assert report["status"] == "finished", report
    validation = report["validation"]
    assert 0 <= validation["val/vqa/accuracy"] <= 1
    assert all(np.isfinite(v) for v in validation.values() if isinstance(v, float))
