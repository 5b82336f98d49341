"""Read-only mode with kazoo, against a server of an ensemble cut off from its quorum and
started with `--read-only-mode` (ZooKeeper's readonlymode.enabled).

Usage: read_only.py HOST. Phase 1 (the server has no quorum): a client that asks for a
read-only session connects in read-only state, reads the data written before the cut, and
gets NotReadOnly for writes; one that does not ask is not served. Then the script prints
"read-only: ok", waits for a line on stdin (the test heals the network), and checks that
the read-only client moves to a read-write session on the same server and can write.
"""
import sys
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NotReadOnlyCallError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KeeperState

HOST = sys.argv[1]

ro = KazooClient(hosts=HOST, read_only=True, timeout=4.0)
ro.start(timeout=20)
assert ro.client_state == KeeperState.CONNECTED_RO, ro.client_state
data, stat = ro.get("/ro-data")
assert data == b"before the cut", data
assert "ro-data" in ro.get_children("/")
for write in (lambda: ro.create("/ro-new", b"x"), lambda: ro.set("/ro-data", b"y"), lambda: ro.delete("/ro-data")):
    try:
        write()
        raise AssertionError("a write succeeded in read-only mode")
    except NotReadOnlyCallError:
        pass
t = ro.transaction()
t.create("/ro-multi", b"")
try:
    t.commit()
    raise AssertionError("a multi succeeded in read-only mode")
except NotReadOnlyCallError:
    pass

rw = KazooClient(hosts=HOST, read_only=False, timeout=4.0, connection_retry={"max_tries": 0})
try:
    rw.start(timeout=3)
    raise AssertionError("a read-write client was served without a quorum")
except KazooTimeoutError:
    pass
finally:
    rw.stop()

print("read-only: ok", flush=True)
sys.stdin.readline()

deadline = time.time() + 60
while True:
    try:
        if ro.client_state == KeeperState.CONNECTED:
            ro.create("/ro-after", b"written once the quorum is back")
            break
    except Exception as e:  # connection loss, session moved or expired while it switches
        last = e
    if time.time() > deadline:
        raise AssertionError("the client never moved to a read-write session: %s" % ro.client_state)
    time.sleep(0.2)
assert ro.get("/ro-after")[0] == b"written once the quorum is back"
ro.stop()
print("read-write again: ok", flush=True)
