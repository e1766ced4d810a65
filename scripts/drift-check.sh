#!/usr/bin/env bash
# Drift check: supabase/schemas/ (the current definition of every object) and supabase/migrations/
# (the steps) must build the same database.
#
#   bash scripts/drift-check.sh      exit 0 when they agree, else 1 with a unified diff
#                                    (--- migrations, +++ schemas)
#   bash scripts/drift-check.sh --draft
#                                    the same, and when they differ also print a draft of the
#                                    migration that takes the migrations' database to schemas/'
#                                    (`supabase db diff --from … --to …`): a draft to read and
#                                    complete (cron jobs and rows are not in it), not to trust
#   DRIFT_KEEP=1 bash scripts/drift-check.sh   keep the clusters' directory (both descriptions,
#                                    the CLI's log) in /tmp to look at
#
# Builds two throwaway Postgres 15 clusters, each from supabase/local/bootstrap.sql: one gets the
# migrations through the real CLI (`supabase db push --db-url`), the other supabase/schemas/*.sql in
# name order through psql. Two clusters because pg_cron lives in the one database that
# cron.database_name names, and both builds need it. They listen on a Unix socket only (no port to
# find free, nothing to clash with a running stack) and need no Docker and no running stack.
#
# Compared, as text:
#   - pg_dump --schema-only -n gateway: tables, columns, constraints, indexes, identities, types,
#     functions (bodies verbatim), views, triggers, RLS and policies, comments, owners and ACLs;
#   - what a schema dump misses: the pg_cron jobs, the rows of gateway's tables (the settings row
#     and any seed row), the extensions, the roles with their attributes, memberships and comments,
#     and every default-privileges entry (a global one is not in a dump of one schema).
# Normalised, and only this: within one object's ACL the GRANT/REVOKE lines are sorted (their order
# is the order of the grants, history rather than state), and the rows' columns that default to
# now() are left out (when a row was written, not what it holds). pg_dump's \restrict key is fixed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRAFT=0
case "${1:-}" in
  --draft) DRAFT=1 ;;
  "") ;;
  *) echo "usage: bash scripts/drift-check.sh [--draft]" >&2; exit 2 ;;
esac
PGBIN=/usr/lib/postgresql/15/bin

die() { printf 'drift-check: %s\n' "$*" >&2; exit 2; }
[ -x "$PGBIN/initdb" ] || die "PostgreSQL 15 is missing (bash scripts/stack.sh start installs it)"
[ -x "$ROOT/node_modules/.bin/supabase" ] || die "the Supabase CLI is not installed (npm ci)"

# Postgres refuses to run as root: then the clusters belong to the postgres user, and it starts them
# from / (it may not be allowed into the checkout). Anyone else runs them as themselves.
if [ "$(id -u)" = 0 ]; then
  as_server() { (cd / && runuser -u postgres -- "$@"); }
else
  as_server() { "$@"; }
fi

work=$(mktemp -d /tmp/gateway-drift.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$work"
cleanup() {
  for c in migrations schemas; do
    [ -f "$work/$c/postmaster.pid" ] &&
      as_server "$PGBIN/pg_ctl" -D "$work/$c" -m immediate stop >/dev/null 2>&1
  done
  if [ -n "${DRIFT_KEEP:-}" ]; then echo "drift-check: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

as_server "$PGBIN/initdb" -D "$work/migrations" -U postgres -A trust -N --encoding=UTF8 \
  --locale=C.UTF-8 >"$work/initdb.log" 2>&1 || { cat "$work/initdb.log" >&2; die "initdb failed"; }
as_server cp -a "$work/migrations" "$work/schemas"

start_cluster() { # the socket lives in the data directory; jobs are scheduled, never run
  as_server "$PGBIN/pg_ctl" -D "$work/$1" -l "$work/$1.log" -w -t 60 -o "-c listen_addresses='' \
    -c unix_socket_directories='$work/$1' -c shared_preload_libraries=pg_cron \
    -c cron.database_name=postgres -c cron.max_running_jobs=0 -c fsync=off \
    -c synchronous_commit=off -c full_page_writes=off -c timezone=UTC" start >/dev/null ||
    { cat "$work/$1.log" >&2; die "Postgres did not start"; }
}
psql_in() {
  local c=$1
  shift
  psql "host=$work/$c user=postgres dbname=postgres" -X -q -v ON_ERROR_STOP=1 "$@"
}

build_migrations() {
  start_cluster migrations
  psql_in migrations -f "$ROOT/supabase/local/bootstrap.sql" >/dev/null
  # The CLI wants a URL: a host of localhost with host= naming the socket directory.
  (cd "$ROOT" && "$ROOT/node_modules/.bin/supabase" db push --include-all --yes \
    --db-url "postgresql://postgres:postgres@localhost/postgres?host=$work/migrations") \
    >"$work/push.log" 2>&1 || { cat "$work/push.log" >&2; return 1; }
  # db push reports some failures on stdout and still exits 0: count what it applied.
  local want have
  want=$(find "$ROOT/supabase/migrations" -name '*.sql' | wc -l)
  have=$(psql_in migrations -Atc 'select count(*) from supabase_migrations.schema_migrations')
  [ "$have" = "$want" ] ||
    { cat "$work/push.log" >&2; echo "only $have of $want migrations applied" >&2; return 1; }
}

build_schemas() {
  start_cluster schemas
  local files=(-f "$ROOT/supabase/local/bootstrap.sql")
  for f in "$ROOT"/supabase/schemas/*.sql; do files+=(-f "$f"); done
  PGOPTIONS='-c client_min_messages=warning' psql_in schemas "${files[@]}" >/dev/null
}

# pg_dump 15.14 and later write a random \restrict key into every dump, unless given one.
restrict=()
"$PGBIN/pg_dump" --help | grep -- --restrict-key >/dev/null && restrict=(--restrict-key=drift)

describe() { # everything compared of one build, as text
  "$PGBIN/pg_dump" --schema-only -n gateway "${restrict[@]}" \
    "host=$work/$1 user=postgres dbname=postgres" |
    perl -ne 'if (/^(GRANT|REVOKE) /) { push @acl, $_; next } print sort @acl; @acl = (); print;
              END { print sort @acl }'
  psql_in "$1" -At <<'SQL'
\echo '--'
\echo '-- Not in a schema dump: pg_cron jobs'
\echo '--'
select jobname, schedule, command, database, username, active from cron.job order by jobname;
\echo '--'
\echo '-- Not in a schema dump: extensions'
\echo '--'
select extname, extnamespace::regnamespace, extversion from pg_extension order by extname;
\echo '--'
\echo '-- Not in a schema dump: roles (attributes, comment), memberships'
\echo '--'
select rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
       rolbypassrls, rolconnlimit, shobj_description(oid, 'pg_authid')
  from pg_roles where rolname !~ '^pg_' order by rolname;
select r.rolname || ' is a member of ' || g.rolname
       || case when m.admin_option then ' (admin)' else '' end
  from pg_auth_members m join pg_roles r on r.oid = m.member join pg_roles g on g.oid = m.roleid
 order by 1;
\echo '--'
\echo '-- Not in a schema dump of gateway: default privileges, every schema and global'
\echo '--'
select defaclrole::regrole, coalesce(defaclnamespace::regnamespace::text, '(global)'),
       defaclobjtype, array(select unnest(defaclacl)::text order by 1)
  from pg_default_acl order by 1, 2, 3;
\echo '--'
\echo '-- Not in a schema dump: the rows of gateway''s tables (no column that defaults to now())'
\echo '--'
select format('select %L || '': '' || (to_jsonb(t) - %L::text[])::text'
              ' from gateway.%I t order by 1',
              c.relname,
              array(select a.attname from pg_attribute a
                      join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
                     where a.attrelid = c.oid and pg_get_expr(d.adbin, d.adrelid) = 'now()'),
              c.relname)
  from pg_class c
 where c.relnamespace = 'gateway'::regnamespace and c.relkind in ('r', 'p')
 order by c.relname
\gexec
SQL
}

# The two builds are independent: run them side by side.
build_migrations >"$work/build-migrations.err" 2>&1 &
pid_m=$!
build_schemas >"$work/build-schemas.err" 2>&1 &
pid_s=$!
ok=1
for c in migrations schemas; do
  pid=$pid_m
  [ "$c" = schemas ] && pid=$pid_s
  wait "$pid" || { echo "supabase/$c did not build:" >&2; cat "$work/build-$c.err" >&2; ok=0; }
done
[ "$ok" = 1 ] || exit 1

describe migrations >"$work/migrations.txt"
describe schemas >"$work/schemas.txt"

# -F: each hunk names the object it is in (pg_dump's "-- Name:" line) or the section.
if diff -u -F '^-- \(Name\|Not in\)' --label migrations --label schemas \
  "$work/migrations.txt" "$work/schemas.txt" >"$work/diff"; then
  echo "supabase/schemas and supabase/migrations agree:" \
    "$(grep -c '^CREATE FUNCTION' "$work/schemas.txt") functions," \
    "$(grep -c '^CREATE TABLE' "$work/schemas.txt") tables," \
    "$(psql_in schemas -Atc 'select count(*) from cron.job') cron jobs," \
    "$(wc -l <"$work/schemas.txt") lines compared"
  exit 0
fi
echo "supabase/schemas and supabase/migrations differ" \
  "(- what the migrations build, + what schemas/ builds):"
cat "$work/diff"
if [ "$DRAFT" = 1 ]; then
  echo
  echo "-- Draft migration (supabase db diff --from migrations --to schemas --schema gateway):"
  url="postgresql://postgres:postgres@localhost/postgres?host=$work"
  (cd "$ROOT" && "$ROOT/node_modules/.bin/supabase" db diff --schema gateway \
    --from "$url/migrations" --to "$url/schemas" 2>"$work/draft.err") || cat "$work/draft.err" >&2
fi
exit 1
