#!/usr/bin/env bash
# Native local stack: deploy/infra.sh start|stop|status [component...]
# Components (start order): postgres redis kafka openfga opa llm. Addresses come from deploy/stack.env.
# OpenFGA keeps its store in the Postgres database OPENFGA_DATABASE (default openfga): a
# second instance (the tests' own) points it at a database of its own.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL=(postgres redis kafka openfga opa llm)
PG_DATA=$STATE_DIR/postgres
PG_SOCK=$STATE_DIR/postgres-sock
KAFKA_ADDR=${KAFKA_BOOTSTRAP_SERVERS%%,*}
OPA_ADDR=$(url_host "$OPA_URL"):$(url_port "$OPA_URL")
FGA_ADDR=$(url_host "$OPENFGA_API_URL"):$(url_port "$OPENFGA_API_URL")
LLM_ADDR=127.0.0.1:$LOCAL_LLM_PORT

# user, password and database of the application's DSN (postgresql://u:p@host:port/db).
[[ $POSTGRES_DSN =~ ^postgres(ql)?://([^:@/]+):([^@/]*)@[^/]+/([^?]+) ]] ||
  die "cannot parse POSTGRES_DSN=$POSTGRES_DSN (want postgresql://user:pass@host:port/db)"
PG_USER=${BASH_REMATCH[2]} PG_PASS=${BASH_REMATCH[3]} PG_DB=${BASH_REMATCH[4]}
OPENFGA_DATABASE=${OPENFGA_DATABASE:-openfga}
FGA_DATASTORE="postgres://$PG_USER:$PG_PASS@127.0.0.1:$POSTGRES_PORT/$OPENFGA_DATABASE?sslmode=disable"

addr() {
  case $1 in
    postgres) echo "127.0.0.1:$POSTGRES_PORT" ;; redis) echo "127.0.0.1:$REDIS_PORT" ;;
    kafka) echo "$KAFKA_ADDR" ;; openfga) echo "$FGA_ADDR" ;; opa) echo "$OPA_ADDR" ;; llm) echo "$LLM_ADDR" ;;
  esac
}

as_postgres() { runuser -u postgres -- "$@"; }

# Postgres refuses to run as root, and the postgres user must reach $SOMA_HOME/state:
# grant search (x, not read) on any ancestor that lacks it, e.g. a 0700 /root.
postgres_reachable() {
  local d=$STATE_DIR
  while [[ $d != / ]]; do
    as_postgres test -x "$d" || chmod o+x "$d"
    d=$(dirname "$d")
  done
}

component_pid() {
  if [[ $1 == postgres ]]; then head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null; else cat "$(pidfile "$1")" 2>/dev/null; fi
}

running() {
  if [[ $1 == postgres ]]; then
    [[ -f $PG_DATA/PG_VERSION ]] && as_postgres "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
  else
    is_running "$1"
  fi
}

# ---- start ---------------------------------------------------------------------------

start_postgres() {
  postgres_reachable
  install -d -o postgres -g postgres -m 700 "$PG_DATA"
  install -d -o postgres -g postgres -m 755 "$PG_SOCK"
  touch "$LOG_DIR/postgres.log" && chown postgres: "$LOG_DIR/postgres.log"
  if [[ ! -f $PG_DATA/PG_VERSION ]]; then
    as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >>"$LOG_DIR/postgres.log" 2>&1 ||
      fail_with_log postgres "initdb failed"
  fi
  # Settings are passed at each start so a changed POSTGRES_PORT takes effect.
  as_postgres "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$LOG_DIR/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $POSTGRES_PORT -c unix_socket_directories=$PG_SOCK -c max_connections=300" \
    >/dev/null || fail_with_log postgres "postgres did not start"
  provision_postgres
}

# Idempotent, at every start (also of a server already running): the app role, its
# database and OpenFGA's. The role may create databases: each test mesh gets one of its own.
provision_postgres() {
  as_postgres "$PG_BIN/psql" -h "$PG_SOCK" -p "$POSTGRES_PORT" -U postgres -d postgres -qAtX \
    -v ON_ERROR_STOP=1 -v user="$PG_USER" -v pass="$PG_PASS" -v db="$PG_DB" >/dev/null <<'SQL' ||
SELECT format('CREATE ROLE %I LOGIN', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I CREATEDB PASSWORD %L', :'user', :'pass') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', d, :'user') FROM unnest(ARRAY[:'db', 'openfga']) AS d
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = d) \gexec
SQL
    fail_with_log postgres "creating role/databases failed"
}

start_redis() {
  mkdir -p "$STATE_DIR/redis"
  start_daemon redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize no \
    --save "" --appendonly no --dir "$STATE_DIR/redis"
  wait_ready redis 15 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping || fail_with_log redis "redis not answering PING"
}

# The broker refuses anonymous clients (deploy/kafka/server.properties.tmpl): its admin
# SCRAM credential goes into the storage when it is formatted. deploy/kafka/storage.py
# keeps the two together: it formats an empty storage with the admin's credential, formats
# anew (once, logging what is dropped) only a plaintext install from before SASL, and
# stops with what to do when the admin's credentials file is lost or does not fit the
# storage; the admin's password is on no command line.
start_kafka() {
  local dir=$STATE_DIR/kafka host=${KAFKA_ADDR%:*} port=${KAFKA_ADDR##*:} rc=0
  local admin_file=$KAFKA_CREDENTIALS_DIR/$KAFKA_ADMIN_USER.json
  [[ -d $KAFKA_LIBS ]] || die "kafka jars missing in $KAFKA_LIBS: run deploy/install.sh"
  local cp=("-Dlog4j2.configurationFile=$DEPLOY_DIR/kafka/log4j2.properties" -cp "$KAFKA_LIBS/*")
  PYTHONPATH=$REPO_DIR "$VENV/bin/python" "$DEPLOY_DIR/kafka/storage.py" "$dir" "$admin_file" \
    "$KAFKA_ADMIN_USER" "$DEPLOY_DIR/kafka/server.properties.tmpl" "$host" "$port" \
    "$KAFKA_CONTROLLER_PORT" "$LOG_DIR/kafka.log" -- java "${cp[@]}" kafka.tools.StorageTool || rc=$?
  ((rc != 2)) || fail_with_log kafka "kafka storage format failed"
  ((rc == 0)) || exit "$rc"
  start_daemon kafka java -Xms256m -Xmx512m "${cp[@]}" kafka.Kafka "$dir/server.properties"
  wait_ready kafka 90 port_open "$host" "$port" || fail_with_log kafka "kafka port $KAFKA_ADDR not open"
  wait_ready kafka 60 env PYTHONPATH="$REPO_DIR" "$VENV/bin/python" "$DEPLOY_DIR/kafka/ready.py" \
    "$KAFKA_ADDR" 5 "$admin_file" || fail_with_log kafka "kafka does not answer metadata requests"
}

start_openfga() {
  [[ -x $OPENFGA_BIN ]] || die "$OPENFGA_BIN missing: run deploy/install.sh"
  port_open 127.0.0.1 "$POSTGRES_PORT" || die "openfga needs postgres: start it first"
  local store=(--datastore-engine postgres --datastore-uri "$FGA_DATASTORE")
  "$OPENFGA_BIN" migrate "${store[@]}" >>"$LOG_DIR/openfga.log" 2>&1 ||
    fail_with_log openfga "openfga migrate failed"
  start_daemon openfga "$OPENFGA_BIN" run "${store[@]}" \
    --http-addr "$FGA_ADDR" --grpc-addr "127.0.0.1:$OPENFGA_GRPC_PORT" \
    --playground-enabled=false --metrics-enabled=false --log-format json
  wait_ready openfga 30 bash -c "curl -fsS http://$FGA_ADDR/healthz | grep -q SERVING" ||
    fail_with_log openfga "openfga /healthz not SERVING"
}

start_opa() {
  [[ -x $OPA_BIN ]] || die "$OPA_BIN missing: run deploy/install.sh"
  start_daemon opa "$OPA_BIN" run --server --addr "$OPA_ADDR" --log-format json "$DEPLOY_DIR/opa"
  wait_ready opa 20 curl -fsS "http://$OPA_ADDR/health" || fail_with_log opa "opa /health failing"
}

start_llm() {
  start_daemon llm "$VENV/bin/python" "$DEPLOY_DIR/llm/serve_local_model.py" --host 127.0.0.1 --port "$LOCAL_LLM_PORT"
  wait_ready llm 120 curl -fsS "http://$LLM_ADDR/v1/models" || fail_with_log llm "local model server not ready"
}

# ---- commands ------------------------------------------------------------------------

start() {
  local c t0 a
  for c in "$@"; do
    if running "$c"; then
      [[ $c != postgres ]] || provision_postgres
      continue
    fi
    # A foreign process on our port would answer the readiness probe in our place.
    a=$(addr "$c")
    ! port_open "${a%:*}" "${a##*:}" || die "$c: $a is already in use by another process"
    t0=$EPOCHREALTIME
    STARTING=$c  # a failed start is cleaned up by the EXIT trap below
    "start_$c"
    running "$c" || fail_with_log "$c" "$c exited right after starting"
    log "$c started on $(addr "$c") in $(elapsed "$t0")s"
  done
  STARTING=
}

stop() {
  local i c
  for ((i = $# ; i > 0 ; i--)); do
    c=${!i}
    if [[ $c != postgres ]]; then
      stop_daemon "$c" 30
    elif running postgres; then
      as_postgres "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w >/dev/null
    fi
  done
}

status() {
  local c pid rss
  for c in "$@"; do
    if running "$c"; then
      pid=$(component_pid "$c")
      # RSS of the component's whole session (postgres: all backends, shared memory counted per process).
      rss=$(ps -o rss= -s "$pid" | awk '{s += $1} END {printf "%d", s / 1024}')
      printf '%-9s running  %-16s pid %-7s rss %sMiB\n' "$c" "$(addr "$c")" "$pid" "$rss"
    else
      printf '%-9s stopped  %s\n' "$c" "$(addr "$c")"
    fi
  done
}

cmd=${1:-}
[[ $cmd =~ ^(start|stop|status)$ ]] || die "usage: $0 start|stop|status [${ALL[*]}]"
shift
selected=()
for c in "${ALL[@]}"; do  # canonical order, whatever order the arguments came in
  if (($# == 0)) || [[ " $* " == *" $c "* ]]; then selected+=("$c"); fi
done
for c in "$@"; do [[ " ${ALL[*]} " == *" $c "* ]] || die "unknown component '$c' (known: ${ALL[*]})"; done
# A component that failed to become ready is stopped, so the next start retries it cleanly.
trap 'rc=$?; if ((rc != 0)) && [[ -n ${STARTING:-} ]]; then stop "$STARTING"; fi' EXIT
"$cmd" "${selected[@]}"
