"""Avro codec for the mesh's events (fastavro, schemaless binary plus headers).

A Kafka record of the mesh is:
  key     = session_id (UTF-8), so one partition carries a session's events in order
  value   = Avro binary of the record, written with the schema the headers name
  headers = event-id, trace-id, tenant, schema (full name), schema-version, and when the
            writer traces (gateway_runtime/tracing.py) W3C `traceparent`, whose trace id is
            the `trace-id` header's

The reader resolves the writer's version against the newest one it knows, so data written
with an older schema version reads with the current one (new fields take their defaults).
"""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import UnknownType

from schemas.events import EVENT_TYPES, Event, request_of, to_avro

AVRO_DIR = Path(__file__).parent / "avro"
_FILE_RE = re.compile(r"^(?P<name>[A-Z][A-Za-z]+)\.v(?P<version>\d+)\.avsc$")

Headers = list[tuple[str, bytes]]


class DecodeError(ValueError):
    """The record cannot be read as a mesh event: missing headers, unknown schema, bad bytes."""


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    key: bytes
    value: bytes
    headers: Headers


def headers_to_json(headers: Headers) -> str:
    """Record headers as JSON (values base64), for a record kept in Postgres."""
    return json.dumps([[k, base64.b64encode(v or b"").decode()] for k, v in headers])


def headers_from_json(raw: str | list[Any]) -> Headers:
    items = json.loads(raw) if isinstance(raw, str) else raw
    return [(str(k), base64.b64decode(v)) for k, v in items]


def header(headers: Headers | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", "replace") if value is not None else None
    return None


def load_schemas(directory: Path = AVRO_DIR) -> dict[tuple[str, int], Any]:
    """Parse every `<Name>.v<N>.avsc` under directory, keyed by (full name, version).

    Composite schemas refer to other records by full name; they are parsed against the
    newest version of each named type (and `common.v*.avsc`), retried until all resolve. A
    composite version written before an embedded record's newest version names the version
    it embeds in a top-level `"embeds": {"<full name>": <version>}`, so its data still reads
    as it was written.
    """
    shared: dict[str, Any] = {}
    for path in sorted(directory.glob("common.v*.avsc")):
        fastavro.parse_schema(json.loads(path.read_text()), named_schemas=shared)

    pending = []
    newest: dict[str, int] = {}
    for path in sorted(directory.glob("*.avsc")):
        match = _FILE_RE.match(path.name)
        if match:
            raw, version = json.loads(path.read_text()), int(match["version"])
            pending.append((raw, version))
            full_name = _full_name(raw)
            newest[full_name] = max(version, newest.get(full_name, 0))

    parsed: dict[tuple[str, int], Any] = {}
    versions: dict[tuple[str, int], Any] = {}  # each parsed version, as records embed it
    while pending:
        progress = False
        for raw, version in list(pending):
            full_name = _full_name(raw)
            named = {k: v for k, v in shared.items() if k != full_name}
            pins = raw.get("embeds", {})
            if any((name, v) not in versions for name, v in pins.items()):
                continue
            named.update({name: versions[(name, v)] for name, v in pins.items()})
            try:
                parsed[(full_name, version)] = fastavro.parse_schema(raw, named_schemas=named)
            except UnknownType:
                continue
            pending.remove((raw, version))
            progress = True
            versions[(full_name, version)] = named[full_name]
            # Only the newest version is what other records embed (unless they pin one in
            # "embeds": the version they were written with): an older one that happens to
            # resolve first must not stand in for it.
            if version == newest[full_name]:
                shared[full_name] = named[full_name]
        if not progress:
            names = [raw["name"] for raw, _ in pending]
            raise RuntimeError(f"unresolvable schema references in {names}")
    return parsed


def _full_name(raw: dict[str, Any]) -> str:
    return f"{raw.get('namespace', '')}.{raw['name']}".lstrip(".")


class Codec:
    """Encodes events to Kafka records and back; one instance per process."""

    def __init__(self, directory: Path = AVRO_DIR) -> None:
        self._schemas = load_schemas(directory)
        self._newest: dict[str, tuple[int, Any]] = {}
        for (name, version), schema in self._schemas.items():
            if version > self._newest.get(name, (0, None))[0]:
                self._newest[name] = (version, schema)
        for cls in EVENT_TYPES.values():
            assert self._newest[cls.SCHEMA][0] == cls.VERSION, f"{cls.SCHEMA} version mismatch"

    def schema(self, name: str, version: int | None = None) -> Any:
        if version is None:
            return self._newest[name][1]
        return self._schemas[(name, version)]

    def encode(
        self, event: Event, *, trace_id: str | None = None, traceparent: str | None = None
    ) -> EncodedEvent:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self._newest[event.SCHEMA][1], to_avro(event))
        request = request_of(event)
        if trace_id is None and traceparent is not None:  # `00-<trace id>-<span id>-<flags>`
            trace_id = traceparent.split("-")[1]
        headers: Headers = [
            ("event-id", request.event_id.encode()),
            ("trace-id", (trace_id or uuid.uuid4().hex).encode()),
            ("tenant", request.tenant.encode()),
            ("schema", event.SCHEMA.encode()),
            ("schema-version", str(event.VERSION).encode()),
        ]
        if traceparent is not None:
            headers.append(("traceparent", traceparent.encode()))
        return EncodedEvent(request.session_id.encode(), buf.getvalue(), headers)

    def decode(self, value: bytes | None, headers: Headers | None) -> Event:
        name = header(headers, "schema")
        version_text = header(headers, "schema-version")
        if name is None or version_text is None:
            raise DecodeError("missing 'schema' or 'schema-version' header")
        if not version_text.isdigit() or (name, int(version_text)) not in self._schemas:
            raise DecodeError(f"unknown schema {name!r} version {version_text!r}")
        if name not in EVENT_TYPES:
            raise DecodeError(f"{name!r} is not an event type")
        if value is None:
            raise DecodeError("empty record value")
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(value), self._schemas[(name, int(version_text))], self._newest[name][1]
            )
            # fastavro types a record as any Avro datum; these schemas are records (dicts).
            return EVENT_TYPES[name].from_avro(record)  # type: ignore[arg-type]
        except Exception as exc:  # fastavro raises many kinds on corrupt bytes
            raise DecodeError(f"cannot read {name} v{version_text}: {exc!r}"[:500]) from exc
