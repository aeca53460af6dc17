"""The text subcommands: public annotation formats -> tokenized text stores.

Each `_add_<format>(subparsers)` registers one subcommand whose `convert` turns
the parsed arguments into a TextSummary; `ADDERS` lists them in help order.
"""

from __future__ import annotations

import argparse
from typing import Any

from uniter_jax.data.convert.coco_captions import convert_coco_captions
from uniter_jax.data.convert.karpathy import SPLIT_CHOICES, convert_karpathy
from uniter_jax.data.convert.nlvr2 import convert_nlvr2
from uniter_jax.data.convert.refcoco import convert_refcoco
from uniter_jax.data.convert.refexp_json import convert_refexp_json
from uniter_jax.data.convert.snli_ve import convert_snli_ve
from uniter_jax.data.convert.uniter_lmdb import TEXT_TASKS, convert_uniter_txt_lmdb
from uniter_jax.data.convert.vcr import MODES as VCR_MODES
from uniter_jax.data.convert.vcr import convert_vcr
from uniter_jax.data.convert.vg_regions import convert_vg_regions
from uniter_jax.data.convert.vqa import answer_vocab_from, convert_vqa
from uniter_jax.data.convert.web_captions import convert_cc, convert_sbu


def _text_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the text store folder to write")
    p.add_argument("--vocab", required=True, help="WordPiece vocab.txt (cased: bert-base-cased)")
    p.add_argument("--images", help="image store: texts whose image is missing are errors")
    p.add_argument("--image-id-format", default="{id}", help="e.g. COCO_train2014_{id:012d}")
    p.add_argument("--max-txt-len", type=int, default=60, help="tokens kept per text")
    p.add_argument("--skip-bad", action="store_true", help="skip bad records, list them")
    p.add_argument("--force", action="store_true", help="replace an existing store at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _text_options(args: argparse.Namespace) -> dict:
    return {
        "vocab": args.vocab,
        "images": args.images,
        "image_id_format": args.image_id_format,
        "max_txt_len": args.max_txt_len,
        "skip_bad": args.skip_bad,
        "overwrite": args.force,
        "progress": not args.no_progress,
    }


def _add_coco_captions(subparsers: Any) -> None:
    p = subparsers.add_parser("coco-captions", help="COCO caption JSON -> captions text store")
    p.add_argument("json", help="captions_<split>.json")
    _text_arguments(p)
    p.set_defaults(convert=lambda a: convert_coco_captions(a.json, a.out, **_text_options(a)))


def _add_vqa(subparsers: Any) -> None:
    p = subparsers.add_parser("vqa", help="VQA v2 questions (+ annotations) -> VQA text store")
    p.add_argument("questions", help="v2_OpenEnded_mscoco_<split>_questions.json")
    p.add_argument("--annotations", help="v2_mscoco_<split>_annotations.json (train/val)")
    p.add_argument(
        "--answer-vocab",
        help="the train VQA store (or a JSON list) whose answers to use; default: from "
        "--annotations (right for train only)",
    )
    p.add_argument("--num-answers", type=int, default=3129, help="answer vocabulary size")
    _text_arguments(p)

    def convert(a: argparse.Namespace):
        vocab = answer_vocab_from(a.answer_vocab) if a.answer_vocab else None
        return convert_vqa(
            a.questions,
            a.out,
            annotations_path=a.annotations,
            answer_vocab=vocab,
            num_answers=a.num_answers,
            **_text_options(a),
        )

    p.set_defaults(convert=convert)


def _add_snli_ve(subparsers: Any) -> None:
    p = subparsers.add_parser("snli-ve", help="SNLI-VE JSON Lines -> visual entailment text store")
    p.add_argument("jsonl", help="snli_ve_<split>.jsonl")
    _text_arguments(p)
    p.set_defaults(convert=lambda a: convert_snli_ve(a.jsonl, a.out, **_text_options(a)))


def _add_nlvr2(subparsers: Any) -> None:
    p = subparsers.add_parser("nlvr2", help="NLVR2 JSON Lines -> grouped text store (2 images)")
    p.add_argument("jsonl", help="train.json, dev.json or test1.json (one object per line)")
    _text_arguments(p)
    p.set_defaults(convert=lambda a: convert_nlvr2(a.jsonl, a.out, **_text_options(a)))


def _add_uniter_txt_lmdb(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "uniter-txt-lmdb", help="the original UNITER text db (LMDB, already tokenized)"
    )
    p.add_argument("db", help="LMDB folder with meta.json")
    p.add_argument("--task", required=True, choices=TEXT_TASKS, help="what the records hold")
    p.add_argument("--out", required=True, help="the text store folder to write")
    p.add_argument("--images", help="image store: texts whose image is missing are errors")
    p.add_argument("--max-txt-len", type=int, default=60, help="tokens kept per text")
    p.add_argument("--skip-bad", action="store_true", help="skip bad records, list them")
    p.add_argument("--force", action="store_true", help="replace an existing store at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(
        convert=lambda a: convert_uniter_txt_lmdb(
            a.db,
            a.out,
            task=a.task,
            images=a.images,
            max_txt_len=a.max_txt_len,
            skip_bad=a.skip_bad,
            overwrite=a.force,
            progress=not a.no_progress,
        )
    )


def _refexp_arguments(p: argparse.ArgumentParser) -> None:
    """--boxes and the text arguments of the referring-expression converters."""
    p.add_argument(
        "--boxes",
        choices=("detected", "gt"),
        default="detected",
        help="gt: --images holds the ground-truth boxes, each target must match (IoU >= 0.99)",
    )
    _text_arguments(p)


def _add_refcoco(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "refcoco", help="RefCOCO/+/g (refer toolkit: refs pickle + instances.json) -> refexp store"
    )
    p.add_argument("refs", help="refs(unc).p, refs(umd).p or refs(google).p")
    p.add_argument("instances", help="the same dataset folder's instances.json")
    p.add_argument("--split", required=True, help="train, val, test, testA or testB")
    _refexp_arguments(p)

    def convert(a: argparse.Namespace):
        if a.images is None:
            p.error("refcoco needs --images: the image store whose regions are the targets")
        return convert_refcoco(
            a.refs, a.instances, a.out, split=a.split, boxes=a.boxes, **_text_options(a)
        )

    p.set_defaults(convert=convert)


def _add_refexp_json(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "refexp-json",
        help="referring expressions as JSON / JSON Lines "
        "({ref_id, image_id, sentence, bbox [x, y, w, h], width, height}) -> refexp store",
    )
    p.add_argument("expressions", help="a JSON list or JSON Lines file")
    _refexp_arguments(p)

    def convert(a: argparse.Namespace):
        if a.images is None:
            p.error("refexp-json needs --images: the image store whose regions are the targets")
        return convert_refexp_json(a.expressions, a.out, boxes=a.boxes, **_text_options(a))

    p.set_defaults(convert=convert)


def _add_karpathy(subparsers: Any) -> None:
    p = subparsers.add_parser("karpathy", help="Karpathy caption splits -> captions text store")
    p.add_argument("json", help="dataset_coco.json or dataset_flickr30k.json")
    p.add_argument("--split", required=True, choices=SPLIT_CHOICES, help="the split to write")
    _text_arguments(p)
    p.set_defaults(
        convert=lambda a: convert_karpathy(a.json, a.out, split=a.split, **_text_options(a))
    )


def _add_vcr(subparsers: Any) -> None:
    p = subparsers.add_parser("vcr", help="VCR jsonl -> grouped text store (4 candidates)")
    p.add_argument("jsonl", help="train.jsonl, val.jsonl or test.jsonl")
    p.add_argument(
        "--mode",
        required=True,
        choices=VCR_MODES,
        help="qa: Q->A, qar: QA->R, text: one text per question for pretraining",
    )
    _text_arguments(p)
    p.set_defaults(
        max_txt_len=120,
        convert=lambda a: convert_vcr(a.jsonl, a.out, mode=a.mode, **_text_options(a)),
    )


def _add_vg_regions(subparsers: Any) -> None:
    p = subparsers.add_parser("vg-regions", help="Visual Genome region descriptions -> captions")
    p.add_argument("json", help="region_descriptions.json")
    _text_arguments(p)
    p.set_defaults(convert=lambda a: convert_vg_regions(a.json, a.out, **_text_options(a)))


_URL_MAP_HELP = "TSV url<TAB>image_id of the images you downloaded; other URLs are left out"


def _add_cc(subparsers: Any) -> None:
    p = subparsers.add_parser("cc", help="Conceptual Captions TSV (caption<TAB>url) -> captions")
    p.add_argument("tsv", help="Train_GCC-training.tsv or the validation TSV")
    p.add_argument("--url-map", required=True, help=_URL_MAP_HELP)
    _text_arguments(p)
    p.set_defaults(
        convert=lambda a: convert_cc(a.tsv, a.out, url_map=a.url_map, **_text_options(a))
    )


def _add_sbu(subparsers: Any) -> None:
    p = subparsers.add_parser("sbu", help="SBU captions (URL and caption files) -> captions")
    p.add_argument("urls", help="SBU_captioned_photo_dataset_urls.txt")
    p.add_argument("captions", help="SBU_captioned_photo_dataset_captions.txt, line-aligned")
    p.add_argument("--url-map", required=True, help=_URL_MAP_HELP)
    _text_arguments(p)
    p.set_defaults(
        convert=lambda a: convert_sbu(
            a.urls, a.captions, a.out, url_map=a.url_map, **_text_options(a)
        )
    )


ADDERS = (
    _add_coco_captions,
    _add_vqa,
    _add_uniter_txt_lmdb,
    _add_snli_ve,
    _add_nlvr2,
    _add_refcoco,
    _add_refexp_json,
    _add_karpathy,
    _add_vcr,
    _add_vg_regions,
    _add_cc,
    _add_sbu,
)
