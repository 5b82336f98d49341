"""kazoo against a three-node Baton cluster across a leader change.

Usage: failover.py HOST:PORT,HOST:PORT,HOST:PORT LEADER_PID

Writes with a session connected to one server, SIGKILLs the leader (by pid) mid-stream, and
checks that the client carries on with the same session: its ephemeral znode and its watch
survive, every acknowledged write is there, and a lock taken before the kill still works.
Exits non-zero on any failure.
"""

import os
import signal
import sys
import threading
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError
from kazoo.retry import KazooRetry


def retry():
    return KazooRetry(max_tries=-1, delay=0.05, max_delay=0.5, deadline=30)


def main():
    hosts, leader_pid = sys.argv[1], int(sys.argv[2])
    zk = KazooClient(hosts=hosts, timeout=8, connection_retry=retry(), command_retry=retry(), randomize_hosts=False)
    zk.start(timeout=15)
    session = zk.client_id[0]
    zk.ensure_path("/failover")
    zk.create("/failover/member", b"me", ephemeral=True)
    fired = threading.Event()
    seen = []

    @zk.DataWatch("/failover/config")
    def watch(data, stat):
        seen.append(data)
        if data == b"after":
            fired.set()

    zk.create("/failover/config", b"before")
    lock = zk.Lock("/failover/lock", "me")
    assert lock.acquire(timeout=10), "lock before the kill"

    acked = []
    killed_at = None
    first_after = None
    for i in range(600):
        if i == 200:
            os.kill(leader_pid, signal.SIGKILL)
            killed_at = time.time()
        path = "/failover/w%04d" % i
        try:
            zk.retry(zk.create, path, b"v")
        except NodeExistsError:
            pass  # a retried create whose first attempt got in
        acked.append(path)
        if killed_at and first_after is None:
            first_after = time.time() - killed_at
    print("first write after killing the leader: %.3f s" % first_after)

    assert zk.client_id[0] == session, "the session changed across the leader change"
    zk.retry(zk.set, "/failover/config", b"after")
    assert fired.wait(15), "the data watch did not fire after the leader change: %r" % seen
    zk.retry(zk.sync, "/failover")
    children = set(zk.retry(zk.get_children, "/failover"))
    missing = [p for p in acked if p.rsplit("/", 1)[1] not in children]
    assert not missing, "%d acknowledged writes missing, e.g. %s" % (len(missing), missing[:3])
    assert "member" in children, "the ephemeral of a live session vanished"
    lock.release()
    assert zk.Lock("/failover/lock", "again").acquire(timeout=10), "lock after the kill"
    zk.stop()
    print("ok: %d writes, session 0x%x kept" % (len(acked), session))


if __name__ == "__main__":
    main()
