"""The jitted extraction step: images -> detector -> proposals -> box head -> regions.

`detect` is the computation for a padded batch. `make_step` runs it one image
at a time on each device (`lax.map` over a batch-1 program, `shard_map`ped over
a 1-D mesh of the local devices), because with a batch dimension XLA's
convolutions change their last bits with the batch size: measured on CPU, the
RPN's 1x1 anchor-delta conv differed by up to 2.4e-7 between a batch of 1 and
a batch of 3 (the res4 features and objectness happened to agree), which moved
stored boxes and confidences by an ulp. Looped, an image's program is the same
whatever the batch, its neighbours or the devices, and so are its bits.

The batch is still fixed per compiled program: a partial batch is filled with
blank images, which `lax.cond` skips. What the batch size buys is fewer
dispatches and transfers; the device work is per image (at 600 x 1000 a
ResNet-101 backbone and res5 over 300 regions are large enough to fill a GPU;
not measured here)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from uniter_jax.features import boxes as box_ops
from uniter_jax.features import detections, preprocess, proposals
from uniter_jax.features.detector import Detector
from uniter_jax.features.extract_config import ExtractConfig

MESH_AXIS = "images"


def feature_map_size(height: int, width: int) -> tuple[int, int]:
    """res4's size for an `height x width` input: the stem's conv (stride 2, pad
    3) and Caffe max-pool (3/2, ceil), then res3 and res4 (stride 2 in 1x1 convs)."""

    def halved(side: int) -> int:
        return (side + 1) // 2

    def one(side: int) -> int:
        side = halved(side)
        pooled = (side - 3 + 1) // 2 + 1  # ceil((side - 3) / 2) + 1
        if (pooled - 1) * 2 >= side:
            pooled -= 1
        return halved(halved(pooled))

    return one(height), one(width)


class Extracted(NamedTuple):
    """A batch's regions: `K` = max_boxes slots, the first `count` real."""

    count: jax.Array  # [B] int32
    boxes: jax.Array  # [B, K, 4] float32 (x1, y1, x2, y2) in original-image pixels
    confidence: jax.Array  # [B, K] float32 max class confidence (the selection score)
    class_probs: jax.Array  # [B, K, C] float32 softmax, background at 0
    features: jax.Array  # [B, K, D] float32
    object_class: jax.Array  # [B, K] int32 argmax over classes 1..
    object_conf: jax.Array  # [B, K] float32
    attribute: jax.Array | None  # [B, K] int32 argmax over attributes 1.. (None: no head)
    attribute_conf: jax.Array | None  # [B, K] float32


def propose(
    detector: Detector,
    objectness_logits: jax.Array,
    anchor_deltas: jax.Array,
    image_sizes: jax.Array,
    scales: jax.Array,
    feature_sizes: jax.Array,
    *,
    config: ExtractConfig,
    cell_anchors: np.ndarray | None = None,
) -> proposals.Proposals:
    """`detect`'s proposal stage: `proposals.propose` with `config`'s counts and
    the box convention of the code base `detector`'s weights come from."""
    return proposals.propose(
        objectness_logits,
        anchor_deltas,
        image_sizes,
        scales,
        feature_sizes,
        cell_anchors=cell_anchors,
        pre_nms_top_n=config.pre_nms_top_n,
        post_nms_top_n=config.post_nms_top_n,
        convention=box_ops.CONVENTIONS[detector.box_convention],
    )


def detect(
    detector: Detector,
    images: jax.Array,
    image_sizes: jax.Array,
    scales: jax.Array,
    feature_sizes: jax.Array,
    *,
    config: ExtractConfig,
    cell_anchors: np.ndarray | None = None,
) -> Extracted:
    """Padded images `[B, H, W, 3]` (`preprocess.pad_batch`), their resized sizes
    `[B, 2]`, scales `[B]` and res4 sizes `[B, 2]` -> their regions."""
    rpn = detector(images)
    proposed = propose(
        detector,
        rpn.objectness_logits,
        rpn.anchor_deltas,
        image_sizes,
        scales,
        feature_sizes,
        config=config,
        cell_anchors=cell_anchors,
    )
    heads = detector.regions(rpn.features, proposed.boxes)
    kept = detections.select_regions(
        heads.class_logits,
        proposed.boxes,
        proposed.valid,
        scales,
        heads.attribute_logits,
        conf_threshold=config.conf_threshold,
        min_boxes=config.min_boxes,
        max_boxes=config.max_boxes,
    )
    features = jnp.take_along_axis(heads.features, kept.indices[..., None], axis=1)
    return Extracted(
        count=kept.count,
        boxes=kept.boxes,
        confidence=kept.confidence,
        class_probs=kept.class_probs,
        features=jnp.where(kept.valid[..., None], features, 0.0),
        object_class=kept.object_class,
        object_conf=kept.object_conf,
        attribute=kept.attribute,
        attribute_conf=kept.attribute_conf,
    )


@functools.cache
def _compiled(graphdef: Any, config: ExtractConfig, anchors: tuple | None, mesh: Mesh) -> Callable:
    """`detect` per image, looped over each device's rows, mapped over `mesh`'s
    devices and jitted: one cache entry per model structure and settings (jit
    then keeps one program per input shape: per bucket and batch)."""
    cell_anchors = None if anchors is None else np.asarray(anchors, np.float32)

    def per_device(state, real, *rows):
        def one(row):
            out = detect(
                nnx.merge(graphdef, state),
                *(x[None] for x in row),
                config=config,
                cell_anchors=cell_anchors,
            )
            return jax.tree.map(lambda x: x[0], out)

        row_shapes = [jax.ShapeDtypeStruct(x.shape[1:], x.dtype) for x in rows]
        shapes = jax.eval_shape(one, row_shapes)
        blank = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

        def one_or_blank(args):
            # Blank rows (filling a partial batch) are not computed at all.
            real, row = args
            return jax.lax.cond(real, one, lambda _: blank, row)

        # One image at a time (module doc).
        return jax.lax.map(one_or_blank, (real, rows))

    rows = P(MESH_AXIS)
    return jax.jit(
        jax.shard_map(
            per_device,
            mesh=mesh,
            in_specs=(P(), rows, rows, rows, rows, rows),
            out_specs=rows,
            check_vma=False,
        )
    )


def make_step(
    detector: Detector,
    config: ExtractConfig,
    *,
    cell_anchors: np.ndarray | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[Callable[[preprocess.ImageBatch, int], dict[str, np.ndarray]], int]:
    """The step over a 1-D mesh of `devices` (default: the local ones; each takes
    an equal part of the batch) and the batch it takes: `config.batch_size`
    rounded up to a multiple of the devices. The step takes a full
    `ImageBatch` whose first `count` images are real (the rest blanks, which
    are skipped) and returns `Extracted`'s fields as numpy."""
    mesh = Mesh(np.asarray(devices or jax.local_devices()), (MESH_AXIS,))
    batch = -(-config.batch_size // mesh.size) * mesh.size
    graphdef, state = nnx.split(detector)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    anchors = None if cell_anchors is None else tuple(map(tuple, np.asarray(cell_anchors).tolist()))
    compiled = _compiled(graphdef, config, anchors, mesh)
    on_rows = NamedSharding(mesh, P(MESH_AXIS))

    def step(padded: preprocess.ImageBatch, count: int) -> dict[str, np.ndarray]:
        if len(padded.images) != batch:
            raise ValueError(f"the step takes {batch} images, got {len(padded.images)}")
        real = np.arange(batch) < count
        sizes = np.array([feature_map_size(h, w) for h, w in padded.image_sizes.tolist()], np.int32)
        inputs = (real, padded.images, padded.image_sizes, padded.scales, sizes)
        out = compiled(state, *(jax.device_put(x, on_rows) for x in inputs))
        return {k: np.asarray(v) for k, v in out._asdict().items() if v is not None}

    return step, batch
