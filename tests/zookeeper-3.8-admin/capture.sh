#!/usr/bin/env bash
# Regenerates the fixtures in this directory from Debian's zookeeper 3.8.0
# package (apt-get install zookeeper; python3 -m pip install kazoo==2.11.0).
# Everything listens on 127.0.0.1 only. Not run by CI.
set -euo pipefail
OUT="$(cd "$(dirname "$0")" && pwd)"
WORK="${WORK:-/tmp/zk38}"
ADMIN=http://127.0.0.1:29180
rm -rf "$WORK"; mkdir -p "$WORK/conf" "$WORK/data" "$OUT/raw"

cat > "$WORK/conf/zoo.cfg" <<CFG
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$WORK/data
clientPort=29181
clientPortAddress=127.0.0.1
admin.enableServer=true
admin.serverAddress=127.0.0.1
admin.serverPort=29180
4lw.commands.whitelist=*
CFG
cat > "$WORK/conf/log4j.properties" <<'L4J'
log4j.rootLogger=INFO,CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} - %-5p [%t:%C{1}@%L] - %m%n
L4J

# servlet-api.jar is required: without it JettyAdminServer fails with
# NoClassDefFoundError: javax/servlet/Servlet and the AdminServer is not started.
CP="$WORK/conf:/usr/share/java/zookeeper.jar:/usr/share/java/servlet-api.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar"
java -Dzookeeper.log.dir="$WORK" -Dlog4j.configuration="file:$WORK/conf/log4j.properties" \
  -cp "$CP" org.apache.zookeeper.server.quorum.QuorumPeerMain "$WORK/conf/zoo.cfg" \
  > "$WORK/zk.out" 2>&1 < /dev/null &
ZK_PID=$!
STATE_PID=
cleanup() {
  touch "$WORK/state.stop"
  if [ -n "$STATE_PID" ]; then wait "$STATE_PID" 2>/dev/null || true; fi
  kill "$ZK_PID" 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$ZK_PID" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$ZK_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 60); do curl -s -o /dev/null "$ADMIN/commands/ruok" && break; sleep 0.5; done

python3 "$OUT/make-state.py" 127.0.0.1:29181 "$WORK/state.ready" "$WORK/state.stop" > "$WORK/state.out" 2>&1 &
STATE_PID=$!
for _ in $(seq 1 60); do [ -e "$WORK/state.ready" ] && break; sleep 0.5; done
[ -e "$WORK/state.ready" ] || { echo "state session did not come up" >&2; exit 1; }

cap() { # cap URL_SUFFIX OUTNAME
  curl -s -D "$OUT/raw/$2.headers" -o "$OUT/raw/$2.body" "$ADMIN/commands/$1"
  python3 -m json.tool --indent 2 --no-ensure-ascii "$OUT/raw/$2.body" > "$OUT/$2.json"
  printf '%-58s %s | %s\n' "GET /commands/$1" "$(head -1 "$OUT/raw/$2.headers" | tr -d '\r')" \
    "$(grep -i '^content-type' "$OUT/raw/$2.headers" | tr -d '\r')"
}

curl -s -D "$OUT/raw/index.headers" -o "$OUT/raw/index.body" "$ADMIN/commands"

# 1. read-only commands, in index order
for n in configuration connections dirs dump environment get_trace_mask hash \
         initial_configuration is_read_only last_snapshot leader monitor observers ruok \
         server_stats stats system_properties voting_view watch_summary watches \
         watches_by_path zabstate; do
  cap "$n" "$n"
done
# 2. mutating commands and parameters
cap connection_stat_reset connection_stat_reset
cap observer_connection_stat_reset observer_connection_stat_reset
cap stat_reset stat_reset
cap set_trace_mask set_trace_mask
cap 'set_trace_mask?traceMask=abc' set_trace_mask.bad_param
cap 'set_trace_mask?traceMask=0x10' set_trace_mask.hex_param
cap 'set_trace_mask?traceMask=-1' set_trace_mask.neg_param
cap 'set_trace_mask?traceMask=2' set_trace_mask.param_2
cap get_trace_mask get_trace_mask.after_set_2
cap 'set_trace_mask?traceMask=306&traceMask=2' set_trace_mask.repeated_param
cap get_trace_mask get_trace_mask.after_repeated
cap 'set_trace_mask?traceMask=306' set_trace_mask.param_306
cap server_stats server_stats.after_stat_reset
cap connections connections.after_crst
cap 'watches_by_path?path=/a' watches_by_path.with_path_param
cap 'watches?session=1' watches.with_param
cap 'zabstate?x=1' zabstate.with_param
cap 'dump?x=1' dump.with_param

# 3. 130 more writes so that the digest log (every 128th zxid) is non-empty
python3 - <<'PY'
from kazoo.client import KazooClient
zk = KazooClient(hosts='127.0.0.1:29181'); zk.start()
zk.ensure_path('/counter')
for i in range(130):
    zk.set('/counter', str(i).encode())
zk.stop(); zk.close()
PY
cap hash hash.after_130_writes

# 4. the four-letter word srvr on the client port, for the version string
python3 - "$OUT/4lw-srvr.txt" <<'PY'
import socket, sys
s = socket.create_connection(('127.0.0.1', 29181)); s.sendall(b'srvr')
d = b''
while True:
    c = s.recv(4096)
    if not c: break
    d += c
open(sys.argv[1], 'wb').write(d)
PY

# 5. HTTP details (status lines, headers, bodies)
{
t() { echo "================================================================"; echo "\$ curl -s -i $*"
      echo "----------------------------------------------------------------"; curl -s -i "$@" | tr -d '\r'; echo; }
t "$ADMIN/commands"
t "$ADMIN/commands/"
t "$ADMIN/"
t "$ADMIN/nosuch"
t "$ADMIN/commands/nosuch"
t "$ADMIN/commands/RUOK"
t "$ADMIN/commands/ruok/"
t "$ADMIN/commands/ruok?foo=bar"
t "$ADMIN/commands/ruok"
t "$ADMIN/commands/srvr"
t "$ADMIN/commands/leader"
t "$ADMIN/commands/set_trace_mask"
t "$ADMIN/commands/set_trace_mask?traceMask=abc"
t "$ADMIN/commands/set_trace_mask?traceMask=306"
t -X POST "$ADMIN/commands/ruok"
t -X POST -d traceMask=306 "$ADMIN/commands/set_trace_mask"
t -X POST "$ADMIN/commands"
t -X PUT "$ADMIN/commands/ruok"
t -X DELETE "$ADMIN/commands/ruok"
t -X OPTIONS "$ADMIN/commands/ruok"
t -I "$ADMIN/commands/ruok"
t -I "$ADMIN/commands"
t -X TRACE "$ADMIN/commands/ruok"
} > "$OUT/http-details.txt" 2>&1

# 6. aliases: which name each alias reports in "command"
for a in conf config crst cons env envi gtmk icfg isro lsnp lead mntr orst obsr srvr stmk \
         srst stat sysp wchs wchc wchp; do
  printf '%s -> ' "$a"
  curl -s "$ADMIN/commands/$a" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["command"], "| error:", json.dumps(d.get("error")))'
done > "$OUT/aliases.txt"
curl -s "$ADMIN/commands/set_trace_mask?traceMask=306" > /dev/null
echo "done; ZooKeeper log in $WORK/zk.out"
