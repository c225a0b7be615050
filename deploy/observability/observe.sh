#!/usr/bin/env bash
# A real Prometheus scraping the running gateway: deploy/observability/observe.sh start|stop|status
# `make observe` (after `make up`; never part of it) builds Prometheus once from the Go module
# proxy (deploy/install.sh observe, cached in $SOMA_HOME/bin), starts it on
# 127.0.0.1:$PROMETHEUS_PORT with prometheus.yml and alerts.yml beside this script (data in
# $SOMA_HOME/prometheus, two days kept; log in $LOG_DIR/prometheus.log), and waits until
# every gateway target is up, printing each. The API answers at /api/v1/ (no web UI assets
# are built); the Grafana dashboard is grafana/soma-gateway.json. `make down` stops it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

HERE=$DEPLOY_DIR/observability
URL=http://127.0.0.1:$PROMETHEUS_PORT
PY=$VENV/bin/python

# targets: one line per gateway target, `<service> <health> <scrape url> <last error>`;
# fails while any is not up (or Prometheus has not scraped it yet).
targets() {
  curl -fsS "$URL/api/v1/targets?state=active" | "$PY" -c '
import json, sys
active = [t for t in json.load(sys.stdin)["data"]["activeTargets"] if t["labels"].get("job") == "soma-gateway"]
for t in active:
    print(t["labels"].get("service", "?"), t["health"], t["scrapeUrl"], t.get("lastError", ""))
sys.exit(0 if active and all(t["health"] == "up" for t in active) else 1)'
}

start() {
  local started=$EPOCHREALTIME
  bash "$DEPLOY_DIR/install.sh" observe
  "$PROMTOOL_BIN" check config "$HERE/prometheus.yml" >/dev/null ||
    die "promtool rejects $HERE/prometheus.yml"
  if ! is_running prometheus; then
    mkdir -p "$SOMA_HOME/prometheus"
    start_daemon prometheus "$PROMETHEUS_BIN" \
      --config.file="$HERE/prometheus.yml" \
      --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
      --storage.tsdb.path="$SOMA_HOME/prometheus" \
      --storage.tsdb.retention.time=2d
  fi
  wait_ready prometheus 30 curl -fsS "$URL/-/ready" || fail_with_log prometheus "Prometheus not ready at $URL"
  if wait_ready prometheus 30 targets; then
    targets
    log "Prometheus on $URL: every gateway target up ($(elapsed "$started")s)"
  else
    targets || true
    die "not every gateway target is up (is the gateway running? make up)"
  fi
}

case ${1:-} in
  start) start ;;
  stop) stop_daemon prometheus 20 ;;
  status) if is_running prometheus; then targets; else echo "prometheus: stopped"; fi ;;
  *) die "usage: $0 start|stop|status" ;;
esac
