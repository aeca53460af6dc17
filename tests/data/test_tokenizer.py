"""Our WordPiece wrapper against HuggingFace's BertTokenizer on the same vocabulary."""

import hashlib
import json
import pathlib

import pytest
import transformers

from uniter_jax.data.errors import DataError
from uniter_jax.data.store_sets import open_texts
from uniter_jax.data.text_store import TextStoreWriter
from uniter_jax.data.tokenizer import Tokenizer, build_vocab, same_vocab

CORPUS = [
    "A man riding a Horse on the beach.",
    "Two dogs play with a red frisbee in the park!",
    "What colour is the large cube?",
    "Zebras graze near the water's edge, un-bothered.",
] * 5


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
    return build_vocab(CORPUS, str(tmp_path_factory.mktemp("v") / "vocab.txt"), vocab_size=300)


def test_special_ids_follow_bert_base_cased(vocab_path):
    vocab = Tokenizer(vocab_path).vocab
    assert (vocab.pad_id, vocab.cls_id, vocab.sep_id, vocab.mask_id) == (0, 101, 102, 103)
    assert vocab.random_range == (104, vocab.size)
    with open(vocab_path) as f:
        lines = f.read().split("\n")
    assert lines[100] == "[UNK]" and lines[99] == "[unused99]"


@pytest.mark.parametrize("text", [*CORPUS[:4], "An unseen Word, with Capitals!", "émigré café", ""])
def test_matches_transformers_bert_tokenizer(vocab_path, text):
    reference = transformers.BertTokenizer(vocab_path, do_lower_case=False)
    want = reference.encode(text, add_special_tokens=False)
    assert Tokenizer(vocab_path).encode(text) == want


def test_cased_by_default(vocab_path):
    tok = Tokenizer(vocab_path)
    assert tok.encode("Horse") != tok.encode("horse")


def test_bad_vocab_files(tmp_path):
    with pytest.raises(
        DataError,
        match=r"not found: captions need a cased WordPiece vocab\.txt.*bert-base-cased vocab\.txt",
    ):
        Tokenizer(str(tmp_path / "missing.txt"))
    (tmp_path / "v.txt").write_text("hello\nworld\n")
    with pytest.raises(DataError, match="lacks"):
        Tokenizer(str(tmp_path / "v.txt"))


def _store(path, vocab_file: str, text_id: str) -> str:
    tok = Tokenizer(vocab_file)
    with TextStoreWriter(
        str(path), task="captions", vocab=tok.vocab.to_json(), max_txt_len=60
    ) as writer:
        writer.add(text_id, "img0", tok.encode("a red cup"))
    return str(path)


def test_stores_share_a_vocabulary_by_its_tokens_not_its_path(vocab_path, tmp_path):
    """The same vocab.txt at two paths (stores converted on two machines) joins;
    one token changed, same size and special ids, does not. A store written
    before the checksum was recorded is compared by path as before."""
    text = pathlib.Path(vocab_path).read_text(encoding="utf-8")
    lines = text.split("\n")
    (tmp_path / "copy.txt").write_text("\n".join(lines), encoding="utf-8")
    changed = list(lines)
    changed[-2] = changed[-2] + "x"
    (tmp_path / "changed.txt").write_text("\n".join(changed), encoding="utf-8")
    a = _store(tmp_path / "a", vocab_path, "t0")
    b = _store(tmp_path / "b", str(tmp_path / "copy.txt"), "t1")
    c = _store(tmp_path / "c", str(tmp_path / "changed.txt"), "t2")
    assert (
        Tokenizer(vocab_path).vocab.tokens_sha256
        == hashlib.sha256("\n".join(text.splitlines()).encode()).hexdigest()
    )
    assert len(open_texts([a, b])) == 2
    with pytest.raises(DataError, match="vocab differs") as error:
        open_texts([a, c])
    assert error.value.file == c and error.value.field == "vocab"

    old = tmp_path / "b" / "manifest.json"
    manifest = json.loads(old.read_text())
    del manifest["vocab"]["tokens_sha256"]
    old.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="vocab differs"):
        open_texts([a, b])
    assert same_vocab(manifest["vocab"], {**manifest["vocab"], "tokens_sha256": "f" * 64})
