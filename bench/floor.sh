#!/usr/bin/env bash
# The latency floor at concurrency 1, layer by layer (bench/floor.ts). About a minute.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
command -v wrk >/dev/null || { echo "floor: needs wrk (bash bench/run.sh installs it)" >&2; exit 1; }
STACK_UPSTREAM=simulator bash scripts/stack.sh start >/dev/null
exec "$ROOT/node_modules/.bin/deno" run --allow-all bench/floor.ts "$@"
