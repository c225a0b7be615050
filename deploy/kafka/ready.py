"""Kafka readiness probe: exits 0 once the broker answers a metadata request.

Usage: ready.py BOOTSTRAP_SERVERS [TIMEOUT_SECONDS]
"""

import asyncio
import sys

from aiokafka.admin import AIOKafkaAdminClient


async def probe(bootstrap: str, timeout: float) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
    finally:
        await admin.close()


def main() -> int:
    bootstrap = sys.argv[1]
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    try:
        asyncio.run(probe(bootstrap, timeout))
    except Exception as exc:  # any failure means "not ready yet"
        print(f"kafka not ready at {bootstrap}: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
