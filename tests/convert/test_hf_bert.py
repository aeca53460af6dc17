"""A random-weight HuggingFace BertModel imported into our text stack."""

import json

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from uniter_jax.convert import import_state_dict
from uniter_jax.model import (
    UniterConfig,
    UniterForPretraining,
    abstract_params,
    get_params,
    set_params,
)
from uniter_jax.param_checkpoint import overlay

# A small BERT: odd sizes catch transposed or mis-split weights.
SMALL = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)


def perturbed_bert(cls, std=0.05, **sizes):
    """A BERT whose every parameter is random, LayerNorms and biases included."""
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**sizes)
    model = cls(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    return model, hf_config


def load_into_ours(state, config):
    params, report = import_state_dict(state, config, abstract_params(config))
    model = UniterForPretraining(config, nnx.Rngs(0))
    merged, absent = overlay(get_params(model), params)
    assert absent == report.absent_groups
    set_params(model, merged)
    return model, report


@pytest.mark.parametrize(
    "sizes",
    [
        SMALL,
        # bert-base-cased shapes at BERT's init scale: the sizes users import.
        dict(vocab_size=28996, std=0.02),
    ],
    ids=["small", "base"],
)
def test_bert_model_outputs_match(tmp_path, sizes):
    bert, hf_config = perturbed_bert(transformers.BertModel, attn_implementation="eager", **sizes)
    hf_config.to_json_file(tmp_path / "config.json")
    config = UniterConfig.from_json(tmp_path / "config.json")
    state = {k: v.numpy() for k, v in bert.state_dict().items()}
    model, report = load_into_ours(state, config)
    assert report.source == "bert"
    assert set(report.absent_groups) == {"uniter/img_embeddings", "mlm", "mrfr", "mrc", "itm"}

    rng = np.random.default_rng(0)
    lengths = np.array([13, 5, 9])
    ids = rng.integers(1, config.vocab_size, (3, 13))
    mask = (np.arange(13)[None] < lengths[:, None]).astype(np.int64)
    types = rng.integers(0, 2, (3, 13))
    with torch.no_grad():
        hf = bert(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        )
    seq = model(ids.astype(np.int32), mask, token_type_ids=types.astype(np.int32))
    pooled = model.uniter.pool(seq)
    valid = mask.astype(bool)
    seq_diff = np.abs(np.asarray(seq) - hf.last_hidden_state.numpy())[valid].max()
    pooled_diff = np.abs(np.asarray(pooled) - hf.pooler_output.numpy()).max()
    print(f"max |diff| sequence {seq_diff:.2e}, pooled {pooled_diff:.2e}")
    assert seq_diff < 1e-5 and pooled_diff < 1e-5


def test_bert_for_pretraining_mlm_head_matches(tmp_path):
    """`bert.`-prefixed file: encoder and MLM head load, NSP head is dropped."""
    bert, hf_config = perturbed_bert(
        transformers.BertForPreTraining, attn_implementation="eager", **SMALL
    )
    (tmp_path / "bert_config.json").write_text(json.dumps(hf_config.to_dict()))
    config = UniterConfig.from_json(tmp_path / "bert_config.json")
    state = {k: v.numpy() for k, v in bert.state_dict().items()}
    model, report = load_into_ours(state, config)
    assert "mlm" not in report.absent_groups
    assert set(report.dropped_keys) == {"cls.seq_relationship.weight", "cls.seq_relationship.bias"}
    ids = np.arange(1, 12)[None]
    with torch.no_grad():
        hf = bert(input_ids=torch.from_numpy(ids))
    seq = model(ids.astype(np.int32), np.ones_like(ids))
    diff = np.abs(np.asarray(model.mlm_logits(seq)) - hf.prediction_logits.numpy()).max()
    assert diff < 1e-5, diff


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_attention_probabilities_match_output_attentions(tmp_path, scan_layers):
    """`return_attention` gives HuggingFace's per-layer attention maps, and the
    same hidden states as a plain call."""
    sizes = {**SMALL, "num_hidden_layers": 3}
    bert, hf_config = perturbed_bert(transformers.BertModel, attn_implementation="eager", **sizes)
    hf_config.to_json_file(tmp_path / "config.json")
    config = UniterConfig.from_json(tmp_path / "config.json", scan_layers=scan_layers)
    model, _ = load_into_ours({k: v.numpy() for k, v in bert.state_dict().items()}, config)
    rng = np.random.default_rng(1)
    lengths = np.array([11, 6])
    ids = rng.integers(1, config.vocab_size, (2, 11))
    mask = (np.arange(11)[None] < lengths[:, None]).astype(np.int64)
    with torch.no_grad():
        hf = bert(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            output_attentions=True,
        )
    seq, attention = model(ids.astype(np.int32), mask, return_attention=True)
    assert attention.shape == (3, 2, 4, 11, 11)
    np.testing.assert_array_equal(np.asarray(seq), np.asarray(model(ids.astype(np.int32), mask)))
    for layer, theirs in enumerate(hf.attentions):
        for b, n in enumerate(lengths):
            ours = np.asarray(attention[layer, b])[:, :n]  # valid queries
            np.testing.assert_allclose(ours, theirs.numpy()[b][:, :n], atol=2e-6)
            assert not np.any(ours[:, :, n:])  # padded keys get nothing
