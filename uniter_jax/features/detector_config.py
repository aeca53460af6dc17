"""`DetectorConfig`: the sizes and numerics of the bottom-up-attention detector.

The Visual Genome Faster R-CNN of Anderson et al. (ResNet-101 C4, RoIPool,
res5 box head with attributes), as the detectron2 ports define it
(bottom-up-attention.pytorch `configs/caffe/test-caffe-r101.yaml`,
py-bottom-up-attention `configs/VG-Detection/faster_rcnn_R_101_C4_attr_caffemaxpool.yaml`).
The defaults are that model; smaller widths and depths exist for tests.

`anchors` says which cell anchors the RPN's channels were trained with: the
Caffe model's (`"caffe"`, the bua checkpoints) or detectron2's (`"detectron2"`,
the py-bottom-up-attention and HuggingFace ports); `weights.load_detector`
sets it from the checkpoint, its module docstring gives the evidence.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from uniter_jax.features import boxes

# Bottleneck blocks in res2, res3, res4 (detectron2 `build_resnet_backbone`).
# res5 always has 3 blocks: the ports build it in the box head with a fixed 3.
STAGE_BLOCKS = {50: (3, 4, 6), 101: (3, 4, 23), 152: (3, 8, 36)}
RES5_BLOCKS = 3
DTYPES = ("float32", "bfloat16")
ANCHOR_KINDS = ("caffe", "detectron2")


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Architecture of the detector's networks (inference only)."""

    depth: int = 101  # ResNet depth: 50, 101 or 152
    blocks_per_stage: tuple[int, int, int, int] | None = None  # res2..res5 override (tests)
    stem_channels: int = 64  # the 7x7 stem conv's output
    res2_channels: int = 256  # res2's output width; doubles per stage (res4: 1024)
    bottleneck_channels: int = 64  # res2's 3x3 width; doubles per stage (res5: 512)
    rpn_channels: int = 512  # the RPN's 3x3 conv output (BUA.RPN.CONV_OUT_CHANNELS)
    num_anchors: int = 12  # anchors per position: 4 sizes x 3 aspect ratios
    anchors: str = "caffe"  # cell-anchor generator the RPN was trained with (ANCHOR_KINDS)
    anchor_sizes: tuple[float, ...] = (64.0, 128.0, 256.0, 512.0)  # sqrt(area), input pixels
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    pooler_resolution: int = 14  # RoIPool output side
    feature_stride: int = 16  # res4's stride; RoIPool's spatial scale is 1 / this
    num_classes: int = 1601  # background first (Caffe order) + 1600 VG objects
    num_attributes: int = 401  # "no attribute" first + 400 VG attributes
    attributes: bool = True  # the attribute head exists (False: no attribute outputs)
    class_embedding_size: int = 256  # the predicted class's embedding, for attributes
    attribute_hidden_size: int = 512  # the attribute head's hidden layer
    batch_norm_eps: float = 1e-5  # detectron2 FrozenBatchNorm2d / torch BatchNorm2d
    dtype: str = "float32"  # compute dtype; params stay fp32, logits come out fp32

    def __post_init__(self):
        problems = []
        if self.blocks_per_stage is None and self.depth not in STAGE_BLOCKS:
            problems.append(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth!r}")
        if self.blocks_per_stage is not None and (
            len(self.blocks_per_stage) != 4 or min(self.blocks_per_stage) < 1
        ):
            problems.append(f"blocks_per_stage needs 4 counts >= 1, got {self.blocks_per_stage}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (not isinstance(value, int) or value <= 0):
                problems.append(f"{field.name} must be a positive integer, got {value!r}")
        if self.anchors not in ANCHOR_KINDS:
            problems.append(f"anchors must be one of {ANCHOR_KINDS}, got {self.anchors!r}")
        if min((*self.anchor_sizes, *self.anchor_ratios), default=0) <= 0:
            problems.append("anchor_sizes and anchor_ratios must be positive")
        if len(self.anchor_sizes) * len(self.anchor_ratios) != self.num_anchors:
            problems.append(
                f"num_anchors {self.num_anchors} != {len(self.anchor_sizes)} anchor_sizes x "
                f"{len(self.anchor_ratios)} anchor_ratios"
            )
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.batch_norm_eps <= 0:
            problems.append("batch_norm_eps must be positive")
        if problems:
            raise ValueError("invalid DetectorConfig: " + "; ".join(problems))

    @property
    def stage_blocks(self) -> tuple[int, int, int, int]:
        """Blocks in res2, res3, res4 and res5."""
        if self.blocks_per_stage is not None:
            return tuple(self.blocks_per_stage)
        return (*STAGE_BLOCKS[self.depth], RES5_BLOCKS)

    def cell_anchors(self) -> np.ndarray:
        """The anchors of the feature-map cell at (0, 0), `[num_anchors, 4]` float32
        (x1, y1, x2, y2), in the order of the RPN's channels; `boxes.anchor_grid`
        shifts them by `feature_stride` per cell (both ports' grids start at 0).

        "caffe": `boxes.caffe_cell_anchors` with scales `anchor_sizes / feature_stride`
        (ratio-major, rounded sides, centred on 7.5); "detectron2":
        `boxes.detectron2_cell_anchors` (size-major, exact sides, centred on 0).
        """
        if self.anchors == "caffe":
            scales = tuple(size / self.feature_stride for size in self.anchor_sizes)
            return boxes.caffe_cell_anchors(self.feature_stride, self.anchor_ratios, scales)
        return boxes.detectron2_cell_anchors(self.anchor_sizes, self.anchor_ratios)

    @property
    def res4_channels(self) -> int:
        """The backbone's output width (1024), what the RPN and RoIPool see."""
        return self.res2_channels * 4

    @property
    def res5_channels(self) -> int:
        """The box head's output width (2048), the region feature size."""
        return self.res2_channels * 8
