#!/usr/bin/env bash
# The gateway's own processes: deploy/services.sh start|stop|status
# Provisions topics and migrations, then runs the ingress and one process per stage in
# the background (logs in $SOMA_HOME/logs/<name>.log). `make up` uses the local profile:
# GATEWAY_REQUIRE_AUTH=false unless set, so a newcomer can post a turn at once.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SERVICES=(policy_worker context_worker llm_worker tool_dispatcher persistence_worker ingress)
PY=$VENV/bin/python
export PYTHONPATH=$REPO_DIR GATEWAY_REQUIRE_AUTH=${GATEWAY_REQUIRE_AUTH:-false}
HEALTH_URL=http://127.0.0.1:$GATEWAY_PORT/v1/health

start() {
  local started name
  started=$EPOCHREALTIME
  (cd "$REPO_DIR" && "$PY" -m gateway_runtime.provision >>"$LOG_DIR/provision.log" 2>&1) ||
    fail_with_log provision "provisioning topics and migrations failed"
  # The first admin key (idempotent): $SOMA_HOME/admin-key, mode 0600; `make up` prints it.
  (cd "$REPO_DIR" && "$PY" -m ingress.auth.bootstrap >/dev/null 2>>"$LOG_DIR/provision.log") ||
    fail_with_log provision "creating the bootstrap admin key failed"
  # Workers serve /metrics on WORKER_METRICS_PORT_BASE+1.. in SERVICES order (the ingress
  # serves its own on the API port); many SSE clients need many open files.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  local i port
  for i in "${!SERVICES[@]}"; do
    name=${SERVICES[i]}
    is_running "$name" && continue
    port=$((WORKER_METRICS_PORT_BASE + i + 1))
    [[ $name == ingress ]] && port=0
    (cd "$REPO_DIR" && METRICS_PORT=$port start_daemon "$name" "$PY" -m "$name")
  done
  wait_ready ingress 60 curl -fsS "$HEALTH_URL" || fail_with_log ingress "ingress not healthy at $HEALTH_URL"
  for name in "${SERVICES[@]}"; do
    is_running "$name" || fail_with_log "$name" "$name exited"
  done
  log "gateway up on http://127.0.0.1:$GATEWAY_PORT in $(elapsed "$started")s"
}

stop() {
  local i
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop_daemon "${SERVICES[i]}" 30; done
}

status() {
  local name
  for name in "${SERVICES[@]}"; do
    if is_running "$name"; then echo "$name: running"; else echo "$name: stopped"; fi
  done
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
