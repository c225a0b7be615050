"""The error hierarchy of the mesh.

    GatewayError
    ├── RetryableError        a dependency is briefly unavailable: retry with backoff
    │   └── DependencyUnavailable
    │       ├── AuthzUnavailable     OpenFGA unreachable, no cached decision young enough
    │       └── PolicyUnavailable    OPA unreachable or without the policy
    ├── PermanentError        retrying cannot help: the stage loop dead-letters the event
    │   ├── InvalidEvent
    │   └── PublishRefused    the broker refuses a record for good (too large, ...)
    └── ProviderError         a model endpoint failed; the LLM stage tells the client
        ├── AllDeploymentsFailed
        └── EgressRefused     the endpoint is not one the gateway may reach (no call made)

Adapters translate their library's exceptions into these with `raise ... from exc`.
Only the ingress maps errors to HTTP; only the stage loop catches everything, and it
treats a library's own timeout or dropped connection that slipped through an adapter
(`TRANSIENT`) like a `RetryableError`: a hung dependency is retried, then dead-lettered.
"""

from __future__ import annotations

import asyncpg
import httpx
import redis.exceptions


class GatewayError(Exception):
    """Base of every error the mesh raises on purpose."""


class RetryableError(GatewayError):
    """Worth trying again after a pause."""


class DependencyUnavailable(RetryableError):
    """Postgres, Redis, Kafka, OpenFGA, OPA or a model endpoint did not answer."""


class AuthzUnavailable(DependencyUnavailable):
    """OpenFGA did not answer and no cached decision is young enough."""


class PolicyUnavailable(DependencyUnavailable):
    """OPA did not answer, or answered without a decision (policy not loaded)."""


class PermanentError(GatewayError):
    """The same input will fail the same way."""


class InvalidEvent(PermanentError):
    """An event that decodes but breaks a rule of its contract."""


class PublishRefused(PermanentError):
    """The broker refused a record in a way a retry cannot change (e.g. it is too large)."""


class ProviderError(GatewayError):
    """The model endpoint failed (connect, HTTP error, stream cut); says which and how.

    The message is for the logs (it may hold the URL and a piece of the upstream's answer);
    `public` is what a client may be told: the upstream's status or a short phrase, never
    its body or address. `retryable=False` stops the router's retries of the deployment.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        mid_stream: bool = False,
        retryable: bool = True,
        reason: str = "no answer",
    ):
        super().__init__(message)
        self.status = status
        self.mid_stream = mid_stream
        self.retryable = retryable
        self.reason = reason

    @property
    def public(self) -> str:
        return f"upstream status {self.status}" if self.status else self.reason


class EgressRefused(ProviderError):
    """A model endpoint the egress policy forbids (gateway_runtime/egress.py): a private,
    loopback, link-local... address not allow-listed, or a malformed URL. `code` names
    which for the API (`base_url_invalid`, `base_url_forbidden`, `base_url_unresolvable`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, retryable=False, reason="endpoint refused by the egress policy")
        self.code = code


class AllDeploymentsFailed(ProviderError):
    """Every deployment of a turn (the profile, then its fallbacks) failed or was skipped.

    `attempts` are client-safe: the deployment's name and `public` of its failure."""

    def __init__(self, attempts: list[str], last: ProviderError | None) -> None:
        detail = "; ".join(attempts) or "no deployment configured"
        super().__init__(detail, status=last.status if last else None)
        self.attempts = attempts


# Failures of a dependency to answer, whichever library raised them: retried.
TRANSIENT: tuple[type[BaseException], ...] = (
    RetryableError,
    TimeoutError,  # asyncio's and asyncpg's command timeouts among them
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # the connection was closed under the query
    # The server is shutting down or starting (AdminShutdown: "terminating connection due
    # to administrator command" under a fast shutdown; CannotConnectNow while it starts).
    asyncpg.exceptions.OperatorInterventionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    httpx.TransportError,
)
