#!/usr/bin/env bash
# The same quick bench at several commits, one after the other, each in a worktree and stack of its
# own, in a network namespace of its own (so the standard ports do not clash with a running stack):
#
#   bash bench/compare-commits.sh [--runs N] [--args "BENCH ARGS"] COMMIT...
#
# Default bench args: --quick --only c,d --concurrency 64. Prints one line per cell and run, and
# keeps the worktrees and logs under .local/compare/ (remove with `git worktree prune` after
# deleting them). Needs root (ip netns) and the commits' node_modules: they are copied from this
# checkout's, so commits with another package-lock.json are refused. Nothing here is a test: it
# prints figures (docs/PERFORMANCE.md, "Throughput since 2026-11-25").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=2
args="--quick --only c,d --concurrency 64"
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --args) args=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: bash bench/compare-commits.sh [--runs N] [--args ARGS] COMMIT..." >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root (ip netns)" >&2; exit 2; }

ns=bench-compare
ip netns list | grep -qw "$ns" || { ip netns add "$ns"; ip netns exec "$ns" ip link set lo up; }
work="$ROOT/.local/compare"
mkdir -p "$work"
lock=$(md5sum <"$ROOT/package-lock.json")

for c in "$@"; do
  sha=$(git -C "$ROOT" rev-parse --short "$c")
  d="$work/$sha"
  if [ ! -d "$d" ]; then
    git -C "$ROOT" worktree add -q --detach "$d" "$sha"
    [ "$(md5sum <"$d/package-lock.json")" = "$lock" ] || { echo "$sha: another package-lock.json" >&2; exit 1; }
    cp -a "$ROOT/node_modules" "$d/node_modules"
  fi
  # stack.sh runs npm ci when the lock is newer than node_modules: not inside the namespace.
  touch "$d/node_modules/.package-lock.json"
  rm -f "$d/.local/pg/postmaster.pid"
  ip netns exec "$ns" bash -c "
    cd '$d' && bash scripts/stack.sh start >'$work/$sha.start.log' 2>&1 || exit 1
    for i in \$(seq 1 $runs); do
      timeout 600 bash bench/run.sh $args >'$work/$sha.bench'\$i'.log' 2>&1
    done
    bash scripts/stack.sh stop >/dev/null 2>&1" || { echo "$sha: the stack did not start (see $work/$sha.start.log)" >&2; continue; }
  for i in $(seq 1 "$runs"); do
    grep -E '^[a-z] [a-z-]+ +[0-9]+ ' "$work/$sha.bench$i.log" | sed "s/^/$sha run$i  /" || true
  done
done
