#!/usr/bin/env bash
# Throughput of the SQL request path alone (no HTTP): begin_request + settle_request pairs, driven
# by pgbench straight against the local Postgres, for one hot account and for many accounts.
#
#   bash bench/pgbench.sh [--clients N] [--seconds N] [--accounts N]
#
# It shows what the database sustains before the function or the network add anything, and how much
# a single account's balance row (locked by every begin and settle) costs against spread load.
# Setup: N accounts created with the operator API (gateway.create_admin_key, add_credits and
# set_rate_limits, so neither credits nor limits refuse anything), their key hashes in a scratch
# schema `bench_pgbench` that is dropped at the end. The accounts and their usage stay, like those
# of bench/run.sh (`scripts/stack.sh reset` clears them).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
clients=8 seconds=10 accounts=1000
while (($#)); do
  case $1 in
    --clients) clients=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --accounts) accounts=$2; shift 2 ;;
    *) echo "usage: bash bench/pgbench.sh [--clients N] [--seconds N] [--accounts N]" >&2; exit 2 ;;
  esac
done

bash "$ROOT/scripts/stack.sh" start >/dev/null
export PGPASSWORD=postgres PGOPTIONS='-c client_min_messages=warning'
DB_URL="postgresql://postgres:postgres@127.0.0.1:54322/postgres"
run=$(date +%s)
work=$(mktemp -d)
trap 'psql "$DB_URL" -qXc "drop schema if exists bench_pgbench cascade" >/dev/null; rm -rf "$work"' EXIT

psql "$DB_URL" -qX -v ON_ERROR_STOP=1 <<SQL
drop schema if exists bench_pgbench cascade;
create schema bench_pgbench;
create table bench_pgbench.keys (i int primary key, h bytea not null);
do \$\$
declare
  k record;
begin
  for i in 1 .. $accounts loop
    select * into k from gateway.create_admin_key('pgbench-$run-' || i || '@bench.invalid', 'live');
    perform gateway.add_credits(k.user_id, 1000000000000, 'pgbench');
    perform gateway.set_rate_limits(k.user_id, '{"requests_per_minute": 1000000000,
      "requests_per_hour": 1000000000, "requests_per_day": 1000000000,
      "tokens_per_minute": 1000000000, "tokens_per_hour": 1000000000,
      "tokens_per_day": 1000000000}');
    insert into bench_pgbench.keys values (i, sha256(convert_to(k.api_key, 'UTF8')));
  end loop;
end
\$\$;
SQL

# One transaction each, as the function makes them: admit and hold, then charge 20 + 80 tokens.
cat >"$work/pair.sql" <<'SQL'
\set i random(1, :accounts)
select (gateway.begin_request(k.h, '203.0.113.5', null,
          '{"models":["openai/gpt-4o-mini"],"prompt_bound":20,"max_tokens":100}') ->> 'hold_id')::bigint
    as hold_id
  from bench_pgbench.keys k where k.i = :i \gset
select gateway.settle_request(:hold_id, '{"model":"openai/gpt-4o-mini","prompt_tokens":20,
  "completion_tokens":80,"cost":"0.001","status":"success","latency_ms":100,
  "generation_id":"gen-bench","settled_by":"usage"}');
SQL

tps() { # tps ACCOUNTS: pairs per second
  /usr/lib/postgresql/15/bin/pgbench -h 127.0.0.1 -p 54322 -U postgres -n -M prepared \
    -f "$work/pair.sql" -D "accounts=$1" -c "$clients" -j 2 -T "$seconds" postgres 2>/dev/null |
    awk '/^tps/ {printf "%.0f", $3}'
}

echo "begin+settle pairs per second, $clients clients, ${seconds} s each (pgbench -M prepared)"
printf '  one hot account      %s\n' "$(tps 1)"
printf '  %-4s accounts        %s\n' "$accounts" "$(tps "$accounts")"
