"""The small runtime every service of the mesh shares.

    settings.py     every service's settings (the only code that reads the environment)
    errors.py       the error tree: retryable, permanent, provider errors
    ports.py        the Protocols handlers are typed against, and the values they exchange
    kafka.py        the producer and consumer every service uses; topic provisioning
    stage.py        the stage loop: consume, handle, produce, commit; retries, dead letters
    offsets.py      which offsets are safe to commit when records finish out of order
    worker.py       how a stage worker starts and stops (signals, clients, the loop)
    fanout.py       client-visible events to Redis (log + live channel), Postgres fallback
    event_log.py    the Postgres event log the fan-out falls back to
    redis_keys.py   every Redis key name, under the mesh's namespace
    postgres.py     the pool and the schema migrations (migrations/)
    redis_pool.py   the one way processes open Redis
    redis_gate.py   skip a failed Redis until a probe answers (fallbacks, not timeouts)
    delivery.py     which Kafka record a handler is working on (and replay headers)
    supervisor.py   restarts crashed services in the local profile
    logs.py         JSON logs with the event's correlation fields
    metrics.py      Prometheus metrics of the stages
    provision.py    `python -m gateway_runtime.provision`: topics, migrations, OpenFGA, OPA

Adapters of shared backing services are in `adapters/`; each worker folder holds only its
stage's handler and a short `__main__` that wires settings → adapters → `worker.serve_stage`.
"""
