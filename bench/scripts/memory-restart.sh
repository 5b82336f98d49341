#!/usr/bin/env bash
# Memory per znode and restart time, Baton vs ZooKeeper 3.8, in one run on this machine.
#
#   bench/scripts/memory-restart.sh [COUNT]      (default 1000000 znodes of 100 bytes)
#
# For each server: start it on 127.0.0.1 with an empty data directory, note its memory,
# create COUNT znodes with baton-bench (16 sessions x 16 in flight), note its memory again
# (ZooKeeper: JVM heap after a full GC, as `jcmd GC.heap_info` reports it; Baton: RSS),
# SIGKILL it, restart it and time until a kazoo client reads the last znode.
# Needs: release builds of baton and baton-bench, Debian's zookeeper package, python3-kazoo.
set -euo pipefail
COUNT=${1:-1000000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BATON=$ROOT/target/release/baton
BENCH=$ROOT/target/release/baton-bench
WORK=$(mktemp -d "${TMPDIR:-/tmp}/baton-memrestart.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
[ -x "$BATON" ] && [ -x "$BENCH" ] || { echo "build first: cargo build --release -p baton-server -p baton-bench" >&2; exit 1; }
[ -x /usr/share/zookeeper/bin/zkServer.sh ] || { echo "needs Debian's zookeeper package" >&2; exit 1; }
for port in 22281 22282; do
  if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
    echo "port $port is already served; stop that server first" >&2
    exit 1
  fi
done
LAST=$(printf "/fill/n%09d" $((COUNT - 1)))

. "$ROOT/bench/scripts/rss.sh"
zk_heap_kb() {
  jcmd "$1" GC.run >/dev/null
  jcmd "$1" GC.heap_info | awk '/used/ { for (i = 1; i <= NF; i++) if ($i == "used") { v = $(i+1); sub("K", "", v); print v; exit } }'
}
# Starts a server with the command in "$@" and prints "<pid> <seconds>": from the server's
# exec until a client has read $LAST from $HOSTPORT over the ZooKeeper protocol (a minimal
# client, retrying every 5 ms, so neither server pays for a client library's back-off).
exec_and_time_read() {
  python3 - "$HOSTPORT" "$LAST" "$WORK/server.log" "$@" <<'PY'
import socket, struct, subprocess, sys, time
hostport, last, log = sys.argv[1], sys.argv[2], sys.argv[3]
host, port = hostport.rsplit(":", 1)

def frame(payload):
    return struct.pack(">i", len(payload)) + payload

def recv_frame(s):
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise OSError("closed")
            buf += chunk
        return buf
    (n,) = struct.unpack(">i", exact(4))
    return exact(n)

def read_last():
    with socket.create_connection((host, int(port)), 1) as s:
        s.settimeout(30)
        # ConnectRequest: protocolVersion, lastZxidSeen, timeOut, sessionId, passwd, readOnly.
        s.sendall(frame(struct.pack(">iqiqi", 0, 0, 30000, 0, 16) + b"\0" * 16 + b"\0"))
        recv_frame(s)
        path = last.encode()
        # getData: xid 1, type 4, path, watch false.
        s.sendall(frame(struct.pack(">iii", 1, 4, len(path)) + path + b"\0"))
        while True:
            reply = recv_frame(s)
            xid, _zxid, err = struct.unpack(">iqi", reply[:16])
            if xid == 1:
                return err == 0

start = time.time()
proc = subprocess.Popen(sys.argv[4:], stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
while True:
    try:
        if read_last():
            break
    except OSError:
        pass
    if time.time() - start > 120:
        sys.exit("not readable after 120 s")
    time.sleep(0.005)
print(proc.pid, "%.3f" % (time.time() - start))
PY
}
wait_port() { for _ in $(seq 600); do python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0; sleep 0.05; done; return 1; }

start_zk() {
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
  ZOO_LOG_DIR=$WORK/zk /usr/share/zookeeper/bin/zkServer.sh start-foreground "$WORK/zk/zoo.cfg" >>"$WORK/zk/out.log" 2>&1 &
  PIDS+=("$!")
  wait_port 22281
  # The JVM is not always the script's own process: find it by its config file.
  ZK_PID=$(pgrep -f "java.*$WORK/zk/zoo.cfg" | head -1)
  PIDS+=("$ZK_PID")
}
start_baton() {
  "$BATON" --data-dir "$WORK/baton" --client-addr 127.0.0.1:22282 --etcd-addr off --admin-addr off >>"$WORK/baton.log" 2>&1 &
  BATON_PID=$!
  PIDS+=("$BATON_PID")
  wait_port 22282
}

echo "== ZooKeeper 3.8 ($COUNT znodes of 100 B)"
start_zk
sleep 2
zk0=$(zk_heap_kb "$ZK_PID")
"$BENCH" zk --target 127.0.0.1:22281 --label zookeeper --workload fill --count "$COUNT" --value-bytes 100 --clients 16 --depth 16
zk1=$(zk_heap_kb "$ZK_PID")
zk_rss=$(rss_kb "$ZK_PID")
kill -9 "$ZK_PID"
sleep 1
read -r launcher zk_t < <(HOSTPORT=127.0.0.1:22281 exec_and_time_read env ZOO_LOG_DIR="$WORK/zk" /usr/share/zookeeper/bin/zkServer.sh start-foreground "$WORK/zk/zoo.cfg")
PIDS+=("$launcher")
ZK_PID=$(pgrep -f "java.*$WORK/zk/zoo.cfg" | head -1)
kill -9 "$ZK_PID"
echo "heap after GC: $((zk0 / 1024)) MB -> $((zk1 / 1024)) MB; RSS $((zk_rss / 1024)) MB; restart to last znode: ${zk_t} s"

echo "== Baton"
start_baton
sleep 1
b0=$(rss_kb "$BATON_PID")
"$BENCH" zk --target 127.0.0.1:22282 --label baton --workload fill --count "$COUNT" --value-bytes 100 --clients 16 --depth 16
b1=$(settled_rss_kb "$BATON_PID")
bpeak=$(peak_kb "$BATON_PID")
kill -9 "$BATON_PID"
sleep 0.5
read -r BATON_PID b_t < <(HOSTPORT=127.0.0.1:22282 exec_and_time_read "$BATON" --data-dir "$WORK/baton" --client-addr 127.0.0.1:22282 --etcd-addr off --admin-addr off)
PIDS+=("$BATON_PID")
b2=$(rss_kb "$BATON_PID")
kill -9 "$BATON_PID"
echo "RSS: $((b0 / 1024)) MB -> $((b1 / 1024)) MB after the fill (peak $((bpeak / 1024)) MB while snapshots were written); $((b2 / 1024)) MB after restart; restart to last znode: ${b_t} s"
du -sh "$WORK/zk/data" "$WORK/baton" | sed 's|'"$WORK"'/||'

python3 - "$COUNT" "$zk0" "$zk1" "$b0" "$b1" "$b2" "$zk_t" "$b_t" <<'PY'
import sys
n, zk0, zk1, b0, b1, b2 = (int(x) for x in sys.argv[1:7])
zk_t, b_t = float(sys.argv[7]), float(sys.argv[8])
zk_per = (zk1 - zk0) * 1024 / n
b_fill = (b1 - b0) * 1024 / n
b_restart = (b2 - b0) * 1024 / n
print(f"bytes per znode: ZooKeeper heap {zk_per:.0f}; Baton RSS {b_fill:.0f} after the fill, {b_restart:.0f} after restart")
print(f"Baton / ZooKeeper memory: {max(b_fill, b_restart) / zk_per:.2f}x (target <= 0.5)")
print(f"restart: ZooKeeper {zk_t:.2f} s, Baton {b_t:.2f} s: {b_t / zk_t:.2f}x (target <= 0.2)")
PY
