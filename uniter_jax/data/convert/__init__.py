"""Converters from the formats users hold into our image and text stores.

Each `convert_<format>(inputs, out_dir, *, feature_dim, skip_bad, overwrite,
progress) -> Summary` streams its input, validates every record and writes
through `ImageStoreWriter`, so a failure leaves no store. The command line is
`python -m uniter_jax.data.convert FORMAT ...` (see `__main__.py`).
"""

from uniter_jax.data.convert.butd_tsv import convert_butd_tsv
from uniter_jax.data.convert.coco_captions import convert_coco_captions
from uniter_jax.data.convert.common import Skipped, Summary
from uniter_jax.data.convert.lxmert_tsv import convert_lxmert_tsv
from uniter_jax.data.convert.npz_dir import convert_npz_dir
from uniter_jax.data.convert.texts import TextSummary
from uniter_jax.data.convert.uniter_lmdb import convert_uniter_img_lmdb, convert_uniter_txt_lmdb
from uniter_jax.data.convert.vg_regions import convert_vg_regions
from uniter_jax.data.convert.vqa import convert_vqa
from uniter_jax.data.convert.web_captions import convert_cc, convert_sbu

__all__ = [
    "Skipped",
    "Summary",
    "TextSummary",
    "convert_butd_tsv",
    "convert_cc",
    "convert_coco_captions",
    "convert_lxmert_tsv",
    "convert_npz_dir",
    "convert_sbu",
    "convert_uniter_img_lmdb",
    "convert_uniter_txt_lmdb",
    "convert_vg_regions",
    "convert_vqa",
]
