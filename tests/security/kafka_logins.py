"""Producers the broker-boundary tests log in with, and a login the broker refuses."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from gateway_runtime.kafka import KafkaConnection

REFUSED_S = 10.0  # how long a refused login may take to give up


def producer_for(kafka: KafkaConnection) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **kafka.client_kwargs(), acks="all", enable_idempotence=True, request_timeout_ms=5000
    )


async def login_refused(kafka: KafkaConnection) -> None:
    producer = producer_for(kafka)
    try:
        with pytest.raises(KafkaConnectionError):
            await asyncio.wait_for(producer.start(), REFUSED_S)
    finally:
        await producer.stop()
