"""MLM on a masked word with the own image and another, against one example at a time."""

import numpy as np
import pytest
from flax import nnx

from uniter_jax.analysis.example import Vocabulary, from_store, model_inputs
from uniter_jax.analysis.mlm_image import image_use, masked_words, predictions
from uniter_jax.data import scenes, synthetic
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.text_store import TextStore
from uniter_jax.model import UniterConfig
from uniter_jax.model.inputs import MODEL_INPUTS
from uniter_jax.model.pretraining import UniterForPretraining


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("w") / "world")
    synthetic.write_world(
        root, synthetic.WorldConfig(num_images=30, feature_dim=16, num_labels=61, seed=2)
    )
    vocab = Vocabulary(f"{root}/vocab.txt")
    texts = TextStore(f"{root}/texts/captions_val")
    images = ImageStore(f"{root}/images")
    examples = [from_store(texts, images, i, vocab) for i in range(10)]
    kinds = {vocab.ids[w]: "colour" for w in scenes.COLOURS if w in vocab.ids}
    kinds.update({vocab.ids[w]: "shape" for w in scenes.SHAPES if w in vocab.ids})
    config = UniterConfig.preset(
        "tiny", vocab_size=256, img_dim=16, num_region_labels=61, initializer_range=0.2
    )
    return examples, kinds, vocab.ids["[MASK]"], UniterForPretraining(config, nnx.Rngs(3))


def one_at_a_time(model, example, position):
    batch = model_inputs([example], multiple=1)
    sequence = model(**{k: batch[k] for k in MODEL_INPUTS})
    return int(np.argmax(np.asarray(model.mlm_logits(sequence))[0, position]))


def test_each_word_is_masked_alone_and_seen_with_another_image(world):
    examples, kinds, mask_id, _ = world
    words = masked_words(examples, kinds, mask_id)
    expected = sum(int(t) in kinds for e in examples for t in e.input_ids)
    assert len(words) == expected > 0
    for w in words:
        source = next(e for e in examples if e.text_id == w.own.text_id)
        changed = np.flatnonzero(w.own.input_ids != source.input_ids)
        assert changed.tolist() == [w.position] and w.own.input_ids[w.position] == mask_id
        assert source.input_ids[w.position] == w.target and kinds[w.target] == w.kind
        np.testing.assert_array_equal(w.other.input_ids, w.own.input_ids)
        assert w.other.image_id != w.own.image_id
        np.testing.assert_array_equal(w.own.features, source.features)


def test_predictions_and_accuracies_match_one_example_at_a_time(world):
    examples, kinds, mask_id, model = world
    words = masked_words(examples, kinds, mask_id)
    got = predictions(model, words, batch_size=8)
    direct = np.array(
        [
            [one_at_a_time(model, w.own, w.position), one_at_a_time(model, w.other, w.position)]
            for w in words
        ]
    )
    np.testing.assert_array_equal(got, direct)
    assert (direct[:, 0] != direct[:, 1]).any()  # the image changes some predictions
    use = image_use(model, examples, kinds, mask_id, batch_size=8)
    targets = np.array([w.target for w in words])
    for kind in ("colour", "shape"):
        chosen = np.array([w.kind == kind for w in words])
        assert use[kind]["count"] == chosen.sum()
        assert use[kind]["own"] == pytest.approx(np.mean(direct[chosen, 0] == targets[chosen]))
        assert use[kind]["other"] == pytest.approx(np.mean(direct[chosen, 1] == targets[chosen]))


def test_one_image_is_refused(world):
    examples, kinds, mask_id, _ = world
    same = [e for e in examples if e.image_id == examples[0].image_id]
    with pytest.raises(ValueError, match="two images"):
        masked_words(same, kinds, mask_id)
