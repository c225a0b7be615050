"""`python -m gateway_runtime.provision`: create the topics and apply migrations."""

from __future__ import annotations

import asyncio
import logging

from gateway_runtime.kafka import ensure_topics
from gateway_runtime.logs import configure_logging
from gateway_runtime.postgres import create_pool, migrate
from gateway_runtime.settings import CommonSettings
from schemas.topics import Topics

log = logging.getLogger(__name__)


async def provision(settings: CommonSettings) -> None:
    topics = Topics.for_namespace(settings.kafka_namespace).all()
    created = await ensure_topics(settings.kafka_bootstrap_servers, topics)
    pool = await create_pool(settings.postgres_dsn, max_size=2)
    try:
        applied = await migrate(pool)
    finally:
        await pool.close()
    log.info("provisioned", extra={"fields": {"topics_created": created, "migrations": applied}})


if __name__ == "__main__":
    settings = CommonSettings(service_name="provision")
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(provision(settings))
