"""Convert public formats into stores with Apache Beam (see the package docstring).

  python -m uniter_jax.data.beam FORMAT INPUTS --out DIR [--num-shards N] \\
      [the in-process converter's options] [Beam pipeline flags]

  python -m uniter_jax.data.beam coco-captions captions_train2014.json --vocab vocab.txt \\
      --images data/coco_img --out data/txt/captions_train --num-shards 4 \\
      --direct_num_workers=4 --direct_running_mode=multi_processing
  python -m uniter_jax.data.beam vg-regions region_descriptions.json --vocab vocab.txt \\
      --images data/vg_img --out data/txt/vg_captions
  python -m uniter_jax.data.beam cc Train_GCC-training.tsv --url-map cc_urls.tsv \\
      --vocab vocab.txt --images data/cc_img --out data/txt/cc_train
  python -m uniter_jax.data.beam sbu SBU_captioned_photo_dataset_urls.txt \\
      SBU_captioned_photo_dataset_captions.txt --url-map sbu_urls.tsv --vocab vocab.txt \\
      --images data/sbu_img --out data/txt/sbu_train
  python -m uniter_jax.data.beam butd-tsv a.tsv.0 a.tsv.1 --out data/coco_img \\
      [--soft-labels cls_prob/] --runner=FlinkRunner --flink_master=HOST:8081
  python -m uniter_jax.data.beam npz-dir features/ --out data/coco_img

Arguments this parser does not know go to Beam's `PipelineOptions`: write
them after the inputs, as `--flag=value`. An argument that neither knows (a
misspelled option such as `--max-text-len`, a stray input) is an error, not
dropped with Beam's warning. Options as in `python -m
uniter_jax.data.convert`: --skip-bad (skip and list bad records), --force
(replace an existing store); --no-progress is accepted and does nothing.
A failure leaves no store behind and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from uniter_jax.data.beam.converters import (
    convert_butd_tsv,
    convert_cc,
    convert_coco_captions,
    convert_npz_dir,
    convert_sbu,
    convert_vg_regions,
)
from uniter_jax.data.convert.arrays import NUM_LABELS
from uniter_jax.data.errors import DataError

_URL_MAP_HELP = "TSV url<TAB>image_id of the images you downloaded; other URLs are left out"


def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the store folder to write")
    p.add_argument("--num-shards", type=int, default=1, help="N > 1: a sharded store")
    p.add_argument("--skip-bad", action="store_true", help="skip bad records, list them")
    p.add_argument("--force", action="store_true", help="replace an existing store at --out")
    p.add_argument("--no-progress", action="store_true", help="accepted; Beam shows none")


def _text_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vocab", required=True, help="WordPiece vocab.txt (cased: bert-base-cased)")
    p.add_argument("--images", help="image store: texts whose image is missing are errors")
    p.add_argument("--image-id-format", default="{id}", help="e.g. COCO_train2014_{id:012d}")
    p.add_argument("--max-txt-len", type=int, default=60, help="tokens kept per text")
    _common_arguments(p)


def _text_options(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "vocab": a.vocab,
        "images": a.images,
        "image_id_format": a.image_id_format,
        "max_txt_len": a.max_txt_len,
        "skip_bad": a.skip_bad,
        "overwrite": a.force,
        "num_shards": a.num_shards,
    }


def _region_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--feature-dim", type=int, default=2048, help="region feature width D")
    _common_arguments(p)


def _region_options(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "feature_dim": a.feature_dim,
        "skip_bad": a.skip_bad,
        "overwrite": a.force,
        "num_shards": a.num_shards,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m uniter_jax.data.beam",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")

    q = formats.add_parser("coco-captions", help="COCO caption JSON -> captions text store")
    q.add_argument("json", help="captions_<split>.json")
    _text_arguments(q)
    q.set_defaults(run=lambda a, o: convert_coco_captions(a.json, a.out, **o, **_text_options(a)))

    q = formats.add_parser("vg-regions", help="Visual Genome region descriptions -> captions")
    q.add_argument("json", help="region_descriptions.json")
    _text_arguments(q)
    q.set_defaults(run=lambda a, o: convert_vg_regions(a.json, a.out, **o, **_text_options(a)))

    q = formats.add_parser("cc", help="Conceptual Captions TSV (caption<TAB>url) -> captions")
    q.add_argument("tsv", help="Train_GCC-training.tsv or the validation TSV")
    q.add_argument("--url-map", required=True, help=_URL_MAP_HELP)
    _text_arguments(q)
    q.set_defaults(
        run=lambda a, o: convert_cc(a.tsv, a.out, url_map=a.url_map, **o, **_text_options(a))
    )

    q = formats.add_parser("sbu", help="SBU captions (URL and caption files) -> captions")
    q.add_argument("urls", help="SBU_captioned_photo_dataset_urls.txt")
    q.add_argument("captions", help="SBU_captioned_photo_dataset_captions.txt, line-aligned")
    q.add_argument("--url-map", required=True, help=_URL_MAP_HELP)
    _text_arguments(q)
    q.set_defaults(
        run=lambda a, o: convert_sbu(
            a.urls, a.captions, a.out, url_map=a.url_map, **o, **_text_options(a)
        )
    )

    q = formats.add_parser("butd-tsv", help="bottom-up-attention TSV files")
    q.add_argument("tsv", nargs="+", help="TSV files, converted into one store")
    q.add_argument(
        "--soft-labels",
        metavar="DIR",
        help="folder of <image_id>.npy [n, 1601], or <image_id>.npz holding it as "
        "soft_labels, cls_prob or its only array",
    )
    _region_arguments(q)
    q.set_defaults(
        run=lambda a, o: convert_butd_tsv(
            a.tsv, a.out, soft_label_dir=a.soft_labels, **o, **_region_options(a)
        )
    )

    q = formats.add_parser("npz-dir", help="a folder of <image_id>.npz")
    q.add_argument("directory", help="folder of .npz files")
    q.add_argument("--num-labels", type=int, default=NUM_LABELS, help="soft-label classes")
    q.add_argument(
        "--soft-labels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="require (or ignore) soft_labels; default: as the first file",
    )
    _region_arguments(q)
    q.set_defaults(
        run=lambda a, o: convert_npz_dir(
            a.directory,
            a.out,
            soft_labels=a.soft_labels,
            num_labels=a.num_labels,
            **o,
            **_region_options(a),
        )
    )
    for q in formats.choices.values():  # errors after parsing show the format's usage
        q.set_defaults(parser=q)
    return p


def unknown_beam_flags(flags: Sequence[str]) -> list[str]:
    """The arguments of `flags` that Beam's `PipelineOptions` does not know, as written.

    Beam itself only logs "Discarding unparseable args" and drops them, so a
    misspelled converter option would be silently ignored. The flags are parsed
    with the very parser `PipelineOptions` builds (every options class Beam
    registers, no abbreviations), handed out by `get_all_options`'s
    `add_extra_args_fn` hook. Raises `argparse.ArgumentError` for a known flag
    with a bad value (`--direct_num_workers=x`, `--project` without a value).
    """
    parsers: list[argparse.ArgumentParser] = []
    # No flags here, so Beam warns of nothing; the parser is a fresh one per call.
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    (beam_parser,) = parsers
    beam_parser.exit_on_error = False  # raise, rather than print Beam's whole usage
    _, unknown = beam_parser.parse_known_args(list(flags))
    return unknown


def main(argv: list[str] | None = None) -> int:
    args, beam_flags = _parser().parse_known_args(argv)
    try:
        unknown = unknown_beam_flags(beam_flags)
    except argparse.ArgumentError as e:
        args.parser.error(f"{e} (a Beam pipeline flag)")
    if unknown:
        args.parser.error(
            f"unrecognized arguments: {' '.join(unknown)} (neither an option of "
            f"{args.format} nor a Beam pipeline flag; write Beam flags as --flag=value)"
        )
    try:
        summary = args.run(args, {"pipeline_options": beam_flags})
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.report(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
