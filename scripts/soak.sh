#!/usr/bin/env bash
# The full concurrency soak (not part of the suite; the suite runs a 1,000-request version):
# 10,000 chat requests from 200 keys of 20 accounts with small balances, 64 in flight, mixed stream
# and non-stream, upstream faults, clients hanging up mid-way, credit grants meanwhile; then the
# books: no balance below zero, ledger = balance, usage records = the simulator's generations, no
# hold open, every admitted request settled exactly once. Exit status 1 on any broken invariant.
#
#   bash scripts/soak.sh [--mode standard|churn|hostile|cost] [--requests N] [--concurrency N]
#                        [--accounts N] [--keys N] [--credits N] [--seed N]
#                        [--wall-clock-ms 6000] [--kill-every-ms 4000] [--markup 25]
#
# Modes (supabase/tests/lib/soak.ts): churn — workers with a 6 s wall clock (retired, dropped
# early, killed), a worker SIGKILLed mid-request every 4 s, streams cut at 4 s; then the
# scheduler's release and reconcile for 10 s, and the figures (workers started/dropped/killed,
# streams cut, holds reconciled from /generation, held after 10 s, expired uncharged). hostile —
# oversized prompts, 100 tools of 4 KB, image/audio/file parts, :nitro/:floor/:free/:online,
# `models` lists, openrouter/auto, slow readers, aborts (lib/hostile.ts); overruns only as listed
# and within what parts allow. cost — pricing_mode cost with markup_percent (restored after), a
# mix of models; upstream cost (the simulator's usage.cost), markup and charges reconciled.
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
