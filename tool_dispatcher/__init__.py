"""Tool dispatcher stage: runs the tool calls a model asked for and hands the turn back."""
