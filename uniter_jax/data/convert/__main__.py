"""Convert public formats into image stores (region features) and text stores.

  python -m uniter_jax.data.convert butd-tsv a.tsv.0 a.tsv.1 --out data/coco_img \\
      [--soft-labels cls_prob/]
  python -m uniter_jax.data.convert lxmert-tsv train2014_obj36.tsv --out data/coco_img \\
      [--one-hot-labels]
  python -m uniter_jax.data.convert npz-dir features/ --out data/coco_img
  python -m uniter_jax.data.convert uniter-img-lmdb \\
      img_db/coco_train2014/feat_th0.2_max100_min10 --out data/coco_img

  python -m uniter_jax.data.convert coco-captions captions_train2014.json \\
      --vocab vocab.txt --images data/coco_img --out data/txt/captions_train
  python -m uniter_jax.data.convert vqa questions.json --annotations annotations.json \\
      --vocab vocab.txt --out data/txt/vqa_train
  python -m uniter_jax.data.convert uniter-txt-lmdb txt_db/vqa_train.db --task vqa \\
      --images data/coco_img --out data/txt/vqa_train
  python -m uniter_jax.data.convert snli-ve snli_ve_train.jsonl --vocab vocab.txt \\
      --images data/flickr30k_img --out data/txt/ve_train
  python -m uniter_jax.data.convert nlvr2 train.json --vocab vocab.txt \\
      --images data/nlvr2_img --out data/txt/nlvr2_train
  python -m uniter_jax.data.convert refcoco "refcoco/refs(unc).p" refcoco/instances.json \\
      --split train [--boxes gt] --vocab vocab.txt --images data/coco_img \\
      --out data/txt/refcoco_train
  python -m uniter_jax.data.convert refexp-json expressions.jsonl --vocab vocab.txt \\
      --images data/coco_img --out data/txt/refexp_train   # {ref_id, image_id, sentence, bbox}
  python -m uniter_jax.data.convert karpathy dataset_coco.json --split train+restval \\
      --vocab vocab.txt --images data/coco_img --out data/txt/coco_karpathy_train
  python -m uniter_jax.data.convert vcr train.jsonl --mode qa --vocab vocab.txt \\
      --images data/vcr_img --out data/txt/vcr_qa_train  # --mode qar: QA->R
  python -m uniter_jax.data.convert vg-regions region_descriptions.json --vocab vocab.txt \\
      --images data/vg_img --out data/txt/vg_captions
  python -m uniter_jax.data.convert cc Train_GCC-training.tsv --url-map cc_urls.tsv \\
      --vocab vocab.txt --images data/cc_img --out data/txt/cc_train  # url<TAB>image_id
  python -m uniter_jax.data.convert sbu SBU_captioned_photo_dataset_urls.txt \\
      SBU_captioned_photo_dataset_captions.txt --url-map sbu_urls.tsv --vocab vocab.txt \\
      --images data/sbu_img --out data/txt/sbu_train

  python -m uniter_jax.data.convert verify data/coco_img data/txt/captions_train \\
      gs://bucket/cc_img_sharded   # every checksum; a table, exit 2 if any is BAD
  python -m uniter_jax.data.convert shard data/cc_img --num-shards 64 --out data/cc_img_sharded

Region formats: --feature-dim (2048). All converters: --skip-bad (skip and list bad records
instead of failing), --force (replace an existing store), --no-progress.
A failure leaves no store behind and exits with status 2.

To add a format: in `cli_regions.py` (image stores) or `cli_texts.py` (text
stores), write `_add_<format>(subparsers)` that registers a subparser with the
module's common arguments and sets `convert` to a function of the parsed
arguments returning a Summary, then list it in that module's `ADDERS`.
Commands on written stores (`verify`, `shard`) are in `cli_stores.py`.
"""

from __future__ import annotations

import argparse
import sys

from uniter_jax.data.convert import cli_regions, cli_stores, cli_texts
from uniter_jax.data.errors import DataError

_ADDERS = cli_regions.ADDERS + cli_texts.ADDERS + cli_stores.ADDERS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m uniter_jax.data.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for add in _ADDERS:
        add(subparsers)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        summary = args.convert(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.report(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
