#!/usr/bin/env python3
"""Snapshots at any size: Baton against ZooKeeper 3.8, in one run on this machine.

    bench/scripts/snapshots.py [--count 1000000] [--reps 2] [--seconds 20] [--out DIR]
                               [--phases memory,latency,snap]

Each server starts on 127.0.0.1 with fresh data directories (under --out), and is stopped
(SIGKILL of its process group) by this script.

memory   Fill one server with COUNT znodes of 100 B (baton-bench, 16 sessions x 16 in
         flight), sampling its memory all along: Baton's RSS every 0.5 s; ZooKeeper's live
         heap (`jcmd GC.run` then `GC.heap_info`) every 3 s up to 2M znodes, above that its
         GC log (see `zk_samples_from_gc`), each with the node count the server reports
         (`srvr`); the end of the fill is a full GC either way. Plotted as bytes per znode
         against znodes (memory.svg).
latency  On the filled data directory, restart each server with snapshots on (its default:
         every 100,000 entries, drawn apart) and off, alternating, --reps times each, and
         run 16 sessions x 8 setData of 100 B on znodes drawn at random over the whole tree
         (`--spread COUNT`) for --seconds. Medians of p99.9 and max, on and off; each run's
         operations over 20 ms, with when they completed, in KIND-slow-MODE-REP.txt. At 10M
         a Baton snapshot comes about every 35 s: use --seconds 90.
snap     A three-server ensemble of each with server 3 down; fill COUNT znodes (the leader
         snapshots and compacts its log on the way, so a newcomer needs a SNAP); start server
         3 with an empty data directory and time until it holds as many znodes as the
         leader; the leader's RSS (Baton) or heap (ZooKeeper) before and at most during it.

ZooKeeper's old snapshots are purged as zkCleanup.sh would (`zk_purge`): it purges none by
default, and a 10M fill leaves ~50 GB of them.

Needs release builds of baton and baton-bench, Debian's zookeeper package (and its JDK's
jcmd). Writes results.json and memory.svg in --out, and prints a summary.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BATON = os.path.join(ROOT, "target", "release", "baton")
BENCH = os.path.join(ROOT, "target", "release", "baton-bench")
ZK_SERVER = "/usr/share/zookeeper/bin/zkServer.sh"
ZK_PORT, BATON_PORT = 22291, 22292


def four(port, word, timeout=5.0):
    """A four-letter word's answer ('' when the server does not answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            s.settimeout(timeout)
            s.sendall(word.encode())
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
            return out.decode(errors="replace")
    except OSError:
        return ""


def srvr(port, key):
    m = re.search(rf"^{key}: (.*)$", four(port, "srvr"), re.M)
    return m.group(1).strip() if m else None


def node_count(port):
    n = srvr(port, "Node count")
    return int(n) if n else None


def wait_port(port, limit=120.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listening on {port} after {limit} s")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


GC_LINE = re.compile(r"Pause .*?(\d+)([KMG])->(\d+)([KMG])\((\d+)([KMG])\)")
UNIT_KB = {"K": 1, "M": 1024, "G": 1024 * 1024}


def zk_gc_events(gc_log):
    """(JVM uptime in s, heap in use after the collection in KB) for each collection in
    ZooKeeper's GC log."""
    events = []
    try:
        with open(gc_log, errors="replace") as f:
            for line in f:
                m = GC_LINE.search(line)
                t = re.match(r"\[([\d.]+)s\]", line)
                if m and t:
                    events.append((float(t.group(1)), int(m.group(3)) * UNIT_KB[m.group(4)]))
    except OSError:
        pass
    return events


def zk_samples_from_gc(events, counted):
    """ZooKeeper's memory over a fill read from its GC log, as (uptime, znodes, heap KB)
    samples: each collection's heap after it, at the znodes the server held then
    (interpolated between `counted`, its (uptime, znodes) samples), lowered to the least heap
    seen after it. The tree only grows during a fill, so each value still bounds the live data
    at its moment from above, as tightly as the log allows; between concurrent cycles G1
    keeps old garbage, and the latest collection alone would charge ZooKeeper gigabytes that
    it frees later. No collection is forced: at 10M znodes a forced full GC outlasts the
    fill's sessions."""
    counted = sorted(counted)

    def znodes_at(t):
        for (t0, n0), (t1, n1) in zip(counted, counted[1:]):
            if t0 <= t <= t1:
                return n0 + (n1 - n0) * (t - t0) / max(1e-9, t1 - t0)
        return None

    out = []
    for i, (t, kb) in enumerate(events):
        n = znodes_at(t)
        if n is not None and n > 0:
            out.append((t, int(n), min(k for _, k in events[i:])))
    return out


def zk_heap_kb(pid, gc=True):
    """ZooKeeper's heap in use, after a full GC (its live data) unless gc is False."""
    if gc:
        subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=120)
    out = subprocess.run(["jcmd", str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"used (\d+)K", out)
    return int(m.group(1)) if m else 0


class Server:
    """One server process (its whole process group), its log, and how to find its pid."""

    def __init__(self, kind, port, data, cmd, env=None, jvm_match=None):
        self.kind, self.port, self.data = kind, port, data
        self.log = data + ".log"
        self.started = time.time()
        os.makedirs(os.path.dirname(self.log), exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pid = self.proc.pid
        if jvm_match:
            # zkServer.sh execs java in the foreground, but look it up to be sure.
            for _ in range(200):
                found = subprocess.run(["pgrep", "-f", jvm_match], capture_output=True, text=True).stdout.split()
                if found:
                    self.pid = int(found[0])
                    break
                time.sleep(0.05)

    def memory_kb(self, gc=True):
        return zk_heap_kb(self.pid, gc) if self.kind == "zookeeper" else rss_kb(self.pid)

    def gc_log(self):
        return os.path.join(self.data, "gc.log")

    def log_count(self, pattern):
        """Lines of its output matching `pattern`."""
        try:
            with open(self.log, errors="replace") as f:
                return len(re.findall(pattern, f.read()))
        except OSError:
            return 0

    def stop(self):
        for pid in {self.proc.pid, self.pid}:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


RUNNING = []


SEEN_SNAPSHOTS = {}  # data directory -> every ZooKeeper snapshot file seen there (purged or not)


def zk_purge(data, keep=3):
    """What ZooKeeper's PurgeTxnLog (zkCleanup.sh) does: keep the newest `keep` snapshots and
    the transaction logs they need. ZooKeeper purges nothing by default, and its autopurge
    runs at most hourly: a fill of 10M znodes leaves about a hundred snapshots, 50 GB."""
    d = os.path.join(data, "version-2")
    try:
        names = os.listdir(d)
    except OSError:
        return
    zxid = lambda n: int(n.split(".", 1)[1], 16)
    # Only finished files, named by a zxid (not ZooKeeper's `snapshot.<zxid>.tmp` being
    # written, say).
    names = [n for n in names if re.fullmatch(r"(snapshot|log)\.[0-9a-f]+", n)]
    snaps = sorted((n for n in names if n.startswith("snapshot.")), key=zxid)
    SEEN_SNAPSHOTS.setdefault(data, set()).update(snaps)
    if len(snaps) <= keep:
        return
    oldest_kept = zxid(snaps[-keep])
    logs = sorted((n for n in names if n.startswith("log.")), key=zxid)
    # The log holding the oldest kept snapshot's zxid starts at or before it: keep it.
    needed = [n for n in logs if zxid(n) <= oldest_kept][-1:]
    for n in snaps[:-keep] + [n for n in logs if zxid(n) < oldest_kept and n not in needed]:
        try:
            os.unlink(os.path.join(d, n))
        except OSError:
            pass


def zk_janitor():
    """Purges every running ZooKeeper's old snapshots every 5 s (see `zk_purge`)."""
    while True:
        for s in list(RUNNING):
            if s.kind == "zookeeper":
                zk_purge(s.data)
        time.sleep(5)


threading.Thread(target=zk_janitor, daemon=True).start()


def start_baton(data, port, extra=(), ensemble=None):
    cmd = [BATON, "--data-dir", data, "--client-addr", f"127.0.0.1:{port}", "--etcd-addr", "off", "--admin-addr", "off",
           "--max-client-cnxns", "0", *extra]
    if ensemble:
        sid, peers = ensemble
        cmd += ["--server-id", str(sid), "--peer", peers]
    env = dict(os.environ, RUST_LOG="info,glommio=warn")
    s = Server("baton", port, data, cmd, env=env)
    RUNNING.append(s)
    wait_port(port)
    return s


ZK_SNAPSHOTS_OFF = {"snapCount": "2000000000", "snapSizeLimitInKb": "-1"}


def start_zk(data, port, extra=None, ensemble=None, heap="4g", fixed_heap=True):
    os.makedirs(data, exist_ok=True)
    cfg = os.path.join(data, "zoo.cfg")
    lines = [
        "tickTime=2000",
        "initLimit=30",
        "syncLimit=10",
        f"dataDir={data}",
        f"clientPort={port}",
        "clientPortAddress=127.0.0.1",
        "maxClientCnxns=0",
        "admin.enableServer=false",
        "4lw.commands.whitelist=*",
        "forceSync=yes",
    ]
    lines += [f"{k}={v}" for k, v in (extra or {}).items()]
    if ensemble:
        sid, servers = ensemble
        lines += servers
        with open(os.path.join(data, "myid"), "w") as f:
            f.write(f"{sid}\n")
    with open(cfg, "w") as f:
        f.write("\n".join(lines) + "\n")
    flags = f"-Xmx{heap} -Xms{heap if fixed_heap else '1g'} -Xlog:gc:file={os.path.join(data, 'gc.log')}"
    env = dict(os.environ, ZOO_LOG_DIR=data, SERVER_JVMFLAGS=flags)
    s = Server("zookeeper", port, data, [ZK_SERVER, "start-foreground", cfg], env=env, jvm_match=f"java.*{cfg}")
    RUNNING.append(s)
    wait_port(port)
    return s


def bench(port, label, workload, *args, stderr=None):
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [BENCH, "zk", "--target", f"127.0.0.1:{port}", "--label", label, "--workload", workload, "--json", path, *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=stderr)
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    os.unlink(path)
    return json.loads(lines[-1]) if lines else None


def fill(port, label, count):
    bench(port, label, "fill", "--count", str(count), "--value-bytes", "100", "--clients", "16", "--depth", "16")


def wait_nodes(port, at_least, limit):
    end = time.time() + limit
    while time.time() < end:
        n = node_count(port)
        if n is not None and n >= at_least:
            return n
        time.sleep(0.05)
    sys.exit(f"server on {port} did not reach {at_least} znodes in {limit} s")


# ---- phase 1: memory over a fill ----


# Above this many znodes ZooKeeper's heap is read from its GC log instead of after a forced
# full GC: a forced collection of a multi-GB heap stalls the server past the fill's sessions.
FORCED_GC_UP_TO = 2_000_000


def memory_over_fill(kind, out, count):
    data = os.path.join(out, f"{kind}-single")
    shutil.rmtree(data, ignore_errors=True)
    port = ZK_PORT if kind == "zookeeper" else BATON_PORT
    s = start_zk(data, port, heap=zk_heap_for(count)) if kind == "zookeeper" else start_baton(data, port)
    time.sleep(2)
    base_nodes = node_count(port) or 0
    base = s.memory_kb()
    samples, done = [], threading.Event()
    interval = 3.0 if kind == "zookeeper" else 0.5

    def sample():
        while not done.is_set():
            t0 = time.time()
            n = node_count(port)
            # ZooKeeper above FORCED_GC_UP_TO: filled in from its GC log after the fill.
            gc_log = kind == "zookeeper" and count > FORCED_GC_UP_TO
            mem = 0 if gc_log else s.memory_kb()
            if n is not None:
                samples.append((round(t0 - s.started, 2), n - base_nodes, mem - base))
            done.wait(max(0.0, interval - (time.time() - t0)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.time()
    fill(port, kind, count)
    fill_s = time.time() - started
    # Baton: until the last snapshot is written and its memory returned (settled within 1%).
    if kind == "baton":
        prev = s.memory_kb()
        for _ in range(30):
            time.sleep(1)
            cur = s.memory_kb()
            if abs(cur - prev) <= cur / 100:
                break
            prev = cur
    done.set()
    sampler.join()
    if kind == "zookeeper" and count > FORCED_GC_UP_TO:
        samples = [(t, n, kb - base) for t, n, kb in
                   zk_samples_from_gc(zk_gc_events(s.gc_log()), [(t, n) for t, n, _ in samples])]
    n = (node_count(port) or 0) - base_nodes
    final = s.memory_kb() - base  # ZooKeeper: a forced full GC, with no client left to time out
    samples.append((round(time.time() - s.started, 2), n, final))
    s.stop()
    RUNNING.remove(s)
    method = "rss" if kind == "baton" else ("gc-log" if count > FORCED_GC_UP_TO else "forced-gc")
    return {"fill_s": round(fill_s, 2), "base_kb": base, "final_kb": final, "znodes": n, "samples": samples,
            "method": method}


def zk_heap_for(count):
    return f"{max(2, (count * 700) // 10**9 + 2)}g"


def zk_ensemble_heap_for(count):
    """Three of them share the machine: 550 B a znode and 1.5 GB of room (7g at 10M)."""
    return f"{(count * 550 + 1_500_000_000 + 10**9 - 1) // 10**9}g"


def per_znode_curve(samples, min_nodes):
    return [(n, kb * 1024 / n) for _, n, kb in samples if n >= min_nodes]


def interpolate(curve, n):
    """ZooKeeper's bytes per znode at n znodes, linear between its samples."""
    pts = sorted(curve)
    if not pts:
        return None
    if n <= pts[0][0]:
        return pts[0][1]
    for (n0, b0), (n1, b1) in zip(pts, pts[1:]):
        if n0 <= n <= n1:
            return b0 + (b1 - b0) * (n - n0) / max(1, n1 - n0)
    return pts[-1][1]


def svg_plot(curves, path, title):
    """A small line chart: bytes per znode against znodes, one polyline per server."""
    w, h, ml, mb, mt, mr = 720, 420, 70, 50, 40, 20
    xs = [n for c in curves.values() for n, _ in c]
    ys = [b for c in curves.values() for _, b in c]
    if not xs:
        return
    xmax, ymax = max(xs), max(ys) * 1.1
    sx = lambda n: ml + (w - ml - mr) * n / xmax
    sy = lambda b: h - mb - (h - mb - mt) * b / ymax
    colours = {"zookeeper": "#d62728", "baton": "#1f77b4", "0.5x zookeeper": "#999999"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
             f'<line x1="{ml}" y1="{h - mb}" x2="{w - mr}" y2="{h - mb}" stroke="black"/>',
             f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{h - mb}" stroke="black"/>']
    for i in range(6):
        n, b = xmax * i / 5, ymax * i / 5
        parts.append(f'<text x="{sx(n):.0f}" y="{h - mb + 16}" text-anchor="middle">{n / 1e6:.1f}M</text>')
        parts.append(f'<text x="{ml - 6}" y="{sy(b) + 4:.0f}" text-anchor="end">{b:.0f}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">znodes</text>')
    parts.append(f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">bytes per znode</text>')
    for k, (name, curve) in enumerate(curves.items()):
        pts = " ".join(f"{sx(n):.1f},{sy(b):.1f}" for n, b in sorted(curve))
        colour = colours.get(name, "#2ca02c")
        dash = ' stroke-dasharray="5,4"' if name.startswith("0.5x") else ""
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{pts}"/>')
        parts.append(f'<text x="{w - mr - 150}" y="{mt + 16 * (k + 1)}" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


# ---- phase 2: write latency with snapshots on and off ----

def snapshots_taken(s):
    """Snapshots the server has started: Baton's log lines; ZooKeeper's files (Debian's
    ZooKeeper logs nothing: it has no SLF4J binding, and it purges no snapshot by default)."""
    if s.kind == "baton":
        return s.log_count(r"snapshot view taken")
    zk_purge(s.data)  # records the files there now (see SEEN_SNAPSHOTS)
    return len(SEEN_SNAPSHOTS.get(s.data, ()))


def latency_runs(kind, out, count, reps, seconds):
    data = os.path.join(out, f"{kind}-single")
    port = ZK_PORT if kind == "zookeeper" else BATON_PORT
    runs = {"on": [], "off": []}
    for rep in range(reps):
        for mode in (("on", "off") if rep % 2 == 0 else ("off", "on")):
            if kind == "zookeeper":
                s = start_zk(data, port, extra=ZK_SNAPSHOTS_OFF if mode == "off" else None, heap=zk_heap_for(count))
            else:
                off = ["--snapshot-every-entries", "0", "--snapshot-every-bytes", "0"]
                s = start_baton(data, port, extra=off if mode == "off" else ())
            restart_s = time.time() - s.started
            wait_nodes(port, count, 600)
            restart_s = time.time() - s.started
            before = snapshots_taken(s)
            # Operations over 20 ms, with when they completed, to line stalls up with the log.
            with open(os.path.join(out, f"{kind}-slow-{mode}-{rep}.txt"), "w") as slow:
                r = bench(port, kind, "write", "--spread", str(count), "--value-bytes", "100", "--clients", "16",
                          "--depth", "8", "--seconds", str(seconds), "--slow-ms", "20", stderr=slow)
            snaps = snapshots_taken(s) - before
            s.stop()
            RUNNING.remove(s)
            runs[mode].append({"ops": r["ops_per_sec"] if "ops_per_sec" in r else r.get("throughput"),
                               "p99_ms": r["p99_ms"], "p999_ms": r["p999_ms"], "max_ms": r["max_ms"],
                               "snapshots": snaps, "restart_s": round(restart_s, 2)})
            print(f"  {kind} snapshots {mode}: p99.9 {r['p999_ms']:.2f} ms, max {r['max_ms']:.2f} ms, "
                  f"{snaps} snapshots during the run, restart {restart_s:.1f} s", flush=True)
            if mode == "on" and snaps == 0:
                print(f"  (no snapshot during this run: a longer --seconds is needed at {count} znodes)", flush=True)
    med = lambda mode, key: statistics.median(x[key] for x in runs[mode])
    return {"runs": runs,
            "p999_on": med("on", "p999_ms"), "p999_off": med("off", "p999_ms"),
            "max_on": med("on", "max_ms"), "max_off": med("off", "max_ms")}


# ---- phase 3: a new follower by SNAP ----


def snap_newcomer(kind, out, count):
    base = os.path.join(out, f"{kind}-ensemble")
    shutil.rmtree(base, ignore_errors=True)
    if kind == "zookeeper":
        ports = [22391, 22392, 22393]
        servers = [f"server.{i}=127.0.0.1:{22400 + i}:{22410 + i}" for i in (1, 2, 3)]
        # Three JVMs on one machine: each grows its heap as it needs (-Xms 1g), so that
        # their maximum together may exceed the machine without ever being committed.
        start = lambda i: start_zk(os.path.join(base, f"n{i}"), ports[i - 1], ensemble=(i, servers),
                                   heap=zk_ensemble_heap_for(count), fixed_heap=False)
    else:
        ports = [22394, 22395, 22396]
        peers = ",".join(f"{i}=127.0.0.1:{22420 + i}" for i in (1, 2, 3))
        start = lambda i: start_baton(os.path.join(base, f"n{i}"), ports[i - 1], ensemble=(i, peers))
    a, b = start(1), start(2)
    leader_port = None
    for _ in range(600):
        modes = {p: srvr(p, "Mode") for p in ports[:2]}
        leaders = [p for p, m in modes.items() if m == "leader"]
        if leaders and all(m in ("leader", "follower") for m in modes.values()):
            leader_port = leaders[0]
            break
        time.sleep(0.1)
    if leader_port is None:
        sys.exit(f"{kind}: no leader among two of three servers")
    leader = a if leader_port == ports[0] else b
    started = time.time()
    fill(leader_port, kind, count)
    fill_s = time.time() - started
    target = node_count(leader_port)
    time.sleep(3)
    before_kb = leader.memory_kb()
    peak, done = [before_kb], threading.Event()

    def watch():
        while not done.is_set():
            peak.append(leader.memory_kb(gc=False))
            done.wait(0.5 if kind == "baton" else 2.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    c = start(3)
    wait_nodes(ports[2], target, 1200)
    snap_s = time.time() - c.started
    done.set()
    watcher.join()
    for s in (a, b, c):
        s.stop()
        RUNNING.remove(s)
    return {"fill_s": round(fill_s, 2), "znodes": target, "newcomer_s": round(snap_s, 2),
            "leader_before_kb": before_kb, "leader_peak_kb": max(peak)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--out", default=None)
    ap.add_argument("--phases", default="memory,latency,snap")
    ap.add_argument("--servers", default="zookeeper,baton")
    a = ap.parse_args()
    for path in (BATON, BENCH):
        if not os.access(path, os.X_OK):
            sys.exit("build first: cargo build --release -p baton-server -p baton-bench")
    if not os.access(ZK_SERVER, os.X_OK):
        sys.exit("needs Debian's zookeeper package")
    out = os.path.abspath(a.out or tempfile.mkdtemp(prefix="baton-snapshots."))
    os.makedirs(out, exist_ok=True)
    phases, servers = a.phases.split(","), a.servers.split(",")
    path = os.path.join(out, "results.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)  # phases run earlier into the same directory
    results.update({"count": a.count, "machine": os.uname().release})

    def save():
        with open(path, "w") as f:
            json.dump(results, f, indent=1)

    try:
        if "memory" in phases:
            print(f"== memory over a fill of {a.count} znodes of 100 B", flush=True)
            memory = results.setdefault("memory", {})
            memory.update({k: memory_over_fill(k, out, a.count) for k in servers})
            curves = {k: per_znode_curve(v["samples"], a.count // 20) for k, v in memory.items() if isinstance(v, dict)}
            if "zookeeper" in curves and "baton" in curves:
                curves["0.5x zookeeper"] = [(n, b / 2) for n, b in curves["zookeeper"]]
                worst = max(b / interpolate(curves["zookeeper"], n) for n, b in curves["baton"])
                results["memory"]["worst_ratio"] = round(worst, 3)
            svg_plot(curves, os.path.join(out, "memory.svg"), f"Memory per znode over a fill of {a.count} znodes")
            for k, v in results["memory"].items():
                if isinstance(v, dict):
                    print(f"  {k}: fill {v['fill_s']} s, {v['final_kb'] * 1024 / max(1, v['znodes']):.0f} B/znode at the end")
            save()
            if "worst_ratio" in results["memory"]:
                print(f"  Baton / ZooKeeper, worst moment of the fill: {results['memory']['worst_ratio']:.2f}x (target <= 0.5)")
        if "latency" in phases:
            print(f"== write latency at {a.count} znodes, snapshots on and off", flush=True)
            results.setdefault("latency", {}).update({k: latency_runs(k, out, a.count, a.reps, a.seconds) for k in servers})
            save()
            for k, v in results["latency"].items():
                print(f"  {k}: p99.9 {v['p999_on']:.2f} ms on / {v['p999_off']:.2f} ms off "
                      f"({v['p999_on'] / v['p999_off']:.2f}x), max {v['max_on']:.2f} / {v['max_off']:.2f} ms "
                      f"({v['max_on'] / v['max_off']:.2f}x) (target <= 2x)")
        if "snap" in phases:
            print(f"== a new follower brought up by SNAP at {a.count} znodes", flush=True)
            results.setdefault("snap", {}).update({k: snap_newcomer(k, out, a.count) for k in servers})
            save()
            for k, v in results["snap"].items():
                print(f"  {k}: {v['newcomer_s']} s to hold {v['znodes']} znodes; leader memory "
                      f"{v['leader_before_kb'] // 1024} MB before, {v['leader_peak_kb'] // 1024} MB at most during it")
    finally:
        for s in list(RUNNING):
            s.stop()
        print(f"results in {out}")


if __name__ == "__main__":
    main()
