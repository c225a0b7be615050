"""The small runtime every service of the mesh shares.

settings, Kafka wiring, the stage loop (retry + dead letter), the Redis fan-out
publisher, the Postgres pool and migrations, JSON logging and Prometheus metrics.
Each worker folder holds only its stage's handler and a short entrypoint.
"""
