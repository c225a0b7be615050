"""LLM stage: streams the model's answer to the client and reports how the turn ended."""
