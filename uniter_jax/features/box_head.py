"""The per-region head: RoIPool, res5, mean pooling, class / box / attribute outputs.

As bottom-up-attention.pytorch `bua/caffe/modeling/roi_heads.py`
(`BUACaffeRes5ROIHeads`) and `fast_rcnn.py` (`BUACaffeFastRCNNOutputLayers`),
and py-bottom-up-attention `detectron2/modeling/roi_heads/roi_heads.py`
(`Res5ROIHeads`, `RES5HALVE: False`) and `fast_rcnn.py`
(`FastRCNNOutputLayers`, `ATTR: True`):

- RoIPool 14x14 at 1/16 of res4 (`roi_pool.py`);
- res5: 3 bottlenecks 1024 -> 2048 (512 wide) whose first block has stride 1
  (conv1 and shortcut), and whose 3x3 convs all have dilation 2 and padding
  2, so the 14x14 grid stays 14x14 (`RES5_DILATION: 2` in bua; the "VG
  modifications" printed by py-bottom-up-attention);
- the mean over the 14x14 grid: the 2048-d region feature;
- `cls_score` 2048 -> 1601 logits, background first (Caffe order);
  `bbox_pred` 2048 -> 1601 x 4 class-specific deltas `(dx, dy, dw, dh)`;
- attributes: the argmax class over all 1601 logits (background included)
  is embedded (1601 x 256), concatenated after the feature (2048 + 256),
  then Linear 2304 -> 512, ReLU, Linear 512 -> 401 (index 0 "no attribute").
  The bua port returns the softmax of these logits; we return the logits.
  A model without the attribute head (`DetectorConfig.attributes = False`,
  e.g. py-bottom-up-attention's `faster_rcnn_from_caffe.pkl`) has no such
  parameters and returns `attribute_logits = None`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from uniter_jax.features.detector_config import DetectorConfig
from uniter_jax.features.resnet import compute_dtype, make_stage, precision, run_stage
from uniter_jax.features.roi_pool import roi_pool


class RegionOutputs(NamedTuple):
    """The box head's outputs for `R` boxes in each of `B` images (all fp32)."""

    features: jax.Array  # [B, R, 2048] mean-pooled res5 features
    class_logits: jax.Array  # [B, R, 1601], background at 0
    box_deltas: jax.Array  # [B, R, 1601, 4] per class (dx, dy, dw, dh)
    attribute_logits: jax.Array | None  # [B, R, 401], given `classes`; None without the head
    classes: jax.Array  # [B, R] int32, the class the attributes are conditioned on


class Linear(nnx.Module):
    """`x [..., in] @ kernel [in, out] + bias`, multiplied in the compute dtype
    (full fp32 products in fp32 mode), accumulated and returned in fp32."""

    def __init__(self, in_features: int, out_features: int, dtype, rngs: nnx.Rngs, std: float):
        shape = (in_features, out_features)
        self.kernel = nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum(
            "...i,io->...o",
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            precision=precision(self.dtype),
            preferred_element_type=jnp.float32,
        )
        return y + self.bias[...]


class BoxPredictor(nnx.Module):
    """Pooled features `[..., 2048]` -> class, box and attribute outputs (fp32)."""

    def __init__(self, config: DetectorConfig, rngs: nnx.Rngs):
        dtype = compute_dtype(config)
        width, classes = config.res5_channels, config.num_classes
        # Init stds as the ports (normal 0.01 / 0.001); irrelevant once loaded.
        self.cls_score = Linear(width, classes, dtype, rngs, 0.01)
        self.bbox_pred = Linear(width, 4 * classes, dtype, rngs, 0.001)
        if config.attributes:
            self.cls_embedding = nnx.Embed(
                classes,
                config.class_embedding_size,
                embedding_init=nnx.initializers.normal(0.01),
                param_dtype=jnp.float32,
                rngs=rngs,
            )
            self.fc_attr = Linear(
                width + config.class_embedding_size,
                config.attribute_hidden_size,
                dtype,
                rngs,
                0.01,
            )
            self.attr_score = Linear(
                config.attribute_hidden_size, config.num_attributes, dtype, rngs, 0.01
            )
        else:  # assigned once: a None assigned first would make them static in NNX
            self.cls_embedding = self.fc_attr = self.attr_score = None
        self.dtype = dtype

    def __call__(
        self, features: jax.Array, classes: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array]:
        """`features` `[..., 2048]`; `classes` `[...]` to condition the attributes
        on (default: the argmax of the class logits, as the ports do at test
        time). Returns class logits, deltas `[..., classes, 4]`, attribute
        logits (None without the attribute head) and the classes used."""
        x = features.astype(self.dtype)
        class_logits = self.cls_score(x)
        deltas = self.bbox_pred(x)
        if classes is None:
            classes = jnp.argmax(class_logits, axis=-1).astype(jnp.int32)
        attribute_logits = None
        if self.attr_score is not None:
            embedded = self.cls_embedding.embedding[...][classes].astype(self.dtype)
            hidden = jax.nn.relu(self.fc_attr(jnp.concatenate([x, embedded], axis=-1)))
            attribute_logits = self.attr_score(hidden.astype(self.dtype))
        deltas = deltas.reshape(*deltas.shape[:-1], -1, 4)
        return class_logits, deltas, attribute_logits, classes


class BoxHead(nnx.Module):
    """res4 map and boxes -> `RegionOutputs`."""

    def __init__(self, config: DetectorConfig, rngs: nnx.Rngs):
        self.res5 = make_stage(
            config.stage_blocks[3],
            config.res4_channels,
            config.bottleneck_channels * 8,
            config.res5_channels,
            config,
            rngs,
            first_stride=1,
            dilation=2,
        )
        self.box_predictor = BoxPredictor(config, rngs)
        self.pooler_resolution = config.pooler_resolution
        self.spatial_scale = 1.0 / config.feature_stride

    def pooled_features(self, feature_map: jax.Array, boxes: jax.Array) -> jax.Array:
        """res4 `[B, H, W, 1024]`, boxes `[B, R, 4]` (input pixels, x1 y1 x2 y2)
        -> `[B, R, 2048]` fp32: RoIPool, res5, the mean over the grid."""
        batch, regions = boxes.shape[:2]
        pooled = roi_pool(
            feature_map,
            boxes,
            output_size=self.pooler_resolution,
            spatial_scale=self.spatial_scale,
        )
        x = run_stage(self.res5, pooled.reshape(batch * regions, *pooled.shape[2:]))
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return features.reshape(batch, regions, -1)

    def __call__(
        self, feature_map: jax.Array, boxes: jax.Array, classes: jax.Array | None = None
    ) -> RegionOutputs:
        features = self.pooled_features(feature_map, boxes)
        class_logits, deltas, attribute_logits, classes = self.box_predictor(features, classes)
        return RegionOutputs(features, class_logits, deltas, attribute_logits, classes)
