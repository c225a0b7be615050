"""The error hierarchy of the mesh.

    GatewayError
    ├── RetryableError      a dependency is briefly unavailable: retry with backoff
    │   └── DependencyUnavailable
    └── PermanentError      retrying cannot help: the stage loop dead-letters the event
        └── InvalidEvent

Adapters translate their library's exceptions into these with `raise ... from exc`.
Only the ingress maps errors to HTTP; only the stage loop catches everything.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the mesh raises on purpose."""


class RetryableError(GatewayError):
    """Worth trying again after a pause."""


class DependencyUnavailable(RetryableError):
    """Postgres, Redis, Kafka, OpenFGA, OPA or a model endpoint did not answer."""


class PermanentError(GatewayError):
    """The same input will fail the same way."""


class InvalidEvent(PermanentError):
    """An event that decodes but breaks a rule of its contract."""
