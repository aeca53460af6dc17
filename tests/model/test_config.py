"""UniterConfig: presets, the original JSON files, and clear errors."""

import json
import re

import pytest

from uniter_jax.model import ConfigError, UniterConfig

# config/uniter-base.json of the original release (docs/original.md, Model).
UNITER_BASE_JSON = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "type_vocab_size": 2,
    "vocab_size": 28996,
}


def write(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(content))
    return path


def test_original_json_equals_base_preset(tmp_path):
    assert UniterConfig.from_json(write(tmp_path, UNITER_BASE_JSON)) == UniterConfig.preset("base")


def test_json_round_trip_of_large(tmp_path):
    large = UniterConfig.preset("large")
    assert UniterConfig.from_json(write(tmp_path, large.to_json_dict())) == large


def test_overrides_apply_and_are_checked():
    assert UniterConfig.preset("tiny", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ConfigError, match=r"unknown model config keys \['hiden_size'\]"):
        UniterConfig.preset("tiny", hiden_size=3)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        UniterConfig.preset("huge")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_heads=5), "not divisible by num_heads"),
        (dict(hidden_size=0), "hidden_size must be a positive integer"),
        (dict(hidden_dropout=1.0), "hidden_dropout must be in"),
        (dict(dtype="int8"), "dtype must be"),
        (dict(remat="sometimes"), "remat 'sometimes'"),
        (dict(cross_modal_attention="no"), "cross_modal_attention must be True or False"),
    ],
)
def test_invalid_values_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        UniterConfig.preset("tiny", **changes)


def test_json_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown keys \['hidden_sise'\]"):
        UniterConfig.from_json(write(tmp_path, {**UNITER_BASE_JSON, "hidden_sise": 1}))
    with pytest.raises(ConfigError, match="hidden_act 'relu'"):
        UniterConfig.from_json(write(tmp_path, {**UNITER_BASE_JSON, "hidden_act": "relu"}))
    with pytest.raises(ConfigError, match=re.escape("config.json: invalid UniterConfig")):
        UniterConfig.from_json(write(tmp_path, {**UNITER_BASE_JSON, "num_attention_heads": 7}))
    with pytest.raises(ConfigError, match="not found"):
        UniterConfig.from_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match=re.escape("bad.json: not valid JSON")):
        UniterConfig.from_json(tmp_path / "bad.json")
