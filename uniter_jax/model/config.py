"""`UniterConfig`: the shape and numerics of one UNITER model.

Built once (from a preset, the original JSON files or the `model` section of
an ml_collections config turned into a plain mapping) and then passed around
frozen. Model code reads nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

# Names accepted for `remat`: no rematerialisation, save nothing, or one of
# the ready-made `jax.checkpoint_policies` (the others are factories that need
# arguments).
REMAT_NONE = "none"
REMAT_FULL = "full"
REMAT_POLICIES = (
    "checkpoint_dots",
    "checkpoint_dots_with_no_batch_dims",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "everything_saveable",
    "nothing_saveable",
)

# JSON keys of the original UNITER / BERT config files and our field names.
_JSON_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "initializer_range": "initializer_range",
    "layer_norm_eps": "layer_norm_eps",
}
# Keys of Google's original BERT config files that do not change the model.
_JSON_IGNORED = frozenset(
    {
        "directionality",
        "pooler_fc_size",
        "pooler_num_attention_heads",
        "pooler_num_fc_layers",
        "pooler_size_per_head",
        "pooler_type",
    }
)
# Files written by HuggingFace (they carry `model_type`) hold dozens of generic
# bookkeeping keys; those are ignored, but these must keep BERT's values.
_HF_REQUIRED = {
    "model_type": "bert",
    "is_decoder": False,
    "add_cross_attention": False,
    "position_embedding_type": "absolute",
    "hidden_act": "gelu",
}


class ConfigError(ValueError):
    """A model configuration that cannot describe a UNITER model."""


@dataclasses.dataclass(frozen=True)
class UniterConfig:
    """Architecture and numerics of a UNITER encoder and its pretraining heads."""

    vocab_size: int = 28996  # bert-base-cased WordPiece vocabulary
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072  # feed-forward width
    max_position_embeddings: int = 512  # text positions only; regions have none
    type_vocab_size: int = 2  # row 0: text, row 1: regions
    img_dim: int = 2048  # region feature width
    pos_dim: int = 7  # [x1, y1, x2, y2, w, h, w*h], normalised by image size
    num_region_labels: int = 1601  # background + 1600 Visual Genome classes
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02  # std of the normal init of weights
    layer_norm_eps: float = 1e-12
    dtype: str = "float32"  # compute dtype; params, LayerNorm and softmax stay fp32
    scan_layers: bool = False  # run the layer stack with lax.scan (one traced layer)
    remat: str = REMAT_NONE  # "none", "full" or one of REMAT_POLICIES
    # False is an ablation, not a UNITER: words attend only to words and regions
    # only to regions, so nothing crosses between the two inside the encoder
    # (the learning check's control; docs/results.md).
    cross_modal_attention: bool = True

    def __post_init__(self):
        problems = []
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "img_dim",
            "pos_dim",
            "num_region_labels",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and self.hidden_size % self.num_heads:
            problems.append(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                problems.append(f"{name} must be in [0, 1), got {value!r}")
        if self.initializer_range <= 0 or self.layer_norm_eps <= 0:
            problems.append("initializer_range and layer_norm_eps must be positive")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            problems.append(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.remat not in (REMAT_NONE, REMAT_FULL, *REMAT_POLICIES):
            problems.append(
                f"remat {self.remat!r} is not one of {[REMAT_NONE, REMAT_FULL, *REMAT_POLICIES]}"
            )
        if not isinstance(self.cross_modal_attention, bool):
            problems.append(
                f"cross_modal_attention must be True or False, got {self.cross_modal_attention!r}"
            )
        if not problems and self.type_vocab_size < 2:
            problems.append(
                f"type_vocab_size must be at least 2 (row 1 marks regions), "
                f"got {self.type_vocab_size}"
            )
        if problems:
            raise ConfigError("invalid UniterConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def replace(self, **changes: Any) -> UniterConfig:
        return self.from_mapping({**dataclasses.asdict(self), **changes})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> UniterConfig:
        """`tiny` (tests, CPU demos), `base` or `large`, with field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_mapping({**PRESETS[name], **overrides})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> UniterConfig:
        """Builds a config from field names, naming any key that is not a field."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown}; valid keys: {sorted(fields)}")
        return cls(**dict(values))

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides: Any) -> UniterConfig:
        """Reads an original UNITER (or BERT) JSON config file.

        Region settings (`img_dim`, ...) are not in those files; they keep their
        defaults unless given as overrides.
        """
        try:
            with open(path) as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"model config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        if "model_type" in raw:
            for key, want in _HF_REQUIRED.items():
                if raw.get(key, want) != want:
                    raise ConfigError(
                        f"{path}: {key}={raw[key]!r} is not supported (need {want!r})"
                    )
        else:
            act = raw.get("hidden_act", "gelu")
            if act != "gelu":
                raise ConfigError(
                    f"{path}: hidden_act {act!r} is not supported (only exact 'gelu')"
                )
            unknown = sorted(set(raw) - set(_JSON_FIELDS) - _JSON_IGNORED - {"hidden_act"})
            if unknown:
                raise ConfigError(f"{path}: unknown keys {unknown}")
        values = {_JSON_FIELDS[k]: v for k, v in raw.items() if k in _JSON_FIELDS}
        try:
            return cls.from_mapping({**values, **overrides})
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_json_dict(self) -> dict[str, Any]:
        """The original file's keys, for writing a config next to an exported `.pt`."""
        inverse = {ours: theirs for theirs, ours in _JSON_FIELDS.items()}
        out = {inverse[k]: v for k, v in dataclasses.asdict(self).items() if k in inverse}
        out["hidden_act"] = "gelu"
        return dict(sorted(out.items()))


PRESETS: dict[str, dict[str, Any]] = {
    # A few hundred thousand encoder weights: fast on a laptop CPU, in tests.
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
}
