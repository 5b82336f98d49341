#!/usr/bin/env bash
# Memory per key and restart time through the etcd API, Baton vs etcd 3.4, in one run.
#
#   bench/scripts/etcd-memory-restart.sh [COUNT]      (default 1000000 keys of 256 bytes)
#   TARGETS=baton bench/scripts/etcd-memory-restart.sh   (one server only)
#
# For each server: start it on 127.0.0.1 with an empty data directory, put COUNT distinct
# keys with `baton-bench etcd --workload fill` (32 connections x 8 in flight), note its
# resident memory once settled, SIGKILL it, restart it and time until a linearizable read
# of the last key answers (`baton-bench etcd-ready`, a fresh connection every 5 ms).
# Needs: release builds of baton and baton-bench, Debian's etcd-server.
set -euo pipefail
COUNT=${1:-1000000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BATON=$ROOT/target/release/baton
BENCH=$ROOT/target/release/baton-bench
WORK=$(mktemp -d "${TMPDIR:-/tmp}/baton-etcdmem.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
[ -x "$BATON" ] && [ -x "$BENCH" ] || { echo "build first: cargo build --release -p baton-server -p baton-bench" >&2; exit 1; }
command -v etcd >/dev/null || { echo "needs Debian's etcd-server" >&2; exit 1; }
PORT=22379
LAST=$(printf "fill/n%09d" $((COUNT - 1)))
. "$ROOT/bench/scripts/rss.sh"
# SIGKILL and wait until the process is gone (it is not this shell's child: `wait` cannot).
stop() { kill -9 "$1" 2>/dev/null || true; while [ -e "/proc/$1" ]; do sleep 0.01; done; }
start() { # name -> pid on stdout
  case $1 in
    baton) "$BATON" --data-dir "$WORK/baton" --client-addr 127.0.0.1:22281 --etcd-addr 127.0.0.1:$PORT --admin-addr off \
             >>"$WORK/baton.log" 2>&1 & ;;
    etcd) etcd --name m1 --data-dir "$WORK/etcd" --listen-client-urls http://127.0.0.1:$PORT \
             --advertise-client-urls http://127.0.0.1:$PORT --listen-peer-urls http://127.0.0.1:22380 \
             >>"$WORK/etcd.log" 2>&1 & ;;
  esac
  echo $!
}
for name in ${TARGETS:-baton etcd}; do
  pid=$(start $name); PIDS+=("$pid")
  "$BENCH" etcd-ready --target 127.0.0.1:$PORT --timeout 30 >/dev/null
  idle=$(rss_kb "$pid")
  fill=$("$BENCH" etcd --target 127.0.0.1:$PORT --workload fill --count "$COUNT" --clients 32 --depth 8 | tail -1)
  rss=$(settled_rss_kb "$pid")
  du=$(du -sk "$WORK/$name" | cut -f1)
  stop "$pid"
  t0=$(date +%s.%N)
  pid=$(start $name); PIDS+=("$pid")
  took=$("$BENCH" etcd-ready --target 127.0.0.1:$PORT --key "$LAST" --timeout 600)
  t1=$(date +%s.%N)
  after=$(rss_kb "$pid")
  stop "$pid"
  # Baton's own account of the restart: the snapshot loaded, the log entries replayed after it.
  [ "$name" = baton ] && grep -E "installed snapshot|recovered" "$WORK/baton.log" | tail -2 | sed 's/^/  /'
  echo "$name: $fill; RSS idle ${idle} kB, filled ${rss} kB ($(( (rss - idle) * 1024 / COUNT )) B/key), data dir ${du} kB; restart until readable ${took} s (wall $(echo "$t1 - $t0" | bc) s), RSS after restart ${after} kB"
done
