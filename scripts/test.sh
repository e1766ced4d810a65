#!/usr/bin/env bash
# The whole test suite (README's second command; .ci/run calls it).
#
# Brings the local stack up with the simulated upstream, then runs, in order: pgTAP (pg_prove over
# supabase/tests/**/*.test.sql), deno test, a scan of the function's log for secrets, deno lint,
# deno fmt --check, deno check, supabase db lint (over the schemas we own: pgTAP's own functions in
# `extensions` fail plpgsql_check), supabase db advisors, and the drift check (supabase/schemas and
# supabase/migrations build the same database: scripts/drift-check.sh). Every step runs even if an
# earlier one failed; the last line is "N passed, N failed" over tests and checks together, and the
# exit code is non-zero on any failure.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export DB_URL="postgresql://postgres:postgres@127.0.0.1:54322/postgres"
export GATEWAY_URL="http://127.0.0.1:54321/functions/v1/gateway"
export SIM_URL="http://127.0.0.1:54340"
export PGPASSWORD=postgres
export PGDATA=$(bash scripts/stack.sh pgdata)
DENO="$ROOT/node_modules/.bin/deno"

# The docs pages are rendered in Debian's Chromium (headless, no network) by a Deno test.
if ! command -v chromium >/dev/null; then
  echo "[test] installing chromium for the docs rendering test" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null ||
    echo "[test] could not install chromium; the docs rendering test will fail" >&2
fi

# Tests assert exact charges against the simulator, never against a real upstream.
STACK_UPSTREAM=simulator bash scripts/stack.sh start >/dev/null || { echo "0 passed, 1 failed"; exit 1; }

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
# Deno colours its summary line even into a pipe: strip the colour before matching it.
line=$(sed 's/\x1b\[[0-9;]*m//g' "$out/deno" | grep -E '^(ok|FAILED) \| ' | tail -1)
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
check "drift check: supabase/schemas = supabase/migrations" bash scripts/drift-check.sh

section "summary"
for f in "${failures[@]}"; do echo "FAILED: $f"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
