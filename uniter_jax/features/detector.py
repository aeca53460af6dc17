"""The bottom-up-attention detector's networks: backbone + RPN, and the box head.

Two calls, with the proposal step (`proposals.py`: anchors, decoding, NMS)
between them:

    detector = Detector(DetectorConfig(), nnx.Rngs(0))
    rpn = detector(images)                       # [B, H, W, 3] preprocessed
    boxes = ...                                  # [B, R, 4] from rpn (proposals.py)
    regions = detector.regions(rpn.features, boxes)

To load a checkpoint, build it abstract (`nnx.eval_shape(lambda: Detector(...))`)
and set every variable: the random init runs op by op and takes tens of
seconds on a CPU. `weights.load_detector` does that for the published files.

Parameter names mirror detectron2's module names, so a checkpoint maps key
by key. Two checkpoint layouts:

- bua: bottom-up-attention.pytorch caffe-mode `.pth` (`bua-caffe-frcn-r101-k10-100.pth`, `-k36`),
  the modules of `bua/caffe/modeling/`, Caffe class order;
- d2: py-bottom-up-attention's detectron2 `.pkl` (`faster_rcnn_from_caffe_attr.pkl`);
  HuggingFace's LXMERT demo FRCNN (`unc-nlp/frcnn-vg-finetuned`,
  `examples/research_projects/lxmert/modeling_frcnn.py`) uses its names.

Our path is the `nnx.state` key joined by dots. `{i}` is the block index
(res2 0-2, res3 0-3, res4 0-22, res5 0-2), `{c}` one of conv1, conv2, conv3,
shortcut (shortcut in block 0 only), `A` = 12 anchors, `P` the predictor
prefix `roi_heads.box_predictor`. (T): a conv `weight` `[O, I, kh, kw]`
becomes our `kernel` `[kh, kw, I, O]` (transpose `(2, 3, 1, 0)`); a linear
`weight` `[O, I]` becomes `kernel` `[I, O]`.

Same key in both layouts (`kernel` <- `weight`):

    backbone.stem.conv1.kernel               backbone.stem.conv1.weight (T)
    backbone.stem.conv1.norm.X               same, X in weight, bias, running_mean, running_var
    backbone.res{2,3,4}.{i}.{c}.kernel       backbone.res{n}.{i}.{c}.weight (T)
    backbone.res{2,3,4}.{i}.{c}.norm.X       same
    rpn_head.conv.kernel / .bias             proposal_generator.rpn_head.conv.weight (T) / .bias
    rpn_head.anchor_deltas.kernel / .bias    proposal_generator.rpn_head.anchor_deltas.* (T)
    roi_heads.res5.{i}.{c}.kernel / .norm.X  roi_heads.res5.{i}.{c}.weight (T) / .norm.X
    P.fc_attr.kernel / .bias                 bua P.attr_linear1.* (T); d2 P.fc_attr.* (T)

Objectness, `proposal_generator.rpn_head.objectness_logits.*`:

    rpn_head.objectness_logits.kernel        bua weight w [2A, 512, 1, 1]: (w[A:] - w[:A]) (T)
                                             d2 weight [A, 512, 1, 1] (T)
    rpn_head.objectness_logits.bias          bua b[A:] - b[:A]; d2 bias

Class-indexed rows (ours = bua = Caffe order: background 0, VG object k at
k + 1; d2: object k at k, background last, so d2 rows roll by one,
`np.roll(x, 1, axis=0)`):

    P.cls_score.kernel [2048, 1601] / .bias  bua P.cls_score.* (T); d2 same key, rolled (T)
    P.bbox_pred.kernel [2048, 6404] / .bias  bua P.bbox_pred.* [6404, 2048] (T)
                                             d2 P.bbox_pred.* [6400, 2048]: 4 zero rows for
                                             the background put first (d2 does not regress
                                             it), then (T)
    P.cls_embedding.embedding [1601, 256]    bua P.cls_embed.weight; d2 P.cls_embedding.weight,
                                             rolled
    P.attr_score.kernel [512, 401] / .bias   bua P.attr_linear2.* (T); d2 P.attr_score.*,
                                             rolled ("no attribute" is first in Caffe, last
                                             in d2, which drops `[..., :-1]`), then (T)

Batch norm: `num_batches_tracked` is dropped; a checkpoint with only `weight`
and `bias` per norm (Caffe2-converted) stands for `running_mean = 0`,
`running_var = 1 - eps` (detectron2 FrozenBatchNorm2d's defaults).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from uniter_jax.features.box_head import BoxHead, RegionOutputs
from uniter_jax.features.detector_config import DetectorConfig
from uniter_jax.features.resnet import ResNetC4
from uniter_jax.features.rpn import RPNHead


class RPNOutputs(NamedTuple):
    """The first stage's outputs for `B` images; `H, W` = res4's size (about 1/16)."""

    features: jax.Array  # [B, H, W, 1024] res4, in the compute dtype
    objectness_logits: jax.Array  # [B, H, W, A] fp32, one logit per anchor
    anchor_deltas: jax.Array  # [B, H, W, A, 4] fp32 (dx, dy, dw, dh)


class Detector(nnx.Module):
    """The Visual Genome Faster R-CNN of bottom-up attention (inference only)."""

    def __init__(self, config: DetectorConfig, rngs: nnx.Rngs):
        # How the RPN's boxes are measured (`boxes.CONVENTIONS`): that of the
        # code base its weights come from, as its anchors (a static attribute).
        self.box_convention: str = config.anchors
        self.backbone = ResNetC4(config, rngs)
        self.rpn_head = RPNHead(config, rngs)
        self.roi_heads = BoxHead(config, rngs)

    def __call__(self, images: jax.Array) -> RPNOutputs:
        """Preprocessed images `[B, H, W, 3]` (BGR minus the pixel mean, as
        `preprocess.py` makes them) -> res4 features and the RPN's outputs."""
        features = self.backbone(images)
        logits, deltas = self.rpn_head(features)
        return RPNOutputs(features, logits, deltas)

    def regions(
        self, features: jax.Array, boxes: jax.Array, classes: jax.Array | None = None
    ) -> RegionOutputs:
        """res4 `features` `[B, H, W, 1024]` and `boxes` `[B, R, 4]` (x1, y1, x2, y2
        in input-image pixels) -> region features and class, box and attribute
        outputs. `classes` `[B, R]`, if given, replaces the argmax class that the
        attribute head is conditioned on."""
        return self.roi_heads(features, boxes, classes)
