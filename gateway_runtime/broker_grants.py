"""Who may do what on the broker: the mesh's services and the automations, least privilege.

Each principal gets only what it needs, derived from one table (`mesh_acls`):
- a mesh service (kafka_credentials.MESH_PRINCIPALS): READ on its stage's input topic
  (schemas/stages.py; the policy stage also every automation's inbound topic, by prefix)
  and on its stage's consumer group; WRITE on what its stage produces (`PRODUCES`), the
  dead-letter topic included where it runs the stage loop. The ingress: WRITE on the
  requests topic and on the inputs of the stages that dead-letter (a replay goes back to
  the topic its dead letter came from; one from an automation's inbound topic goes to the
  requests topic, so no service of the mesh writes an inbound topic), DESCRIBE on every
  topic and stage group (/v1/health: group states, committed and end offsets), no READ.
  READ and WRITE imply DESCRIBE, and since KIP-679 WRITE on a topic lets an idempotent
  producer start: no cluster ACL is needed. A service that runs the stage loop also
  holds WRITE (so DESCRIBE) on the transactional ids `<namespace>.<stage>.` by prefix:
  each of its processes commits its outputs and offsets in transactions under
  `<namespace>.<stage>.<instance>` (gateway_runtime/stage.py). The ingress and its outbox
  relay produce without transactions (idempotent only: nothing they send is tied to a
  consumed offset). `provision_mesh` makes the principals (a
  random password each, kept in its credentials file) and exactly these ACLs per
  namespace, removing whatever else a mesh principal holds there (an older install's
  broad `<namespace>.` grants), so a test mesh in a namespace of its own gets the same;
- an automation's principal: write and describe its one inbound topic, nothing else
  (`grant_automation`, undone exactly by `withdraw_automation` when its `add` fails).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from gateway_runtime import kafka_credentials as creds
from gateway_runtime.broker_admin import BrokerAdmin, BrokerAdminError, matching, user
from schemas.stages import STAGES
from schemas.topics import Topics, inbound_topic

log = logging.getLogger(__name__)
_LITERAL, _PREFIXED = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
_READ, _WRITE, _DESCRIBE = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE

# ---- the table: what each service of the mesh produces (`Topics` fields) ----------------
# What it consumes is its stage's input (schemas/stages.py); these are its handler's
# outputs, plus the dead letters where the stage loop runs (gateway_runtime/stage.py).
_DEAD = "dead_letter"
_STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "policy_worker": ("authorized", _DEAD),
    "context_worker": ("contextualized", "completed", _DEAD),
    "llm_worker": ("tool_requested", "completed", _DEAD),
    "tool_dispatcher": ("contextualized", _DEAD),
    "persistence_worker": (_DEAD,),
    "deadletter_index": (),  # it indexes dead letters; it publishes nothing
}
# The ingress publishes turns, and replays a dead letter to the input it came from: the
# input of a stage that dead-letters (an automation's inbound record goes to `requested`).
_REPLAYED = [stage.input for stage in STAGES if _DEAD in _STAGE_OUTPUTS[stage.service]]
PRODUCES = {"ingress": tuple(dict.fromkeys(["requested", *_REPLAYED])), **_STAGE_OUTPUTS}
OBSERVER = "ingress"  # /v1/health: describes every stage's group and input topic


def _allow(
    kind: ResourceType, name: str, pattern: ResourcePatternType, principal: str, op: AclOperation
) -> AclBinding:
    return AclBinding(kind, name, pattern, user(principal), "*", op, AclPermissionType.ALLOW)


def _topic(
    name: str, principal: str, op: AclOperation, pattern: ResourcePatternType = _LITERAL
) -> AclBinding:
    return _allow(ResourceType.TOPIC, name, pattern, principal, op)


def _group(name: str, principal: str, op: AclOperation) -> AclBinding:
    return _allow(ResourceType.GROUP, name, _LITERAL, principal, op)


def _transactional_ids(prefix: str, principal: str) -> AclBinding:
    return _allow(ResourceType.TRANSACTIONAL_ID, prefix, _PREFIXED, principal, _WRITE)


def mesh_acls(namespace: str) -> set[AclBinding]:
    """Every ACL the mesh's services hold in `namespace`, derived from the stages and
    `PRODUCES`; nothing outside the namespace, nothing else inside it."""
    assert set(PRODUCES) == set(creds.MESH_PRINCIPALS), "a mesh service missing in PRODUCES"
    topics = Topics.for_namespace(namespace)
    inbound = inbound_topic(namespace, "")  # the prefix of every automation's topic
    acls: set[AclBinding] = set()
    for stage in STAGES:
        source = stage.input_topic(topics).name
        acls |= {
            _topic(source, stage.service, _READ),
            _group(stage.group(namespace), stage.service, _READ),
        }
        if source == topics.requested.name:  # the policy stage: automations' turns too
            acls.add(_topic(inbound, stage.service, _READ, _PREFIXED))
        acls.add(_group(stage.group(namespace), OBSERVER, _DESCRIBE))
        if _DEAD in _STAGE_OUTPUTS[stage.service]:  # the stage loop: transactions
            acls.add(_transactional_ids(f"{stage.group(namespace)}.", stage.service))
    for service, outputs in PRODUCES.items():
        acls |= {_topic(getattr(topics, output).name, service, _WRITE) for output in outputs}
    written = {getattr(topics, output).name for output in PRODUCES[OBSERVER]}
    acls |= {_topic(t.name, OBSERVER, _DESCRIBE) for t in topics.all() if t.name not in written}
    acls.add(_topic(inbound, OBSERVER, _DESCRIBE, _PREFIXED))  # the policy group's lag
    return acls


def automation_acls(principal: str, topic: str) -> list[AclBinding]:
    """An automation's whole grant: write (and describe, for metadata) its own topic."""
    return [_topic(topic, principal, op) for op in (_WRITE, _DESCRIBE)]


def _in_namespace(binding: AclBinding, namespace: str) -> bool:
    """A topic, group or transactional id of the namespace (names are `<namespace>.…`; a
    namespace has no dot, so no other namespace's name starts alike)."""
    kinds = (ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID)
    return binding.restype in kinds and str(binding.name).startswith(f"{namespace}.")


@dataclass(frozen=True, slots=True)
class MeshGrant:
    principals_created: list[str]
    acls_created: int
    acls_removed: int


async def provision_mesh(admin: BrokerAdmin, credentials_dir: Path, namespace: str) -> MeshGrant:
    """Each mesh service's principal (its credentials file, and the broker's credential
    for it) and its ACLs in `namespace`, exactly `mesh_acls`: what is missing is granted
    first, then any other ACL a mesh principal holds in the namespace is removed, so a
    running service never loses what it keeps. A file that exists keeps its password; a
    broker formatted anew gets the password of the file."""
    mechanism = admin.kafka.sasl_mechanism
    with creds.locked(credentials_dir):
        known = await admin.scram_users()
        missing: dict[str, str] = {}
        for principal in creds.MESH_PRINCIPALS:
            found = creds.find(credentials_dir, principal)
            if found is None:
                found = creds.Credentials(principal, creds.new_password(), mechanism)
                creds.write(creds.credentials_file(credentials_dir, principal), found)
            if principal not in known:
                missing[principal] = found.password
        await admin.set_passwords(missing, mechanism)
    wanted = mesh_acls(namespace)
    created = await admin.grant(wanted)
    mesh = {user(p) for p in creds.MESH_PRINCIPALS}
    stale = {
        acl
        for acl in await admin.acls()
        if acl.principal in mesh and _in_namespace(acl, namespace) and acl not in wanted
    }
    removed = await admin.revoke(stale)
    return MeshGrant(sorted(missing), len(created), removed)


async def drop_namespace(admin: BrokerAdmin, namespace: str) -> int:
    """Every ACL on the namespace's topics and groups (a test mesh's, when it closes)."""
    return await admin.revoke(a for a in await admin.acls() if _in_namespace(a, namespace))


@dataclass(slots=True)
class AutomationGrant:
    """What `grant_automation` made on the broker, so that exactly that can be undone."""

    principal: str
    topic: str
    topic_created: bool = False
    user_created: bool = False
    acls_created: list[AclBinding] = field(default_factory=list)


async def grant_automation(
    admin: BrokerAdmin, principal: str, topic: str, partitions: int
) -> tuple[AutomationGrant, creds.Credentials]:
    """The automation's topic, a new SCRAM credential and its ACLs; its credentials.
    If a step fails, what this call made is removed again before the error goes on; what
    was there before (a topic or user an interrupted run left) is left."""
    grant = AutomationGrant(principal, topic)
    mechanism = admin.kafka.sasl_mechanism
    password = creds.new_password()
    try:
        grant.topic_created = await admin.create_topic(topic, partitions)
        grant.user_created = principal not in await admin.scram_users()
        await admin.set_passwords({principal: password}, mechanism)
        grant.acls_created = await admin.grant(automation_acls(principal, topic))
    except BaseException:
        await withdraw_automation(admin, grant)
        raise
    kafka = admin.kafka
    return grant, creds.Credentials(
        principal, password, mechanism, kafka.security_protocol, kafka.bootstrap_servers, topic
    )


async def withdraw_automation(admin: BrokerAdmin, grant: AutomationGrant) -> None:
    """Undo what `grant` made (its ACLs, its user, its topic), and nothing else. A failure
    here is logged, not raised: the caller is already handling the error that led here."""
    try:
        await admin.revoke(grant.acls_created)
        if grant.user_created:
            await admin.delete_user(grant.principal, admin.kafka.sasl_mechanism)
        if grant.topic_created:
            await admin.delete_topic(grant.topic)
    except BrokerAdminError as exc:
        log.error(
            "could not undo the broker's side of %s (%r): remove its ACLs, SCRAM user and"
            " topic %s by hand",
            grant.principal,
            exc,
            grant.topic,
        )


async def revoke_principal(admin: BrokerAdmin, principal: str) -> tuple[bool, int]:
    """Remove the principal's ACLs first (a connection it holds is refused from its next
    request), then its credential (no new login); (had a credential, ACLs removed)."""
    acls = await admin.remove_acls([matching(principal=user(principal))])
    had_credential = await admin.delete_user(principal, admin.kafka.sasl_mechanism)
    return had_credential, acls
