"""Kafka readiness probe: exits 0 once the broker answers a metadata request.

Usage: ready.py BOOTSTRAP_SERVERS [TIMEOUT_SECONDS [CREDENTIALS_FILE]]
With a credentials file (gateway_runtime/kafka_credentials.py's format), it logs in with it
as every client of the mesh does (KafkaConnection): the broker has no anonymous listener.
Run with the repository on PYTHONPATH (deploy/infra.sh does).
"""

import asyncio
import sys
from pathlib import Path

from gateway_runtime import kafka_credentials
from gateway_runtime.kafka import KafkaConnection, make_admin


def connection(bootstrap: str, credentials: str | None) -> KafkaConnection:
    if not credentials:
        return KafkaConnection(bootstrap)
    found = kafka_credentials.load(Path(credentials))
    return KafkaConnection.from_credentials(found, bootstrap_servers=bootstrap)


async def probe(bootstrap: str, timeout: float, credentials: str | None) -> None:
    kafka = connection(bootstrap, credentials)
    admin = make_admin(kafka, client_id="ready", request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
    finally:
        await admin.close()


def main() -> int:
    bootstrap = sys.argv[1]
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    credentials = sys.argv[3] if len(sys.argv) > 3 else None
    try:
        asyncio.run(probe(bootstrap, timeout, credentials))
    except Exception as exc:  # any failure means "not ready yet"
        print(f"kafka not ready at {bootstrap}: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
