# shellcheck shell=bash disable=SC2034  # the variables below are used by the sourcing scripts
# Sourced by deploy/*.sh: paths, pinned versions, stack.env and process helpers.

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$DEPLOY_DIR")
SOMA_HOME=${SOMA_HOME:-$HOME/.cache/soma-gateway}
export SOMA_HOME
VENV=$SOMA_HOME/venv
# A second set of instances (the tests' own Redis, OpenFGA, OPA) lives in a directory of
# its own: SOMA_STATE_DIR and SOMA_LOG_DIR point there, with other ports in the environment.
LOG_DIR=${SOMA_LOG_DIR:-$SOMA_HOME/logs}
STATE_DIR=${SOMA_STATE_DIR:-$SOMA_HOME/state}
mkdir -p "$LOG_DIR" "$STATE_DIR"
# The broker's SCRAM credentials, one <principal>.json (mode 0600) each: the admin's is
# made by infra.sh when it formats the broker, the services' by gateway_runtime.provision.
# A sandbox with a broker of its own points this at its own directory.
KAFKA_CREDENTIALS_DIR=${KAFKA_CREDENTIALS_DIR:-$SOMA_HOME/kafka/credentials}
KAFKA_ADMIN_USER=admin

# Pinned tool versions. Kafka's lives in its pom so Maven and the scripts agree.
OPA_VERSION=v1.22.3
OPENFGA_VERSION=v1.22.1
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$DEPLOY_DIR/kafka/pom.xml")
KAFKA_LIBS=$SOMA_HOME/kafka-$KAFKA_VERSION/libs
OPA_BIN=$SOMA_HOME/bin/opa-$OPA_VERSION/opa
OPENFGA_BIN=$SOMA_HOME/bin/openfga-$OPENFGA_VERSION/openfga
# Prometheus (server and promtool) for `make observe` and the observability tests: its Go
# module's v0.3XX.Y is Prometheus v3.XX.Y (built without the web UI's assets; the API is enough).
PROMETHEUS_VERSION=v0.316.0
PROMETHEUS_BIN=$SOMA_HOME/bin/prometheus-$PROMETHEUS_VERSION/prometheus
PROMTOOL_BIN=$SOMA_HOME/bin/prometheus-$PROMETHEUS_VERSION/promtool
PG_BIN=/usr/lib/postgresql/15/bin

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }  # seconds since $1
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# stack.env holds plain KEY=value lines; a variable already in the environment wins.
load_stack_env() {
  local line key
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    key=${line%%=*}
    [[ -n ${!key+x} ]] || export "$key=${line#*=}"
  done <"$DEPLOY_DIR/stack.env"
}
load_stack_env

# url_port http://host:1234/path -> 1234 ; host_port_of host:1234,other -> first entry's parts.
url_port() { local p=${1#*://}; p=${p%%/*}; echo "${p##*:}"; }
url_host() { local p=${1#*://}; p=${p%%/*}; echo "${p%:*}"; }

# wait_for_port HOST PORT TIMEOUT_SECONDS: true once a TCP connect succeeds.
wait_for_port() {
  local host=$1 port=$2 deadline=$((SECONDS + $3))
  until port_open "$host" "$port"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_ready NAME TIMEOUT CMD...: retry a readiness probe until it passes; give up early
# when daemon NAME has already exited (a port clash or bad config fails fast).
wait_ready() {
  local name=$1 deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    is_running "$name" || return 1
    ((SECONDS < deadline)) || return 1
    sleep 0.3
  done
}

pidfile() { echo "$STATE_DIR/$1.pid"; }

# alive PID: exists and is not a zombie (our daemons' parent is pid 1, which may reap late).
alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $state != Z* ]]
}

is_running() {
  local pid
  pid=$(cat "$(pidfile "$1")" 2>/dev/null) || return 1
  [[ -n $pid ]] && alive "$pid"
}

# start_daemon NAME CMD...: detached in its own session so it survives this shell,
# output appended to $LOG_DIR/NAME.log. setsid execs (we are not a group leader),
# so $! is the daemon's own pid.
start_daemon() {
  local name=$1; shift
  printf '\n=== %s start %s\n' "$(date -Is)" "$name" >>"$LOG_DIR/$name.log"
  setsid nohup "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

# stop_daemon NAME [TIMEOUT]: SIGTERM the daemon's process group, SIGKILL if it lingers.
stop_daemon() {
  local name=$1 timeout=${2:-20} pid deadline
  pid=$(cat "$(pidfile "$name")" 2>/dev/null) || return 0
  if alive "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if alive "$pid"; then
      log "$name did not stop in ${timeout}s: SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$(pidfile "$name")"
}

# fail_with_log NAME MESSAGE: loud failure showing what the component said since its last start.
fail_with_log() {
  local file=$LOG_DIR/$1.log from
  from=$(grep -n '^=== ' "$file" 2>/dev/null | tail -n1 | cut -d: -f1) || true
  printf 'error: %s\n--- %s ---\n' "$2" "$file" >&2
  tail -n "+${from:-1}" "$file" 2>/dev/null | tail -n 40 >&2 || true
  exit 1
}
