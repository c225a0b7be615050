"""Every Redis key of the mesh, named in one place, under the mesh's namespace.

Meshes in different namespaces (`KAFKA_NAMESPACE`) share a Redis server without seeing
each other's sessions, limits, breakers or cached keys: every name below starts
with `<namespace>:`. Services and benchmarks build names only through `RedisKeys`. (In
the default namespace `soma` the names are those the mesh used before they moved here.)

    <ns>:events:<session>                  a session's event log (stream), for resume
    <ns>:live:<session>                    a session's live channel (pub/sub)
    <ns>:key-revoked                       revoked key ids, to every ingress (pub/sub)
    <ns>:turn-ended:<turn>                 events published at most once (their payload):
    <ns>:tool-call:<turn>:<round>            a turn's end, a round's calls, a call's result
    <ns>:tool-result:<turn>:<round>:<call>
    <ns>:rl:<limit>:<who>                  a rate limit's one-minute log (+ ":sum")
    <ns>:rl:window:restored                the limits' last minute is in Redis (set when
                                           it is folded back after an outage)
    <ns>:breaker:<deployment>              a deployment's circuit breaker
    <ns>:deployment-stats:<deployment>     its moving averages (TTFT, error rate)
    <ns>:apikey:<key id>                   a cached API key record
    <ns>:apikey:used:<key id>              limits `last_used_at` writes to one a minute
    <ns>:turn-attempts:<turn>              how many times the LLM stage started a turn
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    namespace: str = "soma"

    # ---- the fan-out -------------------------------------------------------------------
    def stream(self, session_id: str) -> str:
        return f"{self.namespace}:events:{session_id}"

    def live(self, session_id: str) -> str:
        return f"{self.live_prefix}{session_id}"

    @property
    def live_prefix(self) -> str:
        return f"{self.namespace}:live:"

    @property
    def live_pattern(self) -> str:
        return self.live_prefix + "*"

    @property
    def stream_pattern(self) -> str:
        return self.stream("*")

    @property
    def revocations(self) -> str:
        """The channel a revoked key's id is published on; every ingress hub listens, so
        the key's open streams end on every replica (ingress/revocation.py)."""
        return f"{self.namespace}:key-revoked"

    # ---- events published once per turn (the fan-out keeps their payload) --------------
    def turn_ended(self, turn_id: str) -> str:
        """The final answer or the error that ends a turn."""
        return f"{self.namespace}:turn-ended:{turn_id}"

    def turn_cancelled(self, turn_id: str) -> str:
        """The `turn.cancelled` event of a turn a client cancelled (a background response)."""
        return f"{self.namespace}:turn-cancelled:{turn_id}"

    def tool_calls(self, turn_id: str, tool_round: int) -> str:
        """The tool calls the model asked for in one round of a turn."""
        return f"{self.namespace}:tool-call:{turn_id}:{tool_round}"

    def tool_result(self, turn_id: str, tool_round: int, call_id: str) -> str:
        return f"{self.namespace}:tool-result:{turn_id}:{tool_round}:{call_id}"

    # ---- rate limits ----------------------------------------------------------------------
    def rate_log(self, limit: str, who: str) -> str:
        """The limit's log (a sorted set); its running sum is this name + ':sum'."""
        return f"{self.namespace}:rl:{limit}:{who}"

    # ---- model deployments ----------------------------------------------------------------
    @property
    def breaker_prefix(self) -> str:
        return f"{self.namespace}:breaker:"

    @property
    def deployment_stats_prefix(self) -> str:
        return f"{self.namespace}:deployment-stats:"

    def breaker(self, deployment: str) -> str:
        return self.breaker_prefix + deployment

    def deployment_stats(self, deployment: str) -> str:
        return self.deployment_stats_prefix + deployment

    # ---- API keys and turns ---------------------------------------------------------------
    def api_key(self, key_id: str) -> str:
        return f"{self.namespace}:apikey:{key_id}"

    def api_key_used(self, key_id: str) -> str:
        return f"{self.namespace}:apikey:used:{key_id}"

    def turn_attempts(self, turn_id: str) -> str:
        return f"{self.namespace}:turn-attempts:{turn_id}"

    @property
    def everything(self) -> str:
        """A SCAN pattern matching every key of the namespace."""
        return f"{self.namespace}:*"
