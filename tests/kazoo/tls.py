"""kazoo over TLS (`use_ssl`) against Baton's secure client port.

    tls.py HOST:PORT CA CERT KEY owner SUBJECT   connect with the certificate, write, read, watch;
                                                 create /x509-only readable by x509:SUBJECT alone
                                                 and read it
    tls.py HOST:PORT CA CERT KEY other           /x509-only is NoAuth to this certificate
    tls.py HOST:PORT CA CERT KEY refused         the connection must fail (another CA)
    tls.py HOST:PORT CA CERT KEY connects        the connection succeeds and reads /
    tls.py HOST:PORT CA CERT KEY load SECONDS    one session writes /load over and over for
                                                 SECONDS; every write must succeed

Prints OK when what was expected happened.
"""
import sys
import threading
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import ACL, Id, Permissions

hosts, ca, cert, key, mode = sys.argv[1:6]

zk = KazooClient(hosts=hosts, use_ssl=True, verify_certs=True, ca=ca, certfile=cert, keyfile=key, timeout=10)
if mode == "refused":
    try:
        zk.start(timeout=5)
    except KazooTimeoutError:
        print("OK: refused")
        sys.exit(0)
    finally:
        zk.stop()
    print("connected with a certificate from another CA")
    sys.exit(1)

zk.start(timeout=15)
if mode == "owner":
    subject = sys.argv[6]
    zk.create("/tls/node", b"over tls", makepath=True)
    data, stat = zk.get("/tls/node")
    assert data == b"over tls", data
    fired = threading.Event()
    zk.DataWatch("/tls/node", lambda data, stat, event: fired.set() if event is not None else None)
    zk.set("/tls/node", b"changed")
    assert fired.wait(10), "the watch fired"
    zk.delete("/tls", recursive=True)
    assert zk.exists("/tls") is None
    # ZooKeeper's x509 scheme: the certificate's subject, as Java's X500Principal.getName().
    zk.create("/x509-only", b"secret", acl=[ACL(Permissions.ALL, Id("x509", subject))])
    data, _ = zk.get("/x509-only")
    assert data == b"secret", data
elif mode == "connects":
    zk.get("/")
elif mode == "load":
    seconds = float(sys.argv[6])
    zk.ensure_path("/load")
    n = 0
    end = time.time() + seconds
    while time.time() < end:
        zk.set("/load", str(n).encode())
        n += 1
    data, _ = zk.get("/load")
    assert data == str(n - 1).encode(), data
    print(f"{n} writes")
elif mode == "other":
    try:
        zk.get("/x509-only")
        print("another certificate read /x509-only")
        sys.exit(1)
    except NoAuthError:
        pass
zk.stop()
print("OK")
