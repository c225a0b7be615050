"""The stage list (schemas/stages.py) is the handlers' own: each stage's consumer group is
`<namespace>.<handler.stage>` on the handler's input topic; `deploy/services.sh` runs each
stage's service and the ingress."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from schemas.stages import STAGES, Stage
from schemas.topics import Topics

ROOT = Path(__file__).resolve().parents[2]


def _handlers(service: str) -> list[type]:
    """Classes of `<service>.handler` that declare a `stage` and an `input_topic`."""
    try:
        module = importlib.import_module(f"{service}.handler")
    except ModuleNotFoundError:
        pytest.skip(f"{service} has no handler module (yet)")
    return [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if c.__module__ == module.__name__
        and isinstance(getattr(c, "stage", None), str)
        and isinstance(getattr(c, "input_topic", None), property)
    ]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_each_stage_is_its_handlers_group_and_input(stage: Stage) -> None:
    if stage.service == "deadletter_index":  # its own consumer, no StageHandler
        main = pytest.importorskip("deadletter_index.__main__")
        assert main.STAGE == stage.name
        return
    [handler] = _handlers(stage.service)
    topics = Topics.for_namespace("ns")
    assert handler.stage == stage.name
    assert stage.group("ns") == f"ns.{handler.stage}"
    assert (
        handler.input_topic.fget(SimpleNamespace(topics=topics)) == stage.input_topic(topics).name
    )


def test_services_sh_runs_every_stage_then_the_ingress() -> None:
    script = (ROOT / "deploy" / "services.sh").read_text()
    match = re.search(r"^SERVICES=\(([^)]*)\)", script, re.MULTILINE)
    assert match, "no SERVICES=(...) in deploy/services.sh"
    assert match.group(1).split() == [*(s.service for s in STAGES), "ingress"]
