#!/usr/bin/env bash
# The full concurrency soak (not part of the suite; the suite runs a 1,000-request version):
# 10,000 chat requests from 200 keys of 20 accounts with small balances, 64 in flight, mixed stream
# and non-stream, upstream faults, clients hanging up mid-way, credit grants meanwhile; then the
# books: no balance below zero, ledger = balance, usage records = the simulator's generations, no
# hold open, every admitted request settled exactly once. Exit status 1 on any broken invariant.
#
#   bash scripts/soak.sh [--requests N] [--concurrency N] [--accounts N] [--keys N] [--credits N]
#                        [--seed N]
#
# Brings the local stack up (only its Postgres is used); runs its own simulator and functions server
# on free ports, so it disturbs no one.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export DB_URL="${DB_URL:-postgresql://postgres:postgres@127.0.0.1:54322/postgres}"
STACK_UPSTREAM=simulator bash scripts/stack.sh start >/dev/null
start=$(date +%s)
"$ROOT/node_modules/.bin/deno" run -A --unstable-no-legacy-abort \
  supabase/tests/lib/soak.ts "$@"
echo "soak: $(($(date +%s) - start)) s wall clock"
