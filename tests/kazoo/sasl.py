"""SASL DIGEST-MD5 with kazoo (pure-sasl) against a server started with
`--sasl-user bob:bobsecret --sasl-user 'alice:pa,ss'`: what ZooKeeper 3.8 does with the same
users in its JAAS Server section (checked side by side when this was written).

Usage: sasl.py HOSTS. Prints "sasl: ok" at the end; any difference raises.
"""
import sys

from kazoo.client import KazooClient
from kazoo.exceptions import AuthFailedError, ConnectionClosedError, NoAuthError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KeeperState
from kazoo.security import make_acl

HOSTS = sys.argv[1]


def client(user=None, password=None):
    options = None
    if user is not None:
        options = {"mechanism": "DIGEST-MD5", "username": user, "password": password}
    c = KazooClient(hosts=HOSTS, sasl_options=options, connection_retry={"max_tries": 0})
    c.start(timeout=15)
    return c


bob = client("bob", "bobsecret")
# The sasl scheme: an ACL naming the user, and `auth` expanding to sasl:bob.
bob.create("/sasl-only", b"secret", acl=[make_acl("sasl", "bob", all=True)])
bob.create("/sasl-auth", b"x", acl=[make_acl("auth", "", all=True)])
for path in ("/sasl-only", "/sasl-auth"):
    acl = bob.get_acls(path)[0]
    assert [(a.id.scheme, a.id.id, a.perms) for a in acl] == [("sasl", "bob", 31)], acl
assert bob.get("/sasl-only")[0] == b"secret"

anonymous = client()
try:
    anonymous.get("/sasl-only")
    raise AssertionError("an anonymous client read a sasl-protected node")
except NoAuthError:
    pass

# A password with a comma (the TOML form and repeated flags keep it whole).
alice = client("alice", "pa,ss")
try:
    alice.get("/sasl-only")
    raise AssertionError("alice read bob's node")
except NoAuthError:
    pass

# A wrong password and an unknown user: the server answers AuthFailed and closes the
# connection; kazoo then fails every request with AuthFailedError.
for user in ("bob", "eve"):
    bad = KazooClient(hosts=HOSTS, sasl_options={"mechanism": "DIGEST-MD5", "username": user, "password": "nope"},
                      connection_retry={"max_tries": 0})
    # kazoo reports the refusal as AUTH_FAILED; whether start() returns first or waits out
    # its timeout (and closes the client) depends on which of its threads runs first, the
    # same against ZooKeeper: the states it went through tell.
    states = []
    report = bad._session_callback
    bad._session_callback = lambda state, report=report: (states.append(state), report(state))
    try:
        bad.start(timeout=5)
    except KazooTimeoutError:
        pass
    try:
        bad.exists("/")
        raise AssertionError("%s with a wrong password was served" % user)
    except (AuthFailedError, SessionExpiredError, ConnectionClosedError):
        pass
    assert KeeperState.AUTH_FAILED in states, states
    bad.stop()

# An invalid id for the sasl scheme (a malformed Kerberos name) is an invalid ACL.
from kazoo.exceptions import InvalidACLError
try:
    bob.create("/bad-acl", b"", acl=[make_acl("sasl", "a@b@c", all=True)])
    raise AssertionError("a malformed sasl id was accepted")
except InvalidACLError:
    pass

for c in (bob, anonymous, alice):
    c.stop()
print("sasl: ok")
