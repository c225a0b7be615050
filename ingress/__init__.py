"""The ingress: a thin FastAPI app that turns requests into Kafka events and streams back."""
