"""Training: the G/D loop, EMA generator, checkpoints."""
