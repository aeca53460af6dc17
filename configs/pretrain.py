"""UNITER pretraining config.

  python main.py --config=configs/pretrain.py --workdir=DIR          # base
  python main.py --config=configs/pretrain.py:large --workdir=DIR
  python main.py --config=configs/pretrain.py:tiny --workdir=DIR     # CPU demo

Until the pretraining loop lands, `job` is `forward_check`: one batch from the
input pipeline (the built-in synthetic world unless `data.images` and
`data.texts` name stores), one forward pass of the encoder and heads, the
parameter overview and output statistics.
"""

import ml_collections

from uniter_jax.model.config import PRESETS


def get_config(arg: str = "base") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(
            f"unknown variant {arg!r} of configs/pretrain.py; choose {sorted(PRESETS)}"
        )
    config = ml_collections.ConfigDict()
    config.job = "forward_check"  # what main.py runs
    config.seed = 0  # parameter init and synthetic inputs

    config.model = ml_collections.ConfigDict()
    config.model.preset = arg  # tiny | base | large: sizes from UniterConfig presets
    config.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay fp32)
    config.model.scan_layers = False  # lax.scan over the layer stack (faster compile)
    config.model.remat = "none"  # none | full | a jax.checkpoint_policies name
    config.model.hidden_dropout = 0.1  # dropout after embeddings, attention and FFN
    config.model.attention_dropout = 0.1  # dropout on attention probabilities

    config.data = ml_collections.ConfigDict()
    config.data.images = ""  # image store folder; empty: the synthetic world in workdir
    config.data.texts = ""  # text store folder (captions); empty: the synthetic world
    config.data.synthetic_images = 200  # size of the synthetic world when it is used
    # Static (text_len incl. [CLS]/[SEP], num_regions, global batch) shapes.
    config.data.buckets = ((16, 10, 4),) if arg == "tiny" else ((62, 100, 8),)
    config.data.conf_th = 0.2  # regions kept: clip(#(conf > conf_th), min_bb, max_bb)
    config.data.min_bb = 10
    config.data.max_bb = 100
    config.data.itm_neg_prob = 0.5  # texts paired with a random other image
    return config
