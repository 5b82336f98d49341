#!/usr/bin/env python3
"""python-etcd3 (PyPI `etcd3`, 0.12.0) against a Baton server's etcd port: KV, txn, prefix
reads and deletes, leases, watches, status, members and python-etcd3's own lock (a txn on a
key's create revision, under a lease). Exits non-zero on the first difference.

    compat.py HOST PORT

python-etcd3's generated modules predate protobuf 4: run with
PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python (tests/src/clients.rs does)."""
import sys
import threading
import time

import etcd3


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    c = etcd3.client(host=host, port=port, timeout=10)
    c.put("/a", "1")
    value, meta = c.get("/a")
    assert (value, meta.version, meta.create_revision, meta.mod_revision) == (b"1", 1, 2, 2), (value, meta)
    ok, _ = c.transaction(
        compare=[c.transactions.value("/a") == "1"],
        success=[c.transactions.put("/b", "2")],
        failure=[c.transactions.put("/c", "3")],
    )
    assert ok
    assert [(v, m.key) for v, m in c.get_prefix("/")] == [(b"1", b"/a"), (b"2", b"/b")]
    ok, _ = c.transaction(compare=[c.transactions.version("/a") > 5], success=[], failure=[c.transactions.put("/c", "3")])
    assert not ok and c.get("/c")[0] == b"3"

    lease = c.lease(10)
    c.put("/leased", "x", lease=lease)
    assert lease.granted_ttl == 10 and 8 <= lease.remaining_ttl <= 10, (lease.granted_ttl, lease.remaining_ttl)
    assert list(lease.keys) == [b"/leased"]
    lease.refresh()
    lease.revoke()
    assert c.get("/leased")[0] is None

    events = []
    iterator, cancel = c.watch("/w")

    def follow():
        for e in iterator:
            events.append((type(e).__name__, e.key, e.value))
            if len(events) == 2:
                cancel()

    t = threading.Thread(target=follow)
    t.start()
    time.sleep(0.5)
    c.put("/w", "1")
    c.delete("/w")
    t.join(10)
    assert events == [("PutEvent", b"/w", b"1"), ("DeleteEvent", b"/w", b"")], events

    status = c.status()
    assert status.version == "3.5.0" and status.leader.id == 1, status
    assert [m.id for m in c.members] == [1]

    # (Only uncontended: python-etcd3 0.12's wait for a held lock breaks on current tenacity.)
    lock = c.lock("job", ttl=5)
    assert lock.acquire(timeout=5) and lock.is_acquired()
    lock.release()
    assert not lock.is_acquired()
    other = c.lock("job", ttl=5)
    assert other.acquire(timeout=5)
    other.release()

    c.delete_prefix("/")
    assert list(c.get_prefix("/")) == []
    print("python-etcd3 compatibility: ok")


if __name__ == "__main__":
    main()
