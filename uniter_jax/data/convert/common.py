"""What every region-feature converter shares: input checks, the skip-or-raise loop, Summary.

A converter turns its input into a stream of `Record`s, each parsed lazily so
that a bad one fails inside the loop, where it is either raised (the store is
then never created) or skipped and listed in the `Summary`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tqdm import tqdm

from uniter_jax.data.errors import DataError
from uniter_jax.data.files import exists
from uniter_jax.data.image_store import ImageStoreWriter
from uniter_jax.data.regions import ImageRegions


@dataclasses.dataclass(frozen=True)
class Record:
    """One input record: where it is, and how to parse it into one image's regions."""

    file: str
    where: str  # "line 12" in a TSV, the image id for one-file-per-image inputs
    parse: Callable[[], ImageRegions]


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A record left out with `skip_bad`, and why."""

    file: str | None
    record: str | int | None
    field: str | None
    reason: str

    def __str__(self) -> str:
        field = f" [{self.field}]" if self.field else ""
        return f"{self.file} {self.record}{field}: {self.reason}"


@dataclasses.dataclass
class Summary:
    """What a conversion wrote and skipped."""

    out_dir: str
    images: int = 0
    regions: int = 0
    skipped: list[Skipped] = dataclasses.field(default_factory=list)

    def report(self, max_listed: int = 20) -> str:
        head = f"wrote {self.images} images, {self.regions} regions to {self.out_dir}"
        return "\n".join([head, *skipped_lines(self.skipped, max_listed)])


def skipped_lines(skipped: Sequence[Skipped], max_listed: int) -> list[str]:
    """The part of a summary that lists skipped records, at most `max_listed`."""
    if not skipped:
        return []
    lines = [f"skipped {len(skipped)} bad records:", *(f"  {s}" for s in skipped[:max_listed])]
    if len(skipped) > max_listed:
        lines.append(f"  ... and {len(skipped) - max_listed} more")
    return lines


def input_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """One path or several -> a non-empty list of existing paths."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = [os.fspath(path) for path in paths]
    if not paths:
        raise DataError("no input files given")
    for path in paths:
        if not exists(path):
            raise DataError("file not found", file=path)
    return paths


@dataclasses.dataclass(frozen=True)
class RegionOptions:
    """What every region converter takes besides its input and its own settings.

    A converter's signature is `convert_<format>(inputs, out_dir, *, <its own>,
    **options)`, `options` being these fields as keywords: the command line's
    `--feature-dim`, `--skip-bad`, `--force` (`overwrite`) and `--no-progress`.
    """

    feature_dim: int = 2048  # region feature width D
    skip_bad: bool = False  # skip and list bad records instead of failing
    overwrite: bool = False  # replace an existing store at `out_dir`
    progress: bool = True  # show a progress bar

    def write(
        self,
        records: Iterable[Record],
        out_dir: str | os.PathLike,
        *,
        num_labels: int | None,
        source: dict[str, Any],
        total: int | None = None,
    ) -> Summary:
        """`write_store` under these options."""
        return write_store(
            records,
            out_dir,
            feature_dim=self.feature_dim,
            num_labels=num_labels,
            source=source,
            skip_bad=self.skip_bad,
            overwrite=self.overwrite,
            progress=self.progress,
            total=total,
        )


def write_store(
    records: Iterable[Record],
    out_dir: str | os.PathLike,
    *,
    feature_dim: int,
    num_labels: int | None,
    source: dict[str, Any],
    skip_bad: bool,
    overwrite: bool,
    progress: bool,
    total: int | None = None,
) -> Summary:
    """Parses and writes every record; never leaves a partial store.

    Without `skip_bad` the first bad record raises its DataError, located by
    file and record. With it, bad records are listed in the summary; a store
    with no good image at all is still an error. Errors outside a record
    (a missing or empty file) always raise.
    """
    out_dir = os.fspath(out_dir)
    summary = Summary(out_dir)
    first_seen: dict[str, str] = {}
    writer = ImageStoreWriter(
        out_dir,
        feature_dim=feature_dim,
        num_labels=num_labels,
        source=source,
        overwrite=overwrite,
    )
    with writer, tqdm(total=total, unit="image", disable=not progress) as bar:
        for record in records:
            bar.update()
            try:
                regions = record.parse()
                if regions.image_id in first_seen:
                    raise DataError(
                        f"duplicate image id {regions.image_id!r} "
                        f"(first at {first_seen[regions.image_id]})",
                        field="image_id",
                    )
                writer.add(regions)
            except DataError as e:
                # Errors in a file the record points to (a soft-label .npy) say which record.
                file = e.file or record.file
                where = record.where if file == record.file else f"{record.where} of {record.file}"
                located = DataError(e.message, file=file, record=where, field=e.field)
                if not skip_bad:
                    raise located from None
                summary.skipped.append(
                    Skipped(located.file, located.record, located.field, located.message)
                )
                bar.set_postfix(skipped=len(summary.skipped), refresh=False)
                continue
            first_seen[regions.image_id] = f"{record.file} {record.where}"
            summary.images += 1
            summary.regions += regions.num_boxes
        if not summary.images:
            raise DataError(
                f"no good images: all {len(summary.skipped)} records are bad, the first: "
                f"{summary.skipped[0]}",
                file=out_dir,
            )
    return summary
