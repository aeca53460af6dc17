"""`ExtractConfig`: how `extract.py` turns images into regions (defaults: the original's)."""

from __future__ import annotations

import dataclasses

from uniter_jax.features import detections, preprocess, proposals


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """How images become regions (the defaults are the original's)."""

    min_boxes: int = detections.MIN_BOXES  # regions per image at least (if proposed)
    max_boxes: int = detections.MAX_BOXES  # and at most; both 36 for a fixed 36
    conf_threshold: float = detections.CONF_THRESHOLD  # max_conf >= this is kept
    batch_size: int = 8  # images per step, rounded up to a multiple of the local devices
    shard_size: int = 1000  # images per output shard
    short_side: int = preprocess.SHORT_SIDE  # resize: the shorter side to this...
    max_side: int = preprocess.MAX_SIDE  # ...unless the longer one exceeds this
    buckets: tuple[tuple[int, int], ...] = preprocess.BUCKETS  # padded (height, width)
    pre_nms_top_n: int = proposals.PRE_NMS_TOP_N  # RPN boxes into NMS
    post_nms_top_n: int = proposals.POST_NMS_TOP_N  # proposals per image
    workers: int = 8  # host threads decoding and resizing images

    def __post_init__(self):
        if not 0 < self.min_boxes <= self.max_boxes:
            raise ValueError(
                f"need 0 < min_boxes <= max_boxes, got {self.min_boxes}, {self.max_boxes}"
            )
        if self.max_boxes > self.post_nms_top_n:
            raise ValueError(f"max_boxes {self.max_boxes} > {self.post_nms_top_n} proposals")
        for name in ("batch_size", "shard_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for shape in ((self.short_side, self.max_side), (self.max_side, self.short_side)):
            preprocess.choose_bucket(*shape, self.buckets)  # the most elongated images fit
