"""A Python client generated from the live OpenAPI document works, unchanged.

Users generate SDKs from `/openapi.json`; a document that does not say what the gateway
answers yields a client that mis-parses it. So this test does what such a user does:
fetches the document from a running ingress (auth on, a sandbox of its own, no stage
workers: a turn only has to reach Kafka to be accepted), generates a client with
openapi-python-client (pinned in deploy/install.sh, in a venv of its own that `make test`
installs), imports the generated package as it is, and uses it to create a key, post a
turn with that key and list the model profiles. Every answer must come back as the typed
model the document names for its status, errors too: a 401 and a 422 are parsed as the
documented error model, every member of the body a field of it.

The generated code imports httpx, attrs and python-dateutil: the gateway's venv has all
three (httpx is a dependency of the gateway, attrs of hypothesis and jsonschema,
python-dateutil of openfga-sdk).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import httpx
import pytest

from gateway_runtime.settings import CommonSettings
from testbed.mesh import Mesh, lone_ingress
from testbed.sandbox import ROOT, open_sandbox

BAD_KEY = "sk_0123456789abcdef_not-a-real-secret"


def _generator(settings: CommonSettings) -> Path:
    """The openapi-python-client that `deploy/install.sh dev` (or `client-gen`) installed."""
    script = (ROOT / "deploy" / "install.sh").read_text()
    pin = re.search(r"^OPENAPI_PYTHON_CLIENT_VERSION=(\S+)$", script, re.MULTILINE)
    assert pin, "no OPENAPI_PYTHON_CLIENT_VERSION in deploy/install.sh"
    venv = settings.soma_home / "openapi-python-client" / f"venv-{pin.group(1)}"
    tool = venv / "bin" / "openapi-python-client"
    if not (venv / ".done").exists():
        pytest.fail(f"{tool} is missing: run `bash deploy/install.sh client-gen` (make test does)")
    return tool


@pytest.fixture(scope="module")
async def client_target(settings: CommonSettings, fake_llm: str) -> AsyncIterator[tuple[Mesh, str]]:
    """An ingress with auth on (no stage workers) and its operator key."""
    async with (
        open_sandbox("client", settings) as sandbox,
        lone_ingress(sandbox, fake_llm + "/v1") as target,
    ):
        yield target


class Generated:
    """The generated package and the document it was generated from."""

    def __init__(self, document: dict[str, Any], package: ModuleType, root: Path) -> None:
        self.document = document
        self.package = package
        self.root = root
        self.models = importlib.import_module(f"{package.__name__}.models")

    def operation(self, method: str, path: str) -> ModuleType:
        """The generated module of `method path`, found by what it sends, not by its name
        (which follows the operationId and tag the document chooses)."""
        found = [
            f
            for f in (self.root / "api").rglob("*.py")
            if f'"method": "{method}"' in (text := f.read_text()) and f'"url": "{path}"' in text
        ]
        assert len(found) == 1, f"{method.upper()} {path}: generated modules {found}"
        dotted = ".".join(found[0].relative_to(self.root).with_suffix("").parts)
        return importlib.import_module(f"{self.package.__name__}.{dotted}")

    def models_of(self, method: str, path: str, status: int) -> set[str]:
        """The schema names the document gives for `status` of `method path`: the models a
        generated client parses that answer into (items of an array, members of a union)."""
        responses = self.document["paths"][path][method]["responses"]
        assert str(status) in responses, f"{method.upper()} {path}: {status} is not documented"
        content = responses[str(status)].get("content", {})
        assert "application/json" in content, f"{method.upper()} {path} {status}: {content}"
        names = set(_refs(content["application/json"]["schema"]))
        assert names, f"{method.upper()} {path} {status}: no named schema"
        return names


def _refs(schema: dict[str, Any]) -> Iterator[str]:
    if "$ref" in schema:
        yield schema["$ref"].rpartition("/")[2]
    for member in (*schema.get("anyOf", ()), *schema.get("oneOf", ())):
        yield from _refs(member)
    if "items" in schema:
        yield from _refs(schema["items"])


@pytest.fixture(scope="module")
async def generated(
    client_target: tuple[Mesh, str],
    settings: CommonSettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Generated:
    """A client generated from the running ingress's /openapi.json, imported unchanged."""
    mesh, _ = client_target
    tool = _generator(settings)
    work = tmp_path_factory.mktemp("generated-client")
    async with httpx.AsyncClient(base_url=mesh.base_url, timeout=10) as http:
        r = await http.get("/openapi.json")
        assert r.status_code == 200, r.text
    document = r.json()
    (work / "openapi.json").write_text(json.dumps(document))
    # Its post-generation hooks run `ruff` from PATH: the generator's own, in its venv.
    env = {**os.environ, "PATH": f"{tool.parent}{os.pathsep}{os.environ['PATH']}", "NO_COLOR": "1"}
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(tool),
        "generate",
        "--path",
        "openapi.json",
        "--output-path",
        "out",
        cwd=work,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    report = out.decode(errors="replace")
    print(f"\nopenapi-python-client generate: {time.monotonic() - t0:.1f}s\n{report.strip()}")
    assert proc.returncode == 0, report
    # The generator warns of each part of the document it could not turn into code (and
    # leaves that part out): a client of the whole document has none.
    assert "warning" not in report.lower(), report
    roots = [p.parent for p in (work / "out").glob("*/client.py")]
    assert len(roots) == 1, roots
    sys.path.insert(0, str(roots[0].parent))
    try:
        package = importlib.import_module(roots[0].name)
    finally:
        sys.path.remove(str(roots[0].parent))
    return Generated(document, package, roots[0])


def _client(generated: Generated, mesh: Mesh, token: str) -> Any:
    """The generated AuthenticatedClient: an undocumented status raises, never passes."""
    return generated.package.AuthenticatedClient(
        base_url=mesh.base_url, token=token, raise_on_unexpected_status=True
    )


def _undocumented(value: Any, where: str = "body") -> Iterator[str]:
    """Members of an answer that its parsed model has no field for (kept aside by the
    generated model in `additional_properties`)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _undocumented(item, f"{where}[{i}]")
    elif attrs.has(type(value)):
        for name in getattr(value, "additional_properties", {}):
            yield f"{where}.{name}"
        for field in attrs.fields(type(value)):
            if field.name != "additional_properties":
                yield from _undocumented(getattr(value, field.name), f"{where}.{field.name}")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield from _strings(getattr(value, field.name))


def _assert_error(generated: Generated, method: str, path: str, answer: Any, code: str) -> None:
    """`answer` was parsed into the error model the document names for its status, with
    every member of the body a field of it, and the error's code among its fields."""
    status = int(answer.status_code)
    body = json.loads(answer.content)
    parsed = answer.parsed
    assert parsed is not None, f"{status} left unparsed: {body}"
    assert type(parsed).__name__ in generated.models_of(method, path, status), (status, parsed)
    assert parsed.to_dict() == body
    assert not list(_undocumented(parsed)), (status, list(_undocumented(parsed)), body)
    assert code in set(_strings(parsed)), (status, parsed)


async def test_a_generated_client_creates_a_key_posts_a_turn_and_lists_profiles(
    client_target: tuple[Mesh, str], generated: Generated
) -> None:
    mesh, operator_key = client_target
    models = generated.models
    create_key = generated.operation("post", "/v1/keys")
    post_message = generated.operation("post", "/v1/session/message")
    create_profile = generated.operation("post", "/v1/model-profiles")
    list_profiles = generated.operation("get", "/v1/model-profiles")

    async with _client(generated, mesh, operator_key) as operator:
        # A key, created with the operator key: the secret comes back once, typed.
        body = models.KeyIn(label="generated client", tenant="default")
        created = await create_key.asyncio_detailed(client=operator, body=body)
        assert created.status_code == 201, created.content
        key = created.parsed
        assert type(key).__name__ in generated.models_of("post", "/v1/keys", 201)
        assert key.secret.startswith("sk_") and key.tenant == "default"
        assert key.scopes == ["turns"] and key.revoked is False
        assert isinstance(key.created_at, datetime)

        # A model profile (a new mesh has none), then the list, as the operator sees it:
        # where and how each model is called too.
        profile_in = models.ProfileIn(role="generated", deployment_mode="local", model="openai/x")
        stored = await create_profile.asyncio_detailed(client=operator, body=profile_in)
        assert stored.status_code == 201, stored.content
        listed = await list_profiles.asyncio_detailed(client=operator)
        assert listed.status_code == 200, listed.content
        profiles = listed.parsed
        assert isinstance(profiles, list) and len(profiles) == 1, listed.content
        (profile,) = profiles
        assert type(profile).__name__ in generated.models_of("get", "/v1/model-profiles", 200)
        assert (profile.role, profile.deployment_mode, profile.model) == (
            "generated",
            "local",
            "openai/x",
        )
        assert isinstance(profile.max_tokens, int) and isinstance(profile.temperature, float)
        assert profile.base_url is None and profile.kwargs is not None  # the operator's view

        # A request the gateway refuses (an empty label) is its documented 422, parsed.
        refused = await create_key.asyncio_detailed(client=operator, body=models.KeyIn(label=""))
        assert refused.status_code == 422, refused.content
        _assert_error(generated, "post", "/v1/keys", refused, "invalid_request")

    async with _client(generated, mesh, key.secret) as user:
        # A turn, posted with the new key: accepted, with the id of its first event.
        turn = models.MessageIn(message="hello from a generated client")
        accepted = await post_message.asyncio_detailed(client=user, body=turn)
        assert accepted.status_code == 202, accepted.content
        answer = accepted.parsed
        assert type(answer).__name__ in generated.models_of("post", "/v1/session/message", 202)
        assert isinstance(answer.event_id, str) and answer.event_id
        assert isinstance(answer.session_id, str) and answer.session_id

    async with _client(generated, mesh, BAD_KEY) as stranger:
        # A key the gateway does not know: its documented 401, parsed.
        denied = await post_message.asyncio_detailed(client=stranger, body=turn)
        assert denied.status_code == 401, denied.content
        _assert_error(generated, "post", "/v1/session/message", denied, "invalid_api_key")
