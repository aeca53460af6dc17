"""Fine-tuning and evaluation on the downstream tasks of REFERENCE.md section 4."""
