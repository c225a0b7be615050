"""The tool registry and the built-in tools, without any service."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas.tools import load_definitions
from tool_dispatcher.registry import ToolError, ToolRegistry
from tool_dispatcher.tools import BUILTIN_TOOLS
from tool_dispatcher.tools.calculator import MAX_LENGTH, evaluate, format_number
from tool_dispatcher.tools.current_time import current_time

registry = ToolRegistry(BUILTIN_TOOLS)


def call(name: str, arguments: object) -> tuple[bool, str]:
    result = registry.call(name, json.dumps(arguments))
    return result.ok, result.content


def test_every_definition_has_a_builtin_tool_and_back() -> None:
    assert set(load_definitions()) == set(registry.names()) == {"calculator", "current_time"}
    for tool in BUILTIN_TOOLS:
        spec = tool.definition.openai()
        assert spec["type"] == "function"
        assert spec["function"]["name"] == tool.name
        assert spec["function"]["parameters"]["type"] == "object"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("6*7", "42"),
        ("(2 + 3) * 4 ** 2 / 8", "10"),
        ("7 / 2", "3.5"),
        ("-3 ** 2", "-9"),
        ("+5 % 3", "2"),
        ("2 ** -1", "0.5"),
        ("1 / 3", "0.333333333333333"),
        ("2 ** 100", str(2**100)),
        ("0.1 + 0.2", "0.3"),
    ],
)
def test_calculator_does_arithmetic(expression: str, expected: str) -> None:
    assert call("calculator", {"expression": expression}) == (True, expected)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('true')", "Call is not allowed"),
        ("().__class__", "Attribute is not allowed"),
        ("x + 1", "Name is not allowed"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("[1, 2]", "List is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("7 // 2", "BinOp is not allowed"),
        ("1 << 5", "BinOp is not allowed"),
        ("1 if 1 else 2", "IfExp is not allowed"),
        ("9 ** 9 ** 9 ** 9", "exponents are limited"),
        ("2 ** 5000", "too large"),
        ("(10 ** 1000) ** 5", "too large"),
        ("1e308 * 10", "too large"),
        ("2.0 ** 5000", "too large"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 +", "not an arithmetic expression"),
        ("1\x00", "not an arithmetic expression"),
        ("1+" * MAX_LENGTH + "1", "longer than"),
    ],
)
def test_calculator_refuses_what_is_not_bounded_arithmetic(expression: str, reason: str) -> None:
    with pytest.raises(ToolError, match=reason):
        evaluate(expression)


def test_calculator_refusals_become_error_results_for_the_model() -> None:
    ok, content = call("calculator", {"expression": "__import__('os')"})
    assert not ok
    assert content.startswith("error: ") and "not allowed" in content


def test_numbers_read_naturally() -> None:
    assert format_number(2.0) == "2"
    assert format_number(1e20) == "1e+20"
    assert format_number(-7) == "-7"


def test_current_time_is_utc_iso_or_in_the_given_zone() -> None:
    now = datetime(2025, 1, 15, 12, 0, 5, 123, tzinfo=UTC)
    assert current_time(None, now) == "2025-01-15T12:00:05+00:00"
    assert current_time("Europe/Paris", now) == "2025-01-15T13:00:05+01:00"
    assert current_time("America/New_York", now) == "2025-01-15T07:00:05-05:00"
    ok, content = call("current_time", {})
    assert ok and datetime.fromisoformat(content).utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "America", " "])
def test_current_time_refuses_unknown_zones(zone: str) -> None:
    ok, content = call("current_time", {"timezone": zone})
    assert not ok and "time zone" in content


@pytest.mark.parametrize(
    ("name", "arguments", "reason"),
    [
        ("rm_rf", '{"path": "/"}', "no tool named 'rm_rf'"),
        ("calculator", "{not json", "not valid JSON"),
        ("calculator", "[1, 2]", "must be a JSON object"),
        ("calculator", "{}", "missing required argument(s): expression"),
        ("calculator", '{"expression": 42}', "must be of type string"),
        ("calculator", '{"expression": "1", "x": 1}', "unknown argument(s): x"),
        ("calculator", json.dumps({"expression": "1" * 500}), "longer than 200"),
        ("current_time", '{"timezone": true}', "must be of type string"),
    ],
)
def test_bad_calls_become_error_results_never_exceptions(
    name: str, arguments: str, reason: str
) -> None:
    result = registry.call(name, arguments)
    assert not result.ok
    assert result.content.startswith("error: ")
    assert reason in result.content


def test_a_call_without_arguments_may_send_an_empty_string() -> None:
    assert registry.call("current_time", "").ok


def test_a_tool_the_tenant_may_not_use_reads_like_an_unknown_one() -> None:
    refused = registry.call("calculator", '{"expression": "1"}', allowed=False)
    unknown = registry.call("nope", "{}")
    assert not refused.ok
    assert refused.content == unknown.content.replace("'nope'", "'calculator'")
