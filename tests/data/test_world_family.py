"""The family of synthetic worlds (data/scenes.py) and captions as claims
(data/claims.py), checked against computations of their own: region rows
against the scene's objects, detector errors against a binomial count, and
captions against a parse of their words evaluated on the scene."""

import dataclasses
import json
import re

import numpy as np
import pytest

from uniter_jax.data import scenes, synthetic
from uniter_jax.data.claims import NEGATIVE_KINDS, Claim, Mention, captions, hard_negatives
from uniter_jax.data.text_store import TextStore
from uniter_jax.data.tokenizer import UNK, Tokenizer

# num_labels 61 holds background, 48 object classes and all 8 stuff classes.
SMALL = scenes.WorldConfig(num_images=40, feature_dim=16, num_labels=61, seed=5)
STUFF = dataclasses.replace(SMALL, background_regions=(2, 5), stuff_classes=8, regions_per_object=2)
ALL_KINDS = dataclasses.replace(SMALL, max_objects=5, caption_kinds=scenes.CAPTION_KINDS)


def rows(config):
    """Every image of the world: (objects, features, boxes, soft labels, true labels)."""
    return [item[1:] for item in scenes.generate(config)]


# ---------------------------------------------------------------- regions


@pytest.mark.parametrize(
    "config",
    [
        SMALL,
        STUFF,
        dataclasses.replace(STUFF, stuff_classes=0, background_regions=(0, 3)),
        *(
            dataclasses.replace(world, num_images=40, feature_dim=16)
            for world in scenes.WORLDS.values()
        ),
    ],
    ids=["small", "stuff", "plain-background", *scenes.WORLDS],
)
def test_rows_follow_the_objects_then_the_background(config):
    """Unshuffled: each object's regions_per_object rows (its class, its box first,
    then jittered copies), then a uniform number of background rows in range."""
    config = dataclasses.replace(config, shuffle_rows=False)
    low, high = config.background_regions
    counts = set()
    for objects, features, boxes, soft, true in rows(config):
        r = config.regions_per_object
        n = len(objects) * r
        assert config.min_objects <= len(objects) <= config.max_objects
        assert features.shape == (len(true), config.feature_dim)
        assert boxes.shape == (len(true), 4) and soft.shape == (len(true), config.num_labels)
        counts.add(len(true) - n)
        for k, obj in enumerate(objects):
            label = 1 + obj.shape * len(scenes.COLOURS) + obj.colour
            np.testing.assert_array_equal(true[k * r : (k + 1) * r], label)
            np.testing.assert_array_equal(boxes[k * r], obj.box)
            extent = obj.box[2] - obj.box[0]
            shift = np.abs(boxes[k * r : (k + 1) * r] - np.asarray(obj.box))
            assert (shift <= 0.05 * extent + 1e-9).all()
        background = true[n:]
        if config.stuff_classes:
            first = 1 + len(scenes.SHAPES) * len(scenes.COLOURS)
            assert ((background >= first) & (background < first + config.stuff_classes)).all()
        else:
            assert (background == 0).all()
        # Boxes lie in the image and have area.
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= scenes.WIDTH).all()
        assert (boxes[:, [1, 3]] <= scenes.HEIGHT).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-12)
        assert (features >= 0).all()  # through a ReLU
    assert counts <= set(range(low, high + 1))
    if high - low <= 3:  # both ends of a narrow range are drawn in 40 images
        assert min(counts) == low and max(counts) == high
    else:
        assert len(counts) > (high - low) // 2


def test_sizes_follow_the_box_width():
    """Small objects are under 60 pixels wide and large ones over 100, square;
    every region of an object (jittered copies too) is on its side of 80."""
    config = dataclasses.replace(SMALL, num_images=150)
    sizes = set()
    for objects, _, boxes, _, _ in rows(config):
        for k, obj in enumerate(objects):
            width, height = obj.box[2] - obj.box[0], obj.box[3] - obj.box[1]
            assert width == pytest.approx(height)
            assert (100 <= width <= 160) if obj.size else (30 <= width <= 60)
            r = config.regions_per_object
            widths = boxes[k * r : (k + 1) * r, 2] - boxes[k * r : (k + 1) * r, 0]
            assert ((widths > scenes.SIZE_THRESHOLD) == bool(obj.size)).all()
            sizes.add(obj.size)
            # Sides from the box centre.
            centre = (obj.box[0] + obj.box[2]) / 2
            assert obj.side == ("left" if centre < 320 else "right")
    assert sizes == {0, 1}


def test_stuff_labels_sit_in_their_vertical_band():
    """With k stuff classes, a background region whose centre is in the upper
    half is one of the first k/2 upper STUFF names, in the lower half one of
    the first k/2 lower names (sky, wall, ... above; floor, grass, ... below)."""
    first = 1 + len(scenes.SHAPES) * len(scenes.COLOURS)
    for k in (2, 4, 8):
        config = dataclasses.replace(STUFF, num_images=60, stuff_classes=k)
        upper, lower = set(), set()
        for objects, _, boxes, soft, true in rows(config):
            n = len(objects) * config.regions_per_object
            for box, label in zip(boxes[n:], true[n:], strict=True):
                index = int(label) - first
                (upper if (box[1] + box[3]) / 2 < scenes.HEIGHT / 2 else lower).add(index)
            # No detector error: the detection peaks on the stuff class.
            np.testing.assert_array_equal(soft[n:].argmax(1), true[n:])
        assert upper == set(range(k // 2)) and lower == set(range(4, 4 + k // 2)), k
        assert {scenes.STUFF[i] for i in lower} <= {"floor", "grass", "road", "table"}
    names = scenes.label_names(61)
    assert names[first : first + 8] == list(scenes.STUFF)
    assert names[0] == "background" and names[1] == "red cube" and names[60] == "class 60"


@pytest.mark.parametrize("error", [0.0, 0.25])
def test_detector_errors_happen_at_their_rate(error):
    """The soft label's argmax differs from the true label in a Binomial(n, p)
    number of rows; a wrong object class shares the shape or the colour of the
    true one, a wrong stuff class is another stuff class."""
    config = dataclasses.replace(STUFF, num_images=300, regions_per_object=1, detector_error=error)
    first = 1 + len(scenes.SHAPES) * len(scenes.COLOURS)
    wrong = total = 0
    for _, _, _, soft, true in rows(config):
        top = soft.argmax(1)
        total += len(true)
        for got, want in zip(top, true, strict=True):
            if got == want:
                continue
            wrong += 1
            if want >= first:
                assert first <= got < first + config.stuff_classes
            else:
                got_shape, got_colour = divmod(int(got) - 1, 6)
                want_shape, want_colour = divmod(int(want) - 1, 6)
                assert 1 <= got < first
                assert (got_shape == want_shape) != (got_colour == want_colour)
    assert total > 1500
    if error == 0:
        assert wrong == 0
    else:
        z = (wrong - total * error) / np.sqrt(total * error * (1 - error))
        assert abs(z) < 4.5, (wrong, total)


def test_feature_signal_and_noise():
    """Without noise, a region's feature is the ReLU of a fixed embedding of its
    class and size (the same in every image) scaled by feature_signal; without
    signal, it is ReLU(noise * N(0, 1))."""
    clean = dataclasses.replace(STUFF, feature_noise=0.0, num_images=30)
    twice = dataclasses.replace(clean, feature_signal=2.0)
    seen: dict = {}
    for (objects, f1, _, _, true), (_, f2, _, _, _) in zip(rows(clean), rows(twice), strict=True):
        np.testing.assert_allclose(f2, 2 * f1, rtol=1e-12)
        r = clean.regions_per_object
        keys = [(int(true[k * r]), o.size) for k, o in enumerate(objects) for _ in range(r)]
        keys += [(int(t), None) for t in true[len(keys) :]]
        for key, row in zip(keys, f1, strict=True):
            np.testing.assert_array_equal(seen.setdefault(key, row), row)
    # Distinct classes (and sizes) have distinct embeddings.
    distinct = {tuple(v) for v in seen.values()}
    assert len(distinct) == len(seen) > 20
    # Background without stuff classes: one shared embedding.
    plain = dataclasses.replace(clean, stuff_classes=0)
    backs = [f[len(o) * plain.regions_per_object :] for o, f, *_ in rows(plain)]
    backs = np.concatenate(backs)
    assert len(backs) > 50 and (backs == backs[0]).all()
    sigma = 3.0
    noisy = dataclasses.replace(STUFF, feature_signal=0.0, feature_noise=sigma, num_images=60)
    x = np.concatenate([f for _, f, *_ in rows(noisy)])
    assert x.size > 5000
    # E relu(s z) = s / sqrt(2 pi), E relu(s z)^2 = s^2 / 2, P(> 0) = 1/2.
    np.testing.assert_allclose(x.mean(), sigma / np.sqrt(2 * np.pi), rtol=0.05)
    np.testing.assert_allclose((x**2).mean(), sigma**2 / 2, rtol=0.06)
    np.testing.assert_allclose((x > 0).mean(), 0.5, atol=0.03)


def test_shuffled_rows_are_the_ordered_rows_permuted():
    """The shuffle is drawn after everything else, so the same seed gives the
    same rows, each row's feature, box, soft label and true label together."""
    ordered = dataclasses.replace(STUFF, shuffle_rows=False)
    shuffled = dataclasses.replace(STUFF, shuffle_rows=True)
    moved = 0
    for a, b in zip(rows(ordered), rows(shuffled), strict=True):
        assert a[0] == b[0]
        fa, fb = a[1], b[1]
        # Noise makes every row's feature unique: find each shuffled row.
        match = (fb[:, None, :] == fa[None, :, :]).all(-1)
        assert (match.sum(1) == 1).all() and (match.sum(0) == 1).all()
        order = match.argmax(1)
        for x, y in zip(a[1:], b[1:], strict=True):
            np.testing.assert_array_equal(y, x[order])
        moved += not np.array_equal(order, np.arange(len(order)))
    assert moved >= 35  # of 40 images; identity happens by chance only


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(stuff_classes=3), "stuff_classes"),
        (dict(stuff_classes=10, num_labels=100), "stuff_classes"),
        (dict(detector_error=1.0), "detector_error"),
        (dict(detector_error=-0.1), "detector_error"),
        (dict(caption_kinds=("pair", "colour")), "caption_kinds"),
        (dict(caption_kinds=()), "caption_kinds"),
        (dict(background_regions=(5, 2)), "background_regions"),
        (dict(background_regions=(-1, 2)), "background_regions"),
        (dict(stuff_classes=8, num_labels=56), "num_labels must be at least 57"),
        (dict(regions_per_object=0), "regions_per_object"),
        (dict(min_objects=1), "min_objects"),
    ],
)
def test_bad_world_configs_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **change)


def test_named_worlds_are_valid_members():
    assert set(scenes.WORLDS) == {"siblings", "middle", "clutter"}
    assert scenes.WORLDS["siblings"] == scenes.WorldConfig(num_images=2000)
    clutter = scenes.WORLDS["clutter"]
    assert clutter.regions_per_object == 1 and clutter.shuffle_rows
    assert clutter.caption_kinds == scenes.CAPTION_KINDS


# ---------------------------------------------------------------- claims, read off their words

_M3 = r"(small|large) (\w+) (\w+)"  # size colour shape
_M2 = r"(\w+) (\w+)"  # colour shape
FORMS = {
    "pair": re.compile(rf"a {_M3} and a {_M3}\."),
    "side": re.compile(rf"a {_M3} on the (left|right)\."),
    "count": re.compile(rf"there (is|are) (\d+) (\w+) and a {_M2}\."),
    "relation": re.compile(rf"a {_M2} to the (left|right) of a {_M2}\."),
}


def parse(text):
    """(form, mentions, side, count) of a caption, from its words alone; a
    mention is a dict of size, colour and shape names (None where unsaid)."""
    found = [(form, m.groups()) for form, p in FORMS.items() if (m := p.fullmatch(text))]
    assert len(found) == 1, text
    form, g = found[0]

    def mention(size, colour, shape):
        assert size in (None, *scenes.SIZES) and colour in scenes.COLOURS, text
        assert shape in scenes.SHAPES, text
        return {"size": size, "colour": colour, "shape": shape}

    if form == "pair":
        return form, (mention(*g[:3]), mention(*g[3:])), None, None
    if form == "side":
        return form, (mention(*g[:3]),), g[3], None
    if form == "relation":
        return form, (mention(None, *g[:2]), mention(None, *g[3:])), g[2], None
    verb, count, noun = g[0], int(g[1]), g[2]
    assert verb == ("are" if count > 1 else "is"), text
    shape = noun[:-1] if count > 1 else noun
    assert noun == (shape + "s" if count > 1 else shape) and shape in scenes.SHAPES, text
    counted = {"size": None, "colour": None, "shape": shape}
    return form, (counted, mention(None, *g[3:])), None, count


def named(obj):
    box = obj.box
    return {
        "size": scenes.SIZES[obj.size],
        "colour": scenes.COLOURS[obj.colour],
        "shape": scenes.SHAPES[obj.shape],
        "x": (box[0] + box[2]) / 2,
    }


def fits(mention, thing):
    return all(v is None or thing[k] == v for k, v in mention.items())


def says(parsed, objects):
    """Whether the parsed caption is true of the objects, as its words read."""
    form, mentions, side, count = parsed
    things = [named(o) for o in objects]
    if form == "side":
        return any(fits(mentions[0], t) and (t["x"] < 320) == (side == "left") for t in things)
    if form == "count":
        n = sum(t["shape"] == mentions[0]["shape"] for t in things)
        return n == count and any(fits(mentions[1], t) for t in things)
    return any(
        i != j
        and fits(mentions[0], a)
        and fits(mentions[1], b)
        and (form == "pair" or (a["x"] < b["x"]) == (side == "left"))
        for i, a in enumerate(things)
        for j, b in enumerate(things)
    )


def differences(a, b):
    """What changed between two parsed captions of one form: (where, attribute)."""
    assert a[0] == b[0]
    out = [
        (i, key)
        for i, (x, y) in enumerate(zip(a[1], b[1], strict=True))
        for key in x
        if x[key] != y[key]
    ]
    out += [("claim", "side")] if a[2] != b[2] else []
    return out + ([("claim", "count")] if a[3] != b[3] else [])


def one_swaps(parsed, kind, max_count):
    """Every caption one swap of `kind` away, built on the parsed words."""
    form, mentions, side, count = parsed
    out = []
    names = {"colour": scenes.COLOURS, "shape": scenes.SHAPES, "size": scenes.SIZES}
    for i, m in enumerate(mentions):
        # The counted noun of a count caption keeps its shape (a count swap changes it).
        if kind in names and m[kind] is not None and not (form == "count" and i == 0):
            for name in names[kind]:
                if name != m[kind]:
                    changed = list(mentions)
                    changed[i] = {**m, kind: name}
                    out.append((form, tuple(changed), side, count))
    if kind == "side" and side:
        out.append((form, mentions, "right" if side == "left" else "left", count))
    if kind == "count" and form == "count":
        out += [(form, mentions, side, n) for n in range(1, max_count + 1) if n != count]
    if kind == "binding" and form in ("pair", "relation"):
        a, b = mentions
        if a["colour"] != b["colour"]:
            swapped = ({**a, "colour": b["colour"]}, {**b, "colour": a["colour"]})
            out.append((form, swapped, side, count))
    return out


def false_swaps(text, objects, max_count):
    """The kinds of swap that can make a caption false in the scene, by its words."""
    parsed = parse(text)
    return {
        kind
        for kind in NEGATIVE_KINDS
        if any(not says(s, objects) for s in one_swaps(parsed, kind, max_count))
    }


def check_negative(claim, kind, negative, objects):
    """The negative is false in the scene and differs from the claim in `kind` only."""
    parsed, theirs = parse(claim.text), parse(negative.text)
    assert not says(theirs, objects), (claim.text, negative.text)
    changed = differences(parsed, theirs)
    if kind == "binding":
        assert changed == [(0, "colour"), (1, "colour")], (claim.text, negative.text)
        assert theirs[1][0]["colour"] == parsed[1][1]["colour"]
        assert theirs[1][1]["colour"] == parsed[1][0]["colour"]
    elif kind in ("side", "count"):
        assert changed == [("claim", kind)], (claim.text, negative.text)
    else:
        assert len(changed) == 1 and changed[0][1] == kind, (claim.text, negative.text)


def test_claims_render_as_the_module_docstring_shows():
    red_cube, blue_sphere = Mention(0, 0, 0), Mention(1, 2, 1)
    assert Claim("pair", (red_cube, blue_sphere)).text == (
        "a small red cube and a large blue sphere."
    )
    assert Claim("side", (red_cube,), side="left").text == "a small red cube on the left."
    counted = (Mention(0), Mention(1, 2))
    assert Claim("count", counted, count=2).text == "there are 2 cubes and a blue sphere."
    assert Claim("count", counted, count=1).text == "there is 1 cube and a blue sphere."
    relation = Claim("relation", (Mention(0, 0), Mention(1, 2)), side="left")
    assert relation.text == "a red cube to the left of a blue sphere."
    for claim in (relation, Claim("count", counted, count=2)):
        assert Claim.from_json(json.loads(json.dumps(claim.to_json()))) == claim


def test_claims_hold_as_their_words_say_on_hand_made_scenes():
    cube = scenes.SceneObject(0, 0, 0, (10.0, 10.0, 50.0, 50.0))  # small red cube, left
    sphere = scenes.SceneObject(1, 2, 1, (400.0, 10.0, 520.0, 130.0))  # large blue sphere
    other_cube = scenes.SceneObject(0, 1, 1, (200.0, 200.0, 320.0, 320.0))  # centre 260: left
    objects = [cube, sphere, other_cube]
    assert Claim("side", (Mention(0, 0, 0),), side="left").holds(objects)
    assert not Claim("side", (Mention(0, 0, 0),), side="right").holds(objects)
    assert Claim("count", (Mention(0), Mention(1, 2)), count=2).holds(objects)
    assert not Claim("count", (Mention(0), Mention(1, 2)), count=1).holds(objects)
    # A pair and a relation need two distinct objects.
    assert not Claim("pair", (Mention(0, 0, 0), Mention(0, 0, 0))).holds(objects)
    assert Claim("pair", (Mention(0, 0, 0), Mention(0, 1, 1))).holds(objects)
    left = Claim("relation", (Mention(0, 1), Mention(1, 2)), side="left")
    assert left.holds(objects) and not dataclasses.replace(left, side="right").holds(objects)


def test_captions_are_true_and_hard_negatives_false_one_swap_away():
    config = dataclasses.replace(ALL_KINDS, num_images=80)
    forms, kinds = set(), set()
    for image_id, objects, *_ in scenes.generate(config):
        rng = np.random.default_rng([1, int(image_id.removeprefix("synth"))])
        for claim in captions(objects, rng, 8, config.caption_kinds):
            parsed = parse(claim.text)
            assert parsed[0] == claim.kind
            assert claim.holds(objects) and says(parsed, objects), claim.text
            forms.add(claim.kind)
            negatives = hard_negatives(claim, objects, rng, config.max_objects)
            assert set(negatives) == false_swaps(claim.text, objects, config.max_objects)
            for kind, negative in negatives.items():
                check_negative(claim, kind, negative, objects)
            kinds |= set(negatives)
    assert forms == set(scenes.CAPTION_KINDS) and kinds == set(NEGATIVE_KINDS)


def test_hard_negatives_are_drawn_from_every_false_swap():
    """Over many draws, each kind's negatives cover all of its false swaps."""

    def key(parsed):
        form, mentions, side, count = parsed
        return form, tuple(tuple(m.items()) for m in mentions), side, count

    config = dataclasses.replace(ALL_KINDS, num_images=4)
    for image_id, objects, *_ in scenes.generate(config):
        rng = np.random.default_rng([2, int(image_id.removeprefix("synth"))])
        for claim in captions(objects, rng, 3, config.caption_kinds):
            drawn: dict = {kind: set() for kind in NEGATIVE_KINDS}
            for seed in range(200):
                draw = hard_negatives(claim, objects, np.random.default_rng(seed), 5)
                for kind, negative in draw.items():
                    drawn[kind].add(key(parse(negative.text)))
            for kind in NEGATIVE_KINDS:
                swaps = one_swaps(parse(claim.text), kind, 5)
                assert drawn[kind] == {key(s) for s in swaps if not says(s, objects)}


def test_default_caption_forms():
    """Without `relation` among the kinds, no caption is one."""
    forms = set()
    for image_id, objects, *_ in scenes.generate(dataclasses.replace(SMALL, num_images=30)):
        rng = np.random.default_rng(int(image_id.removeprefix("synth")))
        forms |= {parse(c.text)[0] for c in captions(objects, rng, 5)}
    assert forms == {"pair", "side", "count"}


# ---------------------------------------------------------------- the written world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    config = dataclasses.replace(ALL_KINDS, num_images=60, background_regions=(1, 3))
    config = dataclasses.replace(config, stuff_classes=4)
    return config, synthetic.write_world(str(tmp_path_factory.mktemp("w") / "world"), config)


def test_hard_negative_file_pairs_val_captions_with_false_ones(world):
    """itm_hard_val.jsonl: val images only; each val caption with every kind of
    swap that can make it false; texts in the world's vocabulary."""
    config, paths = world
    assert paths["itm_hard_val"].endswith("itm_hard_val.jsonl")
    with open(paths["itm_hard_val"]) as f:
        records = [json.loads(line) for line in f]
    val, train = TextStore(paths["captions_val"]), TextStore(paths["captions_train"])
    val_ids = {str(i) for i in val.image_ids}
    assert not val_ids & {str(i) for i in train.image_ids}
    tokenizer = Tokenizer(paths["vocab"])
    with open(paths["vocab"]) as f:
        pieces = f.read().split("\n")
    objects = {image_id: o for image_id, o, *_ in scenes.generate(config)}
    kinds_of: dict = {}  # (image, caption) -> kinds of its negatives
    for r in records:
        assert r["image_id"] in val_ids
        for text in (r["text"], r["negative"]):
            assert pieces.index(UNK) not in tokenizer.encode(text), text
        claim, negative = Claim.from_json(r["claim"]), Claim.from_json(r["negative_claim"])
        assert claim.text == r["text"] and negative.text == r["negative"]
        scene = objects[r["image_id"]]
        assert says(parse(r["text"]), scene)
        check_negative(claim, r["kind"], negative, scene)
        kinds_of.setdefault((r["image_id"], r["text"]), set()).add(r["kind"])
    # The val captions as stored, read back into words.
    captioned = set()
    for i in range(len(val)):
        image_id = str(val.image_ids[i])
        text = " ".join(pieces[t] for t in val.input_ids(i)).replace(" .", ".")
        want = false_swaps(text, objects[image_id], config.max_objects)
        assert kinds_of.get((image_id, text), set()) == want, text
        captioned.add((image_id, text))
    assert set(kinds_of) <= captioned  # no record for a text that is not a val caption
    assert {r["kind"] for r in records} == set(NEGATIVE_KINDS)
