#!/usr/bin/env bash
# The benchmark: overhead and throughput of the gateway against Portkey OSS and the bare upstream.
#
#   bash bench/run.sh            every scenario at c=1, 16, 64 (8 s per cell; about 4 minutes)
#   bash bench/run.sh --quick    2 s per cell: a smoke run
#
# Options (bench/README.md): --seconds N, --only ID[,ID…], --concurrency 1,16,64, --profile.
# Starts the local stack (only its Postgres is used), then bench/main.ts, which starts and stops
# its own simulator, Portkey and functions server. Prints a table, writes bench/results/<run>.json,
# and exits non-zero if the books are not exact or any request failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# The load generator is Debian's wrk: installed here, like everything else the commands need.
if ! command -v wrk >/dev/null; then
  echo "bench: installing wrk" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } >/dev/null ||
    { echo "bench: could not install wrk (apt-get install wrk)" >&2; exit 1; }
fi

# BENCH_STACK=0 skips this (while migrations are being written, pushing them half-done would
# record them as applied).
if [ "${BENCH_STACK:-1}" != 0 ]; then
  STACK_UPSTREAM=simulator bash scripts/stack.sh start >/dev/null
fi

# --allow-all: Deno grants /proc/<pid>/status, stat and clear_refs (peak memory and CPU time of
# the processes measured) to nothing less. Every address the script uses is 127.0.0.1.
exec "$ROOT/node_modules/.bin/deno" run --allow-all bench/main.ts "$@"
