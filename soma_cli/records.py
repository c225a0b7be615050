"""`soma-gateway record check FILE`: would the mesh read this record as its producer means it?

For people who publish to Kafka without the project's code (docs/events.md, "Publishing a
turn from an automation"): the record is described as JSON (its key, its headers, and its
value either as the Avro datum given to `fastavro.schemaless_writer` or as the bytes
themselves, base64) and checked the way the policy stage reads it: the headers name a
schema and version the mesh knows, the value is valid Avro of that schema, the codec
decodes it, and the key and the `event-id` and `tenant` headers agree with the value.
Nothing is sent anywhere.

    {"topic": "soma.inbound.nightly",
     "key": "nightly-report",
     "headers": {"event-id": "…", "trace-id": "…", "tenant": "acme",
                 "schema": "soma.events.TurnRequested", "schema-version": "3"},
     "value": {"event_id": "…", "session_id": "nightly-report", …}}
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import fastavro
from fastavro.validation import ValidationError, validate

from schemas.codec import Codec, DecodeError
from schemas.events import TurnRequested, request_of

OK, INVALID, UNREADABLE = 0, 1, 2
REQUIRED_HEADERS = ("event-id", "trace-id", "tenant", "schema", "schema-version")
# What a producer outside the mesh may publish to: an automation's own topic.
INBOUND_TOPIC = re.compile(r"^[A-Za-z0-9_-]+\.inbound\.[A-Za-z0-9_-]+$")


def add_commands(group: argparse.ArgumentParser) -> None:
    commands = group.add_subparsers(dest="command", required=True, metavar="ACTION")
    check = commands.add_parser(
        "check", help="check a record described as JSON (key, headers, value) before publishing"
    )
    check.add_argument("file", type=Path, help="the record as JSON ('-' for stdin)")


def main(args: argparse.Namespace, out: Any, err: Any) -> int:
    try:
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
        record = json.loads(text)
    except (OSError, ValueError) as exc:
        err.write(f"error: cannot read {args.file}: {exc}\n")
        return UNREADABLE
    problems, summary = check(record)
    for problem in problems:
        err.write(f"invalid: {problem}\n")
    if problems:
        return INVALID
    out.write(f"ok: {summary}\n")
    return OK


def check(record: Any) -> tuple[list[str], str]:
    """The record's problems (none: the mesh reads it as meant) and what it is."""
    if not isinstance(record, dict):
        return ["the record must be a JSON object with key, headers and value"], ""
    headers = record.get("headers")
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        return ["headers must be an object of strings"], ""
    missing = [h for h in REQUIRED_HEADERS if not headers.get(h)]
    if missing:
        return [f"missing header(s): {', '.join(missing)}"], ""
    codec = Codec()
    name, version_text = headers["schema"], headers["schema-version"]
    if not version_text.isdigit():
        return [f"schema-version must be ASCII digits, not {version_text!r}"], ""
    try:
        schema = codec.schema(name, int(version_text))
    except KeyError:
        return [f"unknown schema {name!r} version {version_text} (see schemas/avro/)"], ""
    value, problems = _value_bytes(record, schema)
    if value is None:
        return problems, ""
    encoded = [(k, v.encode()) for k, v in headers.items()]
    try:
        event = codec.decode(value, encoded)
    except DecodeError as exc:
        return [str(exc)], ""
    request = request_of(event)
    key = record.get("key")
    if key != request.session_id:
        problems.append(f"key {key!r} is not the record's session_id {request.session_id!r}")
    if headers["event-id"] != request.event_id:
        problems.append(f"header event-id is not the record's event_id {request.event_id!r}")
    if headers["tenant"] != request.tenant:
        problems.append(f"header tenant is not the record's tenant {request.tenant!r}")
    topic = record.get("topic")
    if topic is not None:
        if not isinstance(topic, str) or not INBOUND_TOPIC.match(topic):
            problems.append(f"topic {topic!r}: automations publish to <namespace>.inbound.<name>")
        elif not isinstance(event, TurnRequested):
            problems.append(f"topic {topic!r} takes {TurnRequested.SCHEMA} records only")
    summary = f"{name} v{version_text}, session {request.session_id}, event {request.event_id}"
    return problems, summary


def _value_bytes(record: dict[str, Any], schema: Any) -> tuple[bytes | None, list[str]]:
    """The value as the producer would send it: the datum written with the schema, or
    the base64 bytes as they are."""
    if "value_base64" in record:
        try:
            return base64.b64decode(record["value_base64"], validate=True), []
        except (binascii.Error, TypeError) as exc:
            return None, [f"value_base64 is not base64: {exc}"]
    if "value" not in record:
        return None, ["the record needs a value (the Avro datum) or value_base64 (its bytes)"]
    try:
        validate(record["value"], schema, raise_errors=True)
    except ValidationError as exc:
        return None, [f"value is not a valid {schema['name']}: {e}" for e in exc.errors]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record["value"])
    return buf.getvalue(), []
