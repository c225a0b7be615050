"""`soma-gateway`: the SRE command line.

`dlq` is a client of the gateway's REST API only: it holds no Kafka or database access of
its own, so what an operator may do with it is exactly what their API key may do
(docs/operations.md has the runbook). `automation` is the exception, on the broker's
side: it gives an automation Kafka credentials, so it needs the broker's admin login and
the registry's database (soma_cli/automations.py).
"""
