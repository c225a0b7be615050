"""The authenticated caller, as every route and the turn's events see it."""

from __future__ import annotations

from dataclasses import dataclass

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


# With GATEWAY_REQUIRE_AUTH=false everyone is this local administrator.
ANONYMOUS = Principal("anonymous", "default", frozenset(SCOPES))
