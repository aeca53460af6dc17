"""Fine-tune on NLVR2 (a statement about two images; metric accuracy).

  python main.py --config=configs/finetune_nlvr2.py --workdir=W \\
      --config.init_from=PRETRAINED --config.data.images=NLVR2_IMG \\
      --config.data.train_texts=TXT/nlvr2_train --config.data.val_texts=TXT/nlvr2_dev \\
      --config.task_options.variant=pair-attn      # pair | triplet | pair-attn
  python main.py --config=configs/finetune_nlvr2.py --workdir=W --mode=predict \\
      --config.data.test_texts=TXT/nlvr2_test1    # writes W/results_nlvr2_test1.csv
  python main.py --config=configs/finetune_nlvr2.py:tiny --workdir=W \\
      --config.init_from=PRETRAIN_WORKDIR/model    # the synthetic world, minutes

The recipe is the original's train-nlvr2-base-1gpu: pair-attn with image
segment types, lr 3e-5, 800 warm-up and 8000 updates, gradient clip 2.0,
about 10240 positions per step (batch sizes count rows, two per statement).
"""

from configs.finetune import finetune_config

RECIPE = dict(
    lr=3e-5,
    warmup_steps=800,
    total_steps=8000,
    accumulation=1,
    clip_norm=2.0,
    global_batch=64,  # rows x (62 + 100) positions: about the original's 10240 tokens
    eval_every=500,
)


def get_config(arg: str = "base"):
    return finetune_config("nlvr2", arg, RECIPE, options=dict(variant="pair-attn"))
