"""`soma-gateway record check`: a producer's record, described as JSON, is checked the way
the policy stage reads it. The example in docs/events.md passes; each way a producer can
get a record wrong is named, and the command exits 1."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import Codec
from schemas.events import TurnRequested
from soma_cli.__main__ import main
from soma_cli.records import check

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "turn-requested.json"


def example() -> dict[str, Any]:
    return dict(json.loads(EXAMPLE.read_text()))


def test_the_documented_example_is_a_record_the_mesh_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["record", "check", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out.startswith("ok: soma.events.TurnRequested v3, session")


def test_the_bytes_the_codec_writes_pass_as_base64() -> None:
    event = TurnRequested("e-1", "s-1", "hi", 1, tenant="acme")
    encoded = Codec().encode(event)
    record = {
        "key": encoded.key.decode(),
        "headers": {k: v.decode() for k, v in encoded.headers},
        "value_base64": base64.b64encode(encoded.value).decode(),
    }
    assert check(record)[0] == []


def _broken(change: str) -> dict[str, Any]:
    record = copy.deepcopy(example())
    if change == "key":
        record["key"] = "another-session"
    elif change == "header":
        del record["headers"]["schema-version"]
    elif change == "version":
        record["headers"]["schema-version"] = "99"
    elif change == "field":
        del record["value"]["message"]
    elif change == "type":
        record["value"]["created_at_ms"] = "yesterday"
    elif change == "tenant":
        record["headers"]["tenant"] = "globex"
    elif change == "topic":
        record["topic"] = "soma.turn.completed"
    elif change == "bytes":
        del record["value"]
        record["value_base64"] = base64.b64encode(b"\x02garbage").decode()
    return record


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("key", "key 'another-session' is not the record's session_id"),
        ("header", "missing header(s): schema-version"),
        ("version", "unknown schema 'soma.events.TurnRequested' version 99"),
        ("field", "message"),
        ("type", "created_at_ms"),
        ("tenant", "header tenant is not the record's tenant"),
        ("topic", "automations publish to <namespace>.inbound.<name>"),
        ("bytes", "cannot read soma.events.TurnRequested v3"),
    ],
)
def test_each_mistake_is_named(change: str, says: str) -> None:
    problems, _ = check(_broken(change))
    assert problems and any(says in p for p in problems), problems


def test_a_broken_record_exits_1_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "record.json"
    path.write_text(json.dumps(_broken("key")))
    assert main(["record", "check", str(path)]) == 1
    assert "invalid: key 'another-session'" in capsys.readouterr().err
