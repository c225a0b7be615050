"""Every setting of every service, from the environment: the only code that reads it.

Each service has one settings class here, composed from shared pieces; its `__main__`
builds it once and hands the values to what it wires. Defaults for the local stack come
from `deploy/stack.env`; a variable set in the environment always wins. Outside the
local profile (`SOMA_PROFILE=production`, which the container image sets), loopback
addresses of the backing services and the local stack's database password are refused.
Every setting is documented in docs/configuration.md (a test keeps them in step).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
STACK_ENV = ROOT / "deploy" / "stack.env"
LOCAL_DB_PASSWORD = "soma"  # deploy/stack.env's; fine on loopback, refused elsewhere
GatewayScope = Literal["turns", "admin", "operator"]  # ingress/auth/principal.py's SCOPES
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # what a local browser sends as Host


def _loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.localdomain", "ip6-localhost", "0.0.0.0", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_bind(host: str) -> bool:
    """An address to listen on that only this machine reaches (0.0.0.0 is every one)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CommonSettings(BaseSettings):
    """What every process of the mesh needs: where the backing services are."""

    model_config = SettingsConfigDict(env_file=STACK_ENV, extra="ignore")

    service_name: str = "soma"
    # `local`: make up's profile (loopback addresses, the stack.env password); anything
    # deployed runs as `production`, where those are refused at start-up.
    soma_profile: Literal["local", "production"] = "local"
    # Prefix of topic names, consumer groups and Redis keys (schemas/topics.py,
    # gateway_runtime/redis_keys.py): meshes in other namespaces share the servers unseen.
    kafka_namespace: str = Field("soma", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    log_level: str = "INFO"
    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    # Who this process is to the broker (docs/security.md, "The broker boundary"). `auto`:
    # `auto`: SASL with the principal's credentials (make up provisions them; none is an
    # error). PLAINTEXT (no broker boundary) only when set, and all but SASL_SSL are for
    # the local profile only.
    kafka_security_protocol: Literal["auto", "PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = "auto"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    # One `<principal>.json` (mode 0600) per principal; unset: $SOMA_HOME/kafka/credentials.
    kafka_credentials_dir: Path | None = None
    # Unset: the service's own principal (its SERVICE_NAME) if it is a mesh service, else
    # the admin's (provisioning, the CLI, tests).
    kafka_username: str | None = None
    # Unset: the password in the principal's credentials file.
    kafka_password: SecretStr | None = None
    # With SASL_SSL: the CA the broker's certificate must chain to (unset: the system's).
    kafka_ssl_cafile: Path | None = None
    postgres_dsn: str = "postgresql://soma:soma@127.0.0.1:55432/soma"
    redis_url: str = "redis://127.0.0.1:56379/0"
    openfga_api_url: str = "http://127.0.0.1:18080"
    opa_url: str = "http://127.0.0.1:18181"
    local_llm_base_url: str = "http://127.0.0.1:18088/v1"
    tenants_file: Path = ROOT / "conf" / "tenants.yaml"
    # Where `make up` keeps its state, logs and the bootstrap admin key (mode 0600).
    soma_home: Path = Path.home() / ".cache" / "soma-gateway"
    # Fan-out stream retention: how many events a session keeps for Last-Event-ID resume.
    session_stream_maxlen: int = 1000
    session_stream_ttl_s: int = 24 * 3600
    # Deadlines on every call to a backing service: a hung server (SIGSTOP, a full disk)
    # becomes a retryable error within this long, never a stalled turn or request.
    postgres_timeout_s: float = 5.0
    redis_timeout_s: float = 2.0
    # OpenTelemetry traces (gateway_runtime/tracing.py), by the standard OTEL_* names: off
    # unless OTEL_TRACES_EXPORTER names an exporter (`otlp`, `console`, or this gateway's
    # `jsonl`) or, with it unset, an OTLP endpoint is given. OTEL_SDK_DISABLED wins.
    otel_sdk_disabled: bool = False
    otel_traces_exporter: str | None = None
    otel_exporter_otlp_endpoint: str | None = None
    otel_exporter_otlp_traces_endpoint: str | None = None
    otel_exporter_otlp_headers: SecretStr | None = None
    otel_exporter_otlp_traces_headers: SecretStr | None = None
    # Only the HTTP exporter is installed (no gRPC stack in the image).
    otel_exporter_otlp_protocol: Literal["http/protobuf"] = "http/protobuf"
    otel_service_name: str | None = None  # unset: SERVICE_NAME (ingress, llm_worker, ...)
    otel_resource_attributes: str | None = None  # `key=value,key=value`
    otel_traces_sampler: Literal[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ] = "parentbased_always_on"
    otel_traces_sampler_arg: float = Field(1.0, ge=0.0, le=1.0)
    # With the `jsonl` exporter: each process appends its spans to <dir>/<service>-<pid>.jsonl.
    traces_jsonl_dir: Path | None = None

    @field_validator("otel_traces_exporter")
    @classmethod
    def _known_exporters(cls, value: str | None) -> str | None:
        names = {n.strip() for n in (value or "").split(",") if n.strip()}
        unknown = names - {"otlp", "console", "jsonl", "none"}
        if unknown:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter(s) {sorted(unknown)}")
        return value

    @model_validator(mode="after")
    def _deployed_safely(self) -> CommonSettings:
        if self.soma_profile == "local":
            return self
        hosts = {
            "KAFKA_BOOTSTRAP_SERVERS": [
                s.strip().rpartition(":")[0] for s in self.kafka_bootstrap_servers.split(",")
            ],
            "POSTGRES_DSN": [urlsplit(self.postgres_dsn).hostname or ""],
            "REDIS_URL": [urlsplit(self.redis_url).hostname or ""],
            "OPENFGA_API_URL": [urlsplit(self.openfga_api_url).hostname or ""],
            "OPA_URL": [urlsplit(self.opa_url).hostname or ""],
        }
        for name, names in hosts.items():
            if any(_loopback(h) for h in names):
                raise ValueError(f"{name} points at a loopback address outside the local profile")
        if urlsplit(self.postgres_dsn).password in (None, "", LOCAL_DB_PASSWORD):
            raise ValueError("POSTGRES_DSN carries the local stack's password (or none)")
        if self.kafka_security_protocol != "SASL_SSL":  # a login, and only over TLS
            protocol = self.kafka_security_protocol
            raise ValueError(f"KAFKA_SECURITY_PROTOCOL={protocol} outside the local profile")
        return self

    @property
    def kafka_credentials_path(self) -> Path:
        """Where the principals' credentials files are."""
        return self.kafka_credentials_dir or self.soma_home / "kafka" / "credentials"


class StageSettings(CommonSettings):
    """What every stage worker needs besides the common addresses."""

    metrics_port: int = Field(0, description="0 = no /metrics listener for this worker")
    # Loopback unless told: in a pod, Prometheus scrapes the pod's address (0.0.0.0).
    metrics_host: str = "127.0.0.1"
    max_in_flight: int = 64
    retry_attempts: int = 3
    retry_backoff_s: float = 0.2
    retry_backoff_max_s: float = 5.0
    shutdown_grace_s: float = 20.0
    # The longest the committer sleeps when no record finishes (a finished record wakes it
    # at once: its outputs and offset go in the next transaction, gateway_runtime/stage.py).
    commit_interval_s: float = 0.2
    # How long the committer waits after a record finishes before it commits, so that the
    # records finishing meanwhile share the transaction: each transaction costs the broker
    # ~3.5 ms of CPU (docs/benchmarks.md) whatever it holds. 0 where the next stage waits
    # for the outputs; more where nobody does (the persistence stage: offsets only).
    commit_linger_s: float = Field(0.0, ge=0, le=5)
    # This process's name in its stage's transactional.id, `<namespace>.<stage>.<instance>`:
    # stable across restarts (a restarted instance fences its zombie), unique among the
    # stage's processes (two with one id fence each other). Unset: the host name.
    stage_instance: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    # How long the broker lets a stage's transaction stay open before aborting it (its
    # process died and no instance with its id came back); meanwhile the partitions it
    # wrote hold back read_committed consumers. A transaction normally lasts milliseconds.
    transaction_timeout_s: float = Field(10.0, gt=0, le=900)
    # How long the broker holds a fetch that finds nothing new: a record that arrives ends
    # the wait at once (bench.hop_latency: the same hop latency at 50 and 500 ms), so it
    # mostly sets how often an idle mesh polls the broker and how much CPU that burns.
    kafka_fetch_max_wait_ms: int = Field(default=500, ge=1, le=10_000)


class MemorySettings(CommonSettings):
    """Where memories live: a SomaBrain-style service when set, else Postgres."""

    somabrain_url: str | None = None
    memory_recall_limit: int = 3


class OpenFgaSettings(CommonSettings):
    openfga_store_name: str = "soma"
    # How long a decision may stand in for OpenFGA while it is unreachable.
    openfga_cache_ttl_s: float = 30.0
    openfga_timeout_s: float = 2.0


class OpaSettings(CommonSettings):
    opa_timeout_s: float = 2.0


class AuthSettings(OpenFgaSettings):
    """Authentication at the ingress (and the bootstrap key's home)."""

    # How long a replica may trust its Redis copy of a key (revocation replaces the copy
    # at once, so this only bounds how long Postgres goes unasked).
    api_key_cache_ttl_s: int = 30
    # How long a request waits on Redis (API-key cache, rate limiter) before it falls back
    # to Postgres: a hung Redis costs the first requests this, not REDIS_TIMEOUT_S, so they
    # still answer within TURN_ACCEPT_DEADLINE_S (later ones skip Redis until it answers).
    redis_request_timeout_s: float = 0.5
    # JWT bearer tokens: HS256 with this secret, and/or RS256/ES256 with keys from a JWKS URL.
    jwt_hs256_secret: SecretStr | None = None
    jwt_jwks_url: str | None = None
    jwks_cache_s: float = 300.0
    # One JWKS fetch at a time (every request that needs it shares it), at most this long;
    # after a failure no fetch for JWKS_BACKOFF_S, doubled per failure up to the max.
    jwks_fetch_timeout_s: float = 5.0
    jwks_backoff_s: float = 2.0
    jwks_backoff_max_s: float = 60.0
    # Required whenever JWTs are accepted: a token minted for another service of the same
    # identity provider must not open this one.
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_tenant_claim: str = "tenant"
    jwt_scopes_claim: str = "scope"
    # The gateway scopes each IdP scope grants; an IdP scope not named here grants none,
    # so an IdP's own `admin` or `operator` means nothing unless mapped on purpose.
    jwt_scope_map: dict[str, list[GatewayScope]] = {}
    # The scopes of a token whose IdP scopes map to none.
    jwt_default_scopes: list[GatewayScope] = ["turns"]
    jwt_leeway_s: int = 30
    # Failed authentications (bad key, bad token) one client address may make in
    # AUTH_FAILURE_WINDOW_S; past that its credentialed requests are answered 429 until
    # the window ends. Counted in the ingress process (0 = no limit).
    auth_failure_limit: int = Field(20, ge=0)
    auth_failure_window_s: float = Field(60.0, gt=0)

    @field_validator("jwt_hs256_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("JWT_HS256_SECRET must be at least 32 characters")
        return value

    @model_validator(mode="after")
    def _jwt_needs_an_audience(self) -> AuthSettings:
        if (self.jwt_hs256_secret or self.jwt_jwks_url) and not self.jwt_audience:
            raise ValueError(
                "JWT_AUDIENCE is required when JWT_HS256_SECRET or JWT_JWKS_URL is set:"
                " without it a token the identity provider minted for any other service"
                " would be accepted here"
            )
        return self


class EgressSettings(CommonSettings):
    """Where model calls may go (gateway_runtime/egress.py): the ingress checks a profile's
    base_url when it is written, the LLM stage whenever it connects."""

    # Non-public addresses a model profile may reach anyway: IPs or CIDRs, optionally
    # with a port (`["10.20.0.0/16", "127.0.0.1:8000", "[fd00::5]:8000"]`); no names. The
    # local profile adds its own model server (LOCAL_LLM_BASE_URL's address and port).
    model_egress_allow: list[str] = []

    @field_validator("model_egress_allow")
    @classmethod
    def _addresses_only(cls, value: list[str]) -> list[str]:
        from gateway_runtime.egress import AllowEntry  # the one parser of these entries

        for entry in value:
            AllowEntry.parse(entry)
        return value

    @property
    def egress_allow(self) -> list[str]:
        """MODEL_EGRESS_ALLOW, plus (local profile) the local model server's address and
        port, when LOCAL_LLM_BASE_URL names an address (a name must be listed by address)."""
        url = urlsplit(self.local_llm_base_url)
        host = "127.0.0.1" if url.hostname == "localhost" else url.hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return list(self.model_egress_allow)
        if self.soma_profile != "local":
            return list(self.model_egress_allow)
        port = url.port or (443 if url.scheme == "https" else 80)
        return [*self.model_egress_allow, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]


# ---- one class per service -------------------------------------------------------------


class ProfileSettings(CommonSettings):
    """Where a turn's model profile is looked up (the context stage uses it; the policy
    stage resolves it too, so OPA decides on the model the turn will really use; the
    ingress resolves the OpenAI API's `model` among the roles of this mode)."""

    # Profiles are looked up in this deployment mode; the default profile of the mode
    # (role `dialogue`) is created from the values below when it does not exist yet.
    deployment_mode: str = "local"
    default_model: str = "openai/smollm2"
    default_model_base_url: str | None = None  # None = the local model's address
    default_max_tokens: int = 256
    default_temperature: float = 0.7
    profile_cache_ttl_s: float = 2.0


class IngressSettings(AuthSettings, EgressSettings, ProfileSettings):
    service_name: str = "ingress"
    gateway_port: int = 8010
    gateway_host: str = "127.0.0.1"
    # Every /v1 route but health needs a principal (API key or JWT) unless this is false;
    # only `make up`'s local profile turns it off, and then GATEWAY_HOST must be loopback.
    gateway_require_auth: bool = True
    # The Host names (any port) requests may carry, against DNS rebinding (ingress/
    # host_check.py). Unset: with auth off the loopback names, with auth on any host.
    gateway_allowed_hosts: list[str] | None = None
    max_body_bytes: int = 256 * 1024
    sse_keepalive_s: float = 15.0
    # Events queued for one slow client before it is switched to catching up from the
    # durable log (it loses nothing; the queue's memory stays bounded).
    sse_client_queue: int = 1000
    # Open event streams (SSE and WebSocket together) one principal may hold on one
    # replica; one more is 429 too_many_streams (0: no cap; the local anonymous user has none).
    max_streams_per_principal: int = 64
    # The largest WebSocket frame (message) a client may send; a larger one closes with 1009.
    ws_max_frame_bytes: int = 256 * 1024
    # How often each replica asks Postgres whether the keys holding its streams were
    # revoked (in case it missed the Redis message) and retries unfinished clean-ups.
    key_revocation_check_s: float = 1.0
    health_timeout_s: float = 2.0
    # How long /v1/health reuses its view of the stages' consumer groups (frequent polls
    # then cost the broker one inspection per this interval).
    health_stages_cache_s: float = 1.0
    # POST /v1/session/message|action answers within this, whatever Kafka or Postgres do:
    # 202 (published, or kept in the Postgres outbox until Kafka is back) or 503.
    turn_accept_deadline_s: float = 2.0
    # How long a publish may wait for the broker before the turn goes to the outbox.
    kafka_publish_timeout_s: float = 1.0
    outbox_relay_interval_s: float = 0.5
    # How long an Idempotency-Key is remembered (the same key answers the same turn).
    idempotency_ttl_s: int = 24 * 3600
    # How long a Responses API response (POST /v1/responses) is kept: fetched, resumed,
    # continued with previous_response_id; older ones are 404 and deleted.
    responses_retention_s: int = 24 * 3600
    # The capsule registry behind /v1/capsules (unset: those routes answer 503).
    capsule_registry_url: str | None = None
    capsule_registry_timeout_s: float = 10.0
    # The longest POST /v1/chat/completions waits for its turn to end: then 504 (a stream
    # ends with an error frame). The turn itself goes on and is stored.
    openai_turn_timeout_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _anonymous_only_on_loopback(self) -> IngressSettings:
        if not self.gateway_require_auth and not _loopback_bind(self.gateway_host):
            raise ValueError(
                f"GATEWAY_REQUIRE_AUTH=false lets anyone who reaches GATEWAY_HOST"
                f" ({self.gateway_host!r}) post turns without credentials: bind a loopback"
                " address (127.0.0.1, ::1, localhost) or set GATEWAY_REQUIRE_AUTH=true"
            )
        return self

    @property
    def allowed_hosts(self) -> list[str] | None:
        """The Host names the ingress answers (None: any)."""
        if self.gateway_allowed_hosts is not None:
            return self.gateway_allowed_hosts
        return None if self.gateway_require_auth else list(LOOPBACK_HOSTS)


class TurnShapeSettings(CommonSettings):
    """How big a turn may grow: the context stage builds it, the LLM stage runs its tool
    rounds, and the policy stage reserves a budget for all of it (gateway_runtime/
    tokens.py), so the three read the same values."""

    # A prompt's memories and transcript fill what this leaves after the system prompt,
    # the user's message and the answer (a tenant's max_context_tokens may lower it).
    context_window_tokens: int = 2048
    # Tool rounds a turn may take; after the last one the model is offered no tools and
    # must answer, so a model that keeps calling tools cannot loop a turn forever.
    max_tool_rounds: int = 4


class PolicySettings(
    StageSettings, OpenFgaSettings, OpaSettings, ProfileSettings, TurnShapeSettings
):
    service_name: str = "policy_worker"
    gateway_require_auth: bool = True


class ContextSettings(StageSettings, MemorySettings, ProfileSettings, TurnShapeSettings):
    service_name: str = "context_worker"
    # How long a turn that continues another (previous_response_id) waits for that turn
    # to be in the transcript (the persistence stage stores it just after its answer).
    transcript_wait_s: float = Field(5.0, ge=0)


class LLMSettings(StageSettings, EgressSettings, TurnShapeSettings):
    service_name: str = "llm_worker"
    max_in_flight: int = 256
    # auto: the lean aiohttp client for OpenAI-compatible servers (`openai/<model>` with a
    # base_url), LiteLLM for every other provider; litellm / http force one adapter.
    llm_transport: Literal["auto", "litellm", "http"] = "auto"
    # Provider credentials are per profile: its `api_key_ref` names a secret, read from
    # MODEL_API_KEYS, else from $SOMA_HOME/secrets/<ref> (mode 0600). LLM_API_KEY is only
    # the secret of the ref `default`, which the seeded default profile carries.
    llm_api_key: SecretStr | None = None
    model_api_keys: dict[str, SecretStr] = {}
    # LiteLLM providers called although their connections bypass the egress guard (Cohere,
    # Vertex, SageMaker, ...: llm_worker/litellm_model.py); by default they are refused.
    model_unguarded_providers: list[str] = []
    llm_timeout_s: float = 60.0
    # A turn's first delta goes out at once; later ones are gathered for up to this long
    # and sent as one `assistant.delta` (every token, fewer frames). 0: one per token.
    delta_coalesce_ms: float = Field(default=20.0, ge=0, le=1000)
    # Before the first token: tries per deployment beyond the first, and their backoff.
    llm_retries: int = 1
    llm_retry_backoff_s: float = 0.2
    # Circuit breaker per deployment, shared by every llm_worker through Redis.
    breaker_failure_threshold: int = 5
    breaker_window_s: float = 60.0
    breaker_cooldown_s: float = 30.0
    # LiteLLM reads these from the environment when imported; the worker exports them
    # just before, so it never reaches for the internet on a machine without one.
    litellm_local_model_cost_map: str = "True"
    litellm_offline_mode: str = "true"


class ToolSettings(StageSettings):
    service_name: str = "tool_dispatcher"
    # The most of one tool result the model is shown (the rest is cut with a note).
    tool_result_max_chars: int = 4000


class PersistenceSettings(StageSettings, MemorySettings):
    service_name: str = "persistence_worker"
    # A turn here is answered already: dead-lettering it while Postgres restarts would
    # leave the client's answer unstored until an operator replays it. 10 tries with the
    # backoff above wait ~26 s (a restart takes seconds; a managed failover ~30).
    retry_attempts: int = 10
    # Its transactions carry offsets only (the turn is in Postgres already when its record
    # finishes), so batching them delays no one; a crash replays at most this much, and
    # storing a turn twice is a no-op.
    commit_linger_s: float = Field(0.25, ge=0, le=5)


class DeadLetterIndexSettings(StageSettings):
    """The dead-letter index: soma.deadletter -> one Postgres row per dead letter."""

    service_name: str = "deadletter_index"


class SupervisorSettings(CommonSettings):
    """The local profile's supervisor (gateway_runtime/supervisor.py): restarts a crashed
    service after a delay that doubles while it keeps crashing at once."""

    service_name: str = "supervisor"
    supervisor_restart_delay_s: float = 0.5
    supervisor_restart_delay_max_s: float = 30.0
    # On SIGTERM, how long the services may take to stop before SIGKILL (beyond a stage's
    # SHUTDOWN_GRACE_S, so its in-flight events finish first).
    supervisor_stop_timeout_s: float = 25.0


class ProvisionSettings(OpenFgaSettings, OpaSettings):
    service_name: str = "provision"


class BootstrapSettings(AuthSettings):
    service_name: str = "bootstrap"


class AutomationCliSettings(CommonSettings):
    """`soma-gateway automation` (soma_cli/automations.py): unlike the rest of the CLI it
    works on the broker's side, as the broker's admin (KAFKA_CREDENTIALS_DIR), and writes
    the automation registry in Postgres; the tenants file says which tenants exist."""

    service_name: str = "soma-cli"


class CliSettings(BaseSettings):
    """The SRE CLI (`soma-gateway`, soma_cli/): it talks to the REST API only, so it needs
    none of the backing services' addresses (and runs from any machine)."""

    model_config = SettingsConfigDict(extra="ignore")

    soma_gateway_url: str = "http://127.0.0.1:8010"
    # Unset: the bootstrap key `make up` keeps in $SOMA_HOME/admin-key, if that file exists.
    soma_api_key: SecretStr | None = None
    soma_home: Path = Path.home() / ".cache" / "soma-gateway"
