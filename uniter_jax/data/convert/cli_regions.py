"""The region-feature subcommands: public detector outputs -> image stores.

Each `_add_<format>(subparsers)` registers one subcommand whose `convert` turns
the parsed arguments into a Summary; `ADDERS` lists them in help order.
"""

from __future__ import annotations

import argparse
from typing import Any

from uniter_jax.data.convert.butd_tsv import convert_butd_tsv
from uniter_jax.data.convert.lxmert_tsv import convert_lxmert_tsv
from uniter_jax.data.convert.npz_dir import convert_npz_dir
from uniter_jax.data.convert.uniter_lmdb import convert_uniter_img_lmdb


def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the store folder to write")
    p.add_argument("--feature-dim", type=int, default=2048, help="region feature width D")
    p.add_argument("--skip-bad", action="store_true", help="skip bad records, list them")
    p.add_argument("--force", action="store_true", help="replace an existing store at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "feature_dim": args.feature_dim,
        "skip_bad": args.skip_bad,
        "overwrite": args.force,
        "progress": not args.no_progress,
    }


def _add_butd_tsv(subparsers: Any) -> None:
    p = subparsers.add_parser("butd-tsv", help="bottom-up-attention TSV files")
    p.add_argument("tsv", nargs="+", help="TSV files, converted into one store")
    p.add_argument(
        "--soft-labels",
        metavar="DIR",
        help="folder of <image_id>.npy [n, 1601], or <image_id>.npz holding it as "
        "soft_labels, cls_prob or its only array",
    )
    _common_arguments(p)
    p.set_defaults(
        convert=lambda a: convert_butd_tsv(
            a.tsv, a.out, soft_label_dir=a.soft_labels, **_options(a)
        )
    )


def _add_lxmert_tsv(subparsers: Any) -> None:
    p = subparsers.add_parser("lxmert-tsv", help="LXMERT TSV files (hard labels)")
    p.add_argument("tsv", nargs="+", help="TSV files, converted into one store")
    p.add_argument(
        "--one-hot-labels",
        action="store_true",
        help="store the object class as one-hot soft labels [n, 1601]",
    )
    _common_arguments(p)
    p.set_defaults(
        convert=lambda a: convert_lxmert_tsv(
            a.tsv, a.out, one_hot_labels=a.one_hot_labels, **_options(a)
        )
    )


def _add_npz_dir(subparsers: Any) -> None:
    p = subparsers.add_parser("npz-dir", help="a folder of <image_id>.npz")
    p.add_argument("directory", help="folder of .npz files")
    p.add_argument("--num-labels", type=int, default=1601, help="soft-label classes per region")
    p.add_argument(
        "--soft-labels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="require (or ignore) soft_labels; default: as the first file",
    )
    _common_arguments(p)
    p.set_defaults(
        convert=lambda a: convert_npz_dir(
            a.directory, a.out, soft_labels=a.soft_labels, num_labels=a.num_labels, **_options(a)
        )
    )


def _add_uniter_img_lmdb(subparsers: Any) -> None:
    p = subparsers.add_parser("uniter-img-lmdb", help="the original UNITER image db (LMDB)")
    p.add_argument("db", help="LMDB folder (data.mdb), compressed records or not")
    _common_arguments(p)
    p.set_defaults(convert=lambda a: convert_uniter_img_lmdb(a.db, a.out, **_options(a)))


ADDERS = (_add_butd_tsv, _add_lxmert_tsv, _add_npz_dir, _add_uniter_img_lmdb)
