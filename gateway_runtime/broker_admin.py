"""The broker's admin requests: SCRAM users, ACLs and topics, through the admin's login.

The broker refuses anonymous clients and authorizes every request by ACL (KRaft's
StandardAuthorizer, nothing allowed without an ACL; deploy/kafka/server.properties.tmpl).
What is granted to whom is gateway_runtime/broker_grants.py's; this is the client it uses.
aiokafka has no admin call for SCRAM users or ACLs, so this uses confluent-kafka's
AdminClient (librdkafka), from the provisioning step and the CLI. Neither client has a
call for client quotas (AlterClientQuotas), so no quota is set from here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from gateway_runtime.kafka import KafkaConnection

T = TypeVar("T")
SCRAM_ITERATIONS = 4096  # the broker's minimum for SCRAM-SHA-512
_MECHANISMS = {
    "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512,
    "SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256,
}


def user(principal: str) -> str:
    """The principal as ACLs name it."""
    return f"User:{principal}"


def matching(
    kind: ResourceType = ResourceType.ANY,
    name: str | None = None,
    pattern: ResourcePatternType = ResourcePatternType.ANY,
    principal: str | None = None,
) -> AclBindingFilter:
    """The ACLs that match; None matches any (confluent-kafka's stubs say str only)."""
    return AclBindingFilter(
        kind,
        name,  # type: ignore[arg-type]
        pattern,
        principal,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        AclOperation.ANY,
        AclPermissionType.ANY,
    )


_ANY_ACL = matching()


def _exactly(binding: AclBinding) -> AclBindingFilter:
    """The filter that matches `binding` and nothing else."""
    return AclBindingFilter(
        binding.restype,
        binding.name,
        binding.resource_pattern_type,
        binding.principal,
        binding.host,
        binding.operation,
        binding.permission_type,
    )


class BrokerAdminError(RuntimeError):
    """The broker refused or did not answer an admin request."""


class BrokerAdmin:
    """The admin requests this project makes, each awaited without blocking the loop."""

    def __init__(self, kafka: KafkaConnection, *, timeout_s: float = 10.0) -> None:
        if not kafka.sasl:
            raise BrokerAdminError("SCRAM users and ACLs need an authenticated admin login")
        config: dict[str, Any] = {
            **kafka.librdkafka_config(),
            "socket.timeout.ms": int(timeout_s * 1000),
            "logger": logging.getLogger("confluent_kafka"),
        }
        self._admin = AdminClient(config)
        self._timeout = timeout_s
        self.kafka = kafka

    async def _result(self, future: Future[T], what: str) -> T:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self._timeout + 1)
        except KafkaException as exc:
            raise BrokerAdminError(f"{what}: {exc.args[0]}") from exc
        except TimeoutError as exc:
            raise BrokerAdminError(f"{what}: no answer in {self._timeout:g}s") from exc

    async def _done(self, future: Future[Any], what: str, *, unless: int) -> bool:
        """True when the broker carried the request out, False when it answered `unless`
        (nothing to do: the topic exists, the credential is gone)."""
        try:
            await self._result(future, what)
        except BrokerAdminError as exc:
            cause = exc.__cause__
            error = cause.args[0] if isinstance(cause, KafkaException) else None
            if isinstance(error, KafkaError) and error.code() == unless:
                return False
            raise
        return True

    async def scram_users(self) -> set[str]:
        """Every principal that has a SCRAM credential."""
        future = self._admin.describe_user_scram_credentials(request_timeout=self._timeout)
        assert isinstance(future, Future)  # one future when no users are named
        return set(await self._result(future, "describe SCRAM users"))

    async def set_passwords(self, passwords: Mapping[str, str], mechanism: str) -> None:
        """Create or replace the SCRAM credential of each principal."""
        if not passwords:
            return
        info = ScramCredentialInfo(_MECHANISMS[mechanism], SCRAM_ITERATIONS)
        alterations: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(user, info, password.encode())
            for user, password in passwords.items()
        ]
        futures = self._admin.alter_user_scram_credentials(
            alterations, request_timeout=self._timeout
        )
        for user, future in futures.items():
            await self._result(future, f"set the SCRAM credential of {user}")
        await self._until(lambda: self._has_users(passwords), "SCRAM credentials")

    async def delete_user(self, user: str, mechanism: str) -> bool:
        """Remove the principal's SCRAM credential; False when it had none."""
        deletion: list[UserScramCredentialAlteration] = [
            UserScramCredentialDeletion(user, _MECHANISMS[mechanism])
        ]
        [future] = self._admin.alter_user_scram_credentials(
            deletion, request_timeout=self._timeout
        ).values()
        what = f"delete the SCRAM credential of {user}"
        if not await self._done(future, what, unless=KafkaError.RESOURCE_NOT_FOUND):
            return False
        await self._until(lambda: self._lacks_user(user), "a deleted SCRAM credential")
        return True

    async def acls(self) -> set[AclBinding]:
        future = self._admin.describe_acls(_ANY_ACL, request_timeout=self._timeout)
        return set(await self._result(future, "describe ACLs"))

    async def grant(self, bindings: Iterable[AclBinding]) -> list[AclBinding]:
        """Create the ACLs the broker does not have yet; those it created."""
        missing = list(set(bindings) - await self.acls())
        if missing:
            futures = self._admin.create_acls(missing, request_timeout=self._timeout)
            for binding, future in futures.items():
                await self._result(future, f"create ACL {binding}")
            await self._until(lambda: self._has_acls(missing), "ACLs")
        return missing

    async def _has_users(self, users: Iterable[str]) -> bool:
        return set(users) <= await self.scram_users()

    async def _has_acls(self, bindings: Iterable[AclBinding]) -> bool:
        return set(bindings) <= await self.acls()

    async def _lacks_user(self, user: str) -> bool:
        return user not in await self.scram_users()

    async def _lacks_acls(self, bindings: Iterable[AclBinding]) -> bool:
        return not set(bindings) & await self.acls()

    async def _until(self, visible: Callable[[], Awaitable[bool]], what: str) -> None:
        """Until the broker shows what it acknowledged (it answers before its own metadata
        cache has the change), so a service started next is authorized at once."""
        deadline = time.monotonic() + self._timeout
        while not await visible():
            if time.monotonic() > deadline:
                raise BrokerAdminError(f"{what} acknowledged but not visible")
            await asyncio.sleep(0.02)

    async def remove_acls(self, filters: list[AclBindingFilter]) -> int:
        """Delete every ACL that matches one of `filters`; how many were deleted."""
        if not filters:
            return 0
        deleted: list[AclBinding] = []
        for acl_filter, future in self._admin.delete_acls(
            filters, request_timeout=self._timeout
        ).items():
            deleted += await self._result(future, f"delete ACLs {acl_filter}")
        await self._until(lambda: self._lacks_acls(deleted), "deleted ACLs")
        return len(deleted)

    async def revoke(self, bindings: Iterable[AclBinding]) -> int:
        """Delete exactly these ACLs; how many there were."""
        return await self.remove_acls([_exactly(b) for b in bindings])

    async def create_topic(self, name: str, partitions: int) -> bool:
        """Create the topic; False when it exists already."""
        [future] = self._admin.create_topics(
            [NewTopic(name, partitions, 1)], request_timeout=self._timeout
        ).values()
        what = f"create topic {name}"
        return await self._done(future, what, unless=KafkaError.TOPIC_ALREADY_EXISTS)

    async def delete_topic(self, name: str) -> bool:
        """Delete the topic; False when there is none."""
        [future] = self._admin.delete_topics([name], request_timeout=self._timeout).values()
        what = f"delete topic {name}"
        return await self._done(future, what, unless=KafkaError.UNKNOWN_TOPIC_OR_PART)
