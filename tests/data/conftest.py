"""Fixtures of the data tests: a vocabulary for each module's own texts."""

import pytest
import transformers

from uniter_jax.data.tokenizer import build_vocab


@pytest.fixture(scope="module")
def vocab(request, tmp_path_factory) -> str:
    """The path of a vocabulary built from the test module's `VOCAB_TEXTS`."""
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    return build_vocab(request.module.VOCAB_TEXTS, str(path))


@pytest.fixture(scope="module")
def reference(vocab) -> transformers.BertTokenizer:
    """HuggingFace's tokenizer on the same vocabulary, cased as ours."""
    return transformers.BertTokenizer(vocab, do_lower_case=False)
