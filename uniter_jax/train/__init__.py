"""Training: optimiser, jitted steps, checkpoints and the loop."""
