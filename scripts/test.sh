#!/usr/bin/env bash
# The whole test suite (README's second command; .ci/run calls it), or some of its steps:
#
#   bash scripts/test.sh                  every step, in this order
#   bash scripts/test.sh unit http        only these (deno task test:unit, test:http, … run one)
#
#   unit          Deno, supabase/tests/unit/ and the simulator's own tests: nothing started, no stack
#   pgtap         pg_prove over supabase/tests/database/*.test.sql
#   http          Deno, supabase/tests/http/: against the local stack (with the simulator)
#   reliability   Deno, supabase/tests/reliability/: restarts the local Postgres, kills a functions
#                 server; run last of the tests and on its own, so no other test meets the restart
#   logs          the function's log holds no key, upstream key or prompt
#   lint fmt check db-lint advisors   deno lint, deno fmt --check, deno check, supabase db lint
#                 (over the schemas we own: pgTAP's own functions in `extensions` fail
#                 plpgsql_check) and supabase db advisors
#   drift         supabase/schemas and supabase/migrations build the same database
#                 (scripts/drift-check.sh: two throwaway clusters, no stack needed)
#
# Each Deno tier is its own `deno test` run. Results are counted from what the runners write for
# machines (Deno's JUnit XML, pg_prove's TAP; scripts/results.ts), each other check counts as one.
# Every step runs even if an earlier one failed; the last line is "N passed, N failed", and the
# exit code is non-zero on any failure.
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
export FUNCTION_DB_URL="postgresql://gateway_api:gateway-api-local@127.0.0.1:54329/postgres"
# The edge runtime's limits for the suite (README, "The edge runtime's rules, locally"): a worker is
# retired after 10 s and killed at 20 s. Exported, so that a test running `stack.sh start` (the
# README's quickstart) finds the stack as it is. Tests assert exact charges against the simulator.
export FUNCTIONS_WALL_CLOCK_MS=${FUNCTIONS_WALL_CLOCK_MS:-20000}
export STACK_UPSTREAM=simulator
DENO="$ROOT/node_modules/.bin/deno"
ALL=(unit pgtap http reliability logs lint fmt check db-lint advisors drift)

steps=("$@")
((${#steps[@]})) || steps=("${ALL[@]}")
for s in "${steps[@]}"; do
  [[ " ${ALL[*]} " == *" $s "* ]] || { echo "unknown step: $s (steps: ${ALL[*]})" >&2; exit 2; }
done
wants() { [[ " ${steps[*]} " == *" $1 "* ]]; }

passed=0 failed=0 failures=()
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

section() { printf '\n\033[1m== %s\033[0m\n' "$1"; }
check() { # check NAME CMD...: a check counts as one test
  local name=$1; shift
  section "$name"
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$name"); fi
}

# count NAME FORMAT FILE RC: adds a runner's results (scripts/results.ts) to the totals. A runner
# that failed without a failing test in its report (a module that did not load, a crash) is one.
count() {
  local name=$1 format=$2 file=$3 rc=$4 p f
  local report
  report=$("$DENO" run --allow-read scripts/results.ts "$format" "$file")
  read -r p f <<<"$(head -1 <<<"$report")"
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; failures+=("$name: exited $rc"); fi
  while IFS= read -r line; do [ -n "$line" ] && failures+=("$name: $line"); done < <(tail -n +2 <<<"$report")
  echo "[$name] $p passed, $f failed"
  passed=$((passed + p)); failed=$((failed + f))
}

# deno_tier NAME DIR…: one `deno test` run, its JUnit report counted.
deno_tier() {
  local name=$1; shift
  section "deno test: $name"
  "$DENO" test -A --unstable-no-legacy-abort --junit-path="$out/$name.xml" "$@"
  count "$name" junit "$out/$name.xml" $?
}

# What the steps run with (Debian packages, Deno and the CLI from npm), installed if missing: a
# fresh clone has no node_modules, and the unit tier runs before the stack would install them.
bash scripts/stack.sh install || { echo "could not install the tools"; echo "0 passed, 1 failed"; exit 1; }

# Nothing of the stack is needed to start with: the unit tier runs first, before anything starts.
wants unit && deno_tier unit supabase/tests/unit/ tools/openrouter-sim/

needs_stack=0
for s in pgtap http reliability logs db-lint advisors; do wants "$s" && needs_stack=1; done
if ((needs_stack)); then
  # The docs pages are rendered in Debian's Chromium (headless, no network) by an HTTP test.
  if wants http && ! command -v chromium >/dev/null; then
    echo "[test] installing chromium for the docs rendering test" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null ||
      echo "[test] could not install chromium; the docs rendering test will fail" >&2
  fi
  # Tests assert exact charges against the simulator, never against a real upstream.
  if ! bash scripts/stack.sh start >/dev/null; then
    echo "the local stack did not start"
    echo "$passed passed, $((failed + 1)) failed"
    exit 1
  fi
  PGDATA=$(bash scripts/stack.sh pgdata)
  export PGDATA
fi

if wants pgtap; then
  section "pgTAP (pg_prove)"
  mapfile -t sql_tests < <(find supabase/tests -name '*.test.sql' | sort)
  # --verbose passes each file's TAP through; it is counted from there, not from the summary.
  pg_prove -h 127.0.0.1 -p 54322 -U postgres -d postgres --verbose --nocolor "${sql_tests[@]}" \
    >"$out/pgtap.tap" 2>&1
  rc=$?
  # On screen: a line per file, and whatever did not pass with its diagnostics.
  awk '/\.sql \.+ ?$/ { file = $1; next }
       /^ok$/ { print file " .. ok"; next }
       /^(Failed|Dubious)/ { print file " .. " $0; next }
       /^(not ok|#|Parse errors|Files=|Result)/ { print }' "$out/pgtap.tap"
  count pgTAP tap "$out/pgtap.tap" "$rc"
fi

wants http && deno_tier http supabase/tests/http/
# Last of the tests, alone: these take the shared Postgres down for a moment.
wants reliability && deno_tier reliability supabase/tests/reliability/

# Everything the suite sent through the function is in its log now: no key, upstream key or prompt.
wants logs && check "function logs hold no secret" "$DENO" run -A supabase/tests/lib/scan-logs.ts \
  .local/functions.log
wants lint && check "deno lint" "$DENO" lint
wants fmt && check "deno fmt --check" "$DENO" fmt --check
wants check && check "deno check" "$DENO" check
wants db-lint && check "supabase db lint" npx --no-install supabase db lint --db-url "$DB_URL" \
  --schema gateway,public --level warning --fail-on error
wants advisors && check "supabase db advisors" npx --no-install supabase db advisors \
  --db-url "$DB_URL" --fail-on warn
wants drift && check "drift check: supabase/schemas = supabase/migrations" bash scripts/drift-check.sh

if ((needs_stack)); then
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
fi

section "summary"
for f in "${failures[@]}"; do echo "FAILED: $f"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
