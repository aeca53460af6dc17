"""The small detector and extraction settings that the feature tests share:
random weights build in a second and a 64 x 96 image runs in milliseconds."""

import dataclasses

from uniter_jax.features.detector_config import DetectorConfig
from uniter_jax.features.extract_config import ExtractConfig

# res5 is 8 x res2 wide: 128-d region features.
TINY_DETECTOR = DetectorConfig(
    blocks_per_stage=(1, 1, 1, 1),
    stem_channels=8,
    res2_channels=16,
    bottleneck_channels=4,
    rpn_channels=12,
    num_classes=23,
    num_attributes=9,
    class_embedding_size=8,
    attribute_hidden_size=16,
)


def tiny_extract(**changes) -> ExtractConfig:
    """Extraction at a 64-px short side (at most 96) into two buckets, few boxes."""
    base = ExtractConfig(
        min_boxes=3,
        max_boxes=10,
        short_side=64,
        max_side=96,
        buckets=((64, 96), (96, 64)),
        pre_nms_top_n=300,
        post_nms_top_n=50,
    )
    return dataclasses.replace(base, **changes)
