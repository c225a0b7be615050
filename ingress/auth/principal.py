"""The authenticated caller, as every route and the turn's events see it."""

from __future__ import annotations

from dataclasses import dataclass

from gateway_runtime.ports import DEFAULT_TENANT

# `turns`: post messages/actions and follow sessions; `admin`: manage its tenant's keys;
# `operator`: manage keys of every tenant (the bootstrap key has all three).
SCOPES = ("turns", "admin", "operator")


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str  # "key:<key_id>", "jwt:<tenant>/<sub>" or "anonymous"
    tenant: str
    scopes: frozenset[str]
    key_id: str | None = None

    def has(self, scope: str) -> bool:
        return scope in self.scopes


# With GATEWAY_REQUIRE_AUTH=false a caller without credentials is this principal: it may
# post turns and follow the sessions no key or token has claimed, nothing more. Keys,
# model profiles, dead letters and health details need a key (`make up` prints the
# bootstrap operator key): a web page that reaches the loopback port through DNS
# rebinding, or anyone else who reaches it, must not be an operator.
ANONYMOUS = Principal("anonymous", DEFAULT_TENANT, frozenset({"turns"}))
