"""Who holds which event streams (SSE and WebSocket) open on this replica.

Every stream takes a lease for its principal before it starts, for two reasons:
- a cap: at most MAX_STREAMS_PER_PRINCIPAL open streams per principal on a replica
  (SSE and WebSocket together); one more is 429 `too_many_streams`, so one key cannot
  hold a replica's connections, file descriptors and memory. The anonymous local user
  (auth off, which only binds loopback) is not capped: the SSE fan-out benchmark opens
  20k streams as that user.
- revocation: `close_key` ends, at once, every stream a revoked key holds here (the
  lease records why, and closes its hub follower, so a stream waiting for events wakes
  and ends). A key revoked a moment ago cannot take a new lease either, which closes the
  gap between a connect's authentication and its lease.
"""

from __future__ import annotations

import time

from ingress.auth.errors import Denied, unauthenticated
from ingress.auth.principal import ANONYMOUS, Principal
from ingress.hub import Follower

KEY_REVOKED = "key_revoked"
# How long a revocation that reached this replica refuses new leases of the key (its
# cached copy is revoked too by then; this only covers connects already authenticated).
RECENTLY_REVOKED_S = 60.0


class StreamLease:
    """One open stream of one principal."""

    __slots__ = ("_follower", "_gone", "key_id", "reason", "subject")

    def __init__(self, principal: Principal) -> None:
        self.subject = principal.subject
        self.key_id = principal.key_id
        self.reason: str | None = None  # why the gateway ended the stream (e.g. "key_revoked")
        self._gone = False  # the client left
        self._follower: Follower | None = None

    @property
    def closed(self) -> bool:
        return self.reason is not None or self._gone

    def attach(self, follower: Follower) -> None:
        """The stream's hub follower, closed when the lease is."""
        self._follower = follower
        if self.closed:
            follower.close()

    def close(self, reason: str) -> None:
        """The gateway ends the stream, telling the client `reason`."""
        if self.closed:
            return
        self.reason = reason
        if self._follower is not None:
            self._follower.close()

    def client_gone(self) -> None:
        """The client left: the stream ends, with nothing more to send."""
        if self.closed:
            return
        self._gone = True
        if self._follower is not None:
            self._follower.close()


class OpenStreams:
    """The replica's leases, by principal; one per process."""

    def __init__(self, max_per_principal: int) -> None:
        self._cap = max_per_principal  # 0: no cap
        self._by_subject: dict[str, set[StreamLease]] = {}
        self._by_key: dict[str, set[StreamLease]] = {}
        self._revoked: dict[str, float] = {}  # key_id -> when the revocation arrived

    def open(self, principal: Principal) -> StreamLease:
        """A lease for one more stream of `principal`, or a Denied (429, or 401 revoked)."""
        key_id = principal.key_id
        if key_id is not None and key_id in self._revoked:
            raise unauthenticated(KEY_REVOKED, f"API key {key_id} was revoked")
        held = self._by_subject.get(principal.subject, set())
        if self._cap and principal is not ANONYMOUS and len(held) >= self._cap:
            raise Denied(
                429,
                "too_many_streams",
                f"{principal.subject} holds {len(held)} open streams on this replica, "
                f"the most allowed; close one first",
                retry_after=1,
            )
        lease = StreamLease(principal)
        self._by_subject.setdefault(principal.subject, set()).add(lease)
        if key_id is not None:
            self._by_key.setdefault(key_id, set()).add(lease)
        return lease

    def release(self, lease: StreamLease) -> None:
        """The stream ended (idempotent)."""
        _discard(self._by_subject, lease.subject, lease)
        if lease.key_id is not None:
            _discard(self._by_key, lease.key_id, lease)

    def close_key(self, key_id: str, reason: str = KEY_REVOKED) -> int:
        """End every stream the key holds here, and refuse it new ones; how many ended."""
        now = time.monotonic()
        self._revoked[key_id] = now
        for stale in [k for k, at in self._revoked.items() if now - at > RECENTLY_REVOKED_S]:
            del self._revoked[stale]
        leases = self._by_key.get(key_id, set())
        for lease in list(leases):
            lease.close(reason)
        return len(leases)

    def key_ids(self) -> list[str]:
        """The keys that hold streams here (for the re-check of their validity)."""
        return list(self._by_key)

    def count(self, subject: str) -> int:
        return len(self._by_subject.get(subject, ()))


def _discard(index: dict[str, set[StreamLease]], name: str, lease: StreamLease) -> None:
    leases = index.get(name)
    if leases is not None:
        leases.discard(lease)
        if not leases:
            del index[name]
