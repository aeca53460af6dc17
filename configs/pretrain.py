"""UNITER pretraining: MLM, MRFR, MRC-kl and ITM + WRA, one task per step.

  python main.py --config=configs/pretrain.py --workdir=DIR          # base
  python main.py --config=configs/pretrain.py:large --workdir=DIR
  python main.py --config=configs/pretrain.py:tiny --workdir=DIR     # CPU, minutes
  python main.py --config=configs/pretrain.py:indomain --workdir=DIR  # COCO + VG
  python main.py --config=configs/pretrain.py:alldata --workdir=DIR   # + CC + SBU
  python main.py --config=configs/pretrain.py:alldata_tiny --workdir=DIR  # 4 synthetic

Any field can be overridden, e.g. `--config.optim.lr=1e-4`. Without
`data.images` / `data.texts` the run uses the built-in synthetic world
(written into the workdir). Base follows the original's recipe
(docs/original.md, Optimizer and schedule); tiny is sized to learn the
synthetic world in a few minutes on two CPU cores.
"""

import ml_collections

from configs.sections import defaults
from uniter_jax.data.plan import PipelineConfig
from uniter_jax.model.config import PRESETS
from uniter_jax.objectives.tasks import TaskSettings
from uniter_jax.train.optimizer import OptimSettings

# The original's two pretraining setups (docs/original.md, Pretraining data):
# per dataset, its text stores, image stores, validation stores and task
# ratios (ITM : MLM : MRFR : MRC-kl). Paths are where the README's conversion
# commands write; override any, e.g. --config.data.datasets.coco.texts=...
_COCO = dict(
    texts=("data/txt/coco_train", "data/txt/coco_restval"),
    images=("data/img/coco_train2014", "data/img/coco_val2014"),
    val_texts=("data/txt/coco_val",),
    val_images=("data/img/coco_val2014",),
)
_VG = dict(texts=("data/txt/vg_train",), images=("data/img/vg",), val_texts=("data/txt/vg_val",))
_CC = dict(
    texts=("data/txt/cc_train",),
    images=("data/img/cc_train",),
    val_texts=("data/txt/cc_val",),
    val_images=("data/img/cc_val",),
)
_SBU = dict(
    texts=("data/txt/sbu_train",), images=("data/img/sbu",), val_texts=("data/txt/sbu_val",)
)


def _ratios(itm: float, mlm: float, mrfr: float, mrc_kl: float) -> dict[str, float]:
    return dict(itm=itm, mlm=mlm, mrfr=mrfr, mrc_kl=mrc_kl)


SETUPS = {
    "indomain": dict(
        coco={**_COCO, "mix": _ratios(2, 2, 1, 1)}, vg={**_VG, "mix": _ratios(2, 2, 1, 1)}
    ),
    "alldata": dict(
        coco={**_COCO, "mix": _ratios(6, 8, 4, 4)},
        vg={**_VG, "mix": _ratios(9, 12, 6, 6)},
        cc={**_CC, "mix": _ratios(9, 12, 6, 6)},
        sbu={**_SBU, "mix": _ratios(6, 8, 4, 4)},
    ),
}


def _variant(arg: str) -> tuple[str, str]:
    """`(setup, model preset)` of a variant: `tiny`, `indomain`, `alldata_tiny`, ..."""
    setup, _, size = arg.partition("_") if arg.split("_")[0] in SETUPS else ("", "", arg)
    size = size or "base"
    if size not in PRESETS:
        raise ValueError(
            f"unknown variant {arg!r} of configs/pretrain.py; choose a model size "
            f"{sorted(PRESETS)}, a setup {sorted(SETUPS)}, or <setup>_<size> (alldata_tiny)"
        )
    return setup, size


def get_config(arg: str = "base") -> ml_collections.ConfigDict:
    setup, arg = _variant(arg)
    tiny = arg == "tiny"
    config = ml_collections.ConfigDict()
    config.job = "pretrain"  # what main.py runs
    config.seed = 0  # parameter init, masking, dropout, data order and task draws
    config.init_from = ""  # converted UNITER folder, UNITER .pt or BERT .bin/.safetensors
    # Start of a fresh image projection: random (the original), pca (the
    # training features' principal directions) or classes (the directions that
    # separate the detector's classes; uniter_jax/train/image_init.py).
    config.image_init = "random"
    # Start of the attention's query and key kernels: random (the original) or
    # mimetic (query-key product near the identity; uniter_jax/train/attention_init.py).
    config.attention_init = "random"

    config.model = ml_collections.ConfigDict()
    config.model.preset = arg  # tiny | base | large: sizes from UniterConfig presets
    # Word-piece ids; tiny: room for the synthetic world's 400-word vocabulary.
    config.model.vocab_size = 512 if tiny else 28996
    # Std of the normal weight init. BERT's 0.02 suits width 768; at width 64 it
    # keeps attention uniform for thousands of steps (ITM took off after ~4,000
    # steps at 0.02, after ~2,000 at 0.06, measured on the synthetic world).
    config.model.initializer_range = 0.06 if tiny else 0.02
    config.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay fp32)
    config.model.scan_layers = not tiny  # lax.scan over the layer stack (faster compile)
    config.model.remat = "none"  # none | full | a jax.checkpoint_policies name
    # False: an ablation with no attention between words and regions (the
    # learning check's control); UNITER is True.
    config.model.cross_modal_attention = True
    # Dropout after embeddings, attention and FFN, and on attention probabilities;
    # none for tiny, which must learn the synthetic world in minutes.
    config.model.hidden_dropout = 0.0 if tiny else 0.1
    config.model.attention_dropout = 0.0 if tiny else 0.1
    # The image store's widths (checked at start): the detector's 2048-d features
    # and 1601-way class distribution (background + 1600 Visual Genome classes).
    config.model.img_dim = 2048  # region feature width
    config.model.num_region_labels = 1601  # soft-label classes (MRC)

    config.mesh = ml_collections.ConfigDict()
    # Device mesh ('data', 'fsdp', 'tensor'); one size may be -1 (the rest of the
    # devices). Batches split over data x fsdp, weights over fsdp x tensor.
    config.mesh.shape = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Logical axis name -> mesh axis (or axes, or None), first match wins and a
    # mesh axis serves one dimension per array (uniter_jax/sharding.py).
    config.mesh.rules = (
        ("batch", ("data", "fsdp")),  # examples: data parallel over data and fsdp
        ("embed", "fsdp"),  # hidden width of weights: FSDP (ZeRO-3)
        ("heads", "tensor"),  # attention heads: tensor parallel
        ("mlp", "tensor"),  # feed-forward width: tensor parallel
        ("vocab", "tensor"),  # word-piece rows and MLM logits: tensor parallel
        ("length", None),  # sequence positions: not split
        ("kv", None),  # width of one head
        ("layers", None),  # the stacked layer axis
        ("features", None),  # region feature width (2048)
        ("classes", None),  # 1601 region classes, 2 ITM classes
    )

    config.data = ml_collections.ConfigDict()
    config.data.images = ""  # image store folder; empty: the synthetic world in workdir
    config.data.texts = ""  # text store folder (captions); empty: the synthetic world
    config.data.val_images = ""  # validation image store; empty: data.images
    config.data.val_texts = ""  # validation text store; empty: no validation
    config.data.synthetic_images = 2000 if tiny else 200  # synthetic world size
    # Static (text_len incl. [CLS]/[SEP], num_regions, global batch) shapes; empty:
    # chosen from the stores at the first start (uniter_jax/train/shapes.py) and
    # kept in workdir/buckets.json. A fixed list, e.g. the original's budget of
    # 8 x 10240 tokens over COCO-like lengths:
    # --config.data.buckets="$(python -c 'from uniter_jax.data.buckets import \
    #     default_buckets as d; print(tuple(tuple(vars(b).values()) for b in d(512)))')"
    config.data.buckets = ()
    config.data.batch_size = 32 if tiny else 512  # chosen buckets: examples of the largest
    # Chosen buckets: at most this many shapes (one compiled program per task
    # each), fewer once padding is within target_padding. Tiny: one program.
    config.data.max_buckets = 1 if tiny else 6
    config.data.target_padding = 0.15  # chosen buckets: padded share of positions to stop at
    # Regions kept: clip(#(conf > conf_th), min_bb, max_bb), `PipelineConfig`'s defaults.
    config.data.update(defaults(PipelineConfig, only=("conf_th", "min_bb", "max_bb")))
    config.data.itm_neg_prob = 0.5  # ITM: texts paired with a random other image
    # Several datasets, each name -> texts, images, val_texts, val_images, mix
    # (task ratios) and optionally conf_th/min_bb/max_bb; one stream per
    # (dataset, task) (uniter_jax/train/datasets.py). Empty: data.texts/images.
    # A dataset with no texts and images reads the built-in synthetic corpus
    # of its name (coco, vg, cc, sbu), written into the workdir.
    config.data.datasets = ml_collections.ConfigDict()
    if setup:
        config.data.datasets = ml_collections.ConfigDict(_setup_datasets(setup, tiny))
        config.data.synthetic_images = 400 if tiny else config.data.synthetic_images  # each

    # Masking, WRA and gather settings at `TaskSettings`' defaults (documented
    # there); the mix schedule below.
    config.tasks = defaults(TaskSettings, exclude=("mask_id", "special_ids", "random_range"))
    # Relative frequency of each task: the reference's 2:2:1:1. Tiny favours ITM,
    # the slowest to learn when tasks share one Adam state, and uses hard-label
    # MRC (MRC-kl's gradients, averaged over 1601 classes, barely move it).
    config.tasks.mix = ml_collections.ConfigDict(
        dict(itm=3.0, mlm=1.0, mrfr=1.0, mrc_kl=0.0, mrc=1.0)
        if tiny
        else dict(itm=2.0, mlm=2.0, mrfr=1.0, mrc_kl=1.0, mrc=0.0)
    )
    # Tasks of the first `first_steps` micro-steps (0: the mix from the start).
    # ITM alone first lets it leave chance where the regions a caption names
    # are few among many (docs/results.md, "Dilution alone").
    # Every task is listed so that any can be set from the command line.
    config.tasks.first_mix = ml_collections.ConfigDict(
        dict(itm=1.0, mlm=0.0, mrfr=0.0, mrc_kl=0.0, mrc=0.0)
    )
    config.tasks.first_steps = 0
    # Tasks of the `second_steps` micro-steps after the first phase (0: none).
    # MRC alone there lets it learn to read overlapping boxes where the other
    # tasks hold it back (docs/results.md, "A phase of MRC alone").
    config.tasks.second_mix = ml_collections.ConfigDict(
        dict(itm=0.0, mlm=0.0, mrfr=0.0, mrc_kl=0.0, mrc=1.0)
    )
    config.tasks.second_steps = 0
    # One task per update (all its `optim.accumulation` micro-steps), as the
    # original draws them; "micro_step" draws each micro-step's own.
    config.tasks.draw = "update"

    # AdamW at `OptimSettings`' defaults (the original's betas, decay and clip).
    config.optim = defaults(
        OptimSettings, exclude=("head_lr_mul", "head_groups", "moment_tasks", "task_lr_mul")
    )
    # Each task's learning rate, times optim.lr (every task is listed so that
    # any can be set from the command line); 1 everywhere, as the original.
    config.optim.task_lr_mul = ml_collections.ConfigDict({task: 1.0 for task in config.tasks.mix})
    config.optim.lr = 1e-3 if tiny else 5e-5  # peak learning rate
    config.optim.warmup_steps = 500 if tiny else 10_000  # linear warm-up (updates)
    config.optim.total_steps = 12_000 if tiny else 200_000  # updates; linear decay to 0 here
    if tiny:
        # MRC-kl averages over 1601 classes, so its gradients are tiny: on the
        # tiny model an Adam epsilon of 1e-6 mutes them (no MRC learning at all).
        config.optim.eps = 1e-8
    # Micro-steps summed per update; the original's all-data setup sums 6.
    config.optim.accumulation = 1 if tiny else (6 if setup == "alldata" else 2)

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 6000 if tiny else 5000  # micro-steps between saves
    config.checkpoint.keep = 3  # newest checkpoints kept
    config.checkpoint.async_save = True  # write in the background while training

    config.eval = ml_collections.ConfigDict()
    config.eval.every_steps = 6000 if tiny else 10_000  # micro-steps; also at the end; 0 = never
    config.eval.num_batches = 0 if tiny else 200  # validation batches; 0 = whole split
    config.eval.seed = 1  # masking of validation batches (the same every time)

    config.log = ml_collections.ConfigDict()
    config.log.every_steps = 500 if tiny else 100  # micro-steps between train metric lines
    return config


def _setup_datasets(setup: str, tiny: bool) -> dict:
    """The datasets of `setup`; tiny: the built-in synthetic corpora of the same
    names (no paths), with the same ratios."""
    if not tiny:
        return SETUPS[setup]
    return {name: {"mix": entry["mix"]} for name, entry in SETUPS[setup].items()}
