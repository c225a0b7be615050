"""Context stage: assembles what the model sees for a turn."""
