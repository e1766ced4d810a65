#!/usr/bin/env bash
# The local stack: what `supabase start` gives, built from real parts for machines without Docker.
#
#   scripts/stack.sh start    install what is missing, start Postgres (54322), apply migrations with
#                             the Supabase CLI, start PgBouncer (54329, transaction mode, the pooler
#                             port of `supabase start`), start the OpenRouter simulator when no real
#                             key is set, and serve supabase/functions/* at :54321/functions/v1/<name>/…
#                             with the edge runtime's worker lifecycle (scripts/serve-functions.ts;
#                             its limits come from FUNCTIONS_* variables, hosted defaults otherwise)
#   scripts/stack.sh stop     stop the functions, the simulator, PgBouncer and Postgres
#   scripts/stack.sh reset    drop the database cluster, recreate it, re-apply migrations and seed
#   scripts/stack.sh status   what runs, and where
#   scripts/stack.sh banner   where everything is, and where the running gateway points upstream
#   scripts/stack.sh pgdata   the cluster's data directory (for tests that restart Postgres)
#
# Every step is idempotent: a second `start` only restarts the functions if their code changed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL="$ROOT/.local"
PGBIN=/usr/lib/postgresql/15/bin
PGPORT=54322
FN_PORT=54321
SIM_PORT=54340
POOLER_PORT=54329
DB_URL="postgresql://postgres:postgres@127.0.0.1:$PGPORT/postgres"
# The function's own LOGIN role through the pooler. The password is local-only, like postgres' own
# above: on hosted Supabase the operator sets one (README, "Deploying to hosted Supabase").
GATEWAY_API_PASSWORD=gateway-api-local
FUNCTION_DB_URL="postgresql://gateway_api:$GATEWAY_API_PASSWORD@127.0.0.1:$POOLER_PORT/postgres"
APT_PACKAGES=(postgresql-15 postgresql-contrib postgresql-15-cron postgresql-15-pgtap
  postgresql-15-plpgsql-check libtap-parser-sourcehandler-pgtap-perl pgbouncer)

log() { printf '\033[2m[stack]\033[0m %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }
# From /: the postgres user may not be allowed into the checkout (the cwd).
as_postgres() { (cd / && runuser -u postgres -- "$@"); }

ensure_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    [ "$(id -u)" = 0 ] || die "installing Debian packages needs root: apt-get install ${missing[*]}"
    apt-get update -qq
    # (Debian's postgresql package may also create a default cluster on 5432; we run our own.)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ ! -d "$ROOT/node_modules/.bin" ] || [ "$ROOT/package-lock.json" -nt "$ROOT/node_modules/.package-lock.json" ]; then
    log "installing npm tools (npm ci)"
    (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}

# The cluster lives in .local/pg, unless the postgres user cannot reach the checkout (a clone under
# /root, mode 700): then in postgres' home, one cluster per checkout. Postgres refuses to run as root.
# Decided again after the packages are installed, since they create the postgres user.
resolve_pgdata() {
  PGDATA="$LOCAL/pg"
  if [ ! -d "$PGDATA" ] && id postgres >/dev/null 2>&1 && ! as_postgres test -x "$ROOT"; then
    PGDATA="/var/lib/postgresql/openrouter-gateway-$(printf %s "$ROOT" | sha1sum | cut -c1-12)"
  fi
}
resolve_pgdata

pg_running() { [ -f "$PGDATA/postmaster.pid" ] && as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

init_cluster() {
  [ -f "$PGDATA/PG_VERSION" ] && return
  log "creating a Postgres 15 cluster in ${PGDATA#"$ROOT/"}"
  mkdir -p "$LOCAL" "$(dirname "$PGDATA")"
  chown postgres "$(dirname "$PGDATA")"
  local pwfile
  pwfile=$(mktemp) && echo postgres >"$pwfile" && chown postgres "$pwfile"
  as_postgres "$PGBIN/initdb" -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  echo "include_if_exists = 'gateway.conf'" >>"$PGDATA/postgresql.conf"
}

# Our settings live in their own file, rewritten at every start; a change restarts Postgres.
write_pg_settings() {
  local conf="$PGDATA/gateway.conf" new
  grep -q "^include_if_exists = 'gateway.conf'" "$PGDATA/postgresql.conf" ||
    echo "include_if_exists = 'gateway.conf'" >>"$PGDATA/postgresql.conf"
  new=$(cat <<EOF
# Written by scripts/stack.sh at every start: edit it there.
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGDATA'
shared_preload_libraries = 'pg_cron,pg_stat_statements'
cron.database_name = 'postgres'
cron.timezone = 'UTC'
# Jobs run in background workers, so pg_cron needs no password to connect back to the server.
cron.use_background_workers = on
max_worker_processes = 16
max_connections = 200
timezone = 'UTC'
log_min_messages = warning
EOF
)
  if [ "$(cat "$conf" 2>/dev/null)" != "$new" ]; then
    echo "$new" >"$conf" && chown postgres "$conf"
    if pg_running; then
      log "Postgres settings changed: restarting it"
      as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w restart -l "$PGDATA/server.log" >/dev/null
    fi
  fi
}

start_postgres() {
  pg_running && return
  log "starting Postgres on 127.0.0.1:$PGPORT"
  as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 start >/dev/null ||
    { tail -20 "$PGDATA/server.log" >&2; die "Postgres did not start"; }
}

psql_local() { PGPASSWORD=postgres PGOPTIONS='-c client_min_messages=warning' psql "$DB_URL" -v ON_ERROR_STOP=1 -qX "$@"; }

apply_migrations() {
  psql_local -f "$ROOT/supabase/local/bootstrap.sql" >/dev/null
  log "applying supabase/migrations (supabase db push)"
  (cd "$ROOT" && npx --no-install supabase db push --db-url "$DB_URL" --include-all --yes \
    --include-seed 2>&1 | grep -vE '^(Connecting|Skipping|Finished|Remote database is up to date)' >&2 || true)
  # db push reports failures on stdout and still exits 0 in some versions: check the history table.
  local want have
  want=$(find "$ROOT/supabase/migrations" -name '*.sql' | wc -l)
  have=$(psql_local -Atc "select count(*) from supabase_migrations.schema_migrations" 2>/dev/null || echo 0)
  [ "$have" -ge "$want" ] || die "only $have of $want migrations are applied (see the output above)"
  # The function's role logs in through the pooler with the local password.
  psql_local -c "alter role gateway_api with login password '$GATEWAY_API_PASSWORD'" >/dev/null
}

# PgBouncer in transaction mode in front of Postgres, as Supavisor (port 6543) is on hosted Supabase:
# a server connection per transaction, no startup `options` forwarded, no named prepared statements
# kept (1.18 does not track them; the function sends none). It runs as postgres, next to the cluster.
pooler_dir() {
  if [ "$PGDATA" = "$LOCAL/pg" ]; then echo "$LOCAL/pgbouncer"; else echo "$PGDATA-pgbouncer"; fi
}

pooler_running() {
  local dir
  dir=$(pooler_dir)
  [ -f "$dir/pgbouncer.pid" ] && kill -0 "$(cat "$dir/pgbouncer.pid")" 2>/dev/null
}

start_pooler() {
  local dir conf
  dir=$(pooler_dir)
  mkdir -p "$dir" && chown postgres "$dir" && chmod 700 "$dir"
  # Plain passwords, local only: PgBouncer answers SCRAM with them and logs in to Postgres alike.
  printf '"gateway_api" "%s"\n"postgres" "postgres"\n' "$GATEWAY_API_PASSWORD" >"$dir/userlist.txt"
  chown postgres "$dir/userlist.txt" && chmod 600 "$dir/userlist.txt"
  conf=$(cat <<EOF
; Written by scripts/stack.sh at every start: edit it there.
[databases]
postgres = host=127.0.0.1 port=$PGPORT dbname=postgres
; Any other database of the cluster (benchmarks run in their own), under its own name.
* = host=127.0.0.1 port=$PGPORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $POOLER_PORT
; TCP only: a socket file in /tmp would be shared by every stack on this machine.
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 40
; Reconnect at once after Postgres restarts (the default waits 15 s), and fail a query that cannot
; get a server connection instead of queueing it for two minutes.
server_login_retry = 1
server_connect_timeout = 5
query_wait_timeout = 30
ignore_startup_parameters = extra_float_digits
admin_users = postgres
stats_users = postgres
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
)
  if pooler_running && [ "$(cat "$dir/pgbouncer.ini" 2>/dev/null)" = "$conf" ]; then return; fi
  if pooler_running; then
    kill -TERM "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do pooler_running || break; sleep 0.1; done
  fi
  echo "$conf" >"$dir/pgbouncer.ini" && chown postgres "$dir/pgbouncer.ini"
  log "starting PgBouncer (transaction mode) on 127.0.0.1:$POOLER_PORT"
  as_postgres /usr/sbin/pgbouncer -d -q "$dir/pgbouncer.ini" ||
    { tail -20 "$dir/pgbouncer.log" >&2; die "PgBouncer did not start"; }
  for _ in $(seq 1 50); do
    psql "$FUNCTION_DB_URL" -qAtXc 'select 1' >/dev/null 2>&1 && return
    sleep 0.1
  done
  tail -20 "$dir/pgbouncer.log" >&2
  die "PgBouncer does not let gateway_api in"
}

stop_pooler() {
  pooler_running || return 0
  log "stopping PgBouncer"
  kill -TERM "$(cat "$(pooler_dir)/pgbouncer.pid")" 2>/dev/null || true
  for _ in $(seq 1 50); do pooler_running || break; sleep 0.1; done
}

# Reads supabase/functions/.env (KEY=VALUE lines) into the environment the functions get.
load_function_env() {
  local f="$ROOT/supabase/functions/.env"
  [ -f "$f" ] || return 0
  set -a
  # shellcheck disable=SC1090
  . "$f"
  set +a
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {
  local f=$1
  if pid_alive "$f"; then
    kill -TERM "$(cat "$f")" 2>/dev/null || true
    for _ in $(seq 1 100); do pid_alive "$f" || break; sleep 0.1; done
    pid_alive "$f" && kill -KILL "$(cat "$f")" 2>/dev/null || true
  fi
  rm -f "$f"
}

wait_http() {
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

tree_hash() {
  find "$@" -type f -print0 | sort -z | xargs -0 sha1sum | sha1sum | cut -c1-40
}

# Like the functions, the simulator is restarted only when its code changed.
start_simulator() {
  local hash
  hash=$(tree_hash "$ROOT/tools/openrouter-sim")
  if pid_alive "$LOCAL/sim.pid" && [ "$(cat "$LOCAL/sim.hash" 2>/dev/null)" = "$hash" ]; then return; fi
  stop_pidfile "$LOCAL/sim.pid"
  log "starting the OpenRouter simulator on 127.0.0.1:$SIM_PORT"
  SIM_PORT=$SIM_PORT nohup "$ROOT/node_modules/.bin/deno" run --allow-net --allow-env \
    --unstable-no-legacy-abort "$ROOT/tools/openrouter-sim/main.ts" >"$LOCAL/sim.log" 2>&1 &
  echo $! >"$LOCAL/sim.pid"
  echo "$hash" >"$LOCAL/sim.hash"
  wait_http "http://127.0.0.1:$SIM_PORT/api/v1/models" ||
    { cat "$LOCAL/sim.log" >&2; die "the simulator did not start"; }
}

# The code, and the environment the function and the stand-in read (a changed limit or upstream
# restarts them).
functions_hash() {
  {
    tree_hash "$ROOT/supabase/functions" "$ROOT/scripts/serve-functions.ts" "$ROOT/scripts/edge-worker.ts" "$ROOT/scripts/stack.sh"
    # (GATEWAY_URL is the test suite's, not the function's.)
    (load_function_env; env | grep -E '^(FUNCTIONS_|GATEWAY_|OPENROUTER_|STACK_UPSTREAM=)' |
      grep -v '^GATEWAY_URL=' | sort || true)
  } | sha1sum | cut -c1-40
}

# The scheduler's secret for POST /internal/reconcile: made once per checkout, kept in .local.
cron_secret() {
  [ -s "$LOCAL/cron-secret" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$LOCAL/cron-secret"
  cat "$LOCAL/cron-secret"
}

# What pg_cron + pg_net do on hosted for the jobs this pg_cron (1.4, no pg_net) cannot run:
# scripts/scheduler.ts, restarted when its code changed.
start_scheduler() {
  local hash
  hash=$(tree_hash "$ROOT/scripts/scheduler.ts")
  if pid_alive "$LOCAL/scheduler.pid" && [ "$(cat "$LOCAL/scheduler.hash" 2>/dev/null)" = "$hash" ]; then return; fi
  stop_pidfile "$LOCAL/scheduler.pid"
  log "starting the scheduler (reserved admissions released, holds reconciled from /generation)"
  (
    load_function_env
    export SCHEDULER_DB_URL="$DB_URL"
    export SCHEDULER_GATEWAY_URL="http://127.0.0.1:$FN_PORT/functions/v1/gateway"
    export GATEWAY_CRON_SECRET="${GATEWAY_CRON_SECRET:-$(cron_secret)}"
    cd "$ROOT"
    nohup "$ROOT/node_modules/.bin/deno" run --allow-net --allow-env \
      scripts/scheduler.ts >"$LOCAL/scheduler.log" 2>&1 &
    echo $! >"$LOCAL/scheduler.pid"
  )
  echo "$hash" >"$LOCAL/scheduler.hash"
}

start_functions() {
  local hash simulated=0
  upstream_is_simulated && simulated=1
  hash="$(functions_hash) simulated=$simulated"
  if pid_alive "$LOCAL/functions.pid" && [ "$(cat "$LOCAL/functions.hash" 2>/dev/null)" = "$hash" ]; then
    return
  fi
  stop_pidfile "$LOCAL/functions.pid"
  log "serving supabase/functions on http://127.0.0.1:$FN_PORT/functions/v1/"
  (
    load_function_env
    # As on hosted: SUPABASE_DB_URL is the direct connection as postgres; the function uses
    # GATEWAY_DB_URL, the pooler as its own role (it refuses to serve as postgres).
    export SUPABASE_URL="http://127.0.0.1:$FN_PORT" SUPABASE_DB_URL="$DB_URL"
    export GATEWAY_DB_URL="${GATEWAY_DB_URL:-$FUNCTION_DB_URL}"
    export FUNCTIONS_PORT=$FN_PORT
    export GATEWAY_CRON_SECRET="${GATEWAY_CRON_SECRET:-$(cron_secret)}"
    if [ "${STACK_UPSTREAM:-}" = simulator ]; then
      export OPENROUTER_BASE_URL="http://127.0.0.1:$SIM_PORT/api/v1"
    fi
    if [ "$simulated" = 1 ]; then
      export OPENROUTER_BASE_URL="${OPENROUTER_BASE_URL:-http://127.0.0.1:$SIM_PORT/api/v1}"
      export OPENROUTER_API_KEY=simulated-upstream-key GATEWAY_UPSTREAM_SIMULATED=1
    fi
    cd "$ROOT"
    nohup "$ROOT/node_modules/.bin/deno" run -A --unstable-no-legacy-abort \
      scripts/serve-functions.ts >"$LOCAL/functions.log" 2>&1 &
    echo $! >"$LOCAL/functions.pid"
  )
  echo "$hash" >"$LOCAL/functions.hash"
  wait_http "http://127.0.0.1:$FN_PORT/functions/v1/gateway/health" ||
    { tail -30 "$LOCAL/functions.log" >&2; die "the gateway function did not answer /health"; }
}

# STACK_UPSTREAM=simulator (the test command sets it) forces the simulator even when a key is set.
upstream_is_simulated() {
  [ "${STACK_UPSTREAM:-}" = simulator ] && return 0
  (load_function_env; [ -z "${OPENROUTER_API_KEY:-}" ])
}

# Where the running gateway points, as it says itself (/health): what it was started with, not what
# this shell's environment says now. $1: another functions server (http://host:port), for tests.
banner() {
  local fn=${1:-http://127.0.0.1:$FN_PORT} health base simulated upstream limits
  health=$(curl -fsS "$fn/functions/v1/gateway/health" 2>/dev/null || true)
  base=$(sed -nE 's/.*"base_url":"([^"]*)".*/\1/p' <<<"$health")
  simulated=$(sed -nE 's/.*"simulated":(true|false).*/\1/p' <<<"$health")
  if [ -z "$base" ]; then
    upstream="unknown: the gateway did not answer /health (see .local/functions.log)"
  elif [ "$simulated" = true ] && [ "$base" = "http://127.0.0.1:$SIM_PORT/api/v1" ]; then
    upstream="SIMULATED — $base, the local OpenRouter simulator (tools/openrouter-sim):
             no OPENROUTER_API_KEY is set. Put a real key in supabase/functions/.env to talk to
             https://openrouter.ai/api/v1."
  elif [ "$simulated" = true ]; then
    upstream="$base (OPENROUTER_BASE_URL), with no OPENROUTER_API_KEY: a placeholder key is sent,
             so only a simulator there will answer."
  else
    upstream="REAL — $base with your OPENROUTER_API_KEY"
  fi
  limits=$(curl -fsS "$fn/_edge/lifecycle" 2>/dev/null |
    sed -nE 's/.*"wall_clock_ms":([0-9]+).*"memory_limit_mb":([0-9]+).*/wall clock \1 ms, memory \2 MB/p')
  cat <<EOF

  Gateway     http://127.0.0.1:$FN_PORT/functions/v1/gateway/   (docs: …/gateway/docs)
  OpenAI SDK  baseURL http://127.0.0.1:$FN_PORT/functions/v1/gateway/v1
  Upstream    $upstream
  Database    $DB_URL
  Pooler      PgBouncer, transaction mode, 127.0.0.1:$POOLER_PORT: the function logs in there as
             gateway_api (GATEWAY_DB_URL)
  Runtime     worker processes with the edge runtime's limits (${limits:-unknown}):
             lifecycle at http://127.0.0.1:$FN_PORT/_edge/lifecycle

  First admin key (shown once), with 10,000 credits to try it:
    psql '$DB_URL' -Atc "select k.api_key from gateway.create_admin_key('ops@example.com') k, gateway.add_credits(k.user_id, 10000, 'quickstart')"

  Logs in .local/*.log · stop: scripts/stack.sh stop · reset: scripts/stack.sh reset
EOF
}

cmd_start() {
  ensure_packages
  resolve_pgdata
  init_cluster
  write_pg_settings
  start_postgres
  apply_migrations
  start_pooler
  if upstream_is_simulated; then start_simulator; fi
  start_functions
  start_scheduler
  banner
}

cmd_stop() {
  stop_pidfile "$LOCAL/scheduler.pid"
  stop_pidfile "$LOCAL/functions.pid"
  stop_pidfile "$LOCAL/sim.pid"
  stop_pooler
  if pg_running; then
    log "stopping Postgres"
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  fi
}

cmd_reset() {
  cmd_stop
  log "dropping the database cluster"
  rm -rf "$PGDATA"
  cmd_start
}

cmd_status() {
  pg_running && echo "postgres   running  $DB_URL" || echo "postgres   stopped"
  pooler_running && echo "pgbouncer  running  127.0.0.1:$POOLER_PORT (transaction mode)" || echo "pgbouncer  stopped"
  pid_alive "$LOCAL/sim.pid" && echo "simulator  running  http://127.0.0.1:$SIM_PORT/api/v1" || echo "simulator  stopped"
  pid_alive "$LOCAL/functions.pid" && echo "functions  running  http://127.0.0.1:$FN_PORT/functions/v1/" || echo "functions  stopped"
  pid_alive "$LOCAL/scheduler.pid" && echo "scheduler  running  (reserved admissions, reconcile)" || echo "scheduler  stopped"
}

case "${1:-start}" in
  start) cmd_start ;;
  install) ensure_packages ;;
  stop) cmd_stop ;;
  reset) cmd_reset ;;
  status) cmd_status ;;
  banner) banner "${2:-}" ;;
  pgdata) echo "$PGDATA" ;;
  *) die "usage: scripts/stack.sh [start|install|stop|reset|status|banner|pgdata]" ;;
esac
