#!/usr/bin/env bash
# The whole test suite (README's second command; .ci/run calls it).
#
# Brings the local stack up with the simulated upstream, then runs, in order: pgTAP (pg_prove over
# supabase/tests/**/*.test.sql), deno test, a scan of the function's log for secrets, deno lint,
# deno fmt --check, deno check, supabase db lint (over the schemas we own: pgTAP's own functions in
# `extensions` fail plpgsql_check) and supabase db advisors. Every step runs even if an earlier one
# failed; the last line is "N passed, N failed" over tests and checks together, and the exit code is
# non-zero on any failure.
#
# The stack runs as on hosted Supabase (scripts/serve-functions.ts: worker processes, PgBouncer in
# transaction mode) but with a short wall clock, so that workers are retired, dropped early and
# killed many times in a run; the lifecycle events it counted are printed before the summary.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export DB_URL="postgresql://postgres:postgres@127.0.0.1:54322/postgres"
export GATEWAY_URL="http://127.0.0.1:54321/functions/v1/gateway"
export SIM_URL="http://127.0.0.1:54340"
export PGPASSWORD=postgres
export PGDATA=$(bash scripts/stack.sh pgdata)
export FUNCTION_DB_URL="postgresql://gateway_api:gateway-api-local@127.0.0.1:54329/postgres"
# The edge runtime's limits for the suite (README, "The edge runtime's rules, locally"): a worker is
# retired after 10 s and killed at 20 s. Exported, so that a test running `stack.sh start` (the
# README's quickstart) finds the stack as it is. Tests assert exact charges against the simulator.
export FUNCTIONS_WALL_CLOCK_MS=${FUNCTIONS_WALL_CLOCK_MS:-20000}
export STACK_UPSTREAM=simulator
DENO="$ROOT/node_modules/.bin/deno"

# The docs pages are rendered in Debian's Chromium (headless, no network) by a Deno test.
if ! command -v chromium >/dev/null; then
  echo "[test] installing chromium for the docs rendering test" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null ||
    echo "[test] could not install chromium; the docs rendering test will fail" >&2
fi

bash scripts/stack.sh start >/dev/null || { echo "0 passed, 1 failed"; exit 1; }

passed=0 failed=0 failures=()
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

section() { printf '\n\033[1m== %s\033[0m\n' "$1"; }
check() { # check NAME CMD...: a check counts as one test
  local name=$1; shift
  section "$name"
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$name"); fi
}

section "pgTAP (pg_prove)"
mapfile -t sql_tests < <(find supabase/tests -name '*.test.sql' | sort)
if ((${#sql_tests[@]})); then
  pg_prove -h 127.0.0.1 -p 54322 -U postgres -d postgres --failures "${sql_tests[@]}" 2>&1 | tee "$out/pgtap"
  rc=${PIPESTATUS[0]}
  total=$(grep -oE 'Tests=[0-9]+' "$out/pgtap" | tail -1 | cut -d= -f2)
  # A failing file adds its failed assertions, or 1 when it failed without any (it crashed, or ran
  # fewer tests than planned): pg_prove's summary has one "(Wstat: … Tests: T Failed: F)" line each.
  bad=$(grep -oE 'Tests: [0-9]+ Failed: [0-9]+\)' "$out/pgtap" | awk '{s += ($4 + 0 > 0 ? $4 + 0 : 1)} END {print s+0}')
  total=${total:-0}
  if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; failures+=("pg_prove exited $rc"); fi
  ((bad > 0)) && failures+=("pgTAP: $bad failing assertion(s)")
  passed=$((passed + total - (bad < total ? bad : total))); failed=$((failed + bad))
fi

section "deno test"
"$DENO" test -A --unstable-no-legacy-abort 2>&1 | tee "$out/deno"
rc=${PIPESTATUS[0]}
line=$(grep -E '^(ok|FAILED) \| ' "$out/deno" | tail -1 | sed 's/\x1b\[[0-9;]*m//g')
dp=$(sed -nE 's/.*\| ([0-9]+) passed.*/\1/p' <<<"$line"); df=$(sed -nE 's/.*\| ([0-9]+) failed.*/\1/p' <<<"$line")
dp=${dp:-0} df=${df:-0}
if [ "$rc" -ne 0 ] && [ "$df" -eq 0 ]; then df=1; fi
((df > 0)) && failures+=("deno test: $df failing")
passed=$((passed + dp)); failed=$((failed + df))

# Everything the suite sent through the function is in its log now: no key, upstream key or prompt.
check "function logs hold no secret" "$DENO" run -A supabase/tests/reliability/scan-logs.ts \
  .local/functions.log
check "deno lint" "$DENO" lint
check "deno fmt --check" "$DENO" fmt --check
check "deno check" "$DENO" check
check "supabase db lint" npx --no-install supabase db lint --db-url "$DB_URL" --schema gateway,public --level warning --fail-on error
check "supabase db advisors" npx --no-install supabase db advisors --db-url "$DB_URL" --fail-on warn

section "edge runtime lifecycle (the stack's functions, wall clock ${FUNCTIONS_WALL_CLOCK_MS} ms)"
# The stand-in's own counts; tests that start their own functions server log theirs themselves.
curl -fsS http://127.0.0.1:54321/_edge/lifecycle 2>/dev/null | "$DENO" eval '
  const l = JSON.parse(await new Response(Deno.stdin.readable).text())
  const e = l.events
  console.log(`${l.requests} requests; workers: ${e.started} started, ${e.retired} retired, ` +
    `${e.dropped_early} dropped early, ${e.killed_wall_clock} killed at the wall clock, ` +
    `${e.killed_memory} killed for memory, ${e.crashed} crashed; beforeunload: ` +
    `${e.beforeunload_wall_clock} wall clock, ${e.beforeunload_memory} memory; ` +
    `${e.streams_cut} streams cut; ${e.responses_504} responses 504`)
  console.log(`peak RSS of a worker: ${l.peak_worker_rss_mib} MiB; workers now: ${l.workers.length}`)
' || echo "(the functions server did not answer /_edge/lifecycle)"

section "summary"
for f in "${failures[@]}"; do echo "FAILED: $f"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
