"""`soma-gateway automation add|list|revoke`: Kafka credentials for an automation.

An automation publishes turns straight to Kafka, as a SCRAM principal of its own
(`automation-<name>`) that the broker lets write one topic, `<namespace>.inbound.<name>`,
and nothing else; the registry in Postgres (adapters/automations.py) tells the policy
stage which tenant that topic's turns belong to. Unlike `dlq`, this works on the
broker's side, not through the REST API: it logs in as the broker's admin (the
credentials `make up` keeps in KAFKA_CREDENTIALS_DIR) and writes the registry, so it
runs where an operator holds both. Exit codes as `dlq`'s: 0 done, 1 failed, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import ValidationError

from adapters.automations import AutomationExists, AutomationRegistry
from adapters.tenants import TenantDirectory
from gateway_runtime import kafka_credentials as creds
from gateway_runtime.broker_admin import BrokerAdmin, BrokerAdminError
from gateway_runtime.broker_grants import (
    AutomationGrant,
    grant_automation,
    revoke_principal,
    withdraw_automation,
)
from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.kafka import KafkaConnection, KafkaCredentialsMissing
from gateway_runtime.ports import Automation
from gateway_runtime.postgres import create_pool
from gateway_runtime.settings import AutomationCliSettings
from schemas.topics import INBOUND_PARTITIONS, inbound_topic
from soma_cli.commands import FAILED, OK, USAGE, Console

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
EPILOG = """examples:
  soma-gateway automation add nightly-digest --tenant acme --out digest.json
  soma-gateway automation list
  soma-gateway automation revoke nightly-digest
"""


class Refused(Exception):
    """What the operator asked for cannot be done; the message says why (exit code 1)."""


def automation_name(text: str) -> str:
    if not NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: 1-63 lowercase letters, digits and '-', starting with a letter or digit"
        )
    return text


def add_commands(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    commands = parser.add_subparsers(dest="command", required=True, metavar="ACTION")
    add = commands.add_parser(
        "add", help="credentials that may write the automation's own inbound topic only"
    )
    add.add_argument("name", type=automation_name, metavar="NAME")
    add.add_argument("--tenant", required=True, help="a tenant of the tenants file")
    add.add_argument(
        "--out", type=Path, help="write the credentials file here (mode 0600), not to stdout"
    )
    listing = commands.add_parser("list", help="every automation, revoked ones too")
    listing.add_argument("--json", action="store_true", help="a JSON array, for jq")
    revoke = commands.add_parser("revoke", help="remove its broker access and mark it revoked")
    revoke.add_argument("name", type=automation_name, metavar="NAME")


def main(args: argparse.Namespace, console: Console) -> int:
    try:
        settings = AutomationCliSettings()
    except ValidationError as exc:
        console.note(f"error: invalid settings: {exc}")
        return FAILED
    try:
        if args.command == "add":
            return _add(settings, args.name, args.tenant, args.out, console)
        if args.command == "list":
            return asyncio.run(list_automations(settings, args.json, console))
        return asyncio.run(revoke(settings, args.name, console))
    except Refused as exc:
        console.note(f"error: {exc}")
        return FAILED
    except (BrokerAdminError, KafkaCredentialsMissing, DependencyUnavailable) as exc:
        console.note(f"error: {exc}")
        return FAILED


def _add(
    settings: AutomationCliSettings, name: str, tenant: str, out: Path | None, console: Console
) -> int:
    tenants = TenantDirectory(settings.tenants_file)
    if not tenants.known(tenant):
        console.note(
            f"error: unknown tenant {tenant!r} (in {settings.tenants_file}:"
            f" {', '.join(tenants.names()) or 'none'})"
        )
        return USAGE
    if out is not None:
        _reserve(out)
    try:
        credentials = asyncio.run(add(settings, name, tenant))
    except BaseException:
        if out is not None:
            out.unlink(missing_ok=True)
        raise
    if out is None:
        console.say(credentials.to_json().rstrip())
    else:
        creds.write(out, credentials, replace=True)
        console.say(f"credentials of {credentials.username} written to {out} (mode 0600)")
    console.note(f"automation {name} of tenant {tenant} may write {credentials.topic} alone")
    return OK


def _broker(settings: AutomationCliSettings) -> BrokerAdmin:
    kafka = KafkaConnection.from_settings(settings, principal=creds.ADMIN)
    if not kafka.sasl:
        raise Refused(
            f"the broker at {kafka.bootstrap_servers} is reached without credentials, so it"
            f" cannot tell an automation from anyone else: no admin credentials in"
            f" {settings.kafka_credentials_path} (make up makes them)"
        )
    return BrokerAdmin(kafka)


@contextlib.asynccontextmanager
async def _registry(settings: AutomationCliSettings) -> AsyncIterator[AutomationRegistry]:
    pool = await create_pool(settings, min_size=1, max_size=1)
    try:
        yield AutomationRegistry(pool)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _registering(settings: AutomationCliSettings) -> AsyncIterator[AutomationRegistry]:
    """The registry inside one transaction, committed when the block ends without error."""
    pool = await create_pool(settings, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn, conn.transaction():
            # The registry only runs queries, which a connection runs as a pool does.
            yield AutomationRegistry(conn)
    finally:
        await pool.close()


def _reserve(out: Path) -> None:
    """Create the output file (empty, 0600) before anything else: a password that could
    not be written anywhere would be lost, and the name with it."""
    try:
        os.close(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise Refused(f"{out} exists; choose another --out (nothing was changed)") from None
    except OSError as exc:
        raise Refused(f"cannot write {out}: {exc.strerror} (nothing was changed)") from None


async def add(settings: AutomationCliSettings, name: str, tenant: str) -> creds.Credentials:
    """The registry's row first, then the broker's side (topic, principal, ACLs), in one
    transaction that commits last: the row's unique name decides between two concurrent
    adds of one name (the second waits on the first's row, then finds the name taken and
    changes nothing); an add that fails undoes the broker's side it made, and the row
    goes with the transaction. An automation the registry does not know has no broker
    access either."""
    broker = _broker(settings)
    topic = inbound_topic(settings.kafka_namespace, name)
    grant: AutomationGrant | None = None
    try:
        async with _registering(settings) as registry:
            try:
                await registry.add(name, tenant, topic)
            except AutomationExists:
                existing = await registry.get(name)
                state = "revoked" if existing and existing.revoked_at else "active"
                raise Refused(
                    f"automation {name!r} exists ({state}); a name is never reused"
                    " (nothing was changed)"
                ) from None
            principal = creds.automation_principal(name)
            grant, credentials = await grant_automation(
                broker, principal, topic, INBOUND_PARTITIONS
            )
    except BaseException:
        if grant is not None:  # granted, but the row was not committed
            await withdraw_automation(broker, grant)
        raise
    return dataclasses.replace(credentials, tenant=tenant)


def _row(automation: Automation) -> dict[str, str | None]:
    return {
        "name": automation.name,
        "tenant": automation.tenant,
        "topic": automation.topic,
        "principal": creds.automation_principal(automation.name),
        "created_at": automation.created_at.isoformat(),
        "revoked_at": automation.revoked_at.isoformat() if automation.revoked_at else None,
    }


def _cell(value: str | None, column: str) -> str:
    if value is None:
        return "-"
    return value[:19].replace("T", " ") if column.endswith("_at") else value


async def list_automations(settings: AutomationCliSettings, as_json: bool, console: Console) -> int:
    async with _registry(settings) as registry:
        rows = [_row(a) for a in await registry.list()]
    if as_json:
        console.say(json.dumps(rows, indent=2))
        return OK
    if not rows:
        console.say("no automations (soma-gateway automation add NAME --tenant TENANT)")
        return OK
    columns = ("name", "tenant", "topic", "created_at", "revoked_at")
    cells = [[c.upper() for c in columns]]
    cells += [[_cell(row[c], c) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        console.say("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return OK


async def revoke(settings: AutomationCliSettings, name: str, console: Console) -> int:
    broker = _broker(settings)
    principal = creds.automation_principal(name)
    async with _registry(settings) as registry:
        automation = await registry.get(name)
        if automation is None:
            raise Refused(f"no automation {name!r} (soma-gateway automation list)")
        # The broker first: once this returns, its credentials open nothing.
        had_credential, acls = await revoke_principal(broker, principal)
        newly = await registry.revoke(name)
    console.say(
        f"revoked {name}: {acls} ACLs removed, SCRAM credential"
        f" {'deleted' if had_credential else 'already gone'}"
        + ("" if newly else "; it was marked revoked already")
    )
    return OK
