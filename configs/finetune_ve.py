"""Fine-tune on SNLI-VE (3-way entailment on the pooled output; metric accuracy).

  python main.py --config=configs/finetune_ve.py --workdir=W \\
      --config.init_from=PRETRAINED --config.data.images=FLICKR_IMG \\
      --config.data.train_texts=TXT/ve_train --config.data.val_texts=TXT/ve_dev
  python main.py --config=configs/finetune_ve.py --workdir=W --mode=predict \\
      --config.data.test_texts=TXT/ve_test      # writes W/results_ve_test.json
  python main.py --config=configs/finetune_ve.py:tiny --workdir=W \\
      --config.init_from=PRETRAIN_WORKDIR/model  # the synthetic world, minutes

The recipe is the original's train-ve-base-2gpu: lr 8e-5, 400 warm-up and
4000 updates, gradient clip 2.0, 4 accumulated micro-steps of about
2 x 4096 positions.
"""

from configs.finetune import finetune_config

RECIPE = dict(
    lr=8e-5,
    warmup_steps=400,
    total_steps=4000,
    accumulation=4,
    clip_norm=2.0,
    global_batch=48,  # x (62 + 100) positions: about the original's 2 x 4096 tokens
    eval_every=2000,  # micro-steps: every 500 updates
)


def get_config(arg: str = "base"):
    return finetune_config("ve", arg, RECIPE)
