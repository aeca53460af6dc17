"""`python -m uniter_jax.data.vocab`: caption files -> a WordPiece vocabulary that
HuggingFace's BERT tokenizer reads as we do; stores that do not fit the model
name the flag to set."""

import json
import subprocess
import sys

import numpy as np
import pytest
import transformers

from uniter_jax.data import vocab
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore, ImageStoreWriter
from uniter_jax.data.regions import make_regions
from uniter_jax.data.text_store import TextStore, TextStoreWriter
from uniter_jax.data.tokenizer import Tokenizer
from uniter_jax.model import UniterConfig
from uniter_jax.model.config import ConfigError
from uniter_jax.train.inputs import check_compatible

WORDS = "red blue green cube sphere cylinder left right small large Two dogs play".split()  # noqa: SIM905


def captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(3, 9)))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def caption_files(tmp_path_factory):
    """The same 400 captions split over the five input formats."""
    root = tmp_path_factory.mktemp("captions")
    texts = captions(400)
    parts = [texts[i::5] for i in range(5)]
    (root / "coco.json").write_text(
        json.dumps({"annotations": [{"image_id": 1, "caption": t} for t in parts[0]]})
    )
    (root / "vqa.json").write_text(json.dumps({"questions": [{"question": t} for t in parts[1]]}))
    (root / "karpathy.json").write_text(
        json.dumps({"images": [{"sentences": [{"raw": t}]} for t in parts[2]]}, indent=2)
    )
    (root / "more.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in parts[3]))
    (root / "plain.txt").write_text("\n".join(parts[4]) + "\n")
    names = ["coco.json", "vqa.json", "karpathy.json", "more.jsonl", "plain.txt"]
    return [str(root / n) for n in names], parts


def test_each_format_gives_its_texts(caption_files):
    paths, parts = caption_files
    for path, want in zip(paths, parts, strict=True):
        assert vocab.read_texts(path) == want, path


def test_the_vocabulary_tokenizes_as_huggingface_bert_and_covers_its_corpus(
    caption_files, tmp_path
):
    paths, parts = caption_files
    out = tmp_path / "vocab.txt"
    result = subprocess.run(
        [sys.executable, "-m", "uniter_jax.data.vocab", *paths, "--out", str(out), "--size", "300"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.read_text().splitlines()
    assert f"--config.model.vocab_size={len(lines)}" in result.stdout
    assert len(lines) <= 300 and len(set(lines)) == len(lines)
    # bert-base-cased's layout: the ids the model and the masking rely on.
    assert [lines[i] for i in (0, 100, 101, 102, 103)] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    texts = [t for part in parts for t in part]
    hf = transformers.BertTokenizer(str(out), do_lower_case=False)
    ours = Tokenizer(str(out))
    for text in texts[:50]:
        assert ours.encode(text) == hf.convert_tokens_to_ids(hf.tokenize(text)), text
    assert vocab.unknown_share(texts, str(out)) == 0.0
    # Whole frequent words become single pieces; the same input, the same file.
    assert all(w in lines for w in WORDS)
    again = tmp_path / "again.txt"
    vocab.train_wordpiece(texts, str(again), vocab_size=300)
    assert again.read_text() == out.read_text()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.json", '{"images_": []}', "not a COCO caption, VQA or Karpathy file"),
        (
            "b.json",
            '{"annotations": [{"caption": 3}]}',
            "record 0, field caption: expected a string",
        ),
        ("c.jsonl", '{"text": "a"}\n{"label": 1}\n', "record line 2: expected an object with"),
        ("d.json", '["a", "b"]', "a JSON list"),
    ],
)
def test_bad_caption_files_are_named(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=f"file {path}[,:] .*{message}"):
        vocab.read_texts(str(path))


def test_a_store_that_does_not_fit_the_model_names_the_flag(tmp_path):
    texts_dir, images_dir = str(tmp_path / "texts"), str(tmp_path / "images")
    store_vocab = {"size": 700, "pad_id": 0, "cls_id": 101, "sep_id": 102, "mask_id": 103}
    with TextStoreWriter(texts_dir, task="captions", vocab=store_vocab, max_txt_len=8) as writer:
        writer.add("t0", "i0", np.array([104, 105], np.int32))
    with ImageStoreWriter(images_dir, feature_dim=16, num_labels=5) as writer:
        boxes = np.tile([0.1, 0.1, 0.5, 0.5, 0.4, 0.4, 0.16], (3, 1)).astype(np.float32)
        soft = np.full((3, 5), 0.2, np.float32)
        writer.add(make_regions("i0", np.ones((3, 16), np.float32), boxes, soft_labels=soft))
    texts, images = TextStore(texts_dir), ImageStore(images_dir)
    fits = UniterConfig.preset("tiny", vocab_size=700, img_dim=16, num_region_labels=5)
    check_compatible(texts, images, fits)
    for change, flag in [
        ({"vocab_size": 512}, "--config.model.vocab_size=700"),
        ({"img_dim": 2048}, "--config.model.img_dim=16"),
        ({"num_region_labels": 1601}, "--config.model.num_region_labels=5"),
    ]:
        with pytest.raises(ConfigError, match=flag):
            check_compatible(texts, images, fits.replace(**change))
