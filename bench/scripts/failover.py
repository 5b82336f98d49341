"""Time for writes to resume after SIGKILL of an ensemble's leader, seen by kazoo clients.

Usage: failover.py CONNECT_STRING LEADER_PGID [WRITERS] [WARMUP_SECONDS]

WRITERS threads (default 8), each with its own kazoo session on the whole connect string,
set a znode of their own in a loop. After the warm-up the leader's process group is killed
with SIGKILL. For each writer, the first write *sent* after the kill that is acknowledged
marks when it resumed. Prints one JSON line: first_s (the first writer to resume), all_s
(the last), and the writes acknowledged before the kill. Used by `baton-bench compare
--workloads failover`; runs against ZooKeeper and Baton alike.
"""

import json
import os
import signal
import sys
import threading
import time

from kazoo.client import KazooClient
from kazoo.retry import KazooRetry


def main():
    hosts, pgid = sys.argv[1], int(sys.argv[2])
    writers = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    warmup = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
    killed = threading.Event()
    state = {"t_kill": None}
    resumed = [None] * writers
    acked_before = [0] * writers
    stop = threading.Event()

    def retry():
        return KazooRetry(max_tries=-1, delay=0.01, max_delay=0.05, deadline=60)

    clients = []
    for i in range(writers):
        zk = KazooClient(hosts=hosts, timeout=10, connection_retry=retry(), command_retry=retry())
        zk.start(timeout=30)
        zk.ensure_path("/failover-bench/w%d" % i)
        clients.append(zk)

    def write(i):
        zk = clients[i]
        path = "/failover-bench/w%d" % i
        n = 0
        while not stop.is_set():
            sent = time.monotonic()
            after = killed.is_set() and sent >= state["t_kill"]
            try:
                zk.retry(zk.set, path, b"%d" % n)
            except Exception:
                continue
            n += 1
            if after and resumed[i] is None:
                resumed[i] = time.monotonic() - state["t_kill"]
                return
            if not killed.is_set():
                acked_before[i] += 1

    threads = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(writers)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    state["t_kill"] = time.monotonic()
    os.killpg(pgid, signal.SIGKILL)
    killed.set()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    done = [r for r in resumed if r is not None]
    print(json.dumps({
        "writers": writers,
        "resumed": len(done),
        "first_s": min(done) if done else None,
        "all_s": max(done) if len(done) == writers else None,
        "acked_before_kill": sum(acked_before),
    }))
    for zk in clients:
        try:
            zk.stop()
        except Exception:
            pass


if __name__ == "__main__":
    main()
