"""ZooKeeper 3.8's answers to what clients hit at the edges, through kazoo against a real
`baton` started with --super-digest super:D/InIHSb7yEEbrWz8b9l71RjZJU= (super:test).
Usage: compat.py HOST:PORT. Exits non-zero (with the failed check) on a difference."""
import sys
import time

from kazoo.client import KazooClient
from kazoo.exceptions import (AuthFailedError, BadArgumentsError, NoAuthError, NodeExistsError,
                              NoNodeError)
from kazoo.security import make_digest_acl

hosts = sys.argv[1]


def client(auth=None):
    zk = KazooClient(hosts=hosts, timeout=10, auth_data=auth)
    zk.start(timeout=10)
    return zk


def raises(exc, fn, what):
    try:
        fn()
    except exc:
        return
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{what}: expected {exc.__name__}, got {type(e).__name__}: {e}")
    raise AssertionError(f"{what}: expected {exc.__name__}, got success")


zk = client()
# Creating the root answers NodeExists (clients that make sure each component of their chroot
# exists create "/" first), with every mode that does not add a suffix.
raises(NodeExistsError, lambda: zk.create("/"), "create /")
raises(NodeExistsError, lambda: zk.create("/", ephemeral=True), "create / ephemeral")
raises(NodeExistsError, lambda: zk.create("/", include_data=True), "create2 /")
# ensure_path walks the components the same way.
zk.ensure_path("/compat/a/b")
assert zk.exists("/compat/a/b"), "ensure_path"
# A sequential create of "/compat/" names the child by the counter alone.
made = zk.create("/compat/", sequence=True)
assert made.startswith("/compat/") and len(made) == len("/compat/") + 10, made
# The parent is looked up before the path's syntax: "/nope/" is NoNode, "/compat/a/" is BadArguments.
raises(NoNodeError, lambda: zk.create("/nope/x/"), "create under a missing parent")

# Null data (length -1) stays null, apart from empty data: Python sees None, not b"".
zk.create("/compat/null", None)
assert zk.get("/compat/null")[0] is None, zk.get("/compat/null")
zk.set("/compat/null", b"")
assert zk.get("/compat/null")[0] == b"", "empty stays empty"
zk.set("/compat/null", None)
assert zk.get("/compat/null")[0] is None, "set to null"

# A failed authentication: AuthFailed at once, not a timeout.
bad = client()
started = time.time()
raises(AuthFailedError, lambda: bad.add_auth("nosuchscheme", "x"), "addauth with an unknown scheme")
assert time.time() - started < 5, "AuthFailed came late"
try:
    bad.stop()
except Exception:  # noqa: BLE001
    pass
# A digest without a colon is accepted, as ZooKeeper's generateDigest does.
zk.add_auth("digest", "nocolon")

# The super user passes every ACL check.
owner = client(auth=[("digest", "alice:secret")])
acl = [make_digest_acl("alice", "secret", all=True)]
owner.create("/compat/private", b"mine", acl=acl)
stranger = client()
raises(NoAuthError, lambda: stranger.get("/compat/private"), "a stranger reads a protected node")
root = client(auth=[("digest", "super:test")])
data, _ = root.get("/compat/private")
assert data == b"mine", data
root.set("/compat/private", b"super was here")
root.set_acls("/compat/private", acl)
root.delete("/compat/private")

# reconfig: ZooKeeper 3.8 with reconfigEnabled=false (its default) answers ReconfigDisabled.
from kazoo.exceptions import ReconfigDisabledError  # noqa: E402

raises(ReconfigDisabledError, lambda: root.reconfig(joining=None, leaving="3", new_members=None), "reconfig")
for c in (zk, owner, stranger, root):
    c.stop()
print("compat: ok")
