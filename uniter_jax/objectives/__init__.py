"""Pretraining objectives: masking, losses and word-region alignment (pure, in-jit)."""
