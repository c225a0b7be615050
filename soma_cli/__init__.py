"""`soma-gateway`: the SRE command line, a client of the gateway's REST API only.

It holds no Kafka or database access of its own, so what an operator may do with it is
exactly what their API key may do (docs/operations.md has the runbook).
"""
