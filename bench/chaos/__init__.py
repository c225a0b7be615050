"""`python -m bench.chaos` (`make chaos`): faults in a row under steady load, one table.

A sandbox with a Kafka broker and a Postgres server of its own (so no fault ever touches
the machine's shared servers or a running `make up` stack), 2 ingress processes and 2
replicas of each stage worker, the fake model upstream. Open-loop load with API keys posts
one-turn sessions through both ingresses in turn and follows each turn on its SSE stream
(reconnecting with Last-Event-ID, to the other ingress, when a stream breaks), while the
faults of `plan.FAULTS` are injected one after another with recovery time between:
kill -9 of one replica of each stage and of one ingress, broker, Redis and Postgres
restarts, OpenFGA and OPA outages, mid-stream resets and a 5xx storm of the upstream.

Once the load stops and the turns have had time to end, the audit reads what the client
saw, what Postgres stored, the session event logs (Redis, and the Postgres fallback log)
and every topic of the sandbox's namespace (read_committed, from the start), and the run
reports one table (report.py): accepted, completed, failed with an actionable error,
stuck, lost, answered twice, stored twice, duplicate records per topic, and the time to
recover after each fault. Modules: plan (what runs how long), traffic (the load and the
follow), faults (injection), audit (the checks after), verdict (turning both into
numbers), report (the table and docs/reliability.md), runner (the stack).
"""
