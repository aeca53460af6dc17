"""Fine-tune on VCR: Q->A and QA->R stores together; metrics Q->A, QA->R, Q->AR.

  python main.py --config=configs/finetune_vcr.py --workdir=W \\
      --config.init_from=PRETRAINED --config.data.images=VCR_IMG \\
      --config.data.train_texts=TXT/vcr_qa_train --config.data.train_texts_qar=TXT/vcr_qar_train \\
      --config.data.val_texts=TXT/vcr_qa_val --config.data.val_texts_qar=TXT/vcr_qar_val
  python main.py --config=configs/finetune_vcr.py --workdir=W --mode=predict \\
      --config.data.test_texts=TXT/vcr_qa_test --config.data.test_texts_qar=TXT/vcr_qar_test
  python main.py --config=configs/finetune_vcr.py:tiny --workdir=W \\
      --config.init_from=PRETRAIN_WORKDIR/model    # the synthetic world, minutes

The recipe is the original's train-vcr-base-4gpu: lr 6e-5, 800 warm-up and
8000 updates, gradient clip 2.0, 5 accumulated micro-steps of about 4 x 4000
positions. The original starts from a second-stage pretraining on VCR
(configs/pretrain.py with data.texts a `convert vcr --mode text` store).
Batch sizes count candidate rows: four per question.
"""

from configs.finetune import finetune_config

RECIPE = dict(
    lr=6e-5,
    warmup_steps=800,
    total_steps=8000,
    accumulation=5,
    clip_norm=2.0,
    global_batch=96,  # rows x (62 + 100) positions: about the original's 4 x 4000 tokens
    eval_every=5000,
    tiny_buckets=((24, 12, 32),),
)


def get_config(arg: str = "base"):
    return finetune_config("vcr", arg, RECIPE, store_suffixes=("", "_qar"))
