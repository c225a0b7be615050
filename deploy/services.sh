#!/usr/bin/env bash
# The gateway's own processes: deploy/services.sh start|stop|status
# Provisions topics and migrations, then runs the ingress and one process per stage under
# one supervisor daemon (gateway_runtime/supervisor.py), which restarts a service that
# dies within a second or so (logs in $SOMA_HOME/logs/<name>.log, the supervisor's own in
# supervisor.log; each service's pid in $SOMA_HOME/state/<name>.pid while it runs).
# `make up` uses the local profile: GATEWAY_REQUIRE_AUTH=false unless set, so a newcomer
# can post a turn at once; callers without credentials hold the `turns` scope only, and
# operator work needs the bootstrap key (created here, printed by `make up`). With auth
# off the ingress listens on loopback only (GATEWAY_HOST; it refuses anything else).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The stages of schemas/stages.py, then the ingress (tests/unit/test_stages.py checks it).
SERVICES=(
  policy_worker context_worker llm_worker tool_dispatcher persistence_worker deadletter_index
  ingress
)
PY=$VENV/bin/python
export PYTHONPATH=$REPO_DIR GATEWAY_REQUIRE_AUTH=${GATEWAY_REQUIRE_AUTH:-false}
HEALTH_URL=http://127.0.0.1:$GATEWAY_PORT/v1/health

# /v1/health says ok: every component up and every stage's consumer group has a member.
health_ok() { [[ $(curl -fsS "$HEALTH_URL" 2>/dev/null) == '{"status":"ok"'* ]]; }

start() {
  local started name
  started=$EPOCHREALTIME
  (cd "$REPO_DIR" && "$PY" -m gateway_runtime.provision >>"$LOG_DIR/provision.log" 2>&1) ||
    fail_with_log provision "provisioning topics and migrations failed"
  # The bootstrap key, scopes turns + admin + operator (idempotent): $SOMA_HOME/admin-key,
  # mode 0600; `make up` prints it.
  (cd "$REPO_DIR" && "$PY" -m ingress.auth.bootstrap >/dev/null 2>>"$LOG_DIR/provision.log") ||
    fail_with_log provision "creating the bootstrap admin key failed"
  if ! is_running supervisor; then
    # Services still running without a supervisor (an earlier services.sh ran one daemon
    # per service) would clash with the ones it starts: stop them first.
    for name in "${SERVICES[@]}"; do stop_daemon "$name" 30; done
    # Workers serve /metrics on WORKER_METRICS_PORT_BASE+1.. in SERVICES order (the
    # ingress serves its own on the API port); many SSE clients need many open files.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    local i port args=()
    for i in "${!SERVICES[@]}"; do
      name=${SERVICES[i]}
      port=$((WORKER_METRICS_PORT_BASE + i + 1))
      [[ $name == ingress ]] && port=0
      args+=(--env "$name:METRICS_PORT=$port")
    done
    (cd "$REPO_DIR" && start_daemon supervisor "$PY" -m gateway_runtime.supervisor \
      --state-dir "$STATE_DIR" --log-dir "$LOG_DIR" "${args[@]}" "${SERVICES[@]}")
  fi
  if ! wait_ready supervisor 60 curl -fsS "$HEALTH_URL"; then
    is_running supervisor || fail_with_log supervisor "the supervisor exited"
    fail_with_log ingress "ingress not healthy at $HEALTH_URL"
  fi
  for name in "${SERVICES[@]}"; do
    is_running "$name" || fail_with_log "$name" "$name is not running (the supervisor retries it)"
  done
  # The workers join their consumer groups a few seconds after the ingress answers.
  wait_ready supervisor 30 health_ok ||
    log "the gateway runs but is degraded: $(curl -sS "$HEALTH_URL" 2>&1 | head -c 2000)"
  log "gateway up on http://127.0.0.1:$GATEWAY_PORT in $(elapsed "$started")s;" \
    "operator key in $SOMA_HOME/admin-key"
}

stop() {
  local i
  # SIGTERM reaches the supervisor and its services (one process group); it waits for
  # them (SUPERVISOR_STOP_TIMEOUT_S) before it exits.
  stop_daemon supervisor 40
  # Leftovers of one daemon per service (an earlier services.sh), if any.
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop_daemon "${SERVICES[i]}" 30; done
}

status() {
  local name
  for name in supervisor "${SERVICES[@]}"; do
    if is_running "$name"; then
      echo "$name: running (pid $(cat "$(pidfile "$name")"))"
    else
      echo "$name: stopped"
    fi
  done
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
