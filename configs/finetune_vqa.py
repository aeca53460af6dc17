"""Fine-tune on VQA v2 (3129 answers, BCE on soft scores; metric VQA accuracy).

  python main.py --config=configs/finetune_vqa.py --workdir=W \\
      --config.init_from=PRETRAINED --config.data.images=IMG \\
      --config.data.train_texts=TXT/vqa_train --config.data.val_texts=TXT/vqa_val
  python main.py --config=configs/finetune_vqa.py --workdir=W --mode=predict \\
      --config.data.test_texts=TXT/vqa_test     # writes W/results_vqa_test.json
  python main.py --config=configs/finetune_vqa.py:tiny --workdir=W \\
      --config.init_from=PRETRAIN_WORKDIR/model  # the synthetic world, minutes

The recipe is the original's train-vqa-base-4gpu: lr 8e-5 with the head at
10x, 600 warm-up and 6000 updates, gradient clip 2.0, 5 accumulated
micro-steps of about 4 x 5120 positions.
"""

from configs.finetune import finetune_config

RECIPE = dict(
    lr=8e-5,
    head_lr_mul=10.0,
    warmup_steps=600,
    total_steps=6000,
    accumulation=5,
    clip_norm=2.0,
    global_batch=128,  # x (62 + 100) positions: about the original's 4 x 5120 tokens
    eval_every=2500,  # micro-steps: every 500 updates
)


def get_config(arg: str = "base"):
    return finetune_config("vqa", arg, RECIPE)
