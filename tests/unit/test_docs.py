"""The docs that must stay true to the code."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_opens_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().split("\n## ")[0]
    assert "make up" in head and "make test" in head
    assert "make test" in (ROOT / ".ci" / "run").read_text()
