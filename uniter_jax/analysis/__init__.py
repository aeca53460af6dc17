"""Looking inside a trained model: attention, head patterns, word-region alignment."""
