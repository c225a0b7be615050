"""Kafka wiring: who a client is to the broker, the producer, consumer and admin client
every service uses, and topic provisioning.

`KafkaConnection` is the one place a client's address, login (SASL/SCRAM, from the
principal's credentials file or KAFKA_PASSWORD) and TLS (SASL_SSL: the broker's
certificate checked against KAFKA_SSL_CAFILE, else the system's trust store) become
client arguments: every aiokafka client of the mesh, the testbed and the benchmarks,
and confluent-kafka's admin client, is built from one, so none connects anonymously to a
broker that asks for credentials (docs/security.md).

The producer is idempotent with acks=all, so a retried send never duplicates a record in
the log; a stage's is also transactional (`make_transactional_producer`): its outputs and
consumed offsets commit together (gateway_runtime/stage.py). Consumers never auto-commit
and read committed records only.
`KafkaPublisher` (the ingress's) and `GroupConsumer` (the stage loop's) are ports over
aiokafka (transactions.py is the stage loop's producer side); they turn aiokafka's errors
into the mesh's: a record the broker can never take (too large, not
authorized) is `PublishRefused`, anything else `DependencyUnavailable` (retry later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)
from aiokafka.helpers import create_ssl_context

from gateway_runtime import kafka_credentials
from gateway_runtime.errors import DependencyUnavailable, PublishRefused
from gateway_runtime.ports import ConsumedRecord
from gateway_runtime.settings import CommonSettings
from schemas.codec import EncodedEvent
from schemas.topics import Topic

log = logging.getLogger(__name__)
REFUSED_FOR_GOOD = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)


class KafkaCredentialsMissing(RuntimeError):
    """The broker wants a login (or the profile does) and this principal has none."""


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """Where the broker is and who this client is to it."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = kafka_credentials.DEFAULT_MECHANISM
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None  # with *SSL: the CA the broker's certificate must chain to

    @classmethod
    def for_principal(
        cls,
        bootstrap_servers: str,
        credentials_dir: Path,
        principal: str,
        *,
        security_protocol: str = "auto",
        sasl_mechanism: str = kafka_credentials.DEFAULT_MECHANISM,
        password: str | None = None,
        require_sasl: bool = False,
        ssl_cafile: Path | None = None,
    ) -> KafkaConnection:
        """`principal`'s connection: its password (given, or from its credentials file).
        `auto` logs in with it and refuses to go on without one: an anonymous connection
        (no broker boundary) is only ever an explicit `PLAINTEXT`, in the local profile."""
        if password is None and security_protocol != "PLAINTEXT":
            found = kafka_credentials.find(credentials_dir, principal)
            if found is not None:
                password, sasl_mechanism = found.password, found.mechanism
                if security_protocol == "auto":
                    security_protocol = found.security_protocol
        if security_protocol == "auto":
            security_protocol = "SASL_PLAINTEXT"
        if security_protocol == "PLAINTEXT":
            if require_sasl:
                raise KafkaCredentialsMissing("PLAINTEXT Kafka is for the local profile only")
            return cls(bootstrap_servers, ssl_cafile=ssl_cafile)
        if password is None:
            raise KafkaCredentialsMissing(
                f"no Kafka credentials for principal {principal!r}: neither KAFKA_PASSWORD nor"
                f" {kafka_credentials.credentials_file(credentials_dir, principal)}"
                " (`make up` provisions the services' credentials)"
            )
        return cls(
            bootstrap_servers, security_protocol, sasl_mechanism, principal, password, ssl_cafile
        )

    @classmethod
    def from_settings(
        cls, settings: CommonSettings, *, principal: str | None = None
    ) -> KafkaConnection:
        """The process's own connection (KAFKA_USERNAME, else its service's principal), or
        another `principal`'s from the same credentials directory."""
        own = settings.kafka_username or kafka_credentials.principal_for(settings.service_name)
        password = settings.kafka_password if principal in (None, own) else None
        return cls.for_principal(
            settings.kafka_bootstrap_servers,
            settings.kafka_credentials_path,
            principal or own,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            password=password.get_secret_value() if password else None,
            require_sasl=settings.soma_profile == "production",
            ssl_cafile=settings.kafka_ssl_cafile,
        )

    @classmethod
    def from_credentials(
        cls,
        credentials: kafka_credentials.Credentials,
        *,
        bootstrap_servers: str | None = None,
        ssl_cafile: Path | None = None,
    ) -> KafkaConnection:
        """The connection a credentials file describes: an automation's (the file that
        `soma-gateway automation add` wrote says where to connect), or any principal's
        with `bootstrap_servers` (deploy/kafka/ready.py, with the admin's)."""
        servers = bootstrap_servers or credentials.bootstrap_servers
        if not servers:
            raise KafkaCredentialsMissing(f"{credentials.username}: no bootstrap_servers")
        return cls(
            servers,
            credentials.security_protocol,
            credentials.mechanism,
            credentials.username,
            credentials.password,
            ssl_cafile,
        )

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def client_kwargs(self) -> dict[str, Any]:
        """The arguments of any aiokafka client (producer, consumer, admin)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.sasl:
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password,
            )
        if self.tls:
            kwargs["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile)
        return kwargs

    def librdkafka_config(self) -> dict[str, str]:
        """The same for confluent-kafka's admin client (SCRAM users and ACLs)."""
        config = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl:
            config.update(
                {
                    "sasl.mechanism": self.sasl_mechanism,
                    "sasl.username": self.username or "",
                    "sasl.password": self.password or "",
                }
            )
        if self.tls and self.ssl_cafile is not None:
            config["ssl.ca.location"] = str(self.ssl_cafile)
        return config


# A client is built from a connection (address and login) or from a process's settings.
Kafka = KafkaConnection | CommonSettings


def connection(kafka: Kafka) -> KafkaConnection:
    if isinstance(kafka, KafkaConnection):
        return kafka
    return KafkaConnection.from_settings(kafka)


def make_producer(kafka: Kafka, *, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **connection(kafka).client_kwargs(),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,  # send at once: under load, batches form while a request is in flight
        request_timeout_ms=15000,
    )


def make_transactional_producer(
    kafka: Kafka, *, client_id: str, transactional_id: str, transaction_timeout_s: float
) -> AIOKafkaProducer:
    """A stage's producer (gateway_runtime/transactions.py): the same durability as
    `make_producer`, every record in a transaction under `transactional_id`. The broker
    aborts a transaction left open longer than `transaction_timeout_s` (its producer
    died and no instance with the same id came back to fence it), so the partitions it
    wrote stop holding back read_committed consumers."""
    return AIOKafkaProducer(
        **connection(kafka).client_kwargs(),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        request_timeout_ms=15000,
        # Just after a commit the coordinator answers the next transaction's first request
        # with CONCURRENT_TRANSACTIONS until its markers are written (a few ms); aiokafka
        # waits retry_backoff_ms before asking again (100 by default; only its
        # AddPartitionsToTxn has a shorter wait): 5 ms took the hop's p99 at 50/s from
        # ~110-150 ms to 14 (docs/benchmarks.md).
        retry_backoff_ms=5,
        transactional_id=transactional_id,
        transaction_timeout_ms=int(transaction_timeout_s * 1000),
    )


def make_consumer(
    kafka: Kafka,
    *,
    group_id: str,
    client_id: str,
    fetch_max_wait_ms: int = 500,
    metadata_max_age_ms: int = 300000,
) -> AIOKafkaConsumer:
    """A group member; `fetch_max_wait_ms` is how long an empty fetch waits at the broker
    (a record that arrives ends it at once; shorter only polls an idle broker more);
    `metadata_max_age_ms` how soon a pattern subscription sees a new topic."""
    return AIOKafkaConsumer(
        **connection(kafka).client_kwargs(),
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=500,
        fetch_max_wait_ms=fetch_max_wait_ms,
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=300000,
        metadata_max_age_ms=metadata_max_age_ms,
    )


class KafkaPublisher:
    """The `Publisher` port: one record, acknowledged by the broker when this returns."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def publish(self, topic: str, record: EncodedEvent) -> None:
        try:
            await self.producer.send_and_wait(
                topic, value=record.value, key=record.key, headers=record.headers
            )
        except REFUSED_FOR_GOOD as exc:
            raise PublishRefused(f"kafka refused a record for {topic}: {exc!r}") from exc
        except KafkaError as exc:
            raise DependencyUnavailable(f"kafka publish to {topic} failed: {exc!r}") from exc

    async def start_send(self, topic: str, record: EncodedEvent) -> asyncio.Future[Any]:
        """Hand the record to the producer; the future resolves when the broker has it.

        For a caller that must not wait for the broker (the ingress's outbox): the send
        goes on after the caller stops waiting, and the future says how it ended.
        """
        try:
            future: asyncio.Future[Any] = await self.producer.send(
                topic, value=record.value, key=record.key, headers=record.headers
            )
        except REFUSED_FOR_GOOD as exc:
            raise PublishRefused(f"kafka refused a record for {topic}: {exc!r}") from exc
        except KafkaError as exc:
            raise DependencyUnavailable(f"kafka publish to {topic} failed: {exc!r}") from exc
        return future


class GroupConsumer:
    """The `RecordConsumer` port: a member of a stage's consumer group.

    A partition's records are handed out only once it is `ready`: aiokafka starts
    fetching a newly assigned partition before its rebalance listener has run, and the
    stage loop must first learn which records the previous owner committed beyond its
    position (gateway_runtime/offsets.py), or it would handle them again. Records of a
    partition not ready yet are put back (the partition is sought to the first of them).
    """

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self._ready: set[Any] = set()
        self._readied = asyncio.Event()
        self._failed: Exception | None = None

    def ready(self, partitions: Iterable[Any]) -> None:
        self._ready.update(partitions)
        self._readied.set()

    def unready(self, partitions: Iterable[Any]) -> None:
        self._ready.difference_update(partitions)

    def fail(self, exc: Exception) -> None:
        """The listener could not make its partitions ready: the next `getmany` raises."""
        self._failed = exc
        self._readied.set()

    async def getmany(self, *, timeout_ms: int) -> Mapping[Any, Sequence[ConsumedRecord]]:
        if self._failed is not None:
            raise self._failed
        batches: Mapping[Any, Sequence[ConsumedRecord]] = await self.consumer.getmany(
            timeout_ms=timeout_ms
        )
        held = [tp for tp in batches if tp not in self._ready]
        if not held:
            return batches
        assigned = self.consumer.assignment()
        for tp in held:
            if tp in assigned:
                self.consumer.seek(tp, batches[tp][0].offset)  # fetched again once ready
        ready = {tp: records for tp, records in batches.items() if tp in self._ready}
        if not ready:  # nothing to hand out until the listener is done: do not spin
            self._readied.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_ms / 1000):
                    await self._readied.wait()
        return ready

    async def commit(self, offsets: Mapping[Any, int]) -> None:
        """A plain offset commit, outside any transaction: only bench/hop_latency.py's
        at-least-once baseline uses it (the stage loop commits in its transactions)."""
        try:
            await self.consumer.commit(dict(offsets))
        except KafkaError as exc:  # CommitFailedError (a rebalance) among them
            raise DependencyUnavailable(f"offset commit failed: {exc!r}") from exc

    async def committed(self, partitions: Iterable[Any]) -> dict[Any, tuple[int, str]]:
        """The group's committed position and metadata of each partition that has one.
        aiokafka's public `committed()` drops the metadata, which holds the records a
        transaction committed beyond the position (gateway_runtime/offsets.py)."""
        found = await self.consumer._coordinator.fetch_committed_offsets(list(partitions))
        return {tp: (om.offset, om.metadata or "") for tp, om in found.items() if om.offset >= 0}


def make_admin(kafka: Kafka, *, client_id: str, **options: Any) -> AIOKafkaAdminClient:
    """An aiokafka admin client (topics, consumer groups); `options` are aiokafka's."""
    return AIOKafkaAdminClient(**connection(kafka).client_kwargs(), client_id=client_id, **options)


async def ensure_topics(kafka: Kafka, topics: Iterable[Topic]) -> list[str]:
    """Create the mesh's topics with their partition counts; existing ones are kept."""
    admin = make_admin(kafka, client_id="soma-provision")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(t.name, num_partitions=t.partitions, replication_factor=1)
                        for t in missing
                    ]
                )
            except TopicAlreadyExistsError:
                pass  # another process provisioned concurrently
        for topic in missing:
            log.info("created topic", extra={"fields": {"topic": topic.name}})
        return [t.name for t in missing]
    finally:
        await admin.close()
