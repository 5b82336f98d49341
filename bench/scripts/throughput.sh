#!/usr/bin/env bash
# Throughput and latency, Baton vs ZooKeeper 3.8 vs etcd 3.4 (single nodes), in one run on
# this machine, same load generator and load (baton-bench; fsync on for all three).
#
#   bench/scripts/throughput.sh [SECONDS] [CLIENTS] [DEPTH]    (default 5 32 8)
#
# Needs release builds of baton and baton-bench and Debian's zookeeper and etcd-server.
set -euo pipefail
SECONDS_EACH=${1:-5}
CLIENTS=${2:-32}
DEPTH=${3:-8}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BATON=$ROOT/target/release/baton
BENCH=$ROOT/target/release/baton-bench
WORK=$(mktemp -d "${TMPDIR:-/tmp}/baton-throughput.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
[ -x "$BATON" ] && [ -x "$BENCH" ] || { echo "build first: cargo build --release -p baton-server -p baton-bench" >&2; exit 1; }
[ -x /usr/share/zookeeper/bin/zkServer.sh ] || { echo "needs Debian's zookeeper package" >&2; exit 1; }
command -v etcd >/dev/null || { echo "needs Debian's etcd-server package" >&2; exit 1; }
for port in 22281 22282 22379 22380; do
  if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
    echo "port $port is already served; stop that server first" >&2
    exit 1
  fi
done
wait_port() { for _ in $(seq 600); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0; sleep 0.05; done; return 1; }

mkdir -p "$WORK/zk/data"
cat > "$WORK/zk/zoo.cfg" <<CFG
tickTime=2000
dataDir=$WORK/zk/data
clientPort=22281
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=*
forceSync=yes
CFG
ZOO_LOG_DIR=$WORK/zk /usr/share/zookeeper/bin/zkServer.sh start-foreground "$WORK/zk/zoo.cfg" >"$WORK/zk/out.log" 2>&1 &
PIDS+=("$!")
"$BATON" --data-dir "$WORK/baton" --client-addr 127.0.0.1:22282 >"$WORK/baton.log" 2>&1 &
PIDS+=("$!")
etcd --name bench --data-dir "$WORK/etcd" --listen-client-urls http://127.0.0.1:22379 \
  --advertise-client-urls http://127.0.0.1:22379 --listen-peer-urls http://127.0.0.1:22380 \
  --initial-advertise-peer-urls http://127.0.0.1:22380 --initial-cluster bench=http://127.0.0.1:22380 \
  >"$WORK/etcd.log" 2>&1 &
PIDS+=("$!")
wait_port 22281
wait_port 22282
wait_port 22379
PIDS+=("$(pgrep -f "java.*$WORK/zk/zoo.cfg" | head -1)")
sleep 2

echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, kernel $(uname -r)"
echo "load: $CLIENTS sessions x $DEPTH in flight, 256 B values, ${SECONDS_EACH} s measured after warm-up"
results=()
for workload in write read create-delete; do
  for target in zookeeper:22281 baton:22282 etcd:22379; do
    label=${target%%:*}
    protocol=zk
    [ "$label" = etcd ] && protocol=etcd
    line=$("$BENCH" "$protocol" --target "127.0.0.1:${target##*:}" --label "$label" --workload "$workload" \
      --clients "$CLIENTS" --depth "$DEPTH" --seconds "$SECONDS_EACH" | tail -1)
    echo "$line"
    results+=("$line")
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import re, sys
rows = {}
for line in sys.stdin:
    m = re.match(r"(\S+)\s+(\S+)\s.*?:\s+(\d+) ops/s\s+p50 ([\d.]+) ms .*?p99 ([\d.]+) ms", line)
    if m:
        label, workload, ops, p50, p99 = m.groups()
        rows.setdefault(workload, {})[label] = (int(ops), float(p50), float(p99))
print()
print("| workload | ZooKeeper 3.8 | etcd 3.4 | Baton | Baton / ZooKeeper | Baton / etcd |")
print("|---|---|---|---|---|---|")
for w, r in rows.items():
    z, e, b = r.get("zookeeper"), r.get("etcd"), r.get("baton")
    if z and e and b:
        print(f"| {w} | {z[0]:,} /s, p99 {z[2]} ms | {e[0]:,} /s, p99 {e[2]} ms | {b[0]:,} /s, p99 {b[2]} ms "
              f"| {b[0] / z[0]:.2f}x, p99 {b[2] / z[2]:.2f}x | {b[0] / e[0]:.2f}x, p99 {b[2] / e[2]:.2f}x |")
'
