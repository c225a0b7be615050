"""API keys: create (the secret is shown once), list (never a secret), revoke (at once).

Key management needs the `admin` scope and stays inside the caller's tenant; the
`operator` scope (the bootstrap key) may manage keys of any configured tenant. A key of
another tenant is answered as if it did not exist (404).

Revoking bites at once (ingress/revocation.py): the key is refused from the next request
on every replica, its open SSE and WebSocket streams end on every replica, and every
OpenFGA relation naming it is removed; what could not be done at once (Redis or OpenFGA
not answering) is retried in the background until it is, and the answer says so.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from adapters import openfga
from gateway_runtime.errors import AuthzUnavailable
from ingress.auth.errors import Denied, forbidden, not_found
from ingress.auth.keys import KeyRecord
from ingress.auth.principal import Principal
from ingress.auth.services import authz_unavailable
from ingress.deps import AdminPrincipal, ResourcesDep
from ingress.openapi_responses import errors
from ingress.resources import Resources

router = APIRouter(prefix="/v1/keys", tags=["keys"])

TENANT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
KeyIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]
Scope = Literal["turns", "admin", "operator"]


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    label: str = Field(min_length=1, max_length=128)
    tenant: str | None = Field(None, pattern=TENANT, description="default: the caller's")
    scopes: list[Scope] = Field(default=["turns"], min_length=1, max_length=3)


class KeyOut(BaseModel):
    key_id: str
    label: str
    tenant: str
    scopes: list[str]
    created_at: datetime
    created_by: str
    prefix: str
    last_used_at: datetime | None
    revoked: bool

    @classmethod
    def of(cls, record: KeyRecord) -> KeyOut:
        return cls.model_validate(record, from_attributes=True)


class KeyCreated(KeyOut):
    secret: str = Field(description="shown this once; only its hash is stored")


class KeyRevoked(KeyOut):
    cleanup_pending: bool = Field(
        description="the key is revoked, but Redis or OpenFGA did not answer: its cached copy "
        "or its OpenFGA relations are being replaced or removed in the background"
    )


DENIALS = errors(
    403,
    s403="the caller lacks the admin scope (another tenant's keys, or granting `operator`: "
    "the operator scope)",
)


def _target_tenant(principal: Principal, requested: str | None, res: Resources) -> str:
    tenant = requested or principal.tenant
    if tenant != principal.tenant and not principal.has("operator"):
        raise forbidden("insufficient_scope", "keys of another tenant need the 'operator' scope")
    if not res.auth.tenants.known(tenant):
        known = ", ".join(res.auth.tenants.names())
        raise Denied(400, "unknown_tenant", f"tenant {tenant!r} is not configured ({known})")
    return tenant


async def _grant(res: Resources, record: KeyRecord) -> None:
    """The key's place in OpenFGA: member of its tenant, admin too with the admin scope."""
    relations = [(openfga.user(record.subject), "member", openfga.tenant(record.tenant))]
    if "admin" in record.scopes:
        relations.append((openfga.user(record.subject), "admin", openfga.tenant(record.tenant)))
    try:
        await res.auth.authorizer.write(relations)
    except AuthzUnavailable as exc:
        raise authz_unavailable(exc) from exc


@router.post(
    "",
    status_code=201,
    response_model=KeyCreated,
    responses={**DENIALS, **errors(400, s400="a tenant that is not configured (`unknown_tenant`)")},
)
async def create_key(body: KeyIn, res: ResourcesDep, principal: AdminPrincipal) -> KeyCreated:
    """Create a key of the caller's tenant (or, for operators, of `tenant`)."""
    tenant = _target_tenant(principal, body.tenant, res)
    if "operator" in body.scopes and not principal.has("operator"):
        raise forbidden("insufficient_scope", "only an operator may grant the 'operator' scope")
    record, secret = await res.auth.keys.create(
        tenant, body.label, list(body.scopes), principal.subject
    )
    await _grant(res, record)
    return KeyCreated(**KeyOut.of(record).model_dump(), secret=secret)


@router.get("", response_model=list[KeyOut], responses=DENIALS)
async def list_keys(
    res: ResourcesDep,
    principal: AdminPrincipal,
    tenant: Annotated[str | None, Query(pattern=TENANT)] = None,
) -> list[KeyOut]:
    """Keys of the caller's tenant; operators see every tenant's unless `tenant` is given."""
    scope = tenant if principal.has("operator") else principal.tenant
    if tenant is not None and tenant != scope:
        raise forbidden("insufficient_scope", "keys of another tenant need the 'operator' scope")
    return [KeyOut.of(r) for r in await res.auth.keys.list(scope)]


@router.delete(
    "/{key_id}",
    response_model=KeyRevoked,
    responses={**DENIALS, **errors(404, s404="no key you may manage (`key_not_found`)")},
)
async def revoke_key(key_id: KeyIdPath, res: ResourcesDep, principal: AdminPrincipal) -> KeyRevoked:
    """Revoke a key: refused from the next request and its streams ended, on every replica;
    its OpenFGA relations removed (`cleanup_pending`: still being retried)."""
    record = await res.auth.keys.get(key_id)
    if record is None or (record.tenant != principal.tenant and not principal.has("operator")):
        raise not_found("key_not_found", f"no key {key_id!r} that you may manage")
    revoked = await res.revocations.revoke(key_id)
    assert revoked is not None  # keys are revoked, never deleted
    return KeyRevoked(
        **KeyOut.of(revoked.record).model_dump(), cleanup_pending=revoked.cleanup_pending
    )
