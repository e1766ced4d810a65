#!/usr/bin/env bash
# The same quick bench at several commits, each in a worktree and stack of its own, in a network
# namespace of its own (so the standard ports do not clash with a running stack or each other):
#
#   bash bench/compare-commits.sh [--runs N] [--args "BENCH ARGS"] COMMIT[=EXTRA ARGS]...
#
# Default bench args: --quick --only c,d --concurrency 64. `COMMIT=--plain` adds `--plain` to that
# commit's runs only (a commit that predates an option cannot be given it), and the same commit may
# be named twice with different extras. Every stack is started first; then the runs are
# interleaved, one of each entry per round, so that a machine whose speed drifts over minutes (a
# shared VM) slows every entry alike. Prints one line per cell and run, and keeps the worktrees and
# logs under .local/compare/ (remove with `git worktree prune` after deleting them). Needs root (ip
# netns) and the commits' node_modules: they are copied from this checkout's, so commits with
# another package-lock.json are refused. Nothing here is a test: it prints figures
# (docs/PERFORMANCE.md, "Throughput since 2026-11-25").
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
[ $# -gt 0 ] || { echo "usage: bash bench/compare-commits.sh [--runs N] [--args ARGS] COMMIT[=EXTRA]..." >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root (ip netns)" >&2; exit 2; }

work="$ROOT/.local/compare"
mkdir -p "$work"
lock=$(md5sum <"$ROOT/package-lock.json")

# One namespace per commit (its stack's ports are the standard ones), created on first use.
ns_of() { echo "bench-$1"; }

shas=()
labels=()
extras=()
for entry in "$@"; do
  c=${entry%%=*}
  extra=""
  [ "$entry" != "$c" ] && extra=${entry#*=}
  sha=$(git -C "$ROOT" rev-parse --short "$c")
  shas+=("$sha")
  extras+=("$extra")
  labels+=("$sha${extra:+ ${extra// /}}")
done

stop_all() {
  for sha in $(printf '%s\n' "${shas[@]}" | sort -u); do
    ip netns exec "$(ns_of "$sha")" bash -c "cd '$work/$sha' && bash scripts/stack.sh stop" \
      >/dev/null 2>&1 || true
  done
}
trap stop_all EXIT

for sha in $(printf '%s\n' "${shas[@]}" | sort -u); do
  d="$work/$sha"
  if [ ! -d "$d" ]; then
    git -C "$ROOT" worktree add -q --detach "$d" "$sha"
    [ "$(md5sum <"$d/package-lock.json")" = "$lock" ] || { echo "$sha: another package-lock.json" >&2; exit 1; }
    cp -a "$ROOT/node_modules" "$d/node_modules"
  fi
  # stack.sh runs npm ci when the lock is newer than node_modules: not inside the namespace.
  touch "$d/node_modules/.package-lock.json"
  rm -f "$d/.local/pg/postmaster.pid"
  ns=$(ns_of "$sha")
  ip netns list | grep -qw "$ns" || { ip netns add "$ns"; ip netns exec "$ns" ip link set lo up; }
  ip netns exec "$ns" bash -c "cd '$d' && STACK_UPSTREAM=simulator bash scripts/stack.sh start" >"$work/$sha.start.log" 2>&1 ||
    { echo "$sha: the stack did not start (see $work/$sha.start.log)" >&2; exit 1; }
done

for i in $(seq 1 "$runs"); do
  for k in "${!shas[@]}"; do
    sha=${shas[$k]}
    log="$work/$sha${extras[$k]:+-${extras[$k]//[^a-z]/}}.bench$i.log"
    # BENCH_STACK=0: the stack is up; bench/run.sh would otherwise (re)start it.
    ip netns exec "$(ns_of "$sha")" bash -c \
      "cd '$work/$sha' && BENCH_STACK=0 timeout 600 bash bench/run.sh $args ${extras[$k]}" \
      >"$log" 2>&1 || true
    grep -E '^[a-z] [a-z-]+ +[0-9]+ ' "$log" | sed "s/^/${labels[$k]} run$i  /" || true
  done
done
