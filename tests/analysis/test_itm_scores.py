"""ITM margins of a checkpoint against the model run on one unpadded pair at a time."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from uniter_jax import param_checkpoint
from uniter_jax.analysis import itm_scores
from uniter_jax.analysis.example import RegionSelection, Vocabulary
from uniter_jax.analysis.score_file import read_pairs
from uniter_jax.data import synthetic
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.tokenizer import Tokenizer
from uniter_jax.model import UniterConfig, UniterForPretraining, get_params
from uniter_jax.objectives.tasks import TaskSettings
from uniter_jax.objectives.wra import wra_distance

CONFIG = UniterConfig.preset(
    "tiny",
    vocab_size=256,
    img_dim=16,
    num_region_labels=61,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    # Wider than BERT's 0.02, so that a random model's margins are far from 0
    # and differ between pairs by much more than the tolerance.
    initializer_range=0.2,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    config = synthetic.WorldConfig(num_images=30, feature_dim=16, num_labels=61, seed=1)
    return synthetic.write_world(str(tmp_path_factory.mktemp("w") / "world"), config)


@pytest.fixture(scope="module")
def model_and_checkpoint(tmp_path_factory):
    """A random tiny model and its parameter checkpoint folder."""
    path = str(tmp_path_factory.mktemp("ckpt") / "model")
    model = UniterForPretraining(CONFIG, nnx.Rngs(5))
    param_checkpoint.save(path, get_params(model), CONFIG)
    return model, path


def reference_margin(model, world, image_id, text, selection, wra=None):
    """The model on this one pair alone: no padding, no other pair in the batch;
    with `wra` (TaskSettings), also the pair's WRA distance."""
    with open(world["vocab"]) as f:
        pieces = f.read().split("\n")
    ids = [pieces.index("[CLS]"), *Tokenizer(world["vocab"]).encode(text), pieces.index("[SEP]")]
    regions = ImageStore(world["images"]).get(image_id)
    above = int((regions.conf > selection.conf_th).sum())
    kept = min(regions.num_boxes, max(selection.min_bb, min(selection.max_bb, above)))
    sequence = model(
        jnp.asarray([ids]),
        jnp.ones((1, len(ids)), jnp.int32),
        jnp.asarray(regions.features[None, :kept].astype(np.float32)),
        jnp.asarray(regions.boxes[None, :kept]),
        jnp.ones((1, kept), jnp.int32),
    )
    logits = np.asarray(model.itm_logits(sequence))[0]
    if wra is not None:
        distance = wra_distance(
            sequence[:, : len(ids)],
            jnp.ones((1, len(ids)), jnp.int32),
            sequence[:, len(ids) :],
            jnp.ones((1, kept), jnp.int32),
            wra.wra,
        )
        return logits, float(distance[0])
    return logits[1] - logits[0], len(ids), kept, regions.num_boxes


@pytest.mark.parametrize(
    "selection", [RegionSelection(conf_th=0.75, min_bb=3, max_bb=8), None], ids=["cut", "default"]
)
def test_margins_equal_the_model_on_each_pair_alone(world, model_and_checkpoint, selection):
    model, path = model_and_checkpoint
    with open(world["itm_hard_val"]) as f:
        records = [json.loads(line) for line in f][:2]
    pairs = [(r["image_id"], r[key]) for r in records for key in ("text", "negative")]
    pairs.append(("synth000020", "there are 2 cubes and a large red sphere on the left."))
    got = itm_scores.itm_margins(
        itm_scores.load_pretraining(path),
        ImageStore(world["images"]),
        Vocabulary(world["vocab"]),
        pairs,
        selection=selection,
        batch_size=3,  # two batches, the second filled with a copy
    )
    want = [reference_margin(model, world, i, t, selection or RegionSelection()) for i, t in pairs]
    assert got.shape == (len(pairs),) and got.dtype == np.float32
    np.testing.assert_allclose(got, [w[0] for w in want], rtol=0, atol=1e-5)
    # The pairs differ in length, so padding was in play; margins differ per pair.
    assert len({w[1] for w in want}) > 1 and len({w[2] for w in want}) > 1
    assert len(set(np.round(got, 4))) > len(pairs) // 2
    # The default keeps every region of these images; the cut leaves some out.
    assert any(w[2] < w[3] for w in want) == (selection is not None)


def test_no_pairs_no_margins(world, model_and_checkpoint):
    model, _ = model_and_checkpoint
    got = itm_scores.itm_margins(model, ImageStore(world["images"]), Vocabulary(world["vocab"]), [])
    assert got.shape == (0,)


@pytest.mark.parametrize("solver", ["sinkhorn", "ipot"])
def test_probabilities_and_wra_distances_equal_each_pair_alone(world, model_and_checkpoint, solver):
    model, _ = model_and_checkpoint
    wra = TaskSettings(
        mask_id=3, special_ids=(1, 2, 0), random_range=(4, 200), wra_solver=solver, wra_beta=0.4
    )
    pairs = [("synth000001", "a red cube."), ("synth000004", "there are 2 spheres on the left.")]
    pairs.append(("synth000007", "the small blue cylinder is left of a green cube."))
    got = itm_scores.itm_scores(
        model,
        ImageStore(world["images"]),
        Vocabulary(world["vocab"]),
        pairs,
        wra=wra,
        batch_size=2,
    )
    want = [reference_margin(model, world, i, t, RegionSelection(), wra) for i, t in pairs]
    softmax = [np.exp(w[0][1]) / np.exp(w[0]).sum() for w in want]
    np.testing.assert_allclose(got["probability"], softmax, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["margin"], [w[0][1] - w[0][0] for w in want], atol=1e-5)
    np.testing.assert_allclose(got["wra_distance"], [w[1] for w in want], rtol=1e-4)
    assert len(set(np.round(got["wra_distance"], 4))) == len(pairs)


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ('{"image_id": "a", "text": "x"', "record line 2: not valid JSON"),
        ('["a", "x"]', "record line 2: expected an object"),
        ('{"text": "x"}', "record line 2, field image_id: missing"),
        ('{"image_id": "a", "text": "  "}', "record line 2, field text: expected a non-empty"),
        ('{"image_id": true, "text": "x"}', "record line 2, field image_id: expected a string"),
    ],
)
def test_bad_pair_lines_are_named(tmp_path, line, where):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"image_id": 5, "text": "a cube."}\n' + line + "\n")
    with pytest.raises(DataError, match=f"file {path}, {where}"):
        read_pairs(str(path))
    path.write_text("\n")
    with pytest.raises(DataError, match="no pairs to score"):
        read_pairs(str(path))
