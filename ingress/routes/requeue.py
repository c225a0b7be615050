"""The requeue API: list, show, replay and discard dead letters (docs/operations.md).

Operators (`operator` scope) see every tenant's dead letters; a tenant admin (`admin`)
sees and acts on its own tenant's only, and another tenant's entry is answered as if it
did not exist. A replay sends the original record (key, value, headers) back to the
topic it failed on, with `replay-of`, `replay-count` and `replay-source` headers: the
row moves from `pending` to `replayed` in one conditional update, and the record is
queued in the ingress's outbox in the same transaction, so resolving twice (or two
operators at once) replays once, and a 202 is never lost. A discard keeps the row, as
`discarded`, for audit.

What a dead letter says of its turn (its prompt: the original record, and the error
message, which may quote it) is shown only to an operator of the dead letter's tenant
(`operator` scope, same tenant; a dead letter without a tenant: any operator). Everyone
else who may see the dead letter (a tenant admin, an operator of another tenant) sees
its metadata: where and how it failed, its status, with `error_message` and `record`
null. `GET /v1/requeue/{id}` carries the record (`{"event": ...}` decoded, or
`{"raw": ...}` for a value that is no event of the mesh); lists never do.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, BeforeValidator

from adapters.dead_letters import DeadLetter, Filters, Status, StoredRecord
from gateway_runtime.delivery import REPLAY_COUNT, REPLAY_HEADERS, REPLAY_OF, REPLAY_SOURCE
from gateway_runtime.errors import DependencyUnavailable
from gateway_runtime.postgres import PG_ERRORS
from ingress.auth.errors import Denied, forbidden, not_found
from ingress.auth.principal import Principal
from ingress.deps import PrincipalDep, ResourcesDep
from ingress.openapi_responses import errors
from ingress.resources import Resources
from schemas.codec import DecodeError, EncodedEvent, header
from schemas.events import request_of, to_avro
from schemas.topics import Topics

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/requeue", tags=["requeue"])
IdPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="the dead letter's id")]


def _iso_only(value: object) -> object:
    """A date-time as the document says (RFC 3339); pydantic would also take a number
    as seconds since 1970, which no caller of a `date-time` means."""
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("a date-time, e.g. 2026-01-31T12:00:00Z, not a number")
    return value


DateTime = Annotated[datetime, BeforeValidator(_iso_only)]


class DeadLetterOut(BaseModel):
    id: str
    session_id: str | None
    event_id: str | None
    tenant: str | None
    stage: str
    source_topic: str
    source_partition: int
    source_offset: int
    error_type: str
    error_message: str | None  # null unless the caller is an operator of its tenant
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    status: Status
    replays: int
    replay_of: str | None
    replayed_at: datetime | None
    replayed_by: str | None
    discarded_at: datetime | None
    discarded_by: str | None
    indexed_at: datetime
    # GET /v1/requeue/{id}, an operator of its tenant: the original record
    record: dict[str, Any] | None = None

    @classmethod
    def of(cls, letter: DeadLetter, principal: Principal) -> DeadLetterOut:
        fields = {f: getattr(letter, f) for f in cls.model_fields if f != "record"}
        fields["id"] = str(letter.id)
        fields["replay_of"] = str(letter.replay_of) if letter.replay_of else None
        if not may_read_content(principal, letter):
            fields["error_message"] = None
        return cls(**fields)


def may_read_content(principal: Principal, letter: DeadLetter) -> bool:
    """The turn's own words (record, error message): an operator of the letter's tenant."""
    return principal.has("operator") and letter.tenant in (None, principal.tenant)


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    next_cursor: str | None


DENIALS = errors(
    403,
    503,
    s403="the caller lacks the operator (or admin) scope",
    s503="the index (Postgres) or Kafka cannot be reached now; see Retry-After",
)
ONE = {**DENIALS, **errors(404, s404="no such dead letter that the caller may see")}
CONFLICT = "replayed or discarded already (`already_replayed`, `discarded`)"


async def operator_or_admin(principal: PrincipalDep) -> str | None:
    """The tenant the caller is confined to; None for an operator (every tenant)."""
    if principal.has("operator"):
        return None
    if principal.has("admin"):
        return principal.tenant
    raise forbidden("insufficient_scope", "dead letters need the 'operator' or 'admin' scope")


TenantScope = Annotated[str | None, Depends(operator_or_admin)]


async def _visible(res: Resources, letter_id: int, scope: str | None) -> DeadLetter:
    letter = await res.dead_letters.get(letter_id)
    if letter is None or (scope is not None and letter.tenant != scope):
        raise not_found("dead_letter_not_found", f"no dead letter {letter_id} that you may see")
    return letter


async def _pending(res: Resources, letter_id: int, scope: str | None) -> DeadLetter:
    """The dead letter, if the caller may see it and it still waits for a decision."""
    letter = await _visible(res, letter_id, scope)
    if letter.status != "pending":
        raise _not_pending(letter)
    return letter


def _not_pending(letter: DeadLetter) -> Denied:
    if letter.status == "replayed":
        who = f" by {letter.replayed_by}" if letter.replayed_by else ""
        return Denied(409, "already_replayed", f"dead letter {letter.id} was replayed{who}")
    return Denied(409, "discarded", f"dead letter {letter.id} was discarded")


@router.get("", response_model=DeadLetterPage, responses=DENIALS)
async def list_dead_letters(
    res: ResourcesDep,
    scope: TenantScope,
    principal: PrincipalDep,
    stage: Annotated[str | None, Query(max_length=64)] = None,
    error_type: Annotated[str | None, Query(max_length=128)] = None,
    tenant: Annotated[str | None, Query(max_length=64)] = None,
    session_id: Annotated[str | None, Query(max_length=128)] = None,
    status: Status | None = None,
    since: Annotated[DateTime | None, Query(description="last failure at or after")] = None,
    until: Annotated[DateTime | None, Query(description="last failure before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of the page before")
    ] = None,
) -> DeadLetterPage:
    """Dead letters, oldest first, filtered; follow `next_cursor` for the next page."""
    if scope is not None and tenant not in (None, scope):
        raise forbidden("insufficient_scope", "another tenant's dead letters need 'operator'")
    filters = Filters(stage, error_type, scope or tenant, session_id, status, since, until)
    items = await res.dead_letters.list(filters, after_id=int(cursor or 0), limit=limit)
    next_cursor = str(items[-1].id) if len(items) == limit else None
    return DeadLetterPage(
        items=[DeadLetterOut.of(i, principal) for i in items], next_cursor=next_cursor
    )


@router.get("/{letter_id}", response_model=DeadLetterOut, responses=ONE)
async def show_dead_letter(
    letter_id: IdPath, res: ResourcesDep, scope: TenantScope, principal: PrincipalDep
) -> DeadLetterOut:
    """One dead letter; with its original record for an operator of its tenant."""
    letter = await _visible(res, letter_id, scope)
    shown = DeadLetterOut.of(letter, principal)
    if may_read_content(principal, letter) and not letter.value_omitted:
        shown.record = _readable(res, await res.dead_letters.record(letter_id))
    return shown


def _readable(res: Resources, stored: StoredRecord) -> dict[str, Any]:
    """The record as JSON: the mesh event it holds, or its bytes as text."""
    try:
        event = res.codec.decode(stored.value, stored.headers)
    except DecodeError:
        return {"raw": stored.value.decode("utf-8", "replace")}
    return {"type": type(event).__name__, "event": to_avro(event)}


async def _refuse_revoked_key(res: Resources, record: EncodedEvent) -> None:
    """A turn of a revoked key is not run again, whichever stage it failed at."""
    try:
        principal = request_of(res.codec.decode(record.value, record.headers)).principal
    except DecodeError:
        return  # not a mesh event: the stage will dead-letter it again, harmlessly
    if principal and principal.startswith("key:"):
        key = await res.auth.keys.get(principal.removeprefix("key:"))
        if key is None or key.revoked:
            raise Denied(409, "key_revoked", f"the turn's key ({principal}) is revoked")


@router.post(
    "/{letter_id}/resolve",
    status_code=202,
    response_model=DeadLetterOut,
    responses={
        **ONE,
        **errors(409, s409=CONFLICT[:-1] + ", or unreplayable: `value_omitted`, `key_revoked`)"),
    },
)
async def resolve_dead_letter(
    letter_id: IdPath, res: ResourcesDep, scope: TenantScope, principal: PrincipalDep
) -> DeadLetterOut:
    """Replay: the original record goes back to its source topic, once; a record from an
    automation's inbound topic goes to the requests topic instead (which only the mesh
    writes), naming its inbound coordinates in `replay-source`, so the policy stage knows
    it is a replay the gateway made and whose turn it is."""
    letter = await _pending(res, letter_id, scope)
    if letter.value_omitted:
        raise Denied(
            409,
            "value_omitted",
            "the broker refused the dead letter's value; it is readable at "
            f"{letter.source_topic}/{letter.source_partition}@{letter.source_offset}",
        )
    stored = await res.dead_letters.record(letter_id)
    record = EncodedEvent(stored.key, stored.value, stored.headers)
    await _refuse_revoked_key(res, record)
    count = int(header(record.headers, REPLAY_COUNT) or "0") + 1
    source = f"{letter.source_topic}/{letter.source_partition}/{letter.source_offset}"
    headers = [h for h in record.headers if h[0] not in REPLAY_HEADERS]
    headers += [
        (REPLAY_OF, str(letter_id).encode()),
        (REPLAY_COUNT, str(count).encode()),
        (REPLAY_SOURCE, source.encode()),
    ]
    replay = EncodedEvent(record.key, record.value, headers)
    # The row turns `replayed` and the record is queued in the outbox in one transaction:
    # once answered, the replay is durable (the relay sends it), and it is queued once.
    try:
        async with res.pool.acquire() as conn, conn.transaction():
            marked = await res.dead_letters.mark(
                letter_id, "replayed", principal.subject, conn=conn
            )
            if marked is not None:
                await res.outbox.put(conn, _replay_topic(res.topics, stored.topic), replay)
    except PG_ERRORS as exc:
        raise DependencyUnavailable(f"the replay could not be queued: {exc!r}") from exc
    if marked is None:  # resolved or discarded meanwhile, by someone else
        raise _not_pending(await _visible(res, letter_id, scope))
    res.outbox.kick()
    log.info(
        "dead letter replayed",
        extra={"fields": {"dead_letter": letter_id, "by": principal.subject, "count": count}},
    )
    return DeadLetterOut.of(marked, principal)


def _replay_topic(topics: Topics, source: str) -> str:
    return topics.requested.name if topics.is_inbound(source) else source


@router.delete(
    "/{letter_id}",
    response_model=DeadLetterOut,
    responses={**ONE, **errors(409, s409=CONFLICT)},
)
async def discard_dead_letter(
    letter_id: IdPath, res: ResourcesDep, scope: TenantScope, principal: PrincipalDep
) -> DeadLetterOut:
    """Discard: never replayed; the row stays (status `discarded`) for audit."""
    await _pending(res, letter_id, scope)
    marked = await res.dead_letters.mark(letter_id, "discarded", principal.subject)
    if marked is None:
        raise _not_pending(await _visible(res, letter_id, scope))
    return DeadLetterOut.of(marked, principal)
