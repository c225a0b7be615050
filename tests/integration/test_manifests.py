"""The deployment files validate offline, and a broken one does not.

deploy/k8s/'s chart, rendered by `helm template`, goes through `kubeconform -strict` with
the Kubernetes JSON schemas and KEDA's CRD schemas (no schema is skipped: a kind without
one fails); compose.yaml through the Compose specification's schema (check-jsonschema);
the Dockerfile through hadolint. `deploy/install.sh dev` installs all of them under
$SOMA_HOME and lists them in manifest-tools.env (deploy/k8s/README.md, "Validation").
Each check also runs on a deliberately broken copy, which must be rejected: a validator
that passes everything would otherwise go unnoticed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_runtime.settings import CommonSettings
from schemas.stages import STAGES
from schemas.topics import Topics

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "k8s" / "soma-gateway"
NAMESPACE = "acme"  # not the default: topics and groups must follow kafka.namespace
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "DSN", "API_KEY", "REDIS_URL", "HEADERS")


@pytest.fixture(scope="module")
def tools(settings: CommonSettings) -> dict[str, str]:
    env = settings.soma_home / "manifest-tools.env"
    if not env.exists():
        pytest.fail(f"{env} is missing: run `bash deploy/install.sh manifests` (make test does)")
    lines = (line.partition("=") for line in env.read_text().splitlines() if "=" in line)
    return {key: value.strip("'") for key, _, value in lines}  # single-quoted for sh


def run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120)


def render(tools: dict[str, str], chart: Path = CHART, *sets: str) -> str:
    args = [tools["HELM"], "template", "soma", str(chart), "--namespace", "soma"]
    args += ["--set", f"kafka.namespace={NAMESPACE}"]
    for value in sets:
        args += ["--set", value]
    done = run(args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def kubeconform(tools: dict[str, str], manifests: str) -> tuple[int, dict[str, Any], str]:
    """(exit code, summary, output) of kubeconform -strict over `manifests`."""
    done = run(
        [
            tools["KUBECONFORM"],
            "-strict",
            "-summary",
            "-output",
            "json",
            "-kubernetes-version",
            tools["KUBERNETES_VERSION"],
            "-schema-location",
            tools["KUBERNETES_SCHEMAS"],
            "-schema-location",
            tools["CRD_SCHEMAS"],
            "-",
        ],
        stdin=manifests,
    )
    report = json.loads(done.stdout)
    return done.returncode, report["summary"], done.stdout


def documents(manifests: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifests) if d]


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


@pytest.mark.parametrize(
    "sets",
    [(), ("keda.enabled=false", "kafka.caSecret=kafka-ca"), ("keda.caKey=ca.crt",)],
    ids=["keda", "no-keda-with-ca", "keda-with-ca"],
)
def test_the_chart_validates(tools: dict[str, str], sets: tuple[str, ...]) -> None:
    lint = run([tools["HELM"], "lint", "--strict", str(CHART)])
    assert lint.returncode == 0, lint.stdout + lint.stderr
    manifests = render(tools, CHART, *sets)
    code, summary, output = kubeconform(tools, manifests)
    assert code == 0, output
    assert summary["valid"] == len(documents(manifests)), summary
    assert summary["invalid"] == summary["errors"] == summary["skipped"] == 0, summary


def test_the_chart_runs_every_stage_of_the_mesh(tools: dict[str, str]) -> None:
    docs = documents(render(tools))
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    topics = Topics.for_namespace(NAMESPACE)
    deployments = by_kind["Deployment"]
    for stage in STAGES:
        name = f"soma-soma-gateway-{stage.service.replace('_', '-')}"
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", stage.service]
        trigger = by_kind["ScaledObject"][name]["spec"]["triggers"][0]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == stage.group(NAMESPACE)
        topic = stage.input_topic(topics)
        if stage.input == "requested":  # a pattern: turn.requested and inbound.* topics
            assert "topic" not in meta
        else:
            assert meta["topic"] == topic.name
        assert by_kind["ScaledObject"][name]["spec"]["maxReplicaCount"] <= topic.partitions
        assert name in by_kind["PodDisruptionBudget"]
    assert len(deployments) == len(STAGES) + 1  # and the ingress
    ingress = "soma-soma-gateway-ingress"
    assert ingress in by_kind["Service"] and ingress in by_kind["PodDisruptionBudget"]
    (job,) = by_kind["Job"].values()
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python",
        "-m",
        "gateway_runtime.provision",
    ]


def test_secrets_by_reference_non_root_read_only_probes(tools: dict[str, str]) -> None:
    docs = documents(render(tools, CHART, "kafka.caSecret=kafka-ca"))
    assert not [d for d in docs if d["kind"] == "Secret"], "the chart must not carry secrets"
    workloads = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in containers(doc):
            where = f"{doc['metadata']['name']}/{container['name']}"
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert container["resources"]["limits"] and container["resources"]["requests"]
            for var in container.get("env", []):
                if any(word in var["name"] for word in SECRET_WORDS):
                    assert "secretKeyRef" in var.get("valueFrom", {}), f"{where}: {var}"
        if doc["kind"] == "Deployment":
            (main,) = pod["containers"]
            assert {"startupProbe", "readinessProbe", "livenessProbe"} <= main.keys()
            env = {v["name"]: v for v in main["env"]}
            assert env["POSTGRES_DSN"]["valueFrom"]["secretKeyRef"]["name"] == "soma-postgres"
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert not [k for k in config["data"] if any(w in k for w in SECRET_WORDS)]


def _broken_chart(tmp_path: Path, template: str, old: str, new: str) -> Path:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    path = chart / "templates" / template
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return chart


@pytest.mark.parametrize(
    ("template", "old", "new", "expected"),
    [
        # an unknown field of a Deployment's pod (the Kubernetes schemas, strict)
        ("ingress.yaml", "terminationGracePeriodSeconds:", "terminationGracePeriod:", "Deployment"),
        # a misspelt ScaledObject field (KEDA's CRD schema)
        ("stages.yaml", "maxReplicaCount:", "maxReplicas:", "ScaledObject"),
        # a wrong type: a port name where a Service wants a number
        ("ingress.yaml", "port: {{ .Values.ingress.service.port }}", "port: web", "Service"),
    ],
    ids=["deployment-unknown-field", "scaledobject-unknown-field", "service-wrong-type"],
)
def test_a_broken_chart_is_rejected(
    tools: dict[str, str], tmp_path: Path, template: str, old: str, new: str, expected: str
) -> None:
    manifests = render(tools, _broken_chart(tmp_path, template, old, new))
    code, summary, output = kubeconform(tools, manifests)
    assert code != 0 and summary["invalid"] >= 1, output
    assert f'"kind": "{expected}"' in output, output


def test_a_kind_without_a_schema_is_not_skipped(tools: dict[str, str]) -> None:
    unknown = "apiVersion: monitoring.example.com/v1\nkind: Dashboard\nmetadata:\n  name: x\n"
    code, summary, output = kubeconform(tools, render(tools) + "---\n" + unknown)
    assert code != 0 and summary["errors"] == 1, output
    assert "could not find schema" in output


def check_compose(tools: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    return run([tools["CHECK_JSONSCHEMA"], "--schemafile", tools["COMPOSE_SCHEMA"], str(path)])


def test_compose_validates_and_runs_every_stage(tools: dict[str, str], tmp_path: Path) -> None:
    done = check_compose(tools, ROOT / "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    for stage in STAGES:
        assert services[stage.service]["command"] == ["python", "-m", stage.service]
    assert {"ingress", "provision"} <= services.keys()
    broken = tmp_path / "compose.yaml"
    text = (ROOT / "compose.yaml").read_text()
    broken.write_text(text.replace("service_completed_successfully", "service_finished", 1))
    rejected = check_compose(tools, broken)
    assert rejected.returncode != 0 and "service_finished" in rejected.stdout, rejected.stdout


def test_the_dockerfile_lints_clean(tools: dict[str, str], tmp_path: Path) -> None:
    done = run([tools["HADOLINT"], str(ROOT / "Dockerfile")])
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    for service in ("ingress", *(stage.service for stage in STAGES)):
        assert f"COPY {service} {service}" in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text + "RUN pip install requests\n")
    rejected = run([tools["HADOLINT"], str(broken)])
    assert rejected.returncode != 0 and "DL3013" in rejected.stdout, rejected.stdout
