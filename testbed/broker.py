"""A sandbox's side of the broker: the admin's login, and what its namespace leaves there.

On the shared broker a sandbox is a namespace (its topics, consumer groups and the ACLs
its mesh's provisioning granted), reached with the shared broker's admin credentials; a
sandbox with a broker of its own keeps that broker's credentials in its own directory
(deploy/infra.sh makes the admin's, the mesh's provisioning the services').
"""

from __future__ import annotations

from pathlib import Path

from gateway_runtime.broker_admin import BrokerAdmin
from gateway_runtime.broker_grants import drop_namespace
from gateway_runtime.kafka import KafkaConnection, make_admin
from gateway_runtime.kafka_credentials import ADMIN
from gateway_runtime.settings import CommonSettings


def admin_login(base: CommonSettings, bootstrap_servers: str, credentials: Path) -> KafkaConnection:
    """The admin's login to a broker whose credentials are in `credentials`."""
    return KafkaConnection.for_principal(
        bootstrap_servers,
        credentials,
        ADMIN,
        security_protocol=base.kafka_security_protocol,
        sasl_mechanism=base.kafka_sasl_mechanism,
    )


async def drop_namespace_of(base: CommonSettings, namespace: str) -> None:
    """The namespace's topics and ACLs on the shared broker (its processes are gone)."""
    kafka = KafkaConnection.from_settings(base, principal=ADMIN)
    admin = make_admin(kafka, client_id="sandbox-drop")
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(namespace + ".")]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()
    if kafka.sasl:  # the ACLs its mesh's provisioning (and `automation add`) created
        await drop_namespace(BrokerAdmin(kafka), namespace)
