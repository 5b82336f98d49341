#!/usr/bin/env python3
"""Differential test: the same seeded random operations against ZooKeeper 3.8 and Baton.

Usage: differential.py ZK_HOSTS BATON_HOSTS [--seeds N] [--first S] [--seed S] [--ops M]
                       [--trace] [--minimize] [--keep-going]

For each seed, a generator (random.Random(seed)) draws a sequence of operations; every one is
sent to ZooKeeper and then to Baton, through the same kind of kazoo client (three sessions per
server, plus throwaway ones), and the replies are compared:
  * the error (exception class) or the result: paths, data bytes, children (as sets: Baton
    lists them in creation order, ZooKeeper in hash order; that difference is accepted), ACLs;
  * Stat fields: version, cversion, aversion, dataLength, numChildren exactly; ephemeralOwner
    as the session (named by slot and generation) that owns the node, or the raw value for
    containers and TTL nodes; czxid, mzxid and pzxid by their order: an order-preserving
    one-to-one correspondence between the zxids each server shows is kept for the whole run
    (ZooKeeper spends a zxid on a failed write, Baton does not: the order still matches);
    ctime and mtime only by relation (mtime >= ctime; ctime == mtime while version is 0),
    their values being wall-clock times;
  * the watch events each session receives (type, path), read off the wire, and the events
    each kazoo watcher function is called with; compared after every step, behind a round
    trip on every session (a server sends a session's events before a later reply).
Each seed works under its own prefix /d<seed> (plus /zookeeper/d<seed> and sequential
children of the root), removed afterwards by a super-user session, so many seeds run against
one pair of servers. Both servers need the super digest super:test
(super:D/InIHSb7yEEbrWz8b9l71RjZJU=), TTL nodes enabled, a 500 ms tick (sessions of 2 s expire
in the test) and containers reaped promptly (ZooKeeper: -Dznode.container.checkIntervalMs=100).

A mismatch prints MISMATCH seed=S step=K op=..., both replies and the command that replays the
seed; --minimize then shrinks the recorded operations to a short sequence that still shows it.
Exit status: 0 when every seed matched, 1 on a mismatch, 2 on a harness error.
"""
import argparse
import bisect
import logging
import random
import re
import sys
import threading
import time
import traceback
from collections import namedtuple

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.protocol.serialization import (Create, Delete, Exists, GetACL, GetChildren2, GetData, SetACL,
                                          SetData, Sync, Watch, int_struct, multiheader_struct, read_buffer,
                                          read_string, stat_struct, write_buffer, write_string)
from kazoo.protocol.states import KazooState, ZnodeStat
from kazoo.security import ACL, OPEN_ACL_UNSAFE, READ_ACL_UNSAFE, Id, Permissions, make_acl, make_digest_acl

# Differences between Baton and ZooKeeper 3.8 that the generator steers around, so that CI
# passes while they are reported. Each entry names the case it avoids; remove an entry once
# Baton matches ZooKeeper there (the generator then draws the case again).
KNOWN_DIFFERENCES = {
    # A request whose path is null (length -1): ZooKeeper answers MarshallingError (setData:
    # BadArguments) and keeps the connection; Baton closes the connection. While listed, no
    # raw request with a null path is drawn.
    "null_path_closes_connection",
}

SUPER = ("digest", "super:test")
ALICE = ("digest", "alice:secret")
BOB = ("digest", "bob:pw")
CONTAINER_OWNER = 0x8000000000000000
TTL_MAX = 0xFF_FFFF_FFFF
FRAME_MAX = 0xFFFFF  # jute.maxbuffer, ZooKeeper's default: a larger frame closes the connection
SLOTS = 3  # sessions per server: 0 plain, 1 authenticated as alice, 2 short-lived (expires)
SLOT_TIMEOUT = {0: 10.0, 1: 10.0, 2: 2.0}
SLOT_AUTH = {0: None, 1: [ALICE], 2: None}
WAIT = 20.0  # seconds a reply may take before it counts as "no reply"


# --- requests kazoo 2.11 cannot send --------------------------------------------------------

def acl_bytes(acls):
    b = bytearray(int_struct.pack(len(acls)))
    for a in acls:
        b += int_struct.pack(a.perms) + write_string(a.id.scheme) + write_string(a.id.id)
    return b


def read_stat(buf, off):
    return ZnodeStat._make(stat_struct.unpack_from(buf, off)), off + stat_struct.size


def read_strings(buf, off):
    n = int_struct.unpack_from(buf, off)[0]
    off += 4
    out = []
    for _ in range(max(n, 0)):
        s, off = read_string(buf, off)
        out.append(s)
    return out, off


class CreateRaw(namedtuple("CreateRaw", "opcode path data acl flags ttl")):
    """create (1), create2 (15), createContainer (19) or createTTL (21) with any flags."""

    @property
    def type(self):
        return self.opcode

    def serialize(self):
        b = bytearray(write_string(self.path)) + write_buffer(self.data) + acl_bytes(self.acl)
        b += int_struct.pack(self.flags)
        if self.opcode == 21:
            b += struct_long(self.ttl)
        return b

    def deserialize(self, buf, off):
        path, off = read_string(buf, off)
        if self.opcode == 1:
            return path
        return path, read_stat(buf, off)[0]


def struct_long(v):
    return v.to_bytes(8, "big", signed=True)


class AddWatch(namedtuple("AddWatch", "path mode")):
    type = 106

    def serialize(self):
        return bytearray(write_string(self.path)) + int_struct.pack(self.mode)

    @classmethod
    def deserialize(cls, buf, off):
        return True


class RemoveWatches(namedtuple("RemoveWatches", "path kind")):
    type = 18

    def serialize(self):
        return bytearray(write_string(self.path)) + int_struct.pack(self.kind)

    @classmethod
    def deserialize(cls, buf, off):
        return True


class MultiRead(namedtuple("MultiRead", "ops")):
    """multiRead (22): ops are ("data", path) or ("children", path)."""
    type = 22

    def serialize(self):
        b = bytearray()
        for kind, path in self.ops:
            t = 4 if kind == "data" else 8
            b += int_struct.pack(t) + bytes([0]) + int_struct.pack(-1) + write_string(path) + bytes([0])
        return b + multiheader_struct.pack(-1, True, -1)

    @classmethod
    def deserialize(cls, buf, off):
        out = []
        while True:
            t, done, err = multiheader_struct.unpack_from(buf, off)
            off += multiheader_struct.size
            if done:
                return out
            if t == 4:
                data, off = read_buffer(buf, off)
                stat, off = read_stat(buf, off)
                out.append(("data", data, stat))
            elif t == 8:
                kids, off = read_strings(buf, off)
                out.append(("children", Children(kids)))
            elif t == -1:
                code = int_struct.unpack_from(buf, off)[0]
                off += 4
                out.append(("err", code))
            else:
                out.append(("type?", t))
                return out


class PathOnly(namedtuple("PathOnly", "opcode path")):
    """getEphemerals (103) and getAllChildrenNumber (104)."""

    @property
    def type(self):
        return self.opcode

    def serialize(self):
        return bytearray(write_string(self.path))

    def deserialize(self, buf, off):
        if self.opcode == 104:
            return int_struct.unpack_from(buf, off)[0]
        return Children(read_strings(buf, off)[0])


class WhoAmI(namedtuple("WhoAmI", "")):
    type = 107

    def serialize(self):
        return bytearray()

    @classmethod
    def deserialize(cls, buf, off):
        n = int_struct.unpack_from(buf, off)[0]
        off += 4
        out = []
        for _ in range(max(n, 0)):
            scheme, off = read_string(buf, off)
            user, off = read_string(buf, off)
            out.append((scheme, user))
        return sorted(out, key=repr)


class Children(list):
    """A children list: compared as a set (ZooKeeper's order is a hash set's)."""


def call(zk, request):
    result = zk.handler.async_result()
    zk._call(request, result)
    return result.get(timeout=WAIT)


# --- data and ACL choices --------------------------------------------------------------------

def data_of(spec):
    """Data from its short description: None, b"", or (length, seed)."""
    if spec is None or isinstance(spec, bytes):
        return spec
    length, s = spec
    return random.Random(s).randbytes(length)


def perms(*names):
    v = 0
    for n in names:
        v |= getattr(Permissions, n)
    return v


ACLS = {
    "open": OPEN_ACL_UNSAFE,
    "read": READ_ACL_UNSAFE,
    "creator": [ACL(Permissions.ALL, Id("auth", ""))],
    "alice": [make_digest_acl("alice", "secret", all=True)],
    "alice_read_world_write": [make_digest_acl("alice", "secret", read=True),
                               ACL(perms("WRITE", "CREATE", "DELETE"), Id("world", "anyone"))],
    "bob": [make_digest_acl("bob", "pw", all=True)],
    "ip": [make_acl("ip", "127.0.0.1", all=True)],
    "ip_net": [make_acl("ip", "127.0.0.0/8", all=True)],
    "ip_other": [make_acl("ip", "10.1.2.3", all=True), make_acl("world", "anyone", read=True)],
    "no_delete": [ACL(perms("READ", "WRITE", "CREATE", "ADMIN"), Id("world", "anyone"))],
    "no_create": [ACL(perms("READ", "WRITE", "DELETE", "ADMIN"), Id("world", "anyone"))],
    "no_read": [ACL(perms("WRITE", "CREATE", "DELETE", "ADMIN"), Id("world", "anyone"))],
    "duplicates": OPEN_ACL_UNSAFE + OPEN_ACL_UNSAFE + [make_acl("world", "anyone", read=True)],
    "bad_digest": [ACL(Permissions.ALL, Id("digest", "nocolon"))],
    "bad_scheme": [ACL(Permissions.ALL, Id("nosuchscheme", "x"))],
    "bad_world": [ACL(Permissions.ALL, Id("world", "someone"))],
    "bad_ip": [ACL(Permissions.ALL, Id("ip", "999.1.2.3"))],
    "empty": [],
    "zero_perms": [ACL(0, Id("world", "anyone"))],
}
GOOD_ACLS = ["open"] * 6 + ["read", "creator", "alice", "alice_read_world_write", "bob", "ip", "ip_net",
                            "ip_other", "no_delete", "no_create", "no_read", "duplicates"]
ALL_ACLS = list(ACLS)
# ACLs under which some session of the test may not READ the node.
READ_NOT_FOR_ALL = {"creator", "alice", "alice_read_world_write", "bob", "no_read", "zero_perms"}


# --- one server's sessions, and what they saw ------------------------------------------------

class Side:
    def __init__(self, name, hosts):
        self.name = name
        self.hosts = hosts
        self.clients = [None] * SLOTS
        self.gen = [0] * SLOTS
        self.raw = {}        # slot -> [(type, path)] events read off the wire, all generations
        self.watched = {}    # watcher label -> [(type, path)] events kazoo called it with
        self.labels = {}     # session id -> "c<slot>g<generation>"
        self.others = []     # throwaway clients, stopped at the end of the seed
        self.admin = None
        self.muted = set()   # clients letting their session expire: their events are not compared

    def connect(self, label, timeout=10.0, auth=None, raw=None):
        zk = KazooClient(hosts=self.hosts, timeout=timeout, auth_data=auth)
        zk.start(timeout=30)
        if raw is not None:
            conn = zk._connection
            inner = conn._read_watch_event

            def hooked(buffer, offset, inner=inner, raw=raw, zk=zk):
                if zk in self.muted:
                    return None
                w, _ = Watch.deserialize(buffer, offset)
                raw.append((w.type, w.path))
                return inner(buffer, offset)
            conn._read_watch_event = hooked
        self.labels[zk.client_id[0]] = label
        return zk

    def open_slot(self, slot):
        self.gen[slot] += 1
        raw = self.raw.setdefault(slot, [])
        self.clients[slot] = self.connect(f"c{slot}g{self.gen[slot]}", SLOT_TIMEOUT[slot], SLOT_AUTH[slot], raw)

    def close_slot(self, slot):
        zk = self.clients[slot]
        self.clients[slot] = None
        if zk is not None:
            stop(zk)

    def start_seed(self):
        self.raw = {}
        self.watched = {}
        for s in range(SLOTS):
            self.open_slot(s)
        if self.admin is None:
            self.admin = self.connect("admin", 30.0, [SUPER])

    def end_seed(self):
        for s in range(SLOTS):
            self.close_slot(s)
        for zk in self.others:
            stop(zk)
        self.others = []

    def barrier(self, path):
        """A round trip on every session, then every watcher callback queued so far has run."""
        for zk in self.clients:
            if zk is None:
                continue
            try:
                zk.exists_async(path).get(timeout=WAIT)
            except Exception:  # noqa: BLE001 (a failure shows in the next comparison)
                pass
        for zk in self.clients:
            if zk is None:
                continue
            done = threading.Event()
            zk.handler.callback_queue.put(done.set)
            done.wait(WAIT)

    def watcher(self, label):
        log = self.watched.setdefault(label, [])

        def fn(event):
            # kazoo itself calls every pending watcher with a NONE event when its session ends
            # (`_reset_watchers`), on its callback thread and racing its own shutdown: not a
            # server's event, and not reliably delivered, so not compared.
            if event.type != "NONE":
                log.append((event.type, event.path))
        return fn


def stop(zk):
    try:
        zk.stop()
    except Exception:  # noqa: BLE001
        pass
    try:
        zk.close()
    except Exception:  # noqa: BLE001
        pass


# --- comparison ------------------------------------------------------------------------------

class Mismatch(Exception):
    pass


class Zxids:
    """An order-preserving one-to-one correspondence between ZooKeeper's and Baton's zxids."""

    def __init__(self):
        self.keys = []   # ZooKeeper zxids, sorted
        self.vals = []   # the matching Baton zxids, sorted the same way
        self.back = {}

    def match(self, z, b, what):
        i = bisect.bisect_left(self.keys, z)
        if i < len(self.keys) and self.keys[i] == z:
            if self.vals[i] != b:
                raise Mismatch(f"{what}: ZooKeeper zxid {z:#x} was matched to Baton's {self.vals[i]:#x}, "
                               f"now Baton shows {b:#x}")
            return
        if b in self.back:
            raise Mismatch(f"{what}: Baton zxid {b:#x} was matched to ZooKeeper's {self.back[b]:#x}, "
                           f"now ZooKeeper shows {z:#x}")
        lo = self.vals[i - 1] if i > 0 else None
        hi = self.vals[i] if i < len(self.vals) else None
        if (lo is not None and b <= lo) or (hi is not None and b >= hi):
            raise Mismatch(f"{what}: zxid order differs: ZooKeeper {z:#x} lies between its "
                           f"{self.keys[i - 1] if i > 0 else None} and {self.keys[i] if i < len(self.keys) else None}, "
                           f"Baton {b:#x} not between {lo} and {hi}")
        self.keys.insert(i, z)
        self.vals.insert(i, b)
        self.back[b] = z


def owner(side, v):
    v &= 0xFFFF_FFFF_FFFF_FFFF  # kazoo reads it signed
    if side.name == "Baton" and "stat_shows_container_and_ttl_owner" in KNOWN_DIFFERENCES and (
            v == CONTAINER_OWNER or v >> 56 == 0xFF):
        return 0
    if v == 0:
        return 0
    if v in side.labels:
        return side.labels[v]
    if v == CONTAINER_OWNER:
        return "container"
    if v >> 56 == 0xFF:
        return f"ttl={v & TTL_MAX}"
    return f"unknown session {v:#x}"


def compare(zx, za, zb, a, b, what):
    if isinstance(a, ZnodeStat) and isinstance(b, ZnodeStat):
        fields = ["version", "cversion", "aversion", "dataLength", "numChildren"]
        if "delete_keeps_parent_cversion" in KNOWN_DIFFERENCES:
            fields.remove("cversion")
        for f in fields:
            if getattr(a, f) != getattr(b, f):
                raise Mismatch(f"{what}.{f}: ZooKeeper {getattr(a, f)} Baton {getattr(b, f)}")
        oa, ob = owner(za, a.ephemeralOwner), owner(zb, b.ephemeralOwner)
        if oa != ob:
            raise Mismatch(f"{what}.ephemeralOwner: ZooKeeper {oa} Baton {ob}")
        for f in ("czxid", "mzxid", "pzxid"):
            zx.match(getattr(a, f), getattr(b, f), f"{what}.{f}")
        for side, s in (("ZooKeeper", a), ("Baton", b)):
            if s.mtime < s.ctime or (s.version == 0 and s.mtime != s.ctime):
                raise Mismatch(f"{what}: {side} ctime {s.ctime} mtime {s.mtime} at version {s.version}")
        return
    if isinstance(a, Children) and isinstance(b, Children):
        if sorted(a) != sorted(b) or len(a) != len(b):
            raise Mismatch(f"{what}: children differ: ZooKeeper {sorted(a)} Baton {sorted(b)}")
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and type(a) is type(b):
        if len(a) != len(b):
            raise Mismatch(f"{what}: ZooKeeper {short(a)} Baton {short(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            compare(zx, za, zb, x, y, f"{what}[{i}]")
        return
    if a != b or type(a) is not type(b):
        raise Mismatch(f"{what}: ZooKeeper {short(a)} Baton {short(b)}")


EVENT_NAMES = {1: "NodeCreated", 2: "NodeDeleted", 3: "NodeDataChanged", 4: "NodeChildrenChanged"}


def events(evs):
    return [(EVENT_NAMES.get(t, t), short(p, 80)) for t, p in evs]


def short(v, n=300):
    r = repr(v)
    return r if len(r) <= n else r[:n] + f"...({len(r)} chars)"


# --- operations ------------------------------------------------------------------------------
# An operation is a tuple (kind, slot, ...) holding only plain values, so that it prints, and a
# recorded sequence replays under another prefix.

def outcome(fn):
    try:
        return ("ok", fn())
    except KazooException as e:
        return ("err", type(e).__name__)
    except Exception as e:  # noqa: BLE001 (client-side refusals and timeouts are outcomes too)
        return ("err", type(e).__name__)


def txn_result(r):
    return [("err", type(x).__name__) if isinstance(x, Exception) else x for x in r]


def run_op(side, op, step):
    kind, slot = op[0], op[1]
    zk = side.clients[slot]
    if kind == "create":
        _, _, path, data, acl, eph, seq, makepath, incl = op
        return outcome(lambda: zk.create_async(path, data_of(data), ACLS[acl], eph, seq, makepath, incl)
                       .get(timeout=WAIT))
    if kind == "create_raw":
        _, _, opcode, path, data, acl, flags, ttl = op
        return outcome(lambda: call(zk, CreateRaw(opcode, path, data_of(data), ACLS[acl], flags, ttl)))
    if kind == "delete":
        _, _, path, version = op
        return outcome(lambda: zk.delete_async(path, version).get(timeout=WAIT))
    if kind == "set":
        _, _, path, data, version = op
        return outcome(lambda: zk.set_async(path, data_of(data), version).get(timeout=WAIT))
    if kind in ("exists", "get", "children", "children2"):
        _, _, path, watch = op
        w = side.watcher(f"w{step}") if watch else None
        if kind == "exists":
            return outcome(lambda: zk.exists_async(path, w).get(timeout=WAIT))
        if kind == "get":
            return outcome(lambda: zk.get_async(path, w).get(timeout=WAIT))
        incl = kind == "children2"
        r = outcome(lambda: zk.get_children_async(path, w, incl).get(timeout=WAIT))
        if r[0] == "ok":
            r = ("ok", (Children(r[1][0]), r[1][1]) if incl else Children(r[1]))
        return r
    if kind == "get_acls":
        _, _, path = op
        r = outcome(lambda: zk.get_acls_async(path).get(timeout=WAIT))
        if r[0] == "ok":
            # An `auth` ACL expands to the session's ids in ZooKeeper's hash-set order (its
            # authInfo is a ConcurrentHashMap's key set), in the order they were added in
            # Baton; order means nothing to an ACL check, so the lists compare sorted.
            r = ("ok", (sorted(r[1][0]), r[1][1]))
        return r
    if kind == "set_acls":
        _, _, path, acl, version = op
        return outcome(lambda: zk.set_acls_async(path, ACLS[acl], version).get(timeout=WAIT))
    if kind == "txn":
        _, _, members = op
        t = zk.transaction()
        for m in members:
            if m[0] == "create":
                # kazoo's transaction refuses None; its Create request sends it as length -1.
                t._add(Create(m[1], data_of(m[2]), ACLS[m[3]], int(m[4]) | 2 * int(m[5])), None)
            elif m[0] == "delete":
                t.delete(m[1], m[2])
            elif m[0] == "set":
                t._add(SetData(m[1], data_of(m[2]), m[3]))
            else:
                t.check(m[1], m[2])
        r = outcome(lambda: t.commit_async().get(timeout=WAIT))
        return ("ok", txn_result(r[1])) if r[0] == "ok" else r
    if kind == "multi_read":
        _, _, members = op
        return outcome(lambda: call(zk, MultiRead(members)))
    if kind == "add_watch":
        _, _, path, mode = op
        return outcome(lambda: call(zk, AddWatch(path, mode)))
    if kind == "remove_watches":
        _, _, path, what = op
        return outcome(lambda: call(zk, RemoveWatches(path, what)))
    if kind == "raw":
        return run_raw(side, zk, op, step)
    if kind == "sync":
        _, _, path = op
        return outcome(lambda: zk.sync_async(path).get(timeout=WAIT))
    if kind == "count":
        _, _, path = op
        return outcome(lambda: call(zk, PathOnly(104, path)))
    if kind == "ephemerals":
        _, _, path = op
        return outcome(lambda: call(zk, PathOnly(103, path)))
    if kind == "whoami":
        return outcome(lambda: call(zk, WhoAmI()))
    if kind == "addauth":
        _, _, scheme, cred = op
        return outcome(lambda: zk.add_auth_async(scheme, cred).get(timeout=WAIT))
    if kind == "bad_auth":
        # A throwaway session (so that no ephemeral waits on its timeout): AuthFailed, then
        # the connection is closed and every later request fails the same way.
        _, _, scheme, cred = op
        t = side.connect(f"auth{step}", 10.0)
        side.others.append(t)
        first = outcome(lambda: t.add_auth_async(scheme, cred).get(timeout=WAIT))
        then = outcome(lambda: t.exists_async("/").get(timeout=WAIT))
        return ("ok", (first, then))
    if kind == "close":
        side.close_slot(slot)
        side.open_slot(slot)
        return ("ok", None)
    if kind == "expire":
        return expire(side, slot)
    raise ValueError(f"unknown op {op!r}")


def run_raw(side, zk, op, step):
    """A request with the path exactly as drawn (kazoo's API normalises paths: it drops empty
    components and a trailing slash, and refuses "." and ".." itself)."""
    _, _, what, path, arg = op
    w = side.watcher(f"w{step}") if arg is True else None
    if what == "get":
        return outcome(lambda: call(zk, GetData(path, w)))
    if what == "exists":
        return outcome(lambda: call(zk, Exists(path, w)))
    if what == "children":
        return outcome(lambda: (lambda r: (Children(r[0]), r[1]))(call(zk, GetChildren2(path, w))))
    if what == "delete":
        return outcome(lambda: call(zk, Delete(path, arg)))
    if what == "set":
        return outcome(lambda: call(zk, SetData(path, b"edge", arg)))
    if what == "get_acls":
        return outcome(lambda: call(zk, GetACL(path)))
    if what == "set_acls":
        return outcome(lambda: call(zk, SetACL(path, OPEN_ACL_UNSAFE, arg)))
    if what == "sync":
        return outcome(lambda: call(zk, Sync(path)))
    if what == "count":
        return outcome(lambda: call(zk, PathOnly(104, path)))
    raise ValueError(what)


def valid_path(p):
    """ZooKeeper's PathUtils.validatePath, on UTF-16 code units as Java sees them."""
    if not p or p[0] != "/":
        return False
    if p == "/":
        return True
    if p.endswith("/"):
        return False
    for comp in p[1:].split("/"):
        if comp in ("", ".", ".."):
            return False
    for ch in p:
        c = ord(ch)
        if c == 0 or 0x1 <= c <= 0x1F or 0x7F <= c <= 0x9F or 0xD800 <= c <= 0xF8FF or c >= 0xFFF0:
            return False
    return True


def expire(side, slot):
    """Lets the slot's session expire: the client stops pinging and sends nothing, the server
    expires the session and closes the connection; kazoo then reports the session lost."""
    zk = side.clients[slot]
    old = zk.client_id[0]
    lost = threading.Event()

    def listen(state):
        if state == KazooState.LOST:
            lost.set()
    zk.add_listener(listen)
    # Events sent to a session that has gone silent are not compared: ZooKeeper closes its
    # connection without them, Baton sends the NodeDeleted of the session's own ephemerals
    # first. Nobody can act on them (the session is expiring): an accepted difference.
    side.muted.add(zk)
    zk._connection._send_ping = lambda *a, **k: None
    ok = lost.wait(30)
    side.clients[slot] = None
    stop(zk)
    side.muted.discard(zk)
    side.open_slot(slot)
    return ("ok", "expired" if ok else f"session {old:#x} did not expire within 30 s")


def run_both(sides, op, step):
    """ZooKeeper first, then Baton; session expiry on both at once (it takes seconds)."""
    if op[0] == "expire":
        out = [None, None]

        def go(i):
            out[i] = run_op(sides[i], op, step)
        ts = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return out
    return [run_op(sides[0], op, step), run_op(sides[1], op, step)]


# --- the generator ---------------------------------------------------------------------------

NAMES = ["a", "b", "c", "e"]


class Generator:
    """Draws operations from the seed and from ZooKeeper's replies (which Baton's must equal)."""

    def __init__(self, seed, prefix):
        self.rng = random.Random(seed)
        self.seed = seed
        self.p = prefix
        self.known = {prefix}  # paths ZooKeeper says exist (approximately: it only steers)
        self.ephemeral = {}    # path -> slot that owns it
        self.expired = False
        self.persistent = {}  # slot -> {path: mode} of its persistent and recursive watches
        self.standard = {}    # slot -> paths it may have a standard (one-shot) watch on
        self.dirty = {"/", ""}  # parents that may have lost a child (the root: earlier seeds)

    def data(self):
        r = self.rng.random()
        if r < 0.12:
            return None
        if r < 0.22:
            return b""
        if r < 0.97:
            return (self.rng.choice([1, 3, 10, 100, 1000]), self.rng.getrandbits(32))
        return (self.rng.randint(10_000, FRAME_MAX - 200), self.rng.getrandbits(32))

    def existing(self):
        return self.rng.choice(sorted(self.known))

    def new_path(self):
        base = self.existing()
        if self.rng.random() < 0.1:
            base = self.p + "/" + self.rng.choice(NAMES)  # perhaps missing
        return base + "/" + self.rng.choice(NAMES)

    def any_path(self):
        return self.existing() if self.rng.random() < 0.7 else self.new_path()

    def version(self):
        return self.rng.choice([-1, -1, -1, 0, 0, 1, 2, 5])

    def edge_path(self):
        p, s = self.p, self.seed
        paths = [
            "/", "", "//", "/zookeeper", "/zookeeper/quota", "/zookeeper/config", f"/zookeeper/d{s}",
            f"/zookeeper/quota/d{s}", "noslash", "a/b", p + "/", p + "//x", p + "/.", p + "/..", p + "/./x",
            p + "/x/..", p + "/...", p + "/.x", p + "/a.", p + "/é", p + "/日本語", p + "/😀", p + "/a\u0001b",
            p + "/\u007f", p + "/\u0085", p + "/\u00a0", p + "/\ue000", p + "/\uf8ff", p + "/\uf900",
            p + "/\ufff0", p + "/\ufffd", p + "/\ufeff", p + "/a\u0000b", p + "/ sp ace", p + "/tab\t",
            p + "/" + "n" * 255, p + "/" + "L" * 4096, p + "/" + "x" * 60_000, p + "/a/", p + "/a//b",
            p + "/zookeeper", p + "/quota", "/" + "zookeeper/",
        ]
        if "config_node_differs" in KNOWN_DIFFERENCES:
            paths.remove("/zookeeper/config")
        return self.rng.choice(paths)

    def next(self):
        r = self.rng
        slot = r.randrange(SLOTS)
        kind = r.choices(
            ["create", "create_raw", "delete", "set", "exists", "get", "children", "children2",
             "get_acls", "set_acls", "txn", "multi_read", "add_watch", "remove_watches", "sync", "count",
             "ephemerals", "addauth", "bad_auth", "close", "expire", "edge", "frame"],
            [22, 6, 9, 10, 6, 6, 4, 4,
             3, 4, 7, 2, 3, 1, 1, 1,
             1, 1, 1, 1, 0.3, 10, 0.5])[0]
        if kind == "expire":
            if self.expired:
                kind = "close"
            self.expired = True
            slot = 2
        if kind == "create":
            seq = r.random() < 0.25
            path = self.new_path() if not seq or r.random() < 0.5 else self.existing() + "/" + r.choice(["", "s-"])
            seq = seq and self.seq_ok(path)
            acl = r.choice(self.good_acls()) if r.random() < 0.9 else r.choice(self.all_acls())
            return ("create", slot, path, self.data(), acl, r.random() < 0.25, seq, r.random() < 0.15,
                    r.random() < 0.4)
        if kind == "create_raw":
            opcode = r.choice([19, 19, 21, 21, 21, 1, 15])
            flags = r.choice([0, 1, 2, 3, 4, 5, 6, 7, -1]) if r.random() < 0.3 else \
                {19: 4, 21: r.choice([5, 6]), 1: 4, 15: 4}[opcode]
            ttl = r.choice([3_600_000, TTL_MAX, 1, 50, 0, -1, TTL_MAX + 1]) if opcode == 21 else -1
            if opcode == 21 and flags not in (5, 6) and ttl < 0:
                # ZooKeeper 3.8.0 (Debian's) accepts createTTL with a mode that is not a TTL mode
                # and ttl -1, then fails applying it and exits: never sent.
                ttl = 3_600_000
            path = self.new_path() if not flags in (2, 3, 6) else self.existing() + "/t-"
            if flags in (2, 3, 6) and not self.seq_ok(path):
                flags = {2: 0, 3: 1, 6: 5}[flags]
            return ("create_raw", slot, opcode, path, self.data(), r.choice(self.good_acls()[:8]), flags, ttl)
        if kind == "delete":
            return ("delete", slot, self.any_path(), self.version())
        if kind == "set":
            return ("set", slot, self.any_path(), self.data(), self.version())
        if kind in ("exists", "get", "children", "children2"):
            path = self.any_path()
            return (kind, slot, path, r.random() < 0.5 and self.standard_watch_ok(slot, path))
        if kind == "get_acls":
            return ("get_acls", slot, self.any_path())
        if kind == "set_acls":
            acls = ALL_ACLS if "set_acl_checks_acl_last" not in KNOWN_DIFFERENCES else self.good_acls()
            return ("set_acls", slot, self.any_path(), r.choice(acls), self.version())
        if kind == "txn":
            members = []
            for _ in range(r.randint(1, 4)):
                k = r.choice(["create", "create", "delete", "set", "check"])
                if k == "create":
                    path, seq = self.new_path(), r.random() < 0.2
                    members.append(("create", path, self.data_small(), r.choice(self.good_acls()[:8]),
                                    r.random() < 0.2, seq and self.seq_ok(path)))
                elif k == "delete":
                    members.append(("delete", self.any_path(), self.version()))
                elif k == "set":
                    members.append(("set", self.any_path(), self.data_small(), self.version()))
                else:
                    members.append(("check", self.any_path(), self.version()))
            return ("txn", slot, tuple(members))
        if kind == "multi_read":
            return ("multi_read", slot, tuple((r.choice(["data", "children"]), self.any_path())
                                              for _ in range(r.randint(1, 4))))
        if kind == "add_watch":
            path = self.any_path() if r.random() < 0.9 else r.choice([self.p, "/"])
            if not self.persistent_ok(slot, path):
                path += "/w"
            return ("add_watch", slot, path, self.watch_mode(slot, path, r.choice([0, 1, 1])))
        if kind == "remove_watches":
            path = self.any_path()
            if path in self.persistent.get(slot, {}) and "remove_watches_ignores_persistent" in KNOWN_DIFFERENCES:
                path += "/x"
            return ("remove_watches", slot, path, r.choice([1, 2, 3]))
        if kind in ("sync", "count", "ephemerals"):
            return (kind, slot, self.any_path() if kind != "ephemerals" else r.choice([self.p, "/", self.existing()]))
        if kind == "whoami":
            return ("whoami", slot)
        if kind == "addauth":
            return ("addauth", slot, "digest", r.choice(["bob:pw", "alice:secret", "nocolon", "x:"]))
        if kind == "bad_auth":
            schemes = ["nosuchscheme", "ip", "world", "super", "sasl"]
            if "addauth_ip_fails" in KNOWN_DIFFERENCES:
                schemes.remove("ip")
            return ("bad_auth", slot, r.choice(schemes), "x")
        if kind in ("close", "expire"):
            return (kind, slot)
        if kind == "frame":
            # setData whose frame is just under, at, or just over jute.maxbuffer.
            path = self.existing()
            overhead = 8 + 4 + len(path.encode()) + 4 + 4
            deltas = [-1, 0, 1, 2] if "frame_limit_one_byte_larger" not in KNOWN_DIFFERENCES else [-1, 0, 2]
            return ("set", slot, path, (FRAME_MAX - overhead + r.choice(deltas), r.getrandbits(32)), -1)
        return self.edge(slot)

    def standard_watch_ok(self, slot, path):
        """ZooKeeper 3.8 quirk (ZOOKEEPER-4466, fixed in 3.9): a standard watch set by a session
        on a path where it has a persistent or recursive watch turns that watch into a one-shot
        one. Baton keeps the persistent watch, as 3.9 does: an accepted difference, not drawn."""
        if path in self.persistent.get(slot, {}):
            return False
        self.standard.setdefault(slot, set()).add(path)
        return True

    def persistent_ok(self, slot, path):
        """The same 3.8 quirk the other way: addWatch on a path where the session has a
        standard watch turns that watch persistent (a child watch made recursive never fires
        NodeChildrenChanged again); Baton keeps both watches, as 3.9 does. Not drawn."""
        return path not in self.standard.get(slot, set())

    def watch_mode(self, slot, path, mode):
        """ZooKeeper 3.8 keeps one mode per session and path: addWatch PERSISTENT after
        PERSISTENT_RECURSIVE on the same path (or the reverse) replaces the mode; Baton keeps
        both, as 3.9 does (ZOOKEEPER-4466): an accepted difference, so the first mode is kept."""
        return self.persistent.get(slot, {}).get(path, mode)

    def good_acls(self):
        if "watch_events_skip_read_acl" in KNOWN_DIFFERENCES:
            return [a for a in GOOD_ACLS if a not in READ_NOT_FOR_ALL]
        return GOOD_ACLS

    def all_acls(self):
        if "watch_events_skip_read_acl" in KNOWN_DIFFERENCES:
            return [a for a in ALL_ACLS if a not in READ_NOT_FOR_ALL]
        return ALL_ACLS

    def seq_ok(self, path):
        """Whether a sequential create under path's parent names the node alike on both."""
        if "delete_keeps_parent_cversion" not in KNOWN_DIFFERENCES:
            return True
        parent = path.rstrip("/").rsplit("/", 1)[0] if not path.endswith("/") else path.rstrip("/")
        return (parent or "/") not in self.dirty and "/" + parent.strip("/") not in self.dirty

    def data_small(self):
        d = self.data()
        return d if not isinstance(d, tuple) or d[0] < 10_000 else (100, d[1])

    def edge(self, slot):
        r = self.rng
        path = self.edge_path()
        special = path in ("/", "/zookeeper", "/zookeeper/quota", "/zookeeper/config")
        kinds = ["create", "create", "create_raw", "get", "exists", "children", "delete", "set", "set_acls",
                 "get_acls", "add_watch", "sync", "count"]
        if not valid_path(path) and "invalid_path_reads_answer_bad_arguments" in KNOWN_DIFFERENCES:
            kinds = [k for k in kinds if k not in ("get", "exists", "children", "delete", "get_acls", "count")]
        if special and "zookeeper_subtree_deletable" in KNOWN_DIFFERENCES:
            kinds.remove("delete") if "delete" in kinds else None
        if path == "" and "null_path_closes_connection" in KNOWN_DIFFERENCES:
            kinds = ["create"]  # through kazoo's API, which sends "/"
        if any(ord(c) > 0xFFFF for c in path):
            # ZooKeeper's jute writes each UTF-16 unit of a supplementary character on its own
            # (CESU-8), so a reply echoing such a path (create of a sequential node, sync) is
            # not UTF-8 and kazoo cannot read it: not a Baton matter, not drawn.
            kinds = [k for k in kinds if k not in ("sync",)]
        k = r.choice(kinds)
        v = 99 if special else self.version()  # never change what outlives the seed
        if k == "create":
            # through kazoo, whose API normalises the path (drops "//" and a trailing "/")
            seq = r.random() < 0.3
            return ("create", slot, path, self.data_small(), "open", r.random() < 0.3, seq and self.seq_ok(path),
                    r.random() < 0.2, r.random() < 0.5)
        if k == "create_raw":
            opcode = r.choice([19, 21, 15, 1])
            flags = {19: 4, 21: 5, 15: r.choice([0, 1, 2, 3, 4]), 1: r.choice([0, 2])}[opcode]
            if flags in (2, 3) and (any(ord(c) > 0xFFFF for c in path) or not self.seq_ok(path)):
                flags = 0
            return ("create_raw", slot, opcode, path, b"", "open", flags, 3_600_000 if opcode == 21 else -1)
        if k in ("get", "exists", "children"):
            return ("raw", slot, k, path, r.random() < 0.5 and self.standard_watch_ok(slot, path))
        if k in ("delete", "set", "set_acls"):
            return ("raw", slot, k, path, v)
        if k == "add_watch":
            if not self.persistent_ok(slot, path):
                path += "/w"
            return ("add_watch", slot, path, self.watch_mode(slot, path, r.choice([0, 1])))
        return ("raw", slot, k, path, None)

    def learn(self, op, result):
        """Updates what exists from ZooKeeper's reply."""
        kind, ok = op[0], result[0] == "ok"
        if not ok:
            return
        v = result[1]
        if kind == "create":
            made = v[0] if isinstance(v, tuple) else v
            self.add(made, op[5], op[1])
        elif kind == "create_raw":
            made = v[0] if isinstance(v, tuple) else v
            self.add(made, op[6] in (1, 3), op[1])
        elif kind == "delete" or (kind == "raw" and op[2] == "delete"):
            self.remove(op[2] if kind == "delete" else op[3])
        elif kind == "txn":
            for m, res in zip(op[2], v):
                if m[0] == "create" and isinstance(res, str):
                    self.add(res, m[4], op[1])
                elif m[0] == "delete" and res is True:
                    self.remove(m[1])
        elif kind == "add_watch":
            self.persistent.setdefault(op[1], {}).setdefault(op[2], op[3])
        elif kind in ("close", "expire"):
            self.persistent.pop(op[1], None)
            self.standard.pop(op[1], None)
            for path, s in list(self.ephemeral.items()):
                if s == op[1]:
                    self.remove(path)

    def add(self, path, eph, slot):
        if isinstance(path, str) and (path == self.p or path.startswith(self.p + "/")) and len(path) < 300:
            self.known.add(path)
            if eph:
                self.ephemeral[path] = slot

    def remove(self, path):
        self.dirty.add(path.rsplit("/", 1)[0] or "/")
        for k in [k for k in self.known if k == path or k.startswith(path + "/")]:
            if k != self.p:
                self.known.discard(k)
                self.ephemeral.pop(k, None)


# --- running a seed --------------------------------------------------------------------------

class Run:
    def __init__(self, args):
        self.args = args
        self.sides = [Side("ZooKeeper", args.zk), Side("Baton", args.baton)]
        self.zx = Zxids()
        self.compared = {}  # slot -> how many of its events were compared already

    def compare_events(self, step, op):
        za, zb = self.sides
        for s in range(SLOTS):
            a, b = za.raw.get(s, []), zb.raw.get(s, [])
            if op[0] in ("close", "expire") and len(a) == len(b):
                # A closed or expired session's ephemerals go in hash order in ZooKeeper
                # (DataTree.killSession), in creation order in Baton: this step's events are
                # compared as a multiset, and ZooKeeper's order is kept for the next steps.
                k = self.compared.get(s, 0)
                if sorted(a[k:]) == sorted(b[k:]):
                    b[k:] = a[k:]
            self.compared[s] = len(a)
            if a != b:
                i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                raise Mismatch(f"events read by session slot {s} differ from event #{i} on: "
                               f"ZooKeeper {events(a[i:i + 6])} Baton {events(b[i:i + 6])}")
        for label in sorted(set(za.watched) | set(zb.watched)):
            a, b = za.watched.get(label, []), zb.watched.get(label, [])
            if a != b:
                raise Mismatch(f"events of watcher {label}: ZooKeeper {a} Baton {b}")

    def settle(self, tracked, gen):
        """Waits until both servers have reaped what ZooKeeper will reap: emptied containers
        and short-TTL nodes without children (ZooKeeper checks every 100 ms here, Baton every
        half tick). The reapers' timing is not compared, only what they leave behind.
        `tracked` maps each container or TTL node made so far to its TTL (None: container)."""
        for _ in range(10):
            changed = False
            for path, ttl in sorted(tracked.items()):
                st = exists_quiet(self.sides[0].admin, path)
                if st is not None and not (st.numChildren == 0 and (
                        (ttl is None and st.cversion > 0) or (ttl is not None and ttl <= 1000))):
                    continue
                gone = [wait_gone(side.admin, path, 5.0) for side in self.sides]
                if gone != [True, True]:
                    raise Mismatch(f"{path} (TTL {ttl}) reaped by ZooKeeper: {gone[0]}, by Baton: {gone[1]} "
                                   f"(waited 5 s)")
                del tracked[path]
                gen.remove(path)
                changed = True
            if not changed:
                return

    def seed(self, seed, ops=None):
        """Runs one seed (or a recorded op list); returns the ops run and the mismatch, if any."""
        a = self.args
        prefix = f"/d{seed}" if ops is None else f"/d{seed}m{random.getrandbits(30)}"
        gen = Generator(seed, prefix)
        for side in self.sides:
            side.start_seed()
        self.compared = {}
        done, tracked = [], {}
        try:
            first = [outcome(lambda side=side: side.clients[0].create(prefix)) for side in self.sides]
            compare(self.zx, *self.sides, first[0], first[1], f"create {prefix}")
            total = a.ops if ops is None else len(ops)
            for step in range(total):
                op = gen.next() if ops is None else retarget(ops[step], ops_prefix(ops), prefix)
                done.append(op)
                t0 = time.time()
                res = run_both(self.sides, op, step)
                if a.trace:
                    print(f"  step {step} {short(op, 200)} -> {short(res[0], 200)} [{time.time() - t0:.2f} s]",
                          flush=True)
                try:
                    compare(self.zx, *self.sides, res[0], res[1], "reply")
                except Mismatch as m:
                    return done, (step, op, res, str(m))
                gen.learn(op, res[0])
                note_reapable(tracked, op, res[0])
                try:
                    self.settle(tracked, gen)
                    for side in self.sides:
                        side.barrier(prefix)
                    self.compare_events(step, op)
                except Mismatch as m:
                    return done, (step, op, res, str(m))
            return done, None
        finally:
            for side in self.sides:
                side.end_seed()
                cleanup(side.admin, prefix, seed)


def ops_prefix(ops):
    return getattr(ops, "prefix", None)


class OpList(list):
    prefix = None


def retarget(op, old, new):
    if old is None or old == new:
        return op

    def fix(v):
        if isinstance(v, str) and (v == old or v.startswith(old + "/")):
            return new + v[len(old):]
        if isinstance(v, tuple):
            return tuple(fix(x) for x in v)
        return v
    return fix(op)


def note_reapable(tracked, op, result):
    """Containers and TTL nodes ZooKeeper made (createContainer, createTTL): the reaper may
    remove them later. (ZooKeeper 3.8's create reply shows a TTL node's ephemeralOwner as 0.)"""
    if result[0] == "ok" and op[0] == "create_raw" and op[2] in (19, 21):
        tracked[result[1][0] if isinstance(result[1], tuple) else result[1]] = op[7] if op[2] == 21 else None


def exists_quiet(zk, path):
    try:
        return zk.exists(path)
    except Exception:  # noqa: BLE001
        return None


def wait_gone(zk, path, limit):
    end = time.time() + limit
    while True:
        if exists_quiet(zk, path) is None:
            return True
        if time.time() > end:
            return False
        time.sleep(0.02)


def cleanup(admin, prefix, seed):
    for path in (prefix, f"/zookeeper/d{seed}", f"/zookeeper/quota/d{seed}"):
        try:
            admin.delete(path, recursive=True)
        except Exception:  # noqa: BLE001
            pass
    try:
        for name in admin.get_children("/"):
            if re.fullmatch(r"\d{10}", name):
                admin.delete("/" + name, recursive=True)
    except Exception:  # noqa: BLE001
        pass


def replay_command(args, seed):
    return (f"python3 tests/kazoo/differential.py ZK_HOSTS BATON_HOSTS --seed {seed} --ops {args.ops} --trace"
            f"  (or: BATON_DIFF_SEED={seed} BATON_DIFF_OPS={args.ops} cargo test -p baton-tests --test differential"
            f" -- --nocapture)")


def report(args, seed, mismatch):
    step, op, res, why = mismatch
    print(f"MISMATCH seed={seed} step={step} op={short(op, 500)}")
    print(f"  ZooKeeper: {short(res[0], 1000)}")
    print(f"  Baton:     {short(res[1], 1000)}")
    print(f"  why: {why}")
    print(f"  replay: {replay_command(args, seed)}", flush=True)


def minimize(run, seed, ops, mismatch):
    """Drops operations (chunks, then one at a time) while the last one still mismatches."""
    ops = OpList(ops[: mismatch[0] + 1])
    ops.prefix = f"/d{seed}"
    target = ops[-1][0]

    def fails(candidate):
        cand = OpList(candidate)
        cand.prefix = ops.prefix
        _, m = run.seed(seed, cand)
        return m is not None and m[0] == len(cand) - 1 and m[1][0] == target

    chunk = max(1, len(ops) // 2)
    while chunk >= 1:
        i = 0
        while i < len(ops) - 1:
            cand = ops[:i] + ops[i + chunk:] if i + chunk < len(ops) else None
            if cand and fails(cand):
                ops = OpList(cand)
                ops.prefix = f"/d{seed}"
            else:
                i += chunk
        chunk //= 2
    print(f"MINIMAL seed={seed} ({len(ops)} ops; paths under /d{seed}):")
    for op in ops:
        print(f"  {short(op, 300)}")
    _, m = run.seed(seed, ops)
    if m:
        print(f"  ZooKeeper: {short(m[2][0], 600)}\n  Baton:     {short(m[2][1], 600)}\n  why: {m[3]}", flush=True)


def main():
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("zk")
    ap.add_argument("baton")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first", type=int, default=1, help="the first seed of --seeds")
    ap.add_argument("--seed", type=int, help="replay exactly this seed")
    ap.add_argument("--ops", type=int, default=150)
    ap.add_argument("--trace", action="store_true", help="print every step")
    ap.add_argument("--minimize", action="store_true", help="shrink a mismatching seed's operations")
    ap.add_argument("--keep-going", action="store_true", help="run every seed even after a mismatch")
    args = ap.parse_args()
    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    run = Run(args)
    failed = []
    started = time.time()
    for seed in seeds:
        t0 = time.time()
        try:
            ops, mismatch = run.seed(seed)
        except Exception:  # noqa: BLE001
            print(f"HARNESS ERROR seed={seed}:\n{traceback.format_exc()}", flush=True)
            return 2
        if mismatch:
            failed.append(seed)
            report(args, seed, mismatch)
            if args.minimize:
                minimize(run, seed, ops, mismatch)
            if not args.keep_going:
                break
        else:
            print(f"seed {seed}: {len(ops)} ops agree ({time.time() - t0:.1f} s)", flush=True)
    for side in run.sides:
        if side.admin is not None:
            stop(side.admin)
    print(f"differential: {len(seeds)} seeds, {'mismatches in ' + str(failed) if failed else 'no mismatch'} "
          f"({time.time() - started:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
