"""eval_shape parameter counts against the original checkpoint's tensor list."""

import math

import pytest
from original_layout import TIED_COPIES, original_shapes

from uniter_jax.model import UniterConfig
from uniter_jax.tools.param_count import main, parameter_counts


@pytest.mark.parametrize("name", ["tiny", "base", "large"])
def test_total_equals_original_state_dict_without_tied_copies(name):
    c = UniterConfig.preset(name)
    shapes = original_shapes(
        vocab=c.vocab_size,
        hidden=c.hidden_size,
        layers=c.num_layers,
        intermediate=c.intermediate_size,
    )
    want = sum(math.prod(s) for k, s in shapes.items() if k not in TIED_COPIES)
    assert parameter_counts(c)["total with pretraining heads"] == want


@pytest.mark.parametrize("name, reference_millions", [("base", 86), ("large", 303)])
def test_reference_sizes(name, reference_millions):
    """The original's sizes: about 86M (base) and 303M (large) in the transformer layers
    (docs/original.md, Model)."""
    layers = parameter_counts(UniterConfig.preset(name))["encoder layers"]
    assert abs(layers / 1e6 - reference_millions) < 1.5


def test_script_prints_a_table(capsys):
    main(["--preset", "base"])
    out = capsys.readouterr().out
    assert "total with pretraining heads" in out and "112,938,887" in out
