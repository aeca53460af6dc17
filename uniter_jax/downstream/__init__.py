"""Fine-tuning and evaluation on the downstream tasks (docs/original.md, Downstream tasks)."""
