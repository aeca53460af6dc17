"""Original `.pt` <-> our parameters: round trips, variants and every error."""

import json
import pickle
import re

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from original_layout import TIED_COPIES, forward, random_state_dict

from uniter_jax import param_checkpoint
from uniter_jax.convert import (
    CheckpointError,
    export_checkpoint,
    import_checkpoint,
    import_state_dict,
    load_state_dict,
)
from uniter_jax.convert.__main__ import main as convert_main
from uniter_jax.model import (
    UniterConfig,
    UniterForPretraining,
    abstract_params,
    get_params,
    set_params,
)

SIZES = dict(vocab=50, hidden=16, layers=3, intermediate=24, max_pos=20, img_dim=12, labels=7)
CONFIG = UniterConfig(
    vocab_size=50,
    hidden_size=16,
    num_layers=3,
    num_heads=2,
    intermediate_size=24,
    max_position_embeddings=20,
    img_dim=12,
    num_region_labels=7,
)
HEADS = ("cls.", "feat_regress.", "region_classifier.", "itm_output.")


@pytest.fixture
def state():
    return random_state_dict(seed=2, **SIZES)


def save_pt(state, path, **kwargs):
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path, **kwargs)
    return path


def import_(state, **kwargs):
    return import_state_dict(state, CONFIG, abstract_params(CONFIG), **kwargs)


def assert_same_state(a, b):
    assert set(a) == set(b), set(a) ^ set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_pt_round_trip_is_exact(tmp_path, state):
    params, _, report = import_checkpoint(save_pt(state, tmp_path / "in.pt"), CONFIG)
    assert report.absent_groups == () and report.dropped_keys == ()
    export_checkpoint(params, CONFIG, tmp_path / "out.pt")
    assert_same_state(state, load_state_dict(tmp_path / "out.pt"))


def test_fp16_and_legacy_serialization(tmp_path, state):
    half = {k: v.astype(np.float16) for k, v in state.items()}
    path = save_pt(half, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    params, _, report = import_checkpoint(path, CONFIG)
    assert report.source_dtypes == ("float16",)
    assert params["uniter"]["embeddings"]["word"]["embedding"].dtype == np.float32
    export_checkpoint(params, CONFIG, tmp_path / "out.pt", dtype="float16")
    assert_same_state(half, load_state_dict(tmp_path / "out.pt"))


def test_gamma_beta_spelling_loads_the_same(state):
    old = {}
    for key, value in state.items():
        if "LayerNorm" in key or "layer_norm" in key or ".net.2." in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        old[key] = value
    a, _ = import_(state)
    b, _ = import_(old)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_safetensors_and_wrapped_state_dict(tmp_path, state):
    from safetensors.numpy import save_file

    save_file(state, tmp_path / "model.safetensors")
    a, _, _ = import_checkpoint(tmp_path / "model.safetensors", CONFIG)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, tmp_path / "w.pt")
    b, _, _ = import_checkpoint(tmp_path / "w.pt", CONFIG)
    np.testing.assert_array_equal(
        a["uniter"]["encoder"]["layers"]["output"]["kernel"],
        b["uniter"]["encoder"]["layers"]["output"]["kernel"],
    )


def test_every_problem_is_listed_at_once(state):
    del state["uniter.encoder.layer.1.output.dense.bias"]
    state["uniter.encoder.layer.3.output.dense.bias"] = np.zeros(16, np.float32)
    state["uniter.pooler.dense.weight"] = np.zeros((16, 15), np.float32)
    state["feat_regress.weight"] = state["feat_regress.weight"] + 1.0
    with pytest.raises(CheckpointError) as err:
        import_(state)
    message = str(err.value)
    assert "4 problem(s)" in message
    assert "missing: uniter.encoder.layer.1.output.dense.bias" in message
    assert "unexpected: uniter.encoder.layer.3.output.dense.bias" in message
    assert "shape mismatch: uniter.pooler.dense.weight is [16, 15], expected [16, 16]" in message
    assert "tied copy differs: feat_regress.weight" in message


def test_downstream_checkpoint_without_heads(state):
    finetuned = {k: v for k, v in state.items() if not k.startswith(HEADS)}
    finetuned["vqa_output.0.weight"] = np.zeros((32, 16), np.float32)
    with pytest.raises(CheckpointError, match=re.escape("unexpected: vqa_output.0.weight")):
        import_(finetuned)
    params, report = import_(finetuned, drop_unknown=True)
    assert report.absent_groups == ("mlm", "mrfr", "mrc", "itm")
    assert report.dropped_keys == ("vqa_output.0.weight",)
    assert set(params) == {"uniter"}


def test_partially_present_head_is_an_error(state):
    del state["region_classifier.net.3.bias"]
    with pytest.raises(CheckpointError, match=re.escape("missing: region_classifier.net.3.bias")):
        import_(state)


def test_encoder_is_required(state):
    no_encoder = {k: v for k, v in state.items() if ".encoder." not in k}
    with pytest.raises(CheckpointError, match=re.escape("missing: uniter.encoder.layer.0")):
        import_(no_encoder)


def test_pickle_with_code_is_refused(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"uniter.x": Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_state_dict(path)
    assert "must never run" not in capsys.readouterr().out


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape("junk.pt")):
        load_state_dict(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not a UNITER or BERT state dict"):
        import_({"foo.weight": np.zeros(3)})


def test_cli_import_then_export(tmp_path, state, capsys):
    pt = save_pt(state, tmp_path / "uniter.pt")
    (tmp_path / "uniter.json").write_text(json.dumps(CONFIG.to_json_dict()))
    out = tmp_path / "ckpt"
    args = ["--pytorch-checkpoint", str(pt), "--model-config", str(tmp_path / "uniter.json")]
    assert convert_main([*args, "--out", str(out)]) == 0
    assert "parameters read" in capsys.readouterr().out

    # The orbax checkpoint loads into the model and gives the original's numbers.
    params, config, source = param_checkpoint.load(str(out))
    assert config.img_dim == 12 and source["source"] == "uniter"
    model = UniterForPretraining(config, nnx.Rngs(0))
    set_params(model, params)
    ids = np.array([[3, 9, 4, 2]], np.int32)
    seq = model(ids, np.ones_like(ids))
    np.testing.assert_allclose(seq[0], forward(state, 2, ids[0])[0], atol=2e-5)

    assert convert_main([*args, "--out", str(out)]) == 2  # exists, no --force
    assert "already exists" in capsys.readouterr().err

    assert convert_main(["--to-pytorch", str(out), "--out", str(tmp_path / "back.pt")]) == 0
    assert_same_state(state, load_state_dict(tmp_path / "back.pt"))


def test_cli_reports_errors_without_traceback(tmp_path, state, capsys):
    del state["uniter.pooler.dense.bias"]
    pt = save_pt(state, tmp_path / "broken.pt")
    (tmp_path / "uniter.json").write_text(json.dumps(CONFIG.to_json_dict()))
    code = convert_main(
        [
            *("--pytorch-checkpoint", str(pt), "--model-config", str(tmp_path / "uniter.json")),
            *("--out", str(tmp_path / "o")),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "broken.pt: 1 problem(s)" in err
    assert "missing: uniter.pooler.dense.bias" in err
    assert not (tmp_path / "o").exists()


def test_force_replaces_only_a_checkpoint_directory(tmp_path, state):
    params, _ = import_(state)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(param_checkpoint.ParamCheckpointError, match="refusing to replace"):
        param_checkpoint.save(str(precious), params, CONFIG, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"
    ckpt = str(tmp_path / "ckpt")
    param_checkpoint.save(ckpt, params, CONFIG)
    with pytest.raises(param_checkpoint.ParamCheckpointError, match="already exists"):
        param_checkpoint.save(ckpt, params, CONFIG)
    param_checkpoint.save(ckpt, params, CONFIG, overwrite=True)


def test_partial_checkpoint_round_trip_and_overlay(tmp_path, state):
    """A BERT-like tree (no image embedder, no region heads) saved, loaded, overlaid."""
    bert_like = {
        k.replace("uniter.", "bert.", 1): v
        for k, v in state.items()
        if not k.startswith(("uniter.img_embeddings", "feat_regress", "region_classifier", "itm"))
    }
    params, report = import_(bert_like)
    assert report.source == "bert"
    assert report.absent_groups == ("uniter/img_embeddings", "mrfr", "mrc", "itm")
    param_checkpoint.save(str(tmp_path / "ckpt"), params, CONFIG)
    loaded, config, _ = param_checkpoint.load(str(tmp_path / "ckpt"))
    model = UniterForPretraining(config, nnx.Rngs(0))
    fresh = get_params(model)
    merged, absent = param_checkpoint.overlay(fresh, loaded)
    assert absent == report.absent_groups
    np.testing.assert_array_equal(
        merged["uniter"]["encoder"]["layers"]["attention"]["query"]["kernel"][1],
        state["uniter.encoder.layer.1.attention.self.query.weight"].T,
    )
    np.testing.assert_array_equal(merged["itm"]["dense"]["kernel"], fresh["itm"]["dense"]["kernel"])


def test_overlay_names_every_misfit(state):
    params, _ = import_(state)
    fresh = get_params(UniterForPretraining(CONFIG, nnx.Rngs(0)))
    del params["uniter"]["encoder"]
    params["mlm"]["extra"] = np.zeros(3)
    params["itm"]["dense"]["bias"] = np.zeros(5)
    with pytest.raises(param_checkpoint.ParamCheckpointError) as err:
        param_checkpoint.overlay(fresh, params)
    message = str(err.value)
    assert "uniter/encoder: required, but absent" in message
    assert "mlm/extra: not a parameter of the model" in message
    assert "itm/dense/bias: shape [5], model expects [2]" in message


def test_mrfr_head_without_its_tied_image_embedder_is_an_error(state):
    broken = {k: v for k, v in state.items() if not k.startswith("uniter.img_embeddings")}
    with pytest.raises(CheckpointError, match="image embedder it is tied to"):
        import_(broken)


def test_tied_copies_are_written_from_their_source(tmp_path, state):
    """Export writes the copies from the tied source, whatever the file's copy held."""
    without_copies = {k: v for k, v in state.items() if k not in TIED_COPIES}
    params, _ = import_(without_copies)
    export_checkpoint(params, CONFIG, tmp_path / "x.pt")
    back = load_state_dict(tmp_path / "x.pt")
    for copy, original in TIED_COPIES.items():
        np.testing.assert_array_equal(back[copy], state[original])
