"""Baselines of the learning check on hand-made stores, against hand-computed
values and a brute-force recomputation."""

import dataclasses

import numpy as np
import pytest
from stores import write_image_store

from uniter_jax.analysis import learning_baselines as lb
from uniter_jax.analysis.example import RegionSelection
from uniter_jax.data import scenes
from uniter_jax.data.claims import Claim, Mention
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.regions import box_features, make_regions
from uniter_jax.data.text_store import TextStore, TextStoreWriter

VOCAB = {"size": 50, "pad_id": 0, "cls_id": 1, "sep_id": 2, "mask_id": 3}
# Keeps every region above conf 0.2, however few.
SELECTION = RegionSelection(conf_th=0.2, min_bb=1, max_bb=100)


def text_store(path, captions):
    with TextStoreWriter(str(path), task="captions", vocab=VOCAB, max_txt_len=20) as writer:
        for i, ids in enumerate(captions):
            writer.add(f"t{i}", f"img{i}", ids)
    return TextStore(str(path))


def labelled_store(path, images, num_labels):
    """`images`: {image_id: [(pixel box, conf, {label: mass}), ...]}; the mass a
    region's dict leaves is spread evenly over all labels."""

    def regions_of(image_id, regions):
        soft = np.zeros((len(regions), num_labels))
        for i, (_, _, mass) in enumerate(regions):
            soft[i] = (1 - sum(mass.values())) / num_labels
            for label, m in mass.items():
                soft[i, label] += m
        pixels = np.array([r[0] for r in regions], np.float64)
        return make_regions(
            image_id,
            np.zeros((len(regions), 4), np.float32),
            box_features(pixels, scenes.WIDTH, scenes.HEIGHT),
            np.array([r[1] for r in regions]),
            soft,
            feature_dim=4,
            num_labels=num_labels,
        )

    images = (regions_of(image_id, regions) for image_id, regions in images.items())
    return ImageStore(write_image_store(path, images, num_labels=num_labels))


# ---------------------------------------------------------------- text-only n-gram MLM


def test_mlm_ngram_on_a_hand_made_pair_of_stores(tmp_path):
    train = text_store(tmp_path / "train", [[5, 6, 7], [5, 6, 7], [5, 8, 7], [9, 6, 10], [6]])
    val = text_store(tmp_path / "val", [[5, 6, 7], [5, 8, 10], [11, 6]])
    # [5 6 7]: each token's whole-caption context is in training (5, then 6 by 2
    # to 1 over 8, then 7): 3 hits. [5 8 10]: 5 from its neighbours (start, 8),
    # hit; 8 from its left neighbour 5 (6 twice, 8 once), miss; 10 from the whole
    # context "5 8 _" (7), miss. [11 6]: 11 from its neighbours (start, 6): 5,
    # miss; 6: no context seen, the commonest token (6, four times), hit. 5 of 8.
    assert lb.mlm_ngram(train, val) == 5 / 8


def brute_force_ngram(train, val):
    """Hit rate and which evidence answered, by scanning every training position."""
    positions = [(s, j) for s in train for j in range(len(s))]

    def left(s, j):
        return s[j - 1] if j > 0 else "start"

    def right(s, j):
        return s[j + 1] if j + 1 < len(s) else "end"

    def commonest(tokens):  # ties go to the token seen first
        best = max(tokens.count(t) for t in tokens)
        return next(t for t in tokens if tokens.count(t) == best)

    hits, used = 0, set()
    for v in val:
        for i in range(len(v)):
            rules = {
                "whole": lambda s, j, v=v, i=i: (
                    len(s) == len(v) and j == i and s[:j] + s[j + 1 :] == v[:i] + v[i + 1 :]
                ),
                "both": lambda s, j, v=v, i=i: (
                    (left(s, j), right(s, j)) == (left(v, i), right(v, i))
                ),
                "left": lambda s, j, v=v, i=i: left(s, j) == left(v, i),
            }
            guess = None
            for name, rule in rules.items():
                seen = [s[j] for s, j in positions if rule(s, j)]
                if seen:
                    guess = commonest(seen)
                    used.add(name)
                    break
            if guess is None:
                guess = commonest([s[j] for s, j in positions])
                used.add("unigram")
            hits += guess == v[i]
    return hits / sum(len(v) for v in val), used


def test_mlm_ngram_matches_a_brute_force_scan(tmp_path):
    rng = np.random.default_rng(4)

    def caption():
        return [int(t) for t in rng.integers(4, 10, int(rng.integers(1, 5)))]

    train, val = [caption() for _ in range(40)], [caption() for _ in range(30)]
    val += [[20, 21], [4, 22]]  # tokens training never saw
    want, used = brute_force_ngram(train, val)
    assert used == {"whole", "both", "left", "unigram"}
    got = lb.mlm_ngram(text_store(tmp_path / "train", train), text_store(tmp_path / "val", val))
    assert got == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------- MRC copy and prior

NUM_MRC_LABELS = 6


@pytest.fixture(scope="module")
def mrc_store(tmp_path_factory):
    def r(box, conf, label, background=0.0):
        return (box, conf, {label: 0.7 - background, 0: background})

    images = {
        # Targets 1, 1, 2 (+ a dropped 1) and 2, 2, 3: class 2 is the prior.
        "t1": [
            r((0, 0, 50, 50), 0.9, 1),
            r((100, 0, 150, 50), 0.8, 1),
            r((200, 0, 250, 50), 0.7, 2),
            r((300, 0, 350, 50), 0.1, 1),
        ],
        "t2": [
            r((0, 0, 50, 50), 0.9, 2),
            r((0, 100, 50, 150), 0.9, 2),
            r((0, 200, 9, 209), 0.9, 3),
        ],
        "v1": [
            r((0, 0, 100, 100), 0.9, 1),  # r0: nearest r1 -> 1, hit
            r((10, 10, 110, 110), 0.85, 1),  # r1: nearest r0 -> 1, hit
            # r2: mostly background; its target is still its best object class, 3.
            # Nearest r5 (IoU 0.82, r4's 0.43) -> 3, hit
            r((300, 300, 350, 350), 0.8, 3, background=0.6),
            r((200, 0, 260, 60), 0.7, 2),  # r3: no overlap -> the prior 2, hit
            r((320, 300, 370, 350), 0.6, 4),  # r4: nearest r5 (0.54 over r2's 0.43) -> 3, miss
            r((305, 300, 355, 350), 0.5, 3),  # r5: nearest r2 -> 3, hit
            # Dropped by the selection (conf 0.05): were it kept, r3 would copy its 4.
            r((200, 0, 260, 61), 0.05, 4),
        ],
        "v2": [r((0, 0, 30, 30), 0.9, 5)],  # alone: the prior 2, miss
    }
    return labelled_store(tmp_path_factory.mktemp("mrc") / "images", images, NUM_MRC_LABELS)


def test_mrc_copy_and_prior_by_hand(mrc_store):
    got = lb.mrc_baselines(["t1", "t1", "t1", "t2"], ["v1", "v1", "v2"], mrc_store, SELECTION)
    # Training images count once each (were t1 counted three times, class 1
    # would be the prior). v1 is scored twice (two captions): copy 5 of 6
    # regions, prior 1 of 6; v2: neither.
    got.pop("mrc_box"), got.pop("mrc_copy_box")
    assert got == pytest.approx({"mrc_copy": 10 / 13, "mrc_prior": 2 / 13}, abs=1e-12)


def test_mrc_box_prior_by_hand(tmp_path):
    """The box-only prior: the commonest training class of the same coarse box
    bin (centre in a 4 x 4 grid of the 640 x 480 image, width in 8 bins)."""

    def r(box, label):
        return (box, 0.9, {label: 0.7})

    images = {
        # Upper-left small boxes are class 1 (twice), lower-right wide ones class 2.
        "t": [r((0, 0, 40, 40), 1), r((10, 10, 50, 50), 1), r((500, 400, 640, 480), 2)],
        "v": [
            r((5, 5, 45, 45), 1),  # the upper-left small bin -> 1, hit
            r((520, 410, 640, 480), 2),  # the lower-right wide bin -> 2, hit (the prior misses)
            r((300, 200, 340, 240), 1),  # a bin training never saw -> the prior 1, hit
            r((0, 0, 40, 40), 2),  # upper-left small -> 1, miss
        ],
    }
    store = labelled_store(tmp_path / "images", images, NUM_MRC_LABELS)
    got = lb.mrc_baselines(["t"], ["v"], store, SELECTION)
    assert got["mrc_box"] == pytest.approx(3 / 4, abs=1e-12)
    assert got["mrc_prior"] == pytest.approx(2 / 4, abs=1e-12)


def test_mrc_copy_box_copies_only_a_box_on_the_same_object(tmp_path):
    """The joined rule: copy where another box overlaps by IoU over 0.5 (a
    second box on one object), else the box prior; it beats both rules it joins."""

    def r(box, label):
        return (box, 0.9, {label: 0.7})

    images = {
        # Upper-left small boxes are class 1 (the prior too), lower-right wide ones class 2.
        "t": [r((0, 0, 40, 40), 1), r((10, 10, 50, 50), 1), r((500, 400, 640, 480), 2)],
        "v": [
            # a and b touch (IoU 0.03): the copy swaps their classes (both miss);
            # the joined rule takes the box prior, 1, for both (a hits).
            r((0, 0, 40, 40), 1),
            r((30, 30, 70, 70), 4),
            # c and d are one object's two boxes (IoU 0.96) of a class the box
            # prior never gives there: the copy hits both, the box prior neither.
            r((500, 400, 640, 480), 5),
            r((505, 400, 640, 480), 5),
        ],
    }
    store = labelled_store(tmp_path / "images", images, NUM_MRC_LABELS)
    got = lb.mrc_baselines(["t"], ["v"], store, SELECTION)
    want = {"mrc_copy": 2 / 4, "mrc_box": 1 / 4, "mrc_prior": 1 / 4, "mrc_copy_box": 3 / 4}
    assert got == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------- the detector-label ITM rule


def label(shape, colour):
    return 1 + scenes.SHAPES.index(shape) * len(scenes.COLOURS) + scenes.COLOURS.index(colour)


SKY = 1 + len(scenes.SHAPES) * len(scenes.COLOURS)  # the first stuff class


@pytest.fixture(scope="module")
def scene_store(tmp_path_factory):
    red_cube, blue_sphere = label("cube", "red"), label("sphere", "blue")
    images = {
        "s1": [
            ((10, 10, 130, 130), 0.95, {red_cube: 0.9}),  # large red cube, left
            ((15, 12, 128, 131), 0.9, {red_cube: 0.9}),  # its duplicate (IoU 0.91): merged
            # Small (40 wide) though 120 high: a red cube on the right.
            ((400, 300, 440, 420), 0.85, {red_cube: 0.9}),
            ((200, 100, 250, 150), 0.8, {blue_sphere: 0.9}),  # small blue sphere, left
            # Stuff and background whose runner-up is an object class: ignored.
            ((300, 0, 600, 100), 0.75, {SKY: 0.55, label("star", "yellow"): 0.4}),
            ((0, 300, 200, 470), 0.7, {0: 0.55, label("cone", "green"): 0.4}),
            # Over the first cube (IoU 0.95) but another class: its own object.
            ((12, 10, 130, 128), 0.65, {blue_sphere: 0.9}),  # large blue sphere, left
            # Same class as the first cube, IoU 1/3: a third cube (large, left).
            ((70, 10, 190, 130), 0.6, {red_cube: 0.9}),
            # A yellow star below the confidence threshold: unseen.
            ((500, 10, 540, 50), 0.1, {label("star", "yellow"): 0.9}),
        ],
        "s2": [
            ((20, 200, 60, 240), 0.9, {label("cone", "green"): 0.9}),  # small, left
            ((400, 200, 520, 320), 0.9, {label("ring", "purple"): 0.9}),  # large, right
        ],
    }
    return labelled_store(tmp_path_factory.mktemp("itm") / "images", images, 61)


def test_detected_objects_merge_duplicates_and_ignore_background(scene_store):
    got = lb.detected_objects(scene_store.get("s1"), SELECTION)
    want = [
        (0, 0, 1, (10, 10, 130, 130)),
        (0, 0, 0, (400, 300, 440, 420)),
        (1, 2, 0, (200, 100, 250, 150)),
        (1, 2, 1, (12, 10, 130, 128)),
        (0, 0, 1, (70, 10, 190, 130)),
    ]
    assert [(o.shape, o.colour, o.size) for o in got] == [w[:3] for w in want]
    np.testing.assert_allclose([o.box for o in got], [w[3] for w in want], atol=1e-3)
    # With every region kept, the yellow star is seen too.
    everything = RegionSelection(conf_th=0.0, min_bb=1, max_bb=100)
    star = lb.detected_objects(scene_store.get("s1"), everything)[-1]
    assert (star.shape, star.colour, star.size) == (5, 3, 0)


def record(image_id, kind, claim, negative):
    return {
        "image_id": image_id,
        "kind": kind,
        "claim": claim.to_json(),
        "negative_claim": negative.to_json(),
    }


def test_itm_rule_scores_claims_on_the_detected_objects(scene_store):
    cube, sphere = scenes.SHAPES.index("cube"), scenes.SHAPES.index("sphere")
    red, blue, green = (scenes.COLOURS.index(c) for c in ("red", "blue", "green"))
    cone, ring, star = (scenes.SHAPES.index(s) for s in ("cone", "ring", "star"))
    purple, yellow = scenes.COLOURS.index("purple"), scenes.COLOURS.index("yellow")
    count = Claim("count", (Mention(cube), Mention(sphere, blue)), count=3)
    small_sphere = Claim("side", (Mention(sphere, blue, 0),), side="left")
    large_cube = Claim("side", (Mention(cube, red, 1),), side="left")
    small_cube = Claim("side", (Mention(cube, red, 0),), side="right")
    relation = Claim("relation", (Mention(cone, green), Mention(ring, purple)), side="left")
    pair = Claim("pair", (Mention(cone, green, 0), Mention(ring, purple, 1)))
    unseen = Claim("side", (Mention(star, yellow, 0),), side="right")
    records = [
        # 3 cubes once duplicates merge (4 if not): true beats false.
        record("s1", "count", count, dataclasses.replace(count, count=4)),
        # A large blue sphere on the left is there too: both hold, a tie.
        record("s1", "size", small_sphere, Claim("side", (Mention(sphere, blue, 1),), "left")),
        record("s1", "colour", large_cube, Claim("side", (Mention(cube, green, 1),), "left")),
        record("s1", "side", small_cube, dataclasses.replace(small_cube, side="left")),
        record("s2", "side", relation, dataclasses.replace(relation, side="right")),
        record(
            "s2",
            "binding",
            pair,
            Claim("pair", (Mention(cone, purple, 0), Mention(ring, green, 1))),
        ),
        # The star is below the threshold: neither holds, a tie.
        record("s1", "shape", unseen, Claim("side", (Mention(sphere, yellow, 0),), "right")),
    ]
    got = lb.itm_rule(records, scene_store, SELECTION)
    assert got == pytest.approx(
        {
            "all": 6 / 7,
            "count": 1.0,
            "size": 0.5,
            "colour": 1.0,
            "side": 1.0,
            "binding": 1.0,
            "shape": 0.5,
        }
    )


def test_the_attribute_bag_checks_each_attribute_anywhere_and_binds_nothing(scene_store):
    # s1: large and small red cubes, small and large blue spheres (5 objects once
    # merged); s2: a small green cone on the left, a large purple ring on the right.
    cube, sphere, cone, ring = (scenes.SHAPES.index(s) for s in ("cube", "sphere", "cone", "ring"))
    red, blue, green, purple = (scenes.COLOURS.index(c) for c in ("red", "blue", "green", "purple"))
    large_red_cube = Claim("side", (Mention(cube, red, 1),), side="left")
    pair = Claim("pair", (Mention(cone, green, 0), Mention(ring, purple, 1)))
    count = Claim("count", (Mention(cube), Mention(sphere, blue)), count=3)
    records = [
        # Green is on no object of s1: the bag rejects the swap.
        record("s1", "colour", large_red_cube, Claim("side", (Mention(cube, green, 1),), "left")),
        # Blue is on the spheres, not a cube: the bag is fooled (a tie), the rule is not.
        record("s1", "colour", large_red_cube, Claim("side", (Mention(cube, blue, 1),), "left")),
        # Colours swapped between the two objects: the same bag, a tie.
        record(
            "s2",
            "binding",
            pair,
            Claim("pair", (Mention(cone, purple, 0), Mention(ring, green, 1))),
        ),
        # The side is not checked: a tie.
        record("s1", "side", large_red_cube, dataclasses.replace(large_red_cube, side="right")),
        # A count is: 3 cubes, not 2.
        record("s1", "count", count, dataclasses.replace(count, count=2)),
        # No cone in s1: a shape swap to one that is absent is rejected.
        record("s1", "shape", count, Claim("count", (Mention(cube), Mention(cone, blue)), count=3)),
    ]
    bag = lb.itm_rule(records, scene_store, SELECTION, lb.attributes_present)
    assert bag == pytest.approx(
        {"all": 4.5 / 6, "colour": 0.75, "binding": 0.5, "side": 0.5, "count": 1.0, "shape": 1.0}
    )
    rule = lb.itm_rule(records, scene_store, SELECTION)
    assert rule == pytest.approx(
        {"all": 1.0, "colour": 1.0, "binding": 1.0, "side": 1.0, "count": 1.0, "shape": 1.0}
    )


def test_pairwise_accuracy_and_by_kind():
    np.testing.assert_array_equal(
        lb.pairwise_accuracy(np.array([2.0, 1.0, 1.0, -1.0]), np.array([1.0, 1.0, 3.0, -2.0])),
        [1.0, 0.5, 0.0, 1.0],
    )
    records = [{"kind": k} for k in ("colour", "colour", "side", "binding", "colour")]
    got = lb.by_kind(records, np.array([1.0, 0.0, 0.5, 1.0, 1.0]))
    # Kinds without pairs are left out.
    assert got == pytest.approx({"all": 3.5 / 5, "colour": 2 / 3, "side": 0.5, "binding": 1.0})
    with pytest.raises(ValueError):
        lb.by_kind(records, np.ones(4))


# ---------------------------------------------------------------- the feature probe


def test_feature_probe_tells_classes_apart_only_with_little_noise():
    world = scenes.WorldConfig(num_images=30, feature_dim=64, num_labels=61, seed=2)
    clean = lb.feature_probe(world, num_images=150)
    lost = lb.feature_probe(dataclasses.replace(world, feature_noise=1000.0), num_images=150)
    assert clean["probe_accuracy"] > 0.95
    assert lost["probe_accuracy"] < 0.1  # chance is 1/48 classes
    for share in (clean["class_variance_share"], lost["class_variance_share"]):
        assert 0 < share < 1
    # With no class signal left, the share is the estimate's own bias, about
    # (classes - 1) / objects = 47 / 450.
    assert clean["class_variance_share"] > 0.5 and lost["class_variance_share"] < 0.15


def test_feature_probe_matches_a_recomputation():
    """Nearest class mean by distance, fitted on the even object rows and scored
    on the odd ones; the between-class sum of squares over the total."""
    world = scenes.WorldConfig(num_images=60, feature_dim=16, num_labels=61, feature_noise=2.0)
    got = lb.feature_probe(world, num_images=60)
    x, y = [], []
    for _, _, features, _, _, true in scenes.generate(world):
        for row, label in zip(features, true, strict=True):
            if 1 <= label <= len(scenes.SHAPES) * len(scenes.COLOURS):
                x.append(row)
                y.append(int(label))
    x, y = np.asarray(x), np.asarray(y)
    fit_x, fit_y, test_x, test_y = x[::2], y[::2], x[1::2], y[1::2]
    means = {c: fit_x[fit_y == c].mean(0) for c in set(fit_y.tolist())}
    guesses = [min(means, key=lambda c, r=r: np.linalg.norm(r - means[c])) for r in test_x]
    centre = x.mean(0)
    between = sum(
        (y == c).sum() * ((x[y == c].mean(0) - centre) ** 2).sum() for c in set(y.tolist())
    )
    want = {
        "probe_accuracy": np.mean(np.asarray(guesses) == test_y),
        "class_variance_share": between / ((x - centre) ** 2).sum(),
    }
    assert 0.2 < want["probe_accuracy"] < 0.9  # neither trivial nor hopeless
    assert got == pytest.approx(want, rel=1e-9)


def test_feature_probe_of_the_clutter_world_carries_a_thin_signal():
    """WORLDS' comment: about 2.5% of a clutter feature's variance is the class.
    The estimate exceeds it by about (classes - 1) / objects: 47 / 6400 here."""
    world = dataclasses.replace(scenes.WORLDS["clutter"], feature_dim=128, num_labels=61)
    got = lb.feature_probe(world, num_images=1600)
    assert 0.015 < got["class_variance_share"] < 0.035
