"""Fine-tune on RefCOCO / RefCOCO+ / RefCOCOg (a score per region; metric IoU >= 0.5).

  python main.py --config=configs/finetune_refexp.py --workdir=W \\
      --config.init_from=PRETRAINED \\
      --config.data.images=RE_COCO_GT --config.data.train_texts=TXT/refcoco_train \\
      --config.data.val_images=RE_COCO_DET --config.data.val_texts=TXT/refcoco_val
  python main.py --config=configs/finetune_refexp.py --workdir=W --mode=predict \\
      --config.data.test_texts=TXT/refcoco_testA   # writes W/results_refcoco_testA.json
  python main.py --config=configs/finetune_refexp.py:tiny --workdir=W \\
      --config.init_from=PRETRAIN_WORKDIR/model     # the synthetic world, minutes

Train on ground-truth boxes and validate on detections, as the original's
train-refcoco-base-1gpu: lr 1e-4, 1500 warm-up and 24000 updates, gradient
clip 2.0, 128 expressions per step, every region kept (conf_th -1, up to
100).
"""

from configs.finetune import finetune_config

RECIPE = dict(
    lr=1e-4,
    warmup_steps=1500,
    total_steps=24_000,
    accumulation=1,
    clip_norm=2.0,
    global_batch=128,
    eval_every=2000,
    conf_th=-1.0,  # keep every region (up to max_bb): the target must not be cut
    max_bb=100,
)


def get_config(arg: str = "base"):
    return finetune_config("refexp", arg, RECIPE)
