"""Data preparation as Apache Beam pipelines: the converters of `data/convert`, run
in parallel on one machine (the DirectRunner) or on a cluster (Dataflow, Flink,
Spark), chosen by Beam's own pipeline flags.

  python -m uniter_jax.data.beam coco-captions captions_train2014.json \\
      --vocab vocab.txt --images data/coco_img --out data/txt/captions_train \\
      --direct_num_workers=8 --direct_running_mode=multi_processing
  python -m uniter_jax.data.beam butd-tsv /shared/tsv/*.tsv --out /shared/coco_img \\
      --num-shards 64 --runner=DataflowRunner --project=P --region=R \\
      --temp_location=gs://B/tmp --setup_file=./pyproject.toml

Formats: coco-captions, vg-regions, cc, sbu (texts), butd-tsv, npz-dir
(region features), with the in-process converters' options. Output: with
`--num-shards 1` (the default) the very store, byte for byte, that the
in-process converter writes from the same input; with N > 1 a sharded store
(`store_sets`): N stores, each a contiguous range of the input in order,
which `open_texts` / `open_images` read as that one store. The output never
depends on the number of workers, on bundles or on retries.

What runs where:
- the launching machine: the checks the in-process converter makes before
  its first record (vocabulary, image store, URL map, input files, `--out`),
  the file sizes of line inputs and the listing of an npz folder;
- one worker: loading a whole JSON (COCO, VG), pairing SBU's two files,
  listing an npz folder; the plan (the first error, the totals) and the
  commit (the rename to `--out`);
- all workers: reading byte ranges of the TSV inputs (BUTD, CC; a counting
  pass first, for line numbers), and for every record the expensive part:
  parsing, tokenizing, base64 and array decoding and checks, in `DoFn`s that
  build the tokenizer, the image store's ids and the URL map once per worker
  (`setup`); the duplicate decision (grouped by id), ranks, and writing the
  shards, one worker per shard.

Limits:
- Stores are written with the ordinary store writers, to a file system, not
  to gs://: on a cluster `--out` and the vocabulary must be on a file system
  that the workers and the launching machine mount at the same path (NFS,
  Filestore, a gcsfuse mount); so must relative paths resolve alike. The
  other inputs may also be gs:// paths, except the npz and soft-label folders.
- A JSON input is parsed whole in one worker's memory (VG: several GB).
- Region features travel through two shuffles (by input block, by shard).
- A job killed from outside (not a failing step) can leave its staging
  folder `.<out>.beam-<run id>` beside `--out`; remove it by hand.
- The DirectRunner first tries the Prism runner, which it downloads; offline
  it falls back to its own engine (`FnApiRunner`), which is what
  `--direct_num_workers` and `--direct_running_mode` configure. Pass
  `--runner=FnApiRunner` to go there directly.
- Bad records, duplicates and the report are as the in-process converter's.
  Grouped texts (NLVR2, VCR) are not converted here.
"""

import logging


def _not_apitools_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("apitools not found")


# `import apache_beam` calls `logging.warning("apitools not found, and bigquery
# client libraries are not available ...")` where Beam's GCP extras are not
# installed; we need none of them, so the line is noise on every run. That
# call also installs a stderr handler on the root logger when it has none (the
# implicit `logging.basicConfig`), after which a program's own `basicConfig`
# does nothing. So, during the import only, the root logger drops exactly that
# record (a logger's filter sees only records logged to it, not Beam's own
# loggers' warnings), and the handler that call added is taken away again.
_root = logging.getLogger()
_root_handlers = list(_root.handlers)
_root.addFilter(_not_apitools_notice)
try:
    import apache_beam  # noqa: F401
except ImportError as e:
    raise ImportError(
        "uniter_jax.data.beam needs Apache Beam: pip install -e .[beam] "
        "(or pip install apache-beam==2.77.0)"
    ) from e
finally:
    _root.removeFilter(_not_apitools_notice)
    if not _root_handlers:
        for _handler in list(_root.handlers):
            _root.removeHandler(_handler)

# After the quiet import above: the converters import Beam too.
from uniter_jax.data.beam.converters import (  # noqa: E402
    convert_butd_tsv,
    convert_cc,
    convert_coco_captions,
    convert_npz_dir,
    convert_sbu,
    convert_vg_regions,
)

__all__ = [
    "convert_butd_tsv",
    "convert_cc",
    "convert_coco_captions",
    "convert_npz_dir",
    "convert_sbu",
    "convert_vg_regions",
]
