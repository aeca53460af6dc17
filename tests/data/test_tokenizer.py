"""Our WordPiece wrapper against HuggingFace's BertTokenizer on the same vocabulary."""

import pytest
import transformers

from uniter_jax.data.errors import DataError
from uniter_jax.data.tokenizer import Tokenizer, build_vocab

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
