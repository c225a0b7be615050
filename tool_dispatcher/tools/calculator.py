"""`calculator`: exact arithmetic on numbers with + - * / ** % and parentheses.

The expression is parsed with `ast` and walked node by node; anything but numbers and
those operators is refused, so no name, call or attribute is ever reached (no `eval`).
Sizes are bounded before work is done, so a model cannot make the dispatcher spin on
`9**9**9**9` or exhaust memory: the expression's length, each exponent, and the bits of
every integer along the way.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from schemas.tools import definition
from tool_dispatcher.registry import BuiltinTool, ToolError

MAX_LENGTH = 200
MAX_EXPONENT = 10_000
MAX_INT_BITS = 4096  # about 1,200 decimal digits

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def evaluate(expression: str) -> Number:
    if len(expression) > MAX_LENGTH:
        raise ToolError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError) as exc:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from exc
    try:
        return _checked(_eval(tree.body))
    except ZeroDivisionError as exc:
        raise ToolError("division by zero") from exc
    except OverflowError as exc:
        raise ToolError("the result is too large") from exc


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"only numbers are allowed, not {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _checked(_BINARY[type(node.op)](left, right))
    raise ToolError(f"{type(node).__name__} is not allowed: only numbers, + - * / ** % and ()")


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponents are limited to {MAX_EXPONENT}")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if base.bit_length() * exponent > MAX_INT_BITS:
            raise ToolError("the result is too large")


def _checked(value: Any) -> Number:
    if isinstance(value, complex):  # e.g. (-8) ** 0.5
        raise ToolError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is too large")
    if not isinstance(value, int | float):
        raise ToolError("the result is not a number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("the result is too large")
    return value


def format_number(value: Number) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".15g") if isinstance(value, float) else str(value)


def run(arguments: dict[str, Any]) -> str:
    return format_number(evaluate(arguments["expression"]))


TOOL = BuiltinTool(definition("calculator"), run)
