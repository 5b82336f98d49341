"""Holds a ZooKeeper session open with non-trivial state while the capture runs.

Usage: make-state.py HOST:PORT READY_FILE STOP_FILE
Creates /a (data), /a/b (data), ephemeral /a/eph, sequential /seq-NNNNNNNNNN,
sets a data watch on /a, a child watch on /a and an exists watch on
/nonexistent, writes the session id (hex) to READY_FILE and waits until
STOP_FILE exists.
"""
import os
import sys
import time

from kazoo.client import KazooClient

hosts, ready_file, stop_file = sys.argv[1:4]
zk = KazooClient(hosts=hosts, timeout=30)
zk.start()
zk.ensure_path('/a')
zk.set('/a', b'hello-a')
if not zk.exists('/a/b'):
    zk.create('/a/b', b'data-of-b')
zk.create('/a/eph', b'ephemeral-data', ephemeral=True)
zk.create('/seq-', b'', sequence=True)


def data_watch(ev):
    print('data watch fired', ev, flush=True)


def child_watch(ev):
    print('child watch fired', ev, flush=True)


zk.get('/a', watch=data_watch)
zk.get_children('/a', watch=child_watch)
zk.exists('/nonexistent', watch=data_watch)
print('session', hex(zk.client_id[0]), flush=True)
with open(ready_file, 'w') as f:
    f.write(hex(zk.client_id[0]))
while not os.path.exists(stop_file):
    time.sleep(0.5)
zk.stop()
zk.close()
