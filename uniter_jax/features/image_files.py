"""Which images to extract: folders, glob patterns and list files -> ids and paths."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import NamedTuple

from uniter_jax.data.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


class ImageFile(NamedTuple):
    image_id: str  # the file name without its extension
    path: str


def list_images(specs: str | Sequence[str]) -> list[ImageFile]:
    """Folders (their files with an image extension, not recursive), glob
    patterns (every file matched; `**` recurses), single image files (by
    extension) or list files (one path a line, relative to the list file's
    folder; `#` comments) -> images sorted by id. Two files with the same stem
    are a DataError naming both."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    paths: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            names = sorted(os.listdir(spec))
            paths += [
                os.path.join(spec, n)
                for n in names
                if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
                and os.path.isfile(os.path.join(spec, n))
            ]
        elif glob.has_magic(spec):
            paths += [p for p in sorted(glob.glob(spec, recursive=True)) if os.path.isfile(p)]
        elif os.path.isfile(spec) and os.path.splitext(spec)[1].lower() in IMAGE_EXTENSIONS:
            paths.append(spec)
        elif os.path.isfile(spec):
            base = os.path.dirname(os.path.abspath(spec))
            try:
                with open(spec, encoding="utf-8") as f:
                    lines = [line.strip() for line in f]
            except UnicodeDecodeError:
                raise DataError("not a text list of image paths", file=spec) from None
            paths += [os.path.join(base, line) for line in lines if line and line[0] != "#"]
        else:
            raise DataError("no such folder or list file, and no pattern", file=spec)
    seen: dict[str, str] = {}
    for path in paths:
        image_id = os.path.splitext(os.path.basename(path))[0]
        if image_id in seen and os.path.abspath(seen[image_id]) != os.path.abspath(path):
            raise DataError(
                f"image id {image_id!r} is the name of both {seen[image_id]} and {path}", file=path
            )
        seen[image_id] = path
    if not seen:
        raise DataError(f"no images in {', '.join(specs)}")
    return [ImageFile(i, seen[i]) for i in sorted(seen)]


def process_slice(images: Sequence[ImageFile], index: int, count: int) -> list[ImageFile]:
    """Process `index` of `count`'s contiguous share of the sorted images."""
    start, stop = len(images) * index // count, len(images) * (index + 1) // count
    return list(images[start:stop])
