"""The Beam conversions, one function per format, with the in-process converters'
signatures plus `num_shards` and the Beam `pipeline_options`.

Each checks on the launching machine what the in-process converter checks
before its first record (the vocabulary, the image store, the URL map, the
input files, `out_dir`), then runs the pipeline and returns the same
summary, skipped records included.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from uniter_jax.data.beam import sources
from uniter_jax.data.beam.checks import RegionCheck, TextCheck
from uniter_jax.data.beam.commit import Target
from uniter_jax.data.beam.lines import RANGE_BYTES, ReadLines
from uniter_jax.data.beam.lists import CHUNK_SIZE, ReadList
from uniter_jax.data.beam.pipeline import Conversion, run
from uniter_jax.data.beam.shards import ImageStoreSpec, TextStoreSpec
from uniter_jax.data.convert import butd_tsv, npz_dir
from uniter_jax.data.convert.arrays import NUM_LABELS
from uniter_jax.data.convert.common import RegionOptions, Summary, input_paths
from uniter_jax.data.convert.texts import TextOptions, TextSummary
from uniter_jax.data.convert.web_captions import read_url_map
from uniter_jax.data.errors import DataError
from uniter_jax.data.files import exists
from uniter_jax.data.tokenizer import Tokenizer

Options = PipelineOptions | Sequence[str] | None


def convert_coco_captions(
    json_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_shards: int = 1,
    pipeline_options: Options = None,
    chunk_size: int = CHUNK_SIZE,
    **options: Any,
) -> TextSummary:
    """COCO caption JSON -> a captions text store (see `convert.coco_captions`).

    `options`: the fields of `TextOptions`. The JSON is parsed on one worker.
    """
    return _json_texts(
        "coco-captions",
        sources.coco_records,
        json_path,
        out_dir,
        num_shards,
        pipeline_options,
        chunk_size,
        options,
    )


def convert_vg_regions(
    json_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_shards: int = 1,
    pipeline_options: Options = None,
    chunk_size: int = CHUNK_SIZE,
    **options: Any,
) -> TextSummary:
    """VG region descriptions -> a captions text store (see `convert.vg_regions`).

    `options`: the fields of `TextOptions`. The JSON is parsed on one worker.
    """
    return _json_texts(
        "vg-regions",
        sources.vg_records,
        json_path,
        out_dir,
        num_shards,
        pipeline_options,
        chunk_size,
        options,
    )


def _json_texts(
    fmt: str,
    records: Callable[[str, str], list],
    json_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_shards: int,
    pipeline_options: Options,
    chunk_size: int,
    options: dict[str, Any],
) -> TextSummary:
    """A text format whose one JSON file `records(path, image_id_format)` reads."""
    opts = TextOptions(**options)
    path = os.fspath(json_path)
    load = functools.partial(records, path, opts.image_id_format)
    source = {"format": fmt, "file": path, "image_id_format": opts.image_id_format}
    read = ReadList(load, chunk_size=chunk_size)
    return _texts(read, sources.AsIs(), out_dir, opts, source, num_shards, pipeline_options)


def convert_cc(
    tsv_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    url_map: str | os.PathLike,
    num_shards: int = 1,
    pipeline_options: Options = None,
    range_bytes: int = RANGE_BYTES,
    **options: Any,
) -> TextSummary:
    """Conceptual Captions TSV -> a captions store (see `convert.web_captions`).

    `options`: the fields of `TextOptions`. Workers read byte ranges of the TSV.
    """
    opts = TextOptions(**options)
    path, url_map = os.fspath(tsv_path), os.fspath(url_map)
    read = ReadLines([path], range_bytes=range_bytes, text=True)
    read_url_map(url_map)  # its errors first; each worker reads it again
    records = sources.WebRecords(url_map, opts.image_id_format, lines=True)
    source = {"format": "cc", "file": path}
    return _texts(read, records, out_dir, opts, source, num_shards, pipeline_options)


def convert_sbu(
    urls_path: str | os.PathLike,
    captions_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    url_map: str | os.PathLike,
    num_shards: int = 1,
    pipeline_options: Options = None,
    chunk_size: int = CHUNK_SIZE,
    **options: Any,
) -> TextSummary:
    """SBU's line-aligned URL and caption files -> a captions store (see
    `convert.web_captions`).

    `options`: the fields of `TextOptions`. The two files are paired on one worker.
    """
    opts = TextOptions(**options)
    urls_path, captions_path = os.fspath(urls_path), os.fspath(captions_path)
    url_map = os.fspath(url_map)
    read_url_map(url_map)
    load = functools.partial(sources.sbu_rows, urls_path, captions_path)
    read = ReadList(load, chunk_size=chunk_size)
    records = sources.WebRecords(url_map, opts.image_id_format, lines=False)
    source = {"format": "sbu", "urls": urls_path, "captions": captions_path}
    return _texts(read, records, out_dir, opts, source, num_shards, pipeline_options)


def convert_butd_tsv(
    tsv_paths: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    soft_label_dir: str | os.PathLike | None = None,
    num_shards: int = 1,
    pipeline_options: Options = None,
    range_bytes: int = RANGE_BYTES,
    **options: Any,
) -> Summary:
    """BUTD TSV files -> one image store (see `convert.butd_tsv`).

    `options`: the fields of `RegionOptions`. Workers read byte ranges of the TSVs.
    """
    opts = RegionOptions(**options)
    paths = input_paths(tsv_paths)
    if soft_label_dir is not None:
        soft_label_dir = os.fspath(soft_label_dir)
        if not exists(soft_label_dir):
            raise DataError("soft-label folder not found", file=soft_label_dir)
    parse = functools.partial(
        butd_tsv.parse_detections, feature_dim=opts.feature_dim, soft_label_dir=soft_label_dir
    )
    conversion = Conversion(
        ReadLines(paths, range_bytes=range_bytes, text=False),
        sources.ButdRecords(parse),
        RegionCheck(),
        ImageStoreSpec(
            opts.feature_dim,
            NUM_LABELS if soft_label_dir else None,
            {"format": "butd-tsv", "files": paths, "soft_label_dir": soft_label_dir},
        ),
        functools.partial(sources.empty_files, paths),
    )
    return _images(conversion, out_dir, opts, num_shards, pipeline_options)


def convert_npz_dir(
    directory: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    soft_labels: bool | None = None,
    num_labels: int = NUM_LABELS,
    num_shards: int = 1,
    pipeline_options: Options = None,
    chunk_size: int = CHUNK_SIZE,
    **options: Any,
) -> Summary:
    """A folder of `<image_id>.npz` -> an image store (see `convert.npz_dir`).

    `options`: the fields of `RegionOptions`. The folder is listed on the
    launching machine (and looked into there, when `soft_labels` is None) and
    again on one worker; workers read the files.
    """
    opts = RegionOptions(**options)
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DataError("folder not found", file=directory)
    paths = sources.npz_paths(directory)
    if not paths:
        raise DataError("no .npz files", file=directory)
    strict = soft_labels is None
    if soft_labels is None:
        soft_labels = npz_dir.first_has_soft_labels(paths)
    parse = functools.partial(
        npz_dir.parse_file,
        feature_dim=opts.feature_dim,
        soft_labels=soft_labels,
        num_labels=num_labels,
        strict=strict,
    )
    conversion = Conversion(
        ReadList(functools.partial(sources.npz_records, directory, parse), chunk_size=chunk_size),
        sources.AsIs(),
        RegionCheck(),
        ImageStoreSpec(
            opts.feature_dim,
            num_labels if soft_labels else None,
            {"format": "npz-dir", "directory": directory, "soft_labels": soft_labels},
        ),
    )
    return _images(conversion, out_dir, opts, num_shards, pipeline_options)


def _texts(
    read: beam.PTransform,
    records: sources.Records,
    out_dir: str | os.PathLike,
    opts: TextOptions,
    source: dict[str, Any],
    num_shards: int,
    pipeline_options: Options,
) -> TextSummary:
    if opts.max_txt_len < 1:
        raise ValueError(f"max_txt_len must be positive, got {opts.max_txt_len}")
    tokenizer = Tokenizer(opts.vocab)
    opts.image_store()  # opens, or raises; the workers open it again
    target = Target.create(os.fspath(out_dir), overwrite=opts.overwrite)
    web = isinstance(records, sources.WebRecords)
    if web:
        source = {**source, "url_map": records.url_map, "image_id_format": opts.image_id_format}
    conversion = Conversion(
        read,
        records,
        TextCheck(opts.vocab, opts.images),
        TextStoreSpec(
            "captions", tokenizer.vocab.to_json(), opts.max_txt_len, source, count_unmapped=web
        ),
        functools.partial(sources.none_mapped, records.url_map) if web else sources.no_input_errors,
    )
    outcome = run(
        conversion,
        target,
        num_shards=num_shards,
        skip_bad=opts.skip_bad,
        options=pipeline_options,
    )
    return TextSummary(
        target.out_dir,
        texts=outcome["count"],
        truncated=outcome["extra"],
        skipped=outcome["skipped"],
        unmapped=outcome["unmapped"],
    )


def _images(
    conversion: Conversion,
    out_dir: str | os.PathLike,
    opts: RegionOptions,
    num_shards: int,
    pipeline_options: Options,
) -> Summary:
    target = Target.create(os.fspath(out_dir), overwrite=opts.overwrite)
    outcome = run(
        conversion,
        target,
        num_shards=num_shards,
        skip_bad=opts.skip_bad,
        options=pipeline_options,
    )
    return Summary(
        target.out_dir,
        images=outcome["count"],
        regions=outcome["extra"],
        skipped=outcome["skipped"],
    )
