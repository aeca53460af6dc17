"""The tf.data pipeline against the stores, read back independently."""

import dataclasses
import hashlib
import itertools
import json

import numpy as np
import pytest

from uniter_jax.data import synthetic
from uniter_jax.data.errors import DataError
from uniter_jax.data.image_store import ImageStore
from uniter_jax.data.pipeline import (
    Bucket,
    Pipeline,
    PipelineConfig,
    _fingerprint,
    default_buckets,
    padding_waste,
    plan_epoch,
)
from uniter_jax.data.text_store import TextStore

WORLD = synthetic.WorldConfig(num_images=24, feature_dim=16, num_labels=61, seed=5)
CONFIG = PipelineConfig(
    buckets=(Bucket(12, 6, 8), Bucket(14, 12, 4)),
    min_bb=3,
    max_bb=12,
    conf_th=0.5,
    itm_neg_prob=0.5,
    soft_labels=True,
    seed=1,
)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    paths = synthetic.write_world(str(tmp_path_factory.mktemp("w") / "world"), WORLD)
    return TextStore(paths["captions_train"]), ImageStore(paths["images"])


def take(pipeline, n):
    return list(itertools.islice(pipeline, n))


def expected_row(texts, images, text_index, image_index, bucket, config):
    """One padded example, built straight from the stores and the original's rules
    (docs/original.md, Region features and Masking)."""
    ids = [101, *texts.input_ids(text_index)[: bucket.text_len - 2], 102]
    regions = images.get(str(images.ids[image_index]))
    count = int((regions.conf > config.conf_th).sum())
    kept = min(regions.num_boxes, max(config.min_bb, min(config.max_bb, count)))
    pad = bucket.num_regions - kept
    return {
        "input_ids": np.pad(ids, (0, bucket.text_len - len(ids))),
        "text_mask": np.pad(np.ones(len(ids)), (0, bucket.text_len - len(ids))),
        "img_feat": np.pad(regions.features[:kept], ((0, pad), (0, 0))),
        "img_pos": np.pad(regions.boxes[:kept], ((0, pad), (0, 0))),
        "img_soft_labels": np.pad(regions.soft_labels[:kept], ((0, pad), (0, 0))),
        "img_mask": np.pad(np.ones(kept), (0, pad)),
    }


def test_batches_equal_an_independent_read_of_the_stores(stores):
    texts, images = stores
    for batch in take(Pipeline(texts, images, CONFIG), 6):
        bucket = next(
            b
            for b in CONFIG.buckets
            if (b.text_len, b.num_regions)
            == (batch["input_ids"].shape[1], batch["img_mask"].shape[1])
        )
        assert len(batch["itm_label"]) == bucket.batch_size
        for r in range(len(batch["itm_label"])):
            t, i = int(batch["text_index"][r]), int(batch["image_index"][r])
            own = images.position(str(texts.image_ids[t]))
            assert batch["itm_label"][r] == int(i == own)
            for key, value in expected_row(texts, images, t, i, bucket, CONFIG).items():
                np.testing.assert_array_equal(batch[key][r], value, err_msg=key)


def test_plan_uses_each_example_once_and_negatives_are_other_images(stores):
    texts, images = stores
    pipeline = Pipeline(texts, images, CONFIG)
    plan = pipeline.plan(0)
    used = plan.rows[:, 0]
    assert len(np.unique(used)) == len(used) and len(used) + plan.dropped == len(texts)
    sizes = np.diff(plan.offsets)
    assert (sizes == [CONFIG.buckets[k].batch_size for k in plan.bucket]).all()
    rows = plan.rows
    own = pipeline.text_images[rows[:, 0]]
    assert ((rows[:, 1] == own) == (rows[:, 2] == 1)).all()
    assert 0 <= padding_waste(plan, CONFIG.buckets) < 1


def test_negative_draws_are_uniform_over_other_images():
    rng = np.random.default_rng(0)
    n, num_images = 40_000, 5
    text_images = rng.integers(0, num_images, n)
    config = PipelineConfig(buckets=(Bucket(40, 10, 1),), itm_neg_prob=0.3)
    plan = plan_epoch(
        np.full(n, 10), text_images, np.full(num_images, 10, np.int32), config, epoch=0
    )
    rows = plan.rows
    negative = rows[:, 2] == 0
    assert abs(negative.mean() - 0.3) < 0.01
    pairs = rows[negative]
    assert (pairs[:, 1] != text_images[pairs[:, 0]]).all()
    counts = np.bincount(pairs[:, 1], minlength=num_images)
    assert counts.min() > 0.9 * counts.mean()


def test_same_seed_same_batches_other_seed_other_batches(stores):
    texts, images = stores
    a = take(Pipeline(texts, images, CONFIG), 3)
    b = take(Pipeline(texts, images, CONFIG), 3)
    c = take(Pipeline(texts, images, PipelineConfig(**{**vars(CONFIG), "seed": 2})), 3)
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(
        not np.array_equal(x["text_index"], z["text_index"]) for x, z in zip(a, c, strict=True)
    )


def test_restored_iterator_continues_exactly_across_epochs(stores):
    texts, images = stores
    steps_per_epoch = len(Pipeline(texts, images, CONFIG).plan(0).bucket)
    total = steps_per_epoch + 4
    straight = take(Pipeline(texts, images, CONFIG), total)
    for cut in (3, steps_per_epoch - 1, steps_per_epoch + 1):
        first = Pipeline(texts, images, CONFIG)
        take(first, cut)
        resumed = Pipeline(texts, images, CONFIG)
        resumed.restore(dict(first.state()))
        for x, y in zip(straight[cut:], take(resumed, total - cut), strict=True):
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"cut {cut} {key}")


def test_hosts_take_slices_of_the_same_global_batches(stores):
    texts, images = stores
    whole = take(Pipeline(texts, images, CONFIG), 5)
    hosts = [
        take(Pipeline(texts, images, CONFIG, process_index=p, process_count=2), 5) for p in range(2)
    ]
    for step, batch in enumerate(whole):
        h0, h1 = hosts[0][step], hosts[1][step]
        for key in batch:
            assert h0[key].shape == h1[key].shape
            np.testing.assert_array_equal(np.concatenate([h0[key], h1[key]]), batch[key])


def test_configuration_errors(stores):
    texts, images = stores
    with pytest.raises(ValueError, match="not divisible"):
        Pipeline(texts, images, CONFIG, process_count=3)
    tight = PipelineConfig(**{**vars(CONFIG), "buckets": (Bucket(5, 4, 4),)})
    with pytest.raises(DataError, match="fits no bucket"):
        Pipeline(texts, images, tight).plan(0)


def test_default_buckets_cover_the_reference_limits():
    buckets = default_buckets(64)
    assert max(b.text_len for b in buckets) >= 62 and max(b.num_regions for b in buckets) >= 100
    assert all(b.batch_size % 8 == 0 for b in buckets)


def reference_plan(text_lens, text_images, kept, config, epoch):
    """The planning rule written as the obvious loop: queues per bucket, emit when full."""
    n = len(text_lens)
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(n) if config.shuffle else np.arange(n)
    negative = rng.random(n) < config.itm_neg_prob
    pool = sorted(set(text_images.tolist()))
    draw = rng.integers(0, max(len(pool) - 1, 1), n)
    images, labels = [], []
    for i in range(n):
        others = [p for p in pool if p != text_images[i]]
        images.append(others[draw[i]] if negative[i] else text_images[i])
        labels.append(0 if negative[i] else 1)
    queues = [[] for _ in config.buckets]
    steps, rows = [], []
    for i in order:
        need = (text_lens[i] + 2, kept[images[i]])
        fitting = [
            k
            for k, b in enumerate(config.buckets)
            if need[0] <= b.text_len and need[1] <= b.num_regions
        ]
        k = min(
            fitting, key=lambda k: (config.buckets[k].text_len + config.buckets[k].num_regions, k)
        )
        queues[k].append(i)
        if len(queues[k]) == config.buckets[k].batch_size:
            steps.append(k)
            rows += [(t, images[t], labels[t]) for t in queues[k]]
            queues[k] = []
    return np.array(steps), np.array(rows)


@pytest.mark.parametrize("shuffle", [True, False])
def test_vectorized_plan_equals_the_reference_loop(shuffle):
    rng = np.random.default_rng(3)
    n, num_images = 3000, 60
    text_lens, text_images = rng.integers(3, 40, n), rng.integers(0, num_images, n)
    kept = rng.integers(2, 30, num_images + 5).astype(np.int32)  # 5 images with no text
    config = PipelineConfig(
        buckets=(Bucket(20, 16, 8), Bucket(42, 16, 4), Bucket(20, 30, 6), Bucket(42, 30, 2)),
        itm_neg_prob=0.4,
        shuffle=shuffle,
        seed=9,
    )
    plan = plan_epoch(text_lens, text_images, kept, config, epoch=2)
    steps, rows = reference_plan(text_lens, text_images, kept, config, epoch=2)
    np.testing.assert_array_equal(plan.bucket, steps)
    np.testing.assert_array_equal(plan.rows[:, :3], rows)
    assert (plan.rows[:, 3] == 1).all()  # no fillers without keep_partial
    assert set(plan.rows[:, 1]) <= set(text_images.tolist())  # negatives stay in the split


def test_keep_partial_fills_last_batches_and_marks_fillers():
    rng = np.random.default_rng(4)
    n, num_images = 203, 30
    text_lens, text_images = rng.integers(3, 40, n), rng.integers(0, num_images, n)
    kept = rng.integers(2, 30, num_images).astype(np.int32)
    buckets = (Bucket(20, 16, 8), Bucket(42, 16, 4), Bucket(20, 30, 6), Bucket(42, 30, 5))
    config = PipelineConfig(buckets=buckets, keep_partial=True, seed=2)
    plan = plan_epoch(text_lens, text_images, kept, config, epoch=0)
    assert plan.dropped == 0
    sizes = np.diff(plan.offsets)
    np.testing.assert_array_equal(sizes, [buckets[k].batch_size for k in plan.bucket])
    valid = plan.rows[:, 3] == 1
    # Every example exactly once among the real rows; fillers copy a real row
    # of the same batch, and each bucket has at most one batch with fillers.
    np.testing.assert_array_equal(np.sort(plan.rows[valid, 0]), np.arange(n))
    for s in range(plan.num_steps):
        batch = plan.rows[plan.offsets[s] : plan.offsets[s + 1]]
        fill = batch[batch[:, 3] == 0]
        assert set(fill[:, 0]) <= set(batch[batch[:, 3] == 1, 0])
    with_fillers = [
        plan.bucket[s]
        for s in range(plan.num_steps)
        if not plan.rows[plan.offsets[s] : plan.offsets[s + 1], 3].all()
    ]
    assert len(with_fillers) == len(set(with_fillers))


def test_default_buckets_pad_at_most_15_percent_on_a_coco_like_mix():
    rng = np.random.default_rng(0)
    n, num_images = 100_000, 20_000
    config = PipelineConfig(buckets=default_buckets(64))
    plan = plan_epoch(
        rng.integers(8, 31, n),
        rng.integers(0, num_images, n),
        rng.integers(10, 101, num_images).astype(np.int32),
        config,
        0,
    )
    assert padding_waste(plan, config.buckets) <= 0.15
    assert plan.dropped / n < 0.02


def test_restore_checks_config_and_range(stores):
    texts, images = stores
    pipeline = Pipeline(texts, images, CONFIG)
    take(pipeline, 2)
    state = pipeline.state()
    other = Pipeline(texts, images, PipelineConfig(**{**vars(CONFIG), "seed": 7}))
    with pytest.raises(DataError, match="other stores or another pipeline config"):
        other.restore(state)
    with pytest.raises(DataError, match="outside epoch"):
        pipeline.restore({**state, "step": 10_000})
    # Another host count is fine: the global batches are the same.
    Pipeline(texts, images, CONFIG, process_count=2).restore(state)


def test_corrupt_blob_is_a_data_error(tmp_path):
    paths = synthetic.write_world(str(tmp_path / "w"), WORLD)
    images, texts = ImageStore(paths["images"]), TextStore(paths["captions_train"])
    path = images.path(images.position(str(texts.image_ids[0])))
    with open(path, "r+b") as f:
        f.truncate(100)
    config = PipelineConfig(**{**vars(CONFIG), "shuffle": False, "itm_neg_prob": 0.0})
    with pytest.raises(DataError, match="wrong size"):
        take(Pipeline(texts, images, config), 50)


def test_soft_labels_need_a_store_that_has_them(tmp_path):
    from uniter_jax.data.image_store import ImageStoreWriter
    from uniter_jax.data.regions import make_regions

    with ImageStoreWriter(str(tmp_path / "i"), feature_dim=4) as w:
        w.add(make_regions("a", np.ones((2, 4)), np.full((2, 7), 0.5)))
    texts = synthetic.write_world(str(tmp_path / "w"), WORLD)["captions_train"]
    with pytest.raises(DataError, match="has none"):
        Pipeline(TextStore(texts), ImageStore(str(tmp_path / "i")), CONFIG)


@pytest.mark.parametrize("keep_partial", [False, True])
def test_groups_stay_together_in_a_bucket_that_fits_all_members(keep_partial):
    rng = np.random.default_rng(5)
    g, groups, num_images = 4, 61, 40
    text_lens = rng.integers(3, 40, g * groups)
    text_images = rng.integers(0, num_images, g * groups)
    kept = rng.integers(2, 30, num_images).astype(np.int32)
    buckets = (Bucket(20, 16, 8), Bucket(42, 16, 4), Bucket(20, 30, 12), Bucket(42, 30, 8))
    config = PipelineConfig(buckets=buckets, group_size=g, keep_partial=keep_partial, seed=1)
    plan = plan_epoch(text_lens, text_images, kept, config, epoch=3)
    for s in range(plan.num_steps):
        rows = plan.rows[plan.offsets[s] : plan.offsets[s + 1]]
        b = buckets[plan.bucket[s]]
        assert len(rows) == b.batch_size
        texts = rows[:, 0].reshape(-1, g)
        # Each run of g rows is one whole group, in slot order.
        np.testing.assert_array_equal(texts, texts[:, :1] + np.arange(g))
        assert (texts[:, 0] % g == 0).all()
        assert (text_lens[rows[:, 0]] + 2 <= b.text_len).all()
        assert (kept[rows[:, 1]] <= b.num_regions).all()
        assert (rows[:, 3].reshape(-1, g) == rows[::g, 3:4]).all()  # validity per group
    valid = plan.rows[plan.rows[:, 3] == 1, 0]
    assert len(set(valid.tolist())) == len(valid)
    if keep_partial:
        np.testing.assert_array_equal(np.sort(valid), np.arange(g * groups))
    else:
        assert len(valid) + plan.dropped == g * groups
    with pytest.raises(ValueError, match="multiple of the group size"):
        plan_epoch(
            text_lens,
            text_images,
            kept,
            PipelineConfig(buckets=(Bucket(42, 30, 6),), group_size=g),
            0,
        )


def test_negatives_per_text_rows_are_own_image_then_other_images():
    rng = np.random.default_rng(6)
    n, num_images, p = 90, 25, 3
    text_lens, text_images = rng.integers(3, 40, n), rng.integers(0, num_images, n)
    kept = rng.integers(2, 30, num_images + 3).astype(np.int32)  # 3 images with no text
    buckets = (Bucket(20, 30, 8), Bucket(42, 30, 4))
    config = PipelineConfig(buckets=buckets, negatives_per_text=p, keep_partial=True, seed=4)
    plan = plan_epoch(text_lens, text_images, kept, config, epoch=0)
    rows = plan.rows.reshape(-1, 1 + p, 4)
    # One text per unit, its own image first (label 1), then p images of other texts.
    assert (rows[:, :, 0] == rows[:, :1, 0]).all()
    np.testing.assert_array_equal(rows[:, 0, 1], text_images[rows[:, 0, 0]])
    np.testing.assert_array_equal(rows[:, :, 2], np.tile([1] + [0] * p, (len(rows), 1)))
    negatives = rows[:, 1:, 1]
    assert (negatives != rows[:, :1, 1]).all()
    assert set(negatives.ravel()) <= set(text_images.tolist())
    valid = rows[rows[:, 0, 3] == 1, 0, 0]
    np.testing.assert_array_equal(np.sort(valid), np.arange(n))
    for s in range(plan.num_steps):  # the bucket holds the unit's largest image
        batch = plan.rows[plan.offsets[s] : plan.offsets[s + 1]]
        assert (kept[batch[:, 1]] <= buckets[plan.bucket[s]].num_regions).all()


def test_negatives_per_image_rows_are_own_text_then_texts_of_other_images():
    rng = np.random.default_rng(7)
    n, num_images, q = 90, 25, 3
    text_lens, text_images = rng.integers(3, 40, n), rng.integers(0, num_images, n)
    kept = rng.integers(2, 30, num_images + 3).astype(np.int32)
    buckets = (Bucket(20, 30, 8), Bucket(42, 30, 4))
    config = PipelineConfig(buckets=buckets, negatives_per_image=q, keep_partial=True, seed=4)
    plan = plan_epoch(text_lens, text_images, kept, config, epoch=0)
    rows = plan.rows.reshape(-1, 1 + q, 4)
    # One image per unit: its own text first (label 1), then q texts of other images.
    assert (rows[:, :, 1] == rows[:, :1, 1]).all()
    np.testing.assert_array_equal(rows[:, 0, 1], text_images[rows[:, 0, 0]])
    np.testing.assert_array_equal(rows[:, :, 2], np.tile([1] + [0] * q, (len(rows), 1)))
    assert (text_images[rows[:, 1:, 0]] != rows[:, :1, 1]).all()
    valid = rows[rows[:, 0, 3] == 1, 0, 0]
    np.testing.assert_array_equal(np.sort(valid), np.arange(n))
    for s in range(plan.num_steps):  # the bucket holds the unit's longest text
        batch = plan.rows[plan.offsets[s] : plan.offsets[s + 1]]
        assert (text_lens[batch[:, 0]] + 2 <= buckets[plan.bucket[s]].text_len).all()
    # Uniform over the other images' texts: every such text is about equally likely.
    many = plan_epoch(
        np.full(6, 5),
        np.array([0, 0, 0, 1, 2, 2]),
        np.full(3, 4),
        dataclasses.replace(config, buckets=(Bucket(20, 30, 6006),), negatives_per_image=1000),
        0,
    ).rows.reshape(-1, 1001, 4)
    first = many[many[:, 0, 0] == 0][0, 1:, 0]  # text 0 (image 0): texts 3, 4, 5
    np.testing.assert_allclose(np.bincount(first, minlength=6)[3:] / 1000, 1 / 3, atol=0.06)
    assert set(first) == {3, 4, 5}
    with pytest.raises(ValueError, match="cannot be combined"):
        plan_epoch(
            text_lens, text_images, kept, dataclasses.replace(config, negatives_per_text=2), 0
        )


def test_saved_positions_from_before_negatives_per_image_still_restore(stores):
    """The fingerprint is the one computed before that field existed (the
    config without it) while it is 0; setting it changes the fingerprint."""
    texts, images = stores
    fields = {k: v for k, v in dataclasses.asdict(CONFIG).items() if k != "negatives_per_image"}
    described = json.dumps(
        [fields, texts.manifest["data_sha256"], images.manifest["index_sha256"]], sort_keys=True
    )
    old = hashlib.sha256(described.encode()).hexdigest()[:16]
    assert Pipeline(texts, images, CONFIG).fingerprint == old
    with_negatives = dataclasses.replace(CONFIG, negatives_per_image=2, itm_neg_prob=0.0)
    assert _fingerprint(with_negatives, texts, images) != old
