"""deploy/openfga/model.fga (for people) and model.json (for the server) say the same."""

from __future__ import annotations

import json
import re
from pathlib import Path

DIR = Path(__file__).resolve().parents[2] / "deploy" / "openfga"


def _term_of_json(node: dict) -> str:
    if "this" in node:
        return "[direct]"
    if "computedUserset" in node:
        return node["computedUserset"]["relation"]
    ttu = node["tupleToUserset"]
    return f"{ttu['computedUserset']['relation']} from {ttu['tupleset']['relation']}"


def _from_json() -> dict[str, dict[str, set[str]]]:
    model = json.loads((DIR / "model.json").read_text())
    types: dict[str, dict[str, set[str]]] = {}
    for t in model["type_definitions"]:
        relations = {}
        for name, node in (t.get("relations") or {}).items():
            children = node["union"]["child"] if "union" in node else [node]
            relations[name] = {_term_of_json(c) for c in children}
        types[t["type"]] = relations
    return types


def _from_dsl() -> dict[str, dict[str, set[str]]]:
    types: dict[str, dict[str, set[str]]] = {}
    current: dict[str, set[str]] = {}
    for line in (DIR / "model.fga").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("type "):
            current = types.setdefault(line.split()[1], {})
        elif match := re.match(r"define (\w+): (.+)$", line):
            terms = {("[direct]" if t.startswith("[") else t) for t in match[2].split(" or ")}
            current[match[1]] = terms
    return types


def test_dsl_and_json_models_agree() -> None:
    assert _from_dsl() == _from_json()
    assert {"can_read", "can_write"} <= set(_from_json()["session"])
