"""Attention shares on the regions a word names, on attention maps built by hand."""

import numpy as np
import pytest

from uniter_jax.analysis.encoder import Inspection
from uniter_jax.analysis.example import Example
from uniter_jax.analysis.grounding import named_region_shares, named_regions

TOKENS = ("[CLS]", "a", "red", "cube", "and", "a", "blue", "sphere", ".", "[SEP]")
NAMES = ("red cube", "blue sphere", "sky", "red sphere")
NT, NR = len(TOKENS), len(NAMES)


def example(tokens=TOKENS, names=NAMES) -> Example:
    return Example(
        "t0",
        "i0",
        tuple(tokens),
        np.arange(len(tokens), dtype=np.int32),
        np.zeros((len(names), 4), np.float32),
        np.zeros((len(names), 7), np.float32),
        tuple(f"{i}: {n}" for i, n in enumerate(names)),
    )


def test_named_regions_match_whole_words_of_the_class_name():
    np.testing.assert_array_equal(named_regions("red", NAMES), [True, False, False, True])
    np.testing.assert_array_equal(named_regions("sphere", NAMES), [False, True, False, True])
    assert not named_regions("re", NAMES).any()  # a piece of a word names nothing


def test_shares_per_layer_and_head_by_hand():
    length = NT + NR
    attention = np.zeros((2, 2, length, length))
    attention[0, 0, :, NT + 0] = 1.0  # every query on region 0 (a red cube)
    attention[0, 1] = 1.0 / length  # uniform over every position
    attention[1, 0, :, :NT] = 1.0 / NT  # text only: no region attention
    attention[1, 1, :, NT + 3] = 0.5  # half on region 3 (a red sphere), half on [CLS]
    attention[1, 1, :, 0] = 0.5
    shares, uniform, tokens = named_region_shares(
        [Inspection(example(), attention, np.zeros((length, 4)))], [NAMES]
    )
    # Counted: red (regions 0, 3), cube (0), blue (1), sphere (1, 3); the rest name none.
    assert tokens == 4
    assert uniform == pytest.approx(np.mean([2 / 4, 1 / 4, 1 / 4, 2 / 4]))
    want = [
        [np.mean([1, 1, 0, 0]), np.mean([2 / 4, 1 / 4, 1 / 4, 2 / 4])],
        [0.0, np.mean([1, 0, 0, 1])],
    ]
    np.testing.assert_allclose(shares, want)


def test_a_token_naming_every_region_or_none_is_left_out():
    names = ("red cube", "red sphere")
    tokens = ("[CLS]", "red", "cube", "[SEP]")
    length = len(tokens) + len(names)
    attention = np.zeros((1, 1, length, length))
    attention[0, 0, :, len(tokens) + 1] = 1.0  # all on the red sphere
    shares, uniform, count = named_region_shares(
        [Inspection(example(tokens, names), attention, np.zeros((length, 4)))], [names]
    )
    assert count == 1 and uniform == 0.5  # cube only: red names both regions
    np.testing.assert_allclose(shares, [[0.0]])


def test_errors_name_the_text_and_the_counts():
    length = NT + NR
    inspection = Inspection(example(), np.ones((1, 1, length, length)), np.zeros((length, 4)))
    with pytest.raises(ValueError, match="text t0: 3 region names for 4 regions"):
        named_region_shares([inspection], [NAMES[:3]])
    with pytest.raises(ValueError, match="no token names a region"):
        named_region_shares([inspection], [("sky", "wall", "floor", "road")])
