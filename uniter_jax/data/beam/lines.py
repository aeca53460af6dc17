"""Line files read in byte ranges, each by its own worker, with the line numbers
the in-process converters report.

A file is cut into ranges of `range_bytes`; a range holds the lines that
start inside it (a line may run past its end). Line numbers need the line
counts of all earlier ranges, so a file is read twice: a cheap pass counts
the line starts of each range (a newline count, no parsing), then each
range is read again knowing its first line's number. Lines are split on
`\\n` only, as Python's binary file iteration and the converters split them,
so "line n" is the one an editor shows.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator, Sequence

import apache_beam as beam

from uniter_jax.data.beam.elements import BEFORE_RECORDS, Bad
from uniter_jax.data.convert.jsonl import text_lines
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import is_remote, open_file

# 8 MiB: about ten BUTD images (100 regions x 2048) or 60k captions per range.
RANGE_BYTES = 8 << 20
_READ_BYTES = 8 << 20


@dataclasses.dataclass(frozen=True)
class ByteRange:
    file_index: int  # position of the file among the inputs
    path: str
    index: int  # position of the range in its file
    start: int
    end: int


def file_size(path: str) -> int:
    """A file's size in bytes; a missing file is a DataError, as `read_bytes` words it."""
    try:
        if is_remote(path):
            import tensorflow as tf

            return tf.io.gfile.stat(path).length
        return os.path.getsize(path)
    except OSError as e:
        raise DataError(f"cannot read ({e.strerror or e})", file=path) from None
    except Exception as e:  # tf.errors.OpError from gs:// and other remote paths
        if type(e).__module__.startswith("tensorflow"):
            raise DataError(f"cannot read ({getattr(e, 'message', e)})", file=path) from None
        raise


def split_ranges(paths: Sequence[str], range_bytes: int = RANGE_BYTES) -> list[ByteRange]:
    """Every file cut into ranges of `range_bytes` (an empty file: one empty range)."""
    if range_bytes < 1:
        raise ValueError(f"range_bytes must be positive, got {range_bytes}")
    ranges = []
    for file_index, path in enumerate(paths):
        size = file_size(path)
        starts = range(0, size, range_bytes) if size else [0]
        ranges += [
            ByteRange(file_index, path, index, start, min(start + range_bytes, size))
            for index, start in enumerate(starts)
        ]
    return ranges


def count_line_starts(byte_range: ByteRange) -> int:
    """How many lines start in the range: position 0 and every position after a newline."""
    start, end = byte_range.start, byte_range.end
    if end <= start:
        return 0
    # Line starts in [start, end) are the newlines in [start - 1, end - 1), plus 0.
    lo = start - 1 if start else 0
    count = 0 if start else 1
    with open_file(byte_range.path, "rb") as f:
        f.seek(lo)
        left = end - 1 - lo
        while left > 0:
            data = f.read(min(left, _READ_BYTES))
            if not data:
                break
            count += data.count(b"\n")
            left -= len(data)
    return count


def read_lines(byte_range: ByteRange, first_line: int) -> Iterator[tuple[int, bytes]]:
    """`(line number, line with its newline)` for every line that starts in the range."""
    if byte_range.end <= byte_range.start:
        return
    with open_file(byte_range.path, "rb") as f:
        position = byte_range.start
        if position:
            f.seek(position - 1)
            position += len(f.readline()) - 1  # to the first line start at or after `start`
        for number in itertools.count(first_line):
            if position >= byte_range.end:
                return
            line = f.readline()
            if not line:
                return
            yield number, line
            position += len(line)


def first_lines(counts: list[tuple[tuple[int, int], int]]) -> dict[tuple[int, int], int]:
    """`{(file, range): number of its first line}` from each range's line count."""
    out, number, current_file = {}, 1, None
    for (file_index, index), count in sorted(counts):
        if file_index != current_file:
            number, current_file = 1, file_index
        out[file_index, index] = number
        number += count
    return out


class ReadLines(beam.PTransform):
    """Line files -> `((file, range, line number), (path, line number, line))`.

    `text`: lines are decoded as UTF-8 (without their newline; a "\\r" stays,
    as `text_lines` keeps it) and a file that is not UTF-8 is a fatal error
    worded as the in-process read words it. Otherwise lines are bytes with
    their newline. Returns `(lines, fatal)`.
    """

    def __init__(self, paths: Sequence[str], *, range_bytes: int = RANGE_BYTES, text: bool):
        super().__init__()
        self._ranges = split_ranges(paths, range_bytes)  # on the driver: file sizes only
        self._text = text

    def expand(self, pbegin):
        ranges = pbegin | "Ranges" >> beam.Create(self._ranges) | "Spread" >> beam.Reshuffle()
        counts = ranges | "Count" >> beam.Map(_counted)
        numbers = (
            counts | "AllCounts" >> beam.combiners.ToList() | "FirstLines" >> beam.Map(first_lines)
        )
        read = ranges | "Read" >> beam.ParDo(
            _ReadRange(self._text), beam.pvalue.AsSingleton(numbers)
        ).with_outputs("fatal", main="lines")
        return read.lines, read.fatal


def _counted(byte_range: ByteRange) -> tuple[tuple[int, int], int]:
    return (byte_range.file_index, byte_range.index), count_line_starts(byte_range)


class _ReadRange(beam.DoFn):
    def __init__(self, text: bool):
        self._text = text

    def process(self, byte_range: ByteRange, numbers: dict):
        path = byte_range.path
        first = numbers[byte_range.file_index, byte_range.index]
        for number, line in read_lines(byte_range, first):
            order = (byte_range.file_index, byte_range.index, number)
            if not self._text:
                yield order, (path, number, line)
                continue
            try:
                decoded = line.removesuffix(b"\n").decode("utf-8")
            except UnicodeDecodeError:
                yield beam.pvalue.TaggedOutput("fatal", _not_utf8(path, byte_range.file_index))
                return
            yield order, (path, number, decoded)


def _not_utf8(path: str, file_index: int) -> Bad:
    """The in-process error for a file that is not UTF-8 (its message names the byte
    offset in the whole file, so the file is decoded whole again, once, to word it)."""
    try:
        text_lines(path)
    except DataError as e:
        return Bad.of((*BEFORE_RECORDS, file_index), e, fatal=True)
    raise AssertionError(f"{path}: a line is not UTF-8 but the whole file is")
