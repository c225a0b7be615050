"""schemas/asyncapi.yaml: valid for the AsyncAPI parser, and true to the code.

The parser (@asyncapi/parser and its Avro schema parser, as `asyncapi validate` uses them)
is installed by `deploy/install.sh dev` under $SOMA_HOME/npm/asyncapi-<hash> (the hash of
deploy/asyncapi/package*.json, computed here the same way); it must accept the document
and refuse a broken copy. The parser does not check the Avro schemas of an AsyncAPI 3
document (it only converts them), so that the referenced .avsc files are the ones the codec
loads, with the versions it reads, is checked here.

The rest compares the document with the code it describes: the topics and partitions
(schemas/topics.py), each topic's record versions (the .avsc files the codec loads), the
headers `Codec.encode` and the stage loop's dead-lettering write, the consumer groups
(schemas/stages.py), and the session stream's event types and data members. The code has
no one list of those event types: each publisher names its own, so they are read from
every `fanout.publish(session, turn, "<type>", data)` call (and `publish_error`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import time
from collections import defaultdict
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml

from gateway_runtime.delivery import REPLAY_HEADERS
from gateway_runtime.errors import PublishRefused
from gateway_runtime.settings import CommonSettings
from gateway_runtime.stage import StageLoop
from ingress.routes.session import closing_event
from schemas.codec import AVRO_DIR, Codec, load_schemas
from schemas.events import EVENT_TYPES, ErrorInfo, TurnRequested
from schemas.stages import STAGES
from schemas.stream_events import SESSION_EVENT_TYPES
from schemas.topics import INBOUND_PARTITIONS, Topics, inbound_topic

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = REPO / "schemas" / "asyncapi.yaml"
VALIDATOR = REPO / "deploy" / "asyncapi" / "validate.mjs"
NAMESPACE = "soma"  # the document shows the default namespace
AVRO_FORMAT = "application/vnd.apache.avro;version=1.9.0"
# The packages the stream events are published from (tests and benchmarks publish their own).
MESH_PACKAGES = (
    "adapters",
    "context_worker",
    "deadletter_index",
    "gateway_runtime",
    "ingress",
    "llm_worker",
    "persistence_worker",
    "policy_worker",
    "schemas",
    "tool_dispatcher",
)


# ---- the parser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_modules(settings: CommonSettings) -> Path:
    spec = REPO / "deploy" / "asyncapi"
    digest = hashlib.sha256(
        (spec / "package.json").read_bytes() + (spec / "package-lock.json").read_bytes()
    ).hexdigest()[:16]
    installed = settings.soma_home / "npm" / f"asyncapi-{digest}"
    if not (installed / ".done").exists():
        pytest.fail(f"{installed} is missing: `bash deploy/install.sh asyncapi` (make test does)")
    if shutil.which("node") is None:
        pytest.fail("node is missing (Node.js 18+ runs the AsyncAPI parser)")
    return installed / "node_modules"


def validate(node_modules: Path, *documents: Path) -> subprocess.CompletedProcess[str]:
    args = ["node", str(VALIDATOR), "--modules", str(node_modules), *map(str, documents)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_the_parser_accepts_the_document(node_modules: Path) -> None:
    done = validate(node_modules, DOCUMENT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{DOCUMENT}: valid (0 errors, 0 warnings" in done.stdout, done.stdout


def test_the_parser_refuses_a_broken_document(node_modules: Path, tmp_path: Path) -> None:
    """A copy with a $ref to a missing .avsc file, and one without a required field."""
    shutil.copytree(AVRO_DIR, tmp_path / "avro")
    text = DOCUMENT.read_text()
    broken_ref = tmp_path / "broken_ref.yaml"
    broken_ref.write_text(text.replace("./avro/TurnRequested.v3.avsc", "./avro/Missing.v3.avsc"))
    no_version = tmp_path / "no_version.yaml"
    assert "\n  version: 0.1.0\n" in text
    no_version.write_text(text.replace("\n  version: 0.1.0\n", "\n", 1))  # info.version

    done = validate(node_modules, broken_ref, no_version)

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{broken_ref}: INVALID" in done.stdout, done.stdout
    assert f"{broken_ref}: error invalid-ref" in done.stdout, done.stdout
    assert "Missing.v3.avsc" in done.stdout
    assert f"{no_version}: INVALID" in done.stdout, done.stdout
    assert 'required property "version"' in done.stdout, done.stdout


# ---- the document, read as data -------------------------------------------------------------


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    return loaded


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """A local `$ref` (`#/a/b`) followed to what it names, until it is not a ref."""
    while isinstance(node, dict) and "$ref" in node and node["$ref"].startswith("#/"):
        target: Any = doc
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def kafka_channels(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: channel
        for name, channel in doc["channels"].items()
        if {"$ref": "#/servers/kafka"} in channel["servers"]
    }


def channel_by_address(doc: dict[str, Any], address: str) -> dict[str, Any]:
    found = [c for c in doc["channels"].values() if c["address"] == address]
    assert len(found) == 1, f"{address}: {len(found)} channels"
    channel: dict[str, Any] = found[0]
    return channel


def operations(doc: dict[str, Any], action: str, channel: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        op
        for op in doc["operations"].values()
        if op["action"] == action and resolve(doc, op["channel"]) is channel
    ]


def avro_file(message: dict[str, Any]) -> str:
    """The .avsc file a record message's payload refers to (never a copy of it)."""
    payload = message["payload"]
    assert payload["schemaFormat"] == AVRO_FORMAT, message["name"]
    assert list(payload["schema"]) == ["$ref"], f"{message['name']}: the schema is not a $ref"
    ref: str = payload["schema"]["$ref"]
    assert ref.startswith("./avro/"), ref
    return ref.removeprefix("./avro/")


def versions_of(doc: dict[str, Any], messages: list[Any]) -> set[tuple[str, int]]:
    """(full name, version) of each record message, from the file it refers to."""
    out = set()
    for ref in messages:
        message = resolve(doc, ref)
        path = AVRO_DIR / avro_file(message)
        raw = json.loads(path.read_text())
        full_name = f"{raw['namespace']}.{raw['name']}"
        version = int(path.name.split(".v")[1].removesuffix(".avsc"))
        assert message["name"] == full_name, path.name
        consts = resolve(doc, message["headers"])["allOf"][1]["properties"]
        assert consts == {"schema": {"const": full_name}, "schema-version": {"const": str(version)}}
        out.add((full_name, version))
    return out


# ---- topics, records, consumer groups ---------------------------------------------------------

TOPICS = Topics.for_namespace(NAMESPACE)
INBOUND = inbound_topic(NAMESPACE, "{automation}")


def record_of(topic_field: str) -> str:
    """The record a topic carries, as schemas/topics.py says (its doc's first word)."""
    name = getattr(TOPICS, topic_field).doc.split(",")[0]
    full_name = f"soma.events.{name}"
    assert full_name in EVENT_TYPES, f"{topic_field}: {name!r} is not an event type"
    return full_name


def test_the_kafka_channels_are_the_topics_the_code_defines(doc: dict[str, Any]) -> None:
    channels = {c["address"]: c for c in kafka_channels(doc).values()}
    assert set(channels) == {t.name for t in TOPICS.all()} | {INBOUND}
    for topic in TOPICS.all():
        binding = channels[topic.name]["bindings"]["kafka"]
        assert binding["topic"] == topic.name
        assert binding["partitions"] == topic.partitions, topic.name
    assert channels[INBOUND]["bindings"]["kafka"]["partitions"] == INBOUND_PARTITIONS
    assert set(channels[INBOUND]["parameters"]) == {"automation"}


def test_each_topic_lists_every_version_of_its_record(doc: dict[str, Any]) -> None:
    """Consumers read every version the codec knows; the mesh writes the newest alone."""
    known = load_schemas()
    referenced: set[str] = set()
    addresses = {f.name: getattr(TOPICS, f.name).name for f in fields(Topics)}
    for field, address in [*addresses.items(), ("requested", INBOUND)]:
        if field == "dead_letter":
            continue
        full_name = record_of(field)
        channel = channel_by_address(doc, address)
        listed = versions_of(doc, list(channel["messages"].values()))
        assert listed == {key for key in known if key[0] == full_name}, address
        newest = EVENT_TYPES[full_name].VERSION
        for op in operations(doc, "send", channel):
            assert versions_of(doc, op["messages"]) == {(full_name, newest)}, address
        for op in operations(doc, "receive", channel):
            assert versions_of(doc, op["messages"]) == listed, address
        referenced |= {avro_file(resolve(doc, m)) for m in channel["messages"].values()}
    records = {p.name for p in AVRO_DIR.glob("*.avsc") if not p.name.startswith("common.")}
    assert referenced == records


def test_the_consumer_groups_are_the_stages(doc: dict[str, Any]) -> None:
    groups = set()
    for channel in kafka_channels(doc).values():
        for op in operations(doc, "receive", channel):
            (group,) = op["bindings"]["kafka"]["groupId"]["enum"]
            groups.add((group, channel["address"], op["x-service"]))
            if channel["address"] in (TOPICS.requested.name, INBOUND):
                assert op["x-subscription-pattern"] == TOPICS.turn_sources()
    stages = {(s.group(NAMESPACE), s.input_topic(TOPICS).name, s.service) for s in STAGES}
    policy = next(s for s in STAGES if s.input == "requested")
    assert groups == stages | {(policy.group(NAMESPACE), INBOUND, policy.service)}


# ---- headers -------------------------------------------------------------------------------


def test_the_record_headers_are_those_the_codec_and_a_replay_write(doc: dict[str, Any]) -> None:
    event = TurnRequested(event_id="e1", session_id="s1", message="hi", created_at_ms=1)
    traced = Codec().encode(event, traceparent=f"00-{'a' * 32}-{'b' * 16}-01")
    plain = Codec().encode(event)
    headers = doc["components"]["schemas"]["RecordHeaders"]
    assert set(headers["required"]) == {name for name, _ in plain.headers}
    assert set(headers["properties"]) == {name for name, _ in traced.headers} | REPLAY_HEADERS
    assert plain.key == b"s1"  # the documented key: the session id, UTF-8


def test_the_dead_letter_headers_are_those_the_stage_loop_writes(doc: dict[str, Any]) -> None:
    source = SimpleNamespace(
        topic="soma.turn.authorized", partition=3, offset=42, key=b"s1", value=b"x",
        headers=[("event-id", b"e1"), ("dlq-stage", b"stale")],
    )  # fmt: skip
    entry = SimpleNamespace(source=source, outputs=[], on_commit=None)
    loop = cast(Any, SimpleNamespace(_stage="context", _dead_letter_topic="soma.deadletter"))
    loop._dead_lettered = lambda *_: None
    StageLoop._dead_letter(loop, cast(Any, entry), ValueError("bad"), 3, time.time())
    [(topic, dead)] = entry.outputs
    written = [name for name, _ in dead.headers]
    provenance = {name for name in written if name.startswith("dlq-")}
    assert topic == "soma.deadletter" and written.count("dlq-stage") == 1

    # A dead letter the broker refuses with its value goes with its provenance alone.
    StageLoop._replace_refused(loop, cast(Any, entry), (topic, dead), PublishRefused("too big"))
    [(_, stripped)] = entry.outputs
    omitted = {name for name, _ in stripped.headers} - set(written)

    schema = doc["components"]["schemas"]["DeadLetterHeaders"]
    assert set(schema["required"]) == provenance
    record = set(doc["components"]["schemas"]["RecordHeaders"]["properties"])
    assert set(schema["properties"]) == provenance | omitted | record
    assert omitted == {"dlq-value-omitted"}


# ---- the session streams -------------------------------------------------------------------


def _literal(node: ast.expr, where: str) -> str:
    assert isinstance(node, ast.Constant) and isinstance(node.value, str), where
    return node.value


def _modules() -> list[Path]:
    return sorted(p for package in MESH_PACKAGES for p in (REPO / package).rglob("*.py"))


def _functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


class _Scan:
    """The stream events the mesh publishes: their types, and the members of their data
    (one set per publishing call), read from the code."""

    def __init__(self) -> None:
        self.trees = {path: ast.parse(path.read_text()) for path in _modules()}
        self.returns: dict[str, ast.expr] = {}  # function name -> the dict literal it returns
        for tree in self.trees.values():
            for fn in _functions(tree):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
                        self.returns[fn.name] = node.value
        self.data: dict[str, list[set[str]]] = defaultdict(list)
        for path, tree in self.trees.items():
            for fn in _functions(tree):
                for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
                    self._visit(path, fn, call)

    def _visit(self, path: Path, fn: ast.AST, call: ast.Call) -> None:
        func = call.func
        if not isinstance(func, ast.Attribute):
            return
        where = f"{path.relative_to(REPO)}:{call.lineno}"
        if func.attr == "publish_error":
            self.data["error"].append({f.name for f in fields(ErrorInfo)})
        elif func.attr == "publish" and len(call.args) >= 4:  # (session, turn, type, data)
            kind = call.args[2]
            assert isinstance(kind, ast.Constant) and isinstance(kind.value, str), (
                f"{where}: the event type is not a literal"
            )
            self.data[kind.value].append(self._keys(fn, call.args[3], where))

    def _keys(self, fn: ast.AST, node: ast.expr, where: str) -> set[str]:
        if isinstance(node, ast.Name):  # a local: its assignment in the same function
            for n in ast.walk(fn):
                if isinstance(n, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == node.id for t in n.targets
                ):
                    return self._keys(fn, n.value, where)
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
                    if n.target.id == node.id and n.value is not None:
                        return self._keys(fn, n.value, where)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "asdict":  # the stream's errors are ErrorInfo's members
                return {f.name for f in fields(ErrorInfo)}
            if node.func.id in self.returns:
                return self._keys(fn, self.returns[node.func.id], where)
        if isinstance(node, ast.Dict):
            keys: set[str] = set()
            for key, value in zip(node.keys, node.values, strict=True):
                if key is None:  # `**mapping`
                    keys |= self._keys(fn, value, where)
                else:
                    keys.add(_literal(key, where))
            return keys
        raise AssertionError(f"{where}: cannot tell the event data's members")


@pytest.fixture(scope="module")
def published() -> dict[str, list[set[str]]]:
    data = _Scan().data
    # The last event of a stream the gateway ends (not published: written by the ingress).
    frame = closing_event("s1", "key_revoked").decode()
    kind = frame.split("\n")[0].removeprefix("event: ")
    data[kind].append(set(json.loads(frame.split("\n")[1].removeprefix("data: "))["data"]))
    return data


def _event_messages(doc: dict[str, Any], operation: str) -> dict[str, dict[str, Any]]:
    messages = [resolve(doc, m) for m in doc["operations"][operation]["messages"]]
    return {m["name"]: m for m in messages}


@pytest.mark.parametrize("operation", ["sendSessionEvents", "sendStreamEvents"])
def test_the_stream_event_types_are_those_the_code_publishes(
    doc: dict[str, Any], published: dict[str, list[set[str]]], operation: str
) -> None:
    messages = _event_messages(doc, operation)
    assert set(messages) == set(published)
    channel = resolve(doc, doc["operations"][operation]["channel"])
    assert {resolve(doc, m)["name"] for m in channel["messages"].values()} >= set(published)


def test_the_openapi_document_lists_the_same_event_types(
    published: dict[str, list[set[str]]],
) -> None:
    """The SSE operation of the OpenAPI document names its event types from this list."""
    assert set(SESSION_EVENT_TYPES) == set(published)


def test_the_stream_event_data_is_what_the_code_publishes(
    doc: dict[str, Any], published: dict[str, list[set[str]]]
) -> None:
    """Every member some publisher writes is documented; the required ones, every one."""
    for kind, message in _event_messages(doc, "sendSessionEvents").items():
        envelope, specific = message["payload"]["allOf"]
        assert resolve(doc, envelope) is doc["components"]["schemas"]["StreamEvent"]
        assert specific["properties"]["type"] == {"const": kind}
        data = specific["properties"]["data"]
        sites = published[kind]
        assert set(data["properties"]) == set().union(*sites), kind
        assert set(data["required"]) == set.intersection(*sites), kind


def test_the_envelope_is_what_the_fanout_writes(doc: dict[str, Any]) -> None:
    """The fan-out's payload members (its `json.dumps({...})`), and `id` on WebSocket."""
    tree = ast.parse((REPO / "gateway_runtime" / "fanout.py").read_text())
    dumps = next(
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "dumps"
    )
    assert isinstance(dumps.args[0], ast.Dict)
    members = {k.value for k in dumps.args[0].keys if isinstance(k, ast.Constant)}
    envelope = doc["components"]["schemas"]["StreamEvent"]
    assert set(envelope["required"]) == members
    assert set(envelope["properties"]) == members | {"id"}


def test_the_websocket_replies_are_those_the_route_sends(doc: dict[str, Any]) -> None:
    """`ws.send_json({...})` in ingress/routes/stream.py: a turn's acknowledgement, or an
    error frame."""
    tree = ast.parse((REPO / "ingress" / "routes" / "stream.py").read_text())
    frames: dict[str, set[str]] = defaultdict(set)
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            if n.func.attr == "send_json" and isinstance(n.args[0], ast.Dict):
                where = f"ingress/routes/stream.py:{n.lineno}"
                members = {
                    _literal(k, where) if k else "**": v
                    for k, v in zip(n.args[0].keys, n.args[0].values, strict=True)
                }
                frames[_literal(members["type"], where)] |= set(members)
    reply = doc["operations"]["receiveStreamTurn"]["reply"]
    documented = {resolve(doc, m)["name"]: resolve(doc, m) for m in reply["messages"]}
    assert set(documented) == set(frames)
    for kind, sent in frames.items():
        assert set(documented[kind]["payload"]["properties"]) == sent, kind
