"""What the fine-tuning configs share; each `configs/finetune_<task>.py` adds its recipe.

Not a config file itself: `configs/finetune_vqa.py` and its siblings call
`finetune_config(task, variant, recipe)`. Model, mesh, checkpoint and log
sections are pretraining's (configs/pretrain.py) for the same variant.
"""

import ml_collections

from configs import pretrain
from configs.sections import defaults
from uniter_jax.data.plan import PipelineConfig
from uniter_jax.train.optimizer import OptimSettings


def finetune_config(
    task: str,
    arg: str,
    recipe: dict,
    *,
    options: dict | None = None,
    store_suffixes: tuple[str, ...] = ("",),
) -> ml_collections.ConfigDict:
    """The config of fine-tuning `task` at variant `arg` (tiny | base | large).

    `recipe` holds the original's values for base and large: lr, head_lr_mul,
    warmup_steps, total_steps, accumulation, clip_norm, global_batch (examples
    of the largest bucket shape per micro-step), eval_every, and optionally
    conf_th, max_bb, buckets and tiny_buckets (fixed shapes instead of shapes
    chosen from the stores).
    `options` become `task_options` (e.g. NLVR2's variant); `store_suffixes`
    name a task's text stores (VCR: `train_texts` and `train_texts_qar`).
    """
    base = pretrain.get_config(arg)  # raises for an unknown variant
    tiny = arg == "tiny"
    config = ml_collections.ConfigDict()
    config.job = "finetune"  # what main.py runs
    config.task = task  # the downstream task (uniter_jax/downstream/finetune.py TASKS)
    config.seed = 0  # head init, dropout and data order
    # Pretrained parameters: a run's workdir/model, a converted UNITER folder,
    # a UNITER .pt or a BERT .bin/.safetensors. Empty: from scratch (a warning).
    config.init_from = ""
    config.model = base.model
    # Dropout as the original's fine-tuning (0.1), also for tiny: the heads
    # overfit the small synthetic splits without it.
    config.model.hidden_dropout = 0.1
    config.model.attention_dropout = 0.1
    config.mesh = base.mesh
    if options:
        config.task_options = ml_collections.ConfigDict(options)  # the task's own knobs
        for name, value in recipe.get("tiny_options", {}).items() if tiny else ():
            config.task_options[name] = value

    config.data = ml_collections.ConfigDict()
    config.data.images = ""  # image store of the training texts; empty: synthetic world
    config.data.val_images = ""  # empty: data.images
    config.data.test_images = ""  # for --mode=predict; empty: val_images
    for suffix in store_suffixes:
        config.data[f"train_texts{suffix}"] = ""  # the task's training text store
        config.data[f"val_texts{suffix}"] = ""  # validation text store; empty: none
        config.data[f"test_texts{suffix}"] = ""  # for --mode=predict; empty: val
    config.data.synthetic_images = 2000 if tiny else 200  # synthetic world size
    # Static (text_len, num_regions, global batch) shapes; empty: chosen from the
    # stores at the first start and kept in workdir/buckets.json (as pretraining).
    config.data.buckets = recipe.get("tiny_buckets" if tiny else "buckets", ())
    config.data.batch_size = 32 if tiny else recipe["global_batch"]  # of the largest shape
    config.data.max_buckets = 1 if tiny else 6  # chosen buckets: at most this many
    config.data.target_padding = 0.15
    # Region selection as pretraining, unless the recipe says otherwise.
    config.data.update(defaults(PipelineConfig, only=("conf_th", "min_bb", "max_bb")))
    config.data.conf_th = recipe.get("conf_th", config.data.conf_th)
    config.data.max_bb = recipe.get("max_bb", config.data.max_bb)

    # AdamW at `OptimSettings`' defaults, with the recipe's schedule.
    config.optim = defaults(
        OptimSettings, exclude=("head_groups", "per_task_moments", "moment_tasks", "task_lr_mul")
    )
    config.optim.lr = 3e-4 if tiny else recipe["lr"]  # peak learning rate
    config.optim.head_lr_mul = recipe.get("head_lr_mul", 1.0)  # the new head's lr factor
    config.optim.warmup_steps = 100 if tiny else recipe["warmup_steps"]  # updates
    config.optim.total_steps = 1000 if tiny else recipe["total_steps"]  # updates
    if tiny:
        config.optim.eps = 1e-8  # as pretraining's tiny preset
    config.optim.clip_norm = recipe.get("clip_norm", 2.0)  # the original fine-tunes at 2.0
    config.optim.accumulation = 1 if tiny else recipe["accumulation"]

    config.checkpoint = base.checkpoint
    config.checkpoint.every_steps = 500 if tiny else 1000  # micro-steps between saves

    config.eval = ml_collections.ConfigDict()
    # Micro-steps between validations (also at the end); the whole split each time.
    config.eval.every_steps = 500 if tiny else recipe["eval_every"]
    if "two_stage_k" in recipe:
        # Retrieval: also rank in two stages, cross-encoding each text's k best
        # dual-encoder images only; 0 = full ranking alone.
        config.eval.two_stage_k = recipe["two_stage_k"]

    config.log = ml_collections.ConfigDict()
    config.log.every_steps = 100
    return config
