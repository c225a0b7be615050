"""Relationship-based authorization through OpenFGA (openfga-sdk): the one adapter.

The model is `deploy/openfga/model.json` (users, tenants, sessions; see docs/security.md),
loaded into the store named OPENFGA_STORE_NAME by `python -m gateway_runtime.provision`.
Processes find the store by name and use its latest model, lazily, so they start even
while OpenFGA is down.

Every decision is remembered with its time. While OpenFGA cannot be reached, a decision
younger than OPENFGA_CACHE_TTL_S is used again; past that the check fails closed with
`AuthzUnavailable`. A reachable OpenFGA is always asked: a cached "yes" never outlives a
revoked relation while the server is up.

A session's own relations (its tenant, its owner) are not stored in OpenFGA: the session's
row in Postgres holds them and every check about a session passes them as contextual
tuples (adapters/session_claims.py). `answering` says whether OpenFGA answered within
OPENFGA_CACHE_TTL_S, so that decisions taken without asking it (a session's owner) fail
closed exactly when cached ones do.

`delete_user` removes every relation of a user (a revoked key): it reads them, type by
type of the store's model, and deletes what it finds until nothing is left.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable

import aiohttp
from openfga_sdk.client import ClientConfiguration, OpenFgaClient
from openfga_sdk.client.models import ClientCheckRequest, ClientTuple, ClientWriteRequest
from openfga_sdk.client.models.write_conflict_opts import (
    ClientWriteRequestOnDuplicateWrites,
    ClientWriteRequestOnMissingDeletes,
    ConflictOptions,
)
from openfga_sdk.configuration import RetryParams
from openfga_sdk.exceptions import ApiException, FgaValidationException
from openfga_sdk.models.read_request_tuple_key import ReadRequestTupleKey

from gateway_runtime.errors import AuthzUnavailable, PermanentError
from gateway_runtime.settings import OpenFgaSettings

log = logging.getLogger(__name__)

Relation = tuple[str, str, str]  # (user, relation, object)
READ_PAGE = 100  # OpenFGA's largest read page, and at most its default tuples per write
MAX_PAGES = 1000  # a user with more relations than this is cleaned up by a later retry


def fga_id(text: str) -> str:
    """An OpenFGA object id for any text (':', '#' and spaces are not allowed in ids)."""
    return urllib.parse.quote(text, safe="._-~@|/")


def user(subject: str) -> str:
    return "user:" + fga_id(subject)


def tenant(name: str) -> str:
    return "tenant:" + fga_id(name)


def session(session_id: str) -> str:
    return "session:" + fga_id(session_id)


_UNREACHABLE = (ApiException, aiohttp.ClientError, asyncio.TimeoutError, OSError)


class FgaAuthorizer:
    """Checks and writes relations; one per process, built at start-up."""

    def __init__(self, settings: OpenFgaSettings, *, max_cached: int = 100_000) -> None:
        self._settings = settings
        self._client: OpenFgaClient | None = None
        self._ready = asyncio.Lock()
        self._decisions: OrderedDict[Relation, tuple[bool, float]] = OrderedDict()
        self._max_cached = max_cached
        self._answered_at = -math.inf  # monotonic time of OpenFGA's last answer
        self._probe: asyncio.Task[bool] | None = None

    async def close(self) -> None:
        if self._client is not None:
            await _close(self._client)

    async def check(
        self, subject_user: str, relation: str, obj: str, contextual: Iterable[Relation] = ()
    ) -> bool:
        """`contextual`: relations that hold for this check only (a session's tenant and
        owner, from its row); they must not change for `obj`, as decisions are cached."""
        key = (subject_user, relation, obj)
        request = ClientCheckRequest(
            user=subject_user,
            relation=relation,
            object=obj,
            contextual_tuples=[ClientTuple(user=u, relation=r, object=o) for u, r, o in contextual]
            or None,
        )
        try:
            client = await self._connected()
            response = await client.check(request)
        except FgaValidationException as exc:
            raise PermanentError(f"invalid authorization check {key}: {exc}") from exc
        except _UNREACHABLE as exc:
            return self._cached(key, exc)
        self._answered_at = time.monotonic()
        allowed = bool(response.allowed)
        self._remember(key, allowed)
        return allowed

    async def answering(self) -> bool:
        """Whether OpenFGA answered within OPENFGA_CACHE_TTL_S (asked again, in the
        background, once its last answer is a quarter of that old; waited for only when it
        is older than the TTL): the window in which cached decisions stand in."""
        ttl = self._settings.openfga_cache_ttl_s
        age = time.monotonic() - self._answered_at
        if age <= ttl / 4:
            return True
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._ask())
        if age <= ttl:
            return True
        return await asyncio.shield(self._probe)

    async def _ask(self) -> bool:
        """One cheap check, only to learn whether OpenFGA answers."""
        try:
            client = await self._connected()
            await client.check(
                ClientCheckRequest(user=user("probe"), relation="member", object=tenant("probe"))
            )
        except (*_UNREACHABLE, AuthzUnavailable) as exc:
            log.warning("openfga does not answer: %s", _describe(exc))
            return False
        self._answered_at = time.monotonic()
        return True

    async def write(self, relations: Iterable[Relation]) -> None:
        """Add relations; ones that exist already are fine."""
        tuples = [ClientTuple(user=u, relation=r, object=o) for u, r, o in relations]
        conflict = ConflictOptions(on_duplicate_writes=ClientWriteRequestOnDuplicateWrites.IGNORE)
        await self._write(ClientWriteRequest(writes=tuples), conflict)

    async def delete(self, relations: Iterable[Relation]) -> None:
        """Remove relations; ones that do not exist are fine."""
        tuples = [ClientTuple(user=u, relation=r, object=o) for u, r, o in relations]
        conflict = ConflictOptions(on_missing_deletes=ClientWriteRequestOnMissingDeletes.IGNORE)
        await self._write(ClientWriteRequest(deletes=tuples), conflict)

    async def delete_user(self, subject_user: str) -> int:
        """Remove every relation whose user is `subject_user`; how many were removed.

        AuthzUnavailable when OpenFGA does not answer (some may be removed already; a
        retry removes the rest). Decisions cached for the user are forgotten.
        """
        removed = 0
        try:
            client = await self._connected()
            latest = await client.read_latest_authorization_model()
            model = latest.authorization_model
            definitions = (model.type_definitions if model else None) or []
            types = [t.type for t in definitions if t.relations]  # `user` has none
            for object_type in types:
                for _ in range(MAX_PAGES):
                    # ReadRequestTupleKey's __init__ is unannotated in openfga-sdk.
                    query = ReadRequestTupleKey(user=subject_user, object=f"{object_type}:")  # type: ignore[no-untyped-call]
                    page = await client.read(query, {"page_size": READ_PAGE})
                    found = [(t.key.user, t.key.relation, t.key.object) for t in page.tuples or []]
                    if not found:
                        break
                    await self.delete(found)
                    removed += len(found)
        except FgaValidationException as exc:
            raise PermanentError(f"invalid relation read for {subject_user}: {exc}") from exc
        except _UNREACHABLE as exc:
            raise AuthzUnavailable(f"openfga read failed: {_describe(exc)}") from exc
        for key in [k for k in self._decisions if k[0] == subject_user]:
            del self._decisions[key]
        return removed

    async def _write(self, body: ClientWriteRequest, conflict: ConflictOptions) -> None:
        try:
            client = await self._connected()
            # The SDK annotates options as plain values, yet takes ConflictOptions here.
            await client.write(body, {"conflict": conflict})  # type: ignore[dict-item]
        except _UNREACHABLE as exc:
            raise AuthzUnavailable(f"openfga write failed: {_describe(exc)}") from exc
        self._answered_at = time.monotonic()

    def _cached(self, key: Relation, exc: BaseException) -> bool:
        hit = self._decisions.get(key)
        age = time.monotonic() - hit[1] if hit else None
        if hit is not None and age is not None and age <= self._settings.openfga_cache_ttl_s:
            log.warning("openfga unreachable; using a decision %.1fs old", age)
            return hit[0]
        raise AuthzUnavailable(
            f"authorization service unreachable ({_describe(exc)}) and no decision cached "
            f"within {self._settings.openfga_cache_ttl_s:g}s"
        ) from exc

    def _remember(self, key: Relation, allowed: bool) -> None:
        self._decisions[key] = (allowed, time.monotonic())
        self._decisions.move_to_end(key)
        if len(self._decisions) > self._max_cached:
            self._decisions.popitem(last=False)

    async def _connected(self) -> OpenFgaClient:
        if self._client is not None:
            return self._client
        async with self._ready:
            if self._client is None:
                self._client = await connect(self._settings)
        return self._client


def client_configuration(
    settings: OpenFgaSettings, store_id: str | None = None, model_id: str | None = None
) -> ClientConfiguration:
    # No SDK retries: a down server must fail fast so the cached decision or the
    # fail-closed answer comes at once; the stage loop has its own retry policy.
    return ClientConfiguration(
        api_url=settings.openfga_api_url,
        store_id=store_id,
        authorization_model_id=model_id,
        timeout_millisec=int(settings.openfga_timeout_s * 1000),
        # RetryParams' __init__ is unannotated in openfga-sdk.
        retry_params=RetryParams(max_retry=0),  # type: ignore[no-untyped-call]
    )


async def find_store(client: OpenFgaClient, name: str) -> str | None:
    response = await client.list_stores({"name": name})
    stores = sorted(response.stores or [], key=lambda s: s.created_at)
    return stores[0].id if stores else None


async def connect(settings: OpenFgaSettings) -> OpenFgaClient:
    """A client bound to the named store and its latest authorization model."""
    probe = OpenFgaClient(client_configuration(settings))
    try:
        store_id = await find_store(probe, settings.openfga_store_name)
    finally:
        await _close(probe)
    if store_id is None:
        raise AuthzUnavailable(
            f"openfga store {settings.openfga_store_name!r} not found: "
            "run `python -m gateway_runtime.provision`"
        )
    client = OpenFgaClient(client_configuration(settings, store_id))
    latest = await client.read_latest_authorization_model()
    if latest.authorization_model is None:
        await _close(client)
        raise AuthzUnavailable(f"openfga store {store_id} has no authorization model")
    # Unannotated in openfga-sdk.
    client.set_authorization_model_id(latest.authorization_model.id)  # type: ignore[no-untyped-call]
    return client


async def _close(client: OpenFgaClient) -> None:
    await client.close()  # type: ignore[no-untyped-call]  # unannotated in openfga-sdk


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
