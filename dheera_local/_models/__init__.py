"""What a model string names: models.txt, the hub id, the weights on this machine, LLM families' templates."""
