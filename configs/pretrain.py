"""UNITER pretraining config.

  python main.py --config=configs/pretrain.py --workdir=DIR          # base
  python main.py --config=configs/pretrain.py:large --workdir=DIR
  python main.py --config=configs/pretrain.py:tiny --workdir=DIR     # CPU demo

Until the pretraining loop lands, `job` is `forward_check`: one forward pass
of the encoder and heads on synthetic inputs, printing the parameter overview
and output statistics.
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

    config.forward_check = ml_collections.ConfigDict()
    config.forward_check.batch_size = 2 if arg == "tiny" else 8  # examples
    config.forward_check.text_len = 16 if arg == "tiny" else 60  # padded text length
    config.forward_check.num_regions = 10 if arg == "tiny" else 36  # padded region count
    return config
