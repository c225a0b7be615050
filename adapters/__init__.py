"""Adapters of the backing services that more than one service of the mesh uses.

Each module wraps one thing and implements a port of `gateway_runtime.ports`, turning its
library's exceptions into the mesh's (`gateway_runtime.errors`):

    openfga.py      OpenFGA (openfga-sdk): relationship checks and writes, with the
                    decision cache that stands in briefly while it is unreachable
    opa.py          OPA's HTTP API: budget and quota decisions; pushing the Rego policies
    budgets.py      Postgres: daily token budgets, reserved and settled atomically
    admissions.py   Postgres: each turn admitted once by the policy stage
    dead_letters.py Postgres: the dead-letter index the requeue API reads
    deployments.py  Redis: circuit breakers and moving averages per model deployment
    profiles.py     Postgres: model profiles, and the cached view the context stage reads
    memory.py       Postgres full-text memories, or a SomaBrain-style memory service
    tenants.py      conf/tenants.yaml: tenant prompts, budgets, limits and allow-lists

The runtime itself (settings, Kafka wiring, the stage loop, the fan-out) is
`gateway_runtime`; adapters that only one service needs live in that service.
"""
