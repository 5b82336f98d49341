"""kazoo's recipes against a Baton server: python3 recipes.py HOST:PORT

Each check asserts real outcomes (who held the lock, what the queue returned, what the
watch saw). Exits non-zero on the first failure.
"""
import sys
import threading
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError, NotEmptyError, BadVersionError

HOSTS = sys.argv[1]
passed = 0


def client():
    zk = KazooClient(hosts=HOSTS, timeout=10)
    zk.start(timeout=10)
    return zk


def check(name, fn):
    global passed
    fn()
    passed += 1
    print("ok", name, flush=True)


def lock():
    a, b = client(), client()
    held = []
    la = a.Lock("/recipes/lock", "a")
    lb = b.Lock("/recipes/lock", "b")
    assert la.acquire(timeout=5)
    t = threading.Thread(target=lambda: (lb.acquire(timeout=10) and held.append("b")))
    t.start()
    time.sleep(0.3)
    assert held == [], "b must wait while a holds the lock"
    assert sorted(la.contenders()) == ["a", "b"], la.contenders()
    la.release()
    t.join(10)
    assert held == ["b"], held
    lb.release()
    a.stop(); b.stop()


def election():
    zks = [client() for _ in range(3)]
    leaders = []
    elections = [zk.Election("/recipes/election", "n%d" % i) for i, zk in enumerate(zks)]
    done = threading.Event()

    def lead(i):
        leaders.append(i)
        done.set()
        time.sleep(0.5)

    threads = [threading.Thread(target=e.run, args=(lead, i), daemon=True) for i, e in enumerate(elections)]
    for t in threads:
        t.start()
    assert done.wait(10)
    time.sleep(0.2)
    assert len(leaders) >= 1
    assert len(elections[0].contenders()) >= 1
    for e in elections:
        e.cancel()
    # Leaders hand over one by one; each run() returns once its contender is cancelled.
    for t in threads:
        t.join(10)
    for zk in zks:
        zk.stop()


def barrier():
    zk = client()
    b = zk.Barrier("/recipes/barrier")
    b.create()
    passed_barrier = []
    t = threading.Thread(target=lambda: passed_barrier.append(b.wait(10)))
    t.start()
    time.sleep(0.3)
    assert passed_barrier == []
    b.remove()
    t.join(10)
    assert passed_barrier == [True], passed_barrier
    zk.stop()


def queue():
    zk = client()
    q = zk.Queue("/recipes/queue")
    for item in [b"one", b"two", b"three"]:
        q.put(item)
    assert len(q) == 3
    assert [q.get(), q.get(), q.get()] == [b"one", b"two", b"three"]
    assert q.get() is None
    lq = zk.LockingQueue("/recipes/lqueue")
    lq.put(b"job1", priority=50)
    lq.put(b"job0", priority=10)
    assert lq.get(timeout=5) == b"job0"
    assert lq.consume()
    assert lq.get(timeout=5) == b"job1"
    assert lq.consume()
    assert len(lq) == 0
    zk.stop()


def counter():
    zks = [client() for _ in range(4)]
    counters = [zk.Counter("/recipes/counter") for zk in zks]

    def bump(c):
        for _ in range(25):
            c += 1

    threads = [threading.Thread(target=bump, args=(c,)) for c in counters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert counters[0].value == 100, counters[0].value
    for zk in zks:
        zk.stop()


def party():
    a, b = client(), client()
    pa, pb = a.Party("/recipes/party", "alice"), b.Party("/recipes/party", "bob")
    pa.join(); pb.join()
    assert sorted(pa) == ["alice", "bob"], list(pa)
    pb.leave()
    assert list(pa) == ["alice"]
    b.stop()
    a.stop()


def watches():
    zk, other = client(), client()
    zk.ensure_path("/recipes/watched")
    seen, children = [], []
    got = threading.Event()

    @zk.DataWatch("/recipes/watched")
    def on_data(data, stat):
        seen.append(data)
        if data == b"v2":
            got.set()

    @zk.ChildrenWatch("/recipes/watched")
    def on_children(c):
        children.append(sorted(c))

    other.set("/recipes/watched", b"v1")
    other.set("/recipes/watched", b"v2")
    assert got.wait(5), seen
    other.create("/recipes/watched/c1")
    deadline = time.time() + 5
    while ["c1"] not in children and time.time() < deadline:
        time.sleep(0.05)
    assert ["c1"] in children, children
    zk.stop(); other.stop()


def transaction():
    zk = client()
    zk.ensure_path("/recipes/tx")
    t = zk.transaction()
    t.create("/recipes/tx/a", b"1")
    t.set_data("/recipes/tx", b"p")
    t.check("/recipes/tx", 1)
    results = t.commit()
    assert results[0] == "/recipes/tx/a", results
    t = zk.transaction()
    t.create("/recipes/tx/b")
    t.delete("/recipes/tx/missing")
    results = t.commit()
    assert isinstance(results[1], NoNodeError), results
    assert not zk.exists("/recipes/tx/b")
    try:
        zk.delete("/recipes/tx")
        raise AssertionError("delete of a non-empty node succeeded")
    except NotEmptyError:
        pass
    try:
        zk.set("/recipes/tx", b"x", version=99)
        raise AssertionError("bad version accepted")
    except BadVersionError:
        pass
    zk.stop()


def ephemeral_expiry_on_close():
    a, b = client(), client()
    a.create("/recipes/eph", ephemeral=True)
    assert b.exists("/recipes/eph")
    a.stop(); a.close()
    deadline = time.time() + 5
    while b.exists("/recipes/eph") and time.time() < deadline:
        time.sleep(0.05)
    assert not b.exists("/recipes/eph"), "a closed session's ephemeral must vanish"
    b.stop()


for name, fn in [("lock", lock), ("election", election), ("barrier", barrier), ("queue", queue),
                 ("counter", counter), ("party", party), ("watches", watches),
                 ("transaction", transaction), ("ephemeral", ephemeral_expiry_on_close)]:
    check(name, fn)
print("kazoo recipes: %d passed, 0 failed" % passed)
