"""Images -> the detector's input: BGR, mean-subtracted, resized, padded to a bucket.

The original (bottom-up-attention `lib/fast_rcnn/test.py: _get_image_blob`,
values from `lib/fast_rcnn/config.py`; bottom-up-attention.pytorch
`utils/extract_utils.py: get_image_blob` is the same):

- `cv2.imread` (8-bit BGR), then float32 minus `PIXEL_MEANS` (BGR
  102.9801, 115.9465, 122.7717); no division by a standard deviation;
- `scale = 600 / shorter side`; if `round(scale * longer side) > 1000`,
  `scale = 1000 / longer side` (`TEST.SCALES (600,)`, `TEST.MAX_SIZE 1000`);
- `cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)`
  on the float image: output sides `round(side * scale)` (half to even),
  2-tap bilinear at half-pixel centres, borders clamped, no antialiasing;
- one image per forward pass; boxes are divided by `scale` afterwards.

`resize_linear` is that resampling in numpy (float32, separable, the same
coordinates and clamping): PIL's BILINEAR, which detectron2's resize and
py-bottom-up-attention use, equals it when enlarging (to float rounding) but
widens its filter when shrinking (antialiasing), so shrunk images differ by a
few grey levels (blurrier); most COCO, VG and Flickr images are enlarged (their
shorter side is under 600). PIL decodes and converts the images here.

Buckets: a resized image has a side of 600 and the other in [600, 1000], or
(very elongated) a side of 1000 and the other under 600. So every landscape
image fits 600 x 1000 and every portrait one 1000 x 600; 600 x 800 takes 4:3 and
squarer images (COCO's 640 x 480 becomes exactly 800 x 600) and 600 x 600 the
squares, each at a fraction of the padding. One compiled program per bucket.
Images are padded with zeros after the mean subtraction, as the original's
`im_list_to_blob` pads.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from uniter_jax.data.errors import DataError

PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)
SHORT_SIDE = 600
MAX_SIDE = 1000
# The RPN drops proposals with a side under 16 px of the original image
# (RPN_MIN_SIZE), so a smaller image can have no region at all.
MIN_IMAGE_SIDE = 16
# Larger is a decompression bomb or a scan; PIL's own pixel limit
# (Image.MAX_IMAGE_PIXELS, 2x raises) applies as well.
MAX_IMAGE_SIDE = 20000
BUCKETS = ((600, 600), (600, 800), (800, 600), (600, 1000), (1000, 600))

# float32(v - mean) for every uint8 v, computed in float64 as the original's
# `im_orig -= cfg.PIXEL_MEANS` does (float32 array, float64 means).
_MEAN_LUT = (
    np.arange(256, dtype=np.float64)[None, :] - np.asarray(PIXEL_MEANS_BGR)[:, None]
).astype(np.float32)


class PreparedImage(NamedTuple):
    """One image as the detector takes it, before padding."""

    pixels: np.ndarray  # [h, w, 3] float32, BGR minus PIXEL_MEANS_BGR, resized
    scale: float  # h / original height (= w / original width up to rounding)
    original_size: tuple[int, int]  # (height, width) of the decoded image


class ImageBatch(NamedTuple):
    """Images padded into one bucket."""

    images: np.ndarray  # [B, H, W, 3] float32, zeros beyond each image
    image_sizes: np.ndarray  # [B, 2] int32 (height, width) of each resized image
    scales: np.ndarray  # [B] float32 resize factors
    original_sizes: np.ndarray  # [B, 2] int32 (height, width) before resizing


def resized_size(
    height: int, width: int, short_side: int = SHORT_SIDE, max_side: int = MAX_SIDE
) -> tuple[int, int, float]:
    """(new height, new width, scale) by the original's rule (module doc)."""
    scale = float(short_side) / float(min(height, width))
    if round(scale * max(height, width)) > max_side:
        scale = float(max_side) / float(max(height, width))
    # cv2's output size: saturate_cast<int>(side * scale), round half to even.
    return round(height * scale), round(width * scale), scale


def _linear_taps(
    source: int, target: int, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cv2 INTER_LINEAR's two taps and float32 weights along one axis."""
    position = ((np.arange(target) + 0.5) * (1.0 / scale) - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    frac = position - first.astype(np.float32)
    # Beyond either border cv2 takes the border pixel alone.
    outside = (first < 0) | (first >= source - 1)
    first = np.clip(first, 0, source - 1)
    frac = np.where(outside, np.float32(0), frac).astype(np.float32)
    second = np.minimum(first + 1, source - 1)
    return first, second, (np.float32(1) - frac).astype(np.float32), frac


def resize_linear(image: np.ndarray, scale: float) -> np.ndarray:
    """`[H, W, C]` float32 -> `[round(H s), round(W s), C]`, as
    `cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)`
    (rows first, then columns, float32 accumulation)."""
    height, width = image.shape[:2]
    new_height, new_width = round(height * scale), round(width * scale)
    image = np.asarray(image, np.float32)
    x0, x1, wx0, wx1 = _linear_taps(width, new_width, scale)
    rows = image[:, x0] * wx0[None, :, None] + image[:, x1] * wx1[None, :, None]
    y0, y1, wy0, wy1 = _linear_taps(height, new_height, scale)
    return rows[y0] * wy0[:, None, None] + rows[y1] * wy1[:, None, None]


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> `[H, W, 3]` uint8 RGB. Alpha is dropped (not composited),
    as cv2.imread's colour mode drops it; 16-bit greyscale keeps its top 8 bits
    (cv2 shifts right by 8); palettes, CMYK (PIL's conversion) and the rest go
    through PIL's convert."""
    if image.mode.startswith("I;16") or image.mode == "I":
        grey = np.asarray(image).astype(np.int64)
        grey = (np.clip(grey, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, np.uint8)


def read_image(path: str | os.PathLike, exif_transpose: bool = False) -> np.ndarray:
    """Decodes an image file -> `[H, W, 3]` uint8 BGR (cv2.imread's layout).

    Raises DataError naming the file when it is missing, not an image,
    truncated or corrupt, smaller than `MIN_IMAGE_SIDE` or larger than
    `MAX_IMAGE_SIDE` on a side, or over PIL's pixel limit. Animated images give
    their first frame. `exif_transpose` applies the EXIF orientation (OpenCV
    >= 3.1's imread does; the original's OpenCV of 2017 may not have; off by
    default: pixels as stored).
    """
    name = os.fspath(path)
    try:
        with Image.open(name) as image:
            width, height = image.size
            if min(width, height) < MIN_IMAGE_SIDE:
                raise DataError(
                    f"image is {width} x {height} px; a side under {MIN_IMAGE_SIDE} px "
                    "can give no region (the RPN's minimum proposal side)",
                    file=name,
                )
            if max(width, height) > MAX_IMAGE_SIDE:
                raise DataError(
                    f"image is {width} x {height} px, over {MAX_IMAGE_SIDE} px on a side "
                    "(decompression bomb or scan); resize it first",
                    file=name,
                )
            image.load()
            if exif_transpose:
                image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except DataError:
        raise
    except Image.DecompressionBombError as error:
        raise DataError(f"too many pixels (decompression bomb): {error}", file=name) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DataError(f"cannot read image: {error}", file=name) from error
    return np.ascontiguousarray(rgb[:, :, ::-1])


def prepare_image(
    image: str | os.PathLike | np.ndarray,
    short_side: int = SHORT_SIDE,
    max_side: int = MAX_SIDE,
) -> PreparedImage:
    """An image file, or `[H, W, 3]` uint8 BGR, -> the detector's float input
    (mean-subtracted, resized; module doc)."""
    bgr = read_image(image) if not isinstance(image, np.ndarray) else image
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected [H, W, 3] uint8 BGR, got {bgr.dtype} {bgr.shape}")
    height, width = bgr.shape[:2]
    _, _, scale = resized_size(height, width, short_side, max_side)
    centred = _MEAN_LUT[np.arange(3), bgr]  # [H, W, 3] float32
    return PreparedImage(resize_linear(centred, scale), scale, (height, width))


def choose_bucket(
    height: int, width: int, buckets: tuple[tuple[int, int], ...] = BUCKETS
) -> tuple[int, int]:
    """The smallest bucket (by area) holding an `height x width` image."""
    fitting = [b for b in buckets if b[0] >= height and b[1] >= width]
    if not fitting:
        raise ValueError(f"no bucket in {buckets} holds {height} x {width}")
    return min(fitting, key=lambda b: b[0] * b[1])


def pad_batch(images: list[PreparedImage], bucket: tuple[int, int]) -> ImageBatch:
    """Pads prepared images into one `[B, *bucket, 3]` batch (zeros beyond
    each image, which is the mean colour)."""
    batch = np.zeros((len(images), *bucket, 3), np.float32)
    for i, prepared in enumerate(images):
        height, width = prepared.pixels.shape[:2]
        if height > bucket[0] or width > bucket[1]:
            raise ValueError(f"image {i} ({height} x {width}) exceeds bucket {bucket}")
        batch[i, :height, :width] = prepared.pixels
    return ImageBatch(
        images=batch,
        image_sizes=np.asarray([p.pixels.shape[:2] for p in images], np.int32).reshape(-1, 2),
        scales=np.asarray([p.scale for p in images], np.float32),
        original_sizes=np.asarray([p.original_size for p in images], np.int32).reshape(-1, 2),
    )
