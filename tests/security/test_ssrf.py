"""No SSRF through model profiles (issue 9, item 5).

A profile's `base_url` may not reach loopback, link-local, private, multicast or other
non-global addresses, however they are spelled, unless MODEL_EGRESS_ALLOW lists them (the
test mesh lists only its fake upstream's address); the LLM stage checks again when it
connects, so a name re-pointed after validation does not help. Upstream error bodies stay
in the logs; credentials are per profile (a reference to a secret file); a `turns` key
does not see endpoints, credentials or provider arguments; /metrics labels name profiles,
never URLs.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import yaml

from adapters.profiles import CachedProfiles, ProfileStore, default_profile
from gateway_runtime.egress import AllowEntry, EgressPolicy
from gateway_runtime.errors import EgressRefused, ProviderError
from gateway_runtime.ports import ChatModel, StoredProfile
from gateway_runtime.postgres import MIGRATIONS, migrate
from gateway_runtime.settings import LLMSettings, ProfileSettings
from llm_worker.credentials import ProfileCredentials, SecretSource
from llm_worker.guarded_http import guarded_client, guarded_session
from llm_worker.litellm_model import GUARDED_PROVIDERS, LiteLLMModel
from llm_worker.openai_http import OpenAIHttpModel
from schemas.events import ChatMessage, ModelProfile
from testbed.mesh import start_fake_upstream
from testbed.sandbox import Sandbox
from tests.security.conftest import AuthMesh
from tests.security.helpers import as_key, end_of_turn, new_key, post_turn, turn_events
from tests.sse import SseEvent

MODE = "local"  # the mesh's DEPLOYMENT_MODE

FORBIDDEN = [
    "http://127.0.0.1/v1",
    "http://127.0.0.1:18099/v1",  # loopback on another port than the allow-listed one
    "http://10.1.2.3:8000/v1",
    "http://192.168.0.10/v1",
    "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/v1",  # shared address space (carrier-grade NAT)
    "http://0.0.0.0:8080/v1",
    "http://224.0.0.1/v1",
    "http://[::1]:8080/v1",
    "http://[::ffff:127.0.0.1]/v1",
    "http://[::ffff:a9fe:a9fe]/v1",  # 169.254.169.254, IPv4-mapped
    "http://[fe80::1]/v1",
    "http://[fd00::1]/v1",
    "http://0x7f000001/v1",
    "http://2130706433/v1",
    "http://0177.0.0.1/v1",
    "http://127.1/v1",
    "http://localhost:8080/v1",  # a name that resolves to loopback
]


def _profile_body(base_url: str, **extra: Any) -> dict[str, Any]:
    return {"model": "openai/fake", "base_url": base_url, **extra}


def _role(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _turn(client: httpx.AsyncClient, role: str, message: str = "hello") -> list[SseEvent]:
    session_id = f"ssrf-{uuid.uuid4().hex}"
    r = await post_turn(client, session_id, message, metadata={"model_role": role})
    assert r.status_code == 202, r.text
    return await turn_events(client, session_id, end_of_turn(r.json()["event_id"]))


async def _upstream_requests(fake: str, contains: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=fake) as client:
        r = await client.get("/admin/requests", params={"contains": contains})
    r.raise_for_status()
    return dict(r.json())


@pytest.fixture
async def second_upstream() -> AsyncIterator[str]:
    """Another fake upstream on loopback, on a port MODEL_EGRESS_ALLOW does not list."""
    proc, url = start_fake_upstream()
    yield url
    proc.terminate()
    proc.wait(10)


async def test_private_and_loopback_base_urls_are_refused_unless_allow_listed(
    admin: httpx.AsyncClient, fake_llm: str
) -> None:
    for url in FORBIDDEN:
        role = _role("ssrf")
        created = await admin.post(
            "/v1/model-profiles", json={"role": role, "deployment_mode": MODE, **_profile_body(url)}
        )
        replaced = await admin.put(f"/v1/model-profiles/{role}/{MODE}", json=_profile_body(url))
        for r in (created, replaced):
            assert r.status_code == 422, (url, r.status_code, r.text)
            assert r.json()["detail"]["code"] == "base_url_forbidden", (url, r.text)
        assert (await admin.get(f"/v1/model-profiles/{role}/{MODE}")).status_code == 404

    for url, code in [
        ("http://user:secret@example.com/v1", "base_url_invalid"),
        ("http://no-such-host.invalid/v1", "base_url_unresolvable"),
    ]:
        r = await admin.put(f"/v1/model-profiles/{_role('ssrf')}/{MODE}", json=_profile_body(url))
        assert r.status_code == 422 and r.json()["detail"]["code"] == code, (url, r.text)

    # Provider arguments cannot carry another endpoint or credentials past the check.
    r = await admin.put(
        f"/v1/model-profiles/{_role('ssrf')}/{MODE}",
        json=_profile_body(fake_llm + "/v1", kwargs={"api_base": "http://169.254.169.254"}),
    )
    assert r.status_code == 422 and r.json()["detail"]["code"] == "kwargs_not_allowed", r.text

    # The test mesh allow-lists its fake upstream (an address on loopback) and nothing else;
    # public addresses need no listing.
    public = _role("public")
    r = await admin.put(
        f"/v1/model-profiles/{public}/{MODE}", json=_profile_body("https://1.1.1.1/v1")
    )
    assert r.status_code == 200, r.text
    listed = _role("listed")
    r = await admin.put(f"/v1/model-profiles/{listed}/{MODE}", json=_profile_body(fake_llm + "/v1"))
    assert r.status_code == 200, r.text
    assert (await _turn(admin, listed))[-1].type == "assistant.final"


async def test_the_llm_stage_refuses_a_private_address_when_it_connects(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, second_upstream: str
) -> None:
    # What a name re-pointed after validation amounts to (DNS rebinding), or a row written
    # behind the API's back: the stored profile points at a loopback port nobody listed.
    role = _role("rebind")
    conn = await asyncpg.connect(auth_mesh.sandbox.postgres_dsn)
    try:
        await conn.execute(
            "INSERT INTO model_profiles (role, deployment_mode, model, base_url)"
            " VALUES ($1, $2, 'openai/fake', $3)",
            role,
            MODE,
            second_upstream + "/v1",
        )
    finally:
        await conn.close()
    events = await _turn(admin, role)
    assert events[-1].type == "error", events[-1]
    assert events[-1].data["data"]["code"] == "llm_unavailable"
    async with httpx.AsyncClient(base_url=second_upstream) as fake:
        assert (await fake.get("/admin/stats")).json()["requests"] == 0


async def test_upstream_error_bodies_are_logged_not_echoed(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, fake_llm: str
) -> None:
    role = _role("leaky")
    r = await admin.put(
        f"/v1/model-profiles/{role}/{MODE}",
        json=_profile_body(fake_llm + "/v1", model="openai/fake:leak"),
    )
    assert r.status_code == 200, r.text
    events = await _turn(admin, role)
    stream = "\n".join(str(e.data) for e in events)
    host = fake_llm.removeprefix("http://")
    for secret in ("sk-upstream-canary", "hunter2", "upstream exploded", host, "http://"):
        assert secret not in stream, secret
    error = events[-1]
    assert error.type == "error"
    assert error.data["data"]["code"] == "llm_unavailable"
    assert error.data["data"]["upstream_status"] == 500
    assert "upstream status 500" in error.data["data"]["message"]
    # The operator still has the body, cut short, in the LLM stage's log.
    log = (auth_mesh.sandbox.dir / "llm_worker.log").read_text()
    assert "sk-upstream-canary" in log
    assert "x" * 2000 not in log


async def test_a_turns_key_does_not_see_endpoints_credentials_or_kwargs(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, fake_llm: str
) -> None:
    role = _role("hidden")
    key = await new_key(admin, auth_mesh.tenant("alpha"), ["turns"])

    async def seen_by_turns_key() -> list[dict[str, Any]]:
        async with as_key(auth_mesh.mesh.base_url, key["secret"]) as turns_only:
            one = await turns_only.get(f"/v1/model-profiles/{role}/{MODE}")
            listed = await turns_only.get("/v1/model-profiles", params={"deployment_mode": MODE})
        assert one.status_code == 200 and listed.status_code == 200
        assert fake_llm.removeprefix("http://") not in listed.text + one.text
        mine = [p for p in listed.json() if p["role"] == role]
        assert len(mine) == 1
        return [one.json(), *mine]

    body = _profile_body(fake_llm + "/v1", kwargs={"top_p": 0.9})
    assert (await admin.put(f"/v1/model-profiles/{role}/{MODE}", json=body)).status_code == 200
    for seen in await seen_by_turns_key():
        assert seen["model"] == "openai/fake" and seen["max_tokens"] == 256
        for hidden in ("base_url", "api_path", "kwargs", "api_key_ref"):
            assert hidden not in seen, (hidden, seen)

    # With a credential: the operator sees its name (never a secret), the turns key nothing.
    body["api_key_ref"] = "hidden-ref"
    r = await admin.put(f"/v1/model-profiles/{role}/{MODE}", json=body)
    assert r.status_code == 200, r.text
    full = (await admin.get(f"/v1/model-profiles/{role}/{MODE}")).json()
    assert full["base_url"] == fake_llm + "/v1" and full["kwargs"] == {"top_p": 0.9}
    assert full["api_key_ref"] == "hidden-ref"
    assert all("api_key_ref" not in seen for seen in await seen_by_turns_key())


async def test_each_profile_sends_its_own_secret_and_only_that(
    auth_mesh: AuthMesh, admin: httpx.AsyncClient, fake_llm: str
) -> None:
    secrets = auth_mesh.sandbox.dir / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    ref, secret = f"prov-{uuid.uuid4().hex[:6]}", f"sk-test-{uuid.uuid4().hex}"
    (secrets / ref).write_text(secret + "\n")
    (secrets / ref).chmod(0o600)
    careless = f"open-{uuid.uuid4().hex[:6]}"
    (secrets / careless).write_text("sk-readable-by-all\n")
    (secrets / careless).chmod(0o644)

    keyed, keyless, loose = _role("keyed"), _role("keyless"), _role("loose")
    for role, extra in (
        (keyed, {"api_key_ref": ref}),
        (keyless, {}),
        (loose, {"api_key_ref": careless}),
    ):
        r = await admin.put(
            f"/v1/model-profiles/{role}/{MODE}", json=_profile_body(fake_llm + "/v1", **extra)
        )
        assert r.status_code == 200, r.text

    marks = {role: f"mark-{uuid.uuid4().hex}" for role in (keyed, keyless, loose)}
    for role, mark in marks.items():
        await _turn(admin, role, mark)

    sent = await _upstream_requests(fake_llm, marks[keyed])
    assert [h.get("authorization") for h in sent["headers"]] == [f"Bearer {secret}"]
    sent = await _upstream_requests(fake_llm, marks[keyless])
    assert len(sent["headers"]) == 1 and "authorization" not in sent["headers"][0]
    # A secret file others can read is refused: the call is not made at all.
    assert (await _upstream_requests(fake_llm, marks[loose]))["requests"] == []


LABELS = re.compile(r"\{(.*)\}")
# A label's value, not its name: OpenTelemetry's HTTP names (`http_route`) are fine.
LABEL_VALUES = re.compile(r'="([^"]*)"')


async def test_metrics_labels_carry_no_urls(admin: httpx.AsyncClient, fake_llm: str) -> None:
    failing, fine = _role("mfail"), _role("mfine")
    for role, model in ((failing, "openai/fake:error_500:1"), (fine, "openai/fake")):
        r = await admin.put(
            f"/v1/model-profiles/{role}/{MODE}", json=_profile_body(fake_llm + "/v1", model=model)
        )
        assert r.status_code == 200, r.text
        await _turn(admin, role)
    metrics = (await admin.get("/metrics")).text
    deployments = [line for line in metrics.splitlines() if 'deployment="' in line]
    assert any(f'deployment="{failing}/{MODE}"' in line for line in deployments), deployments
    upstream_host = fake_llm.split("://", 1)[1]
    for line in metrics.splitlines():
        labels = LABELS.search(line)
        if labels and not line.startswith("#"):
            for value in LABEL_VALUES.findall(labels.group(1)):
                assert "://" not in value and upstream_host not in value, line


# LiteLLM imports a module of its own lazily while it maps a connection error, and
# pydantic warns about that module's types: not this test's subject.
LITELLM_IMPORT_WARNING = "ignore:Item.* using the `ReadOnly` qualifier:UserWarning"


@pytest.fixture(scope="module")
def litellm_module() -> Any:
    from llm_worker.litellm_model import load_litellm

    return load_litellm(LLMSettings())


@pytest.fixture(params=["http", "litellm"])
async def guarded(
    request: pytest.FixtureRequest, fake_llm: str, litellm_module: Any
) -> AsyncIterator[ChatModel]:
    """Each adapter as the LLM stage wires it, over a guarded client whose policy
    allow-lists the fake upstream's address and port, and nothing else."""
    policy = EgressPolicy([urlsplit(fake_llm).netloc])
    if request.param == "http":
        async with guarded_session(
            policy, read_timeout_s=10, connect_timeout_s=5, limit=10
        ) as session:
            yield OpenAIHttpModel(session)
        return
    limits = httpx.Limits()
    async with guarded_client(policy, timeout=httpx.Timeout(10), limits=limits) as http:
        try:
            yield LiteLLMModel(litellm_module, policy=policy, http=http, timeout_s=10)
        finally:
            _forget_clients(litellm_module)


def _forget_clients(litellm_module: Any) -> None:
    """LiteLLM keeps its clients per endpoint, process-wide: none may outlive its test."""
    litellm_module.aclient_session = None
    litellm_module.in_memory_llm_clients_cache.flush_cache()


@pytest.mark.filterwarnings(LITELLM_IMPORT_WARNING)
async def test_each_adapter_checks_the_address_it_connects_to(
    guarded: ChatModel, fake_llm: str, second_upstream: str
) -> None:
    name = f"guard-{uuid.uuid4().hex[:8]}"
    hello = [ChatMessage("user", "hi")]
    listed = ModelProfile(model=f"openai/{name}", base_url=fake_llm + "/v1")
    assert len([c.text async for c in guarded.stream(listed, hello) if c.text]) == 20
    # Another port of the same loopback address, by address and by a name resolving to it.
    for url in (second_upstream, second_upstream.replace("127.0.0.1", "localhost")):
        unlisted = ModelProfile(f"openai/{name}", base_url=url + "/v1")
        with pytest.raises(EgressRefused):
            _ = [c async for c in guarded.stream(unlisted, hello)]
    async with httpx.AsyncClient(base_url=second_upstream) as fake:
        assert (await fake.get("/admin/stats")).json()["requests"] == 0


@pytest.mark.filterwarnings(LITELLM_IMPORT_WARNING)
@pytest.mark.parametrize(
    "profile",
    [
        # a provider's own default endpoint: Ollama's is localhost:11434
        ModelProfile(model="ollama_chat/x"),
        *(
            ModelProfile(model=f"{provider}/x", base_url="http://127.0.0.1:9/v1")
            for provider in sorted(GUARDED_PROVIDERS)
        ),
    ],
    ids=lambda p: f"{p.model}@{p.base_url or 'default'}",
)
async def test_litellm_connections_are_checked_whatever_the_provider(
    litellm_module: Any, profile: ModelProfile
) -> None:
    """Without the check before the call (no `policy`), the connection itself is refused:
    the guarded client reaches LiteLLM's every route listed in GUARDED_PROVIDERS."""
    policy = EgressPolicy([])
    limits = httpx.Limits()
    async with guarded_client(policy, timeout=httpx.Timeout(5), limits=limits) as http:
        model = LiteLLMModel(litellm_module, http=http, timeout_s=5)
        try:
            with pytest.raises(EgressRefused):
                _ = [c async for c in model.stream(profile, [ChatMessage("user", "hi")])]
        finally:
            _forget_clients(litellm_module)


@pytest.mark.filterwarnings(LITELLM_IMPORT_WARNING)
async def test_litellm_refuses_providers_whose_connections_the_guard_cannot_see(
    litellm_module: Any, fake_llm: str
) -> None:
    """Cohere's route opens connections of its own (aiohttp), which the guarded client
    never sees: such a provider is refused unless MODEL_UNGUARDED_PROVIDERS lists it, and
    a listed one gets the check before the call only."""
    mark = f"unguarded-{uuid.uuid4().hex}"
    hello = [ChatMessage("user", mark)]
    profile = ModelProfile("cohere_chat/x", base_url=fake_llm + "/v1")
    limits = httpx.Limits()
    async with guarded_client(EgressPolicy([]), timeout=httpx.Timeout(5), limits=limits) as http:
        # The guarded client forbids the fake's loopback address: a call through it could
        # not reach the fake; nothing else may.
        model = LiteLLMModel(litellm_module, http=http, timeout_s=5)
        try:
            with pytest.raises(EgressRefused) as refused:
                _ = [c async for c in model.stream(profile, hello)]
        finally:
            _forget_clients(litellm_module)
    assert refused.value.code == "provider_unguarded"
    assert "cohere_chat" in str(refused.value) and "MODEL_UNGUARDED_PROVIDERS" in str(refused.value)

    policy = EgressPolicy([urlsplit(fake_llm).netloc])
    async with guarded_client(policy, timeout=httpx.Timeout(5), limits=limits) as http:
        listed = LiteLLMModel(
            litellm_module,
            policy=policy,
            http=http,
            timeout_s=5,
            unguarded_providers=["cohere_chat"],
        )
        try:
            # Listed, the call is made: the fake (no Cohere route) answers 404.
            with pytest.raises(ProviderError) as answered:
                _ = [c async for c in listed.stream(profile, hello)]
            assert not isinstance(answered.value, EgressRefused) and answered.value.status == 404
            # The check before the call still applies to its endpoint.
            elsewhere = ModelProfile("cohere_chat/x", base_url="http://127.0.0.1:9/v1")
            with pytest.raises(EgressRefused) as forbidden:
                _ = [c async for c in listed.stream(elsewhere, hello)]
            assert forbidden.value.code == "base_url_forbidden"
        finally:
            _forget_clients(litellm_module)


# ---- which secret goes where ------------------------------------------------------------

SchemaPool = Callable[[], Awaitable[asyncpg.Pool]]


@pytest.fixture
async def schema_pool(auth_sandbox: Sandbox) -> AsyncIterator[SchemaPool]:
    """Pools on empty schemas of their own in the sandbox's database: what a new install
    finds, or an old one migrated by hand up to a point."""
    schemas: list[str] = []
    pools: list[asyncpg.Pool] = []

    async def make() -> asyncpg.Pool:
        schemas.append(f"t_{uuid.uuid4().hex[:12]}")
        async with _connect(auth_sandbox) as conn:
            await conn.execute(f'CREATE SCHEMA "{schemas[-1]}"')
        pool = await asyncpg.create_pool(
            auth_sandbox.postgres_dsn,
            min_size=1,
            max_size=2,
            server_settings={"search_path": schemas[-1]},
        )
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()
    async with _connect(auth_sandbox) as conn:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@asynccontextmanager
async def _connect(sandbox: Sandbox) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(sandbox.postgres_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_secret_for_a_providers_default_endpoint_goes_to_that_provider_only(
    schema_pool: SchemaPool, tmp_path: Path
) -> None:
    """A profile without a base_url calls its provider's default endpoint: its secret goes
    there, never to another provider's default endpoint (a stale or forged turn's)."""
    pool = await schema_pool()
    await migrate(pool)
    store = ProfileStore(pool)
    for role, model in (("prefixed", "openai/gpt-4o-mini"), ("bare", "gpt-4o-mini")):
        await store.put(StoredProfile(role, MODE, model, api_key_ref="prov"))
    credentials = ProfileCredentials(store, SecretSource(tmp_path, {"prov": "sk-prov"}))

    async def sent(role: str, model: str, base_url: str | None = None) -> str | None:
        return await credentials.api_key(ModelProfile(model, role, MODE, base_url))

    assert await sent("prefixed", "openai/gpt-4o-mini") == "sk-prov"
    assert await sent("prefixed", "openai/gpt-4o") == "sk-prov"  # the same provider
    for other in ("anthropic/claude-3-5-haiku", "ollama_chat/x", "openrouter/openai/gpt-4o-mini"):
        assert await sent("prefixed", other) is None, other
    # Without a prefix LiteLLM infers the provider from the whole name: only that name.
    assert await sent("bare", "gpt-4o-mini") == "sk-prov"
    for other in ("claude-3-5-haiku-latest", "openai/gpt-4o-mini", "gpt-4o"):
        assert await sent("bare", other) is None, other
    assert await sent("prefixed", "openai/gpt-4o-mini", "https://1.1.1.1/v1") is None


async def _migrate_before(pool: asyncpg.Pool, first_not_applied: str) -> None:
    """Apply the migrations named before `first_not_applied`, as `migrate` does: what a
    stack that ran an older version of the gateway has."""
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    done = {r["name"] for r in await pool.fetch("SELECT name FROM schema_migrations")}
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < first_not_applied and path.name not in done:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations(name) VALUES ($1)", path.name)


async def test_an_upgraded_default_profile_keeps_its_key_as_a_new_install_has_it(
    schema_pool: SchemaPool, tmp_path: Path
) -> None:
    """Before migration 019 every profile was sent LLM_API_KEY; 019 gave the rows it found
    no ref. The default profile (role `dialogue`) gets the ref `default` back, as a new
    install seeds it; other rows, and rows written since 019, keep what they have."""
    seeded = default_profile(ProfileSettings(deployment_mode=MODE))
    old = await schema_pool()
    await _migrate_before(old, "019")
    for role, mode in (("dialogue", MODE), ("dialogue", "prod"), ("summary", MODE)):
        await old.execute(
            "INSERT INTO model_profiles (role, deployment_mode, model, created_at, updated_at)"
            " VALUES ($1, $2, 'openai/fake', now() - interval '1 day', now() - interval '1 day')",
            role,
            mode,
        )
    await _migrate_before(old, "021")  # what a stack that ran 019 and 020 has
    await old.execute(  # written since 019, without a ref: a choice, kept
        "INSERT INTO model_profiles (role, deployment_mode, model, api_key_ref)"
        " VALUES ('dialogue', 'chosen', 'openai/fake', NULL)"
    )
    upgrade = [path.name for path in sorted(MIGRATIONS.glob("*.sql")) if path.name >= "021"]
    assert await migrate(old) == upgrade
    new = await schema_pool()
    await migrate(new)
    refs: list[dict[tuple[str, str], str | None]] = []
    for pool in (old, new):
        await CachedProfiles(ProfileStore(pool), seeded).ensure_default()
        rows = await pool.fetch("SELECT role, deployment_mode, api_key_ref FROM model_profiles")
        refs.append({(r["role"], r["deployment_mode"]): r["api_key_ref"] for r in rows})
    assert refs[0] == {
        ("dialogue", MODE): "default",
        ("dialogue", "prod"): "default",
        ("summary", MODE): None,
        ("dialogue", "chosen"): None,
    }
    assert refs[1] == {("dialogue", MODE): "default"} == {("dialogue", MODE): seeded.api_key_ref}
    # ... so the upgraded default profile's calls carry LLM_API_KEY, as they did before 019.
    credentials = ProfileCredentials(ProfileStore(old), SecretSource(tmp_path, {"default": "sk"}))
    assert await credentials.api_key(ModelProfile("openai/fake", "dialogue", MODE)) == "sk"


def test_compose_allows_the_model_servers_pinned_address_only() -> None:
    """compose.yaml pins the llm container's address, outside the range Docker hands out,
    and MODEL_EGRESS_ALLOW lists that address and port, not whole private ranges."""
    compose = yaml.safe_load((Path(__file__).parents[2] / "compose.yaml").read_text())
    llm = compose["services"]["llm"]
    [(network, attached)] = llm["networks"].items()
    address = ipaddress.ip_address(attached["ipv4_address"])
    [pool] = compose["networks"][network]["ipam"]["config"]
    assert address in ipaddress.ip_network(pool["subnet"])
    assert address not in ipaddress.ip_network(pool["ip_range"])  # no other container gets it
    port = int(llm["command"][llm["command"].index("--port") + 1])
    for name in ("ingress", "llm_worker"):
        env = compose["services"][name]["environment"]
        allowed = [AllowEntry.parse(entry) for entry in json.loads(env["MODEL_EGRESS_ALLOW"])]
        assert allowed == [AllowEntry(ipaddress.ip_network(address), port)], name
        assert network in compose["services"][name].get("networks", [network])
