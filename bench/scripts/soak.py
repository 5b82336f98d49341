#!/usr/bin/env python3
"""Soak: a three-server Baton ensemble at half of its capacity for a long time, with
snapshots and log purges happening throughout. Resident memory, open files and p99 latency
must be flat from the first to the last five minutes.

Usage (from the repository root, after `cargo build --release -p baton-server -p baton-bench`):

    bench/scripts/soak.py [--minutes 30] [--interval 60] [--out target/soak]

1. Starts three `baton` servers on 127.0.0.1 (peer ports 127.0.0.1:29901-3, client ports
   22181-3) with a snapshot every 100,000 entries (three kept, the log segments they cover
   recycled), waits for a leader.
2. Measures capacity: `baton-bench zk --workload write` closed loop, 20 s.
3. Runs the same workload open loop at half that rate, one `baton-bench` run per interval
   (so p99 is known per interval), while sampling every server's resident memory (VmRSS)
   and open file descriptors every 5 s.
4. Prints a table per interval and the comparison of the first and last five minutes, and
   writes everything to OUT/soak.json. Exits non-zero if memory or open files grew by more
   than 20% (and 64 MiB / 16 files) or p99 by more than 2x between the two windows.

Every process it starts is stopped by pid at the end.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def four_letter(port, word):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(word)
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    return data.decode(errors="replace")
                data += chunk
    except OSError:
        return ""


def mode(port):
    for line in four_letter(port, b"srvr").splitlines():
        if line.startswith("Mode: "):
            return line[6:]
    return None


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def open_files(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def bench(bench_bin, ports, seconds, rate, out_json):
    args = [
        bench_bin, "zk", "--target", ",".join("127.0.0.1:%d" % p for p in ports),
        "--workload", "write", "--clients", "16", "--depth", "8", "--value-bytes", "100",
        "--seconds", str(seconds), "--driver", "crate", "--label", "soak", "--json", out_json,
    ]
    if rate:
        args += ["--rate", str(rate)]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    with open(out_json) as f:
        return json.loads(f.read().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--interval", type=float, default=60, help="seconds per measured run")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "soak"))
    ap.add_argument("--baton", default=os.path.join(ROOT, "target", "release", "baton"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "target", "release", "baton-bench"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    data = tempfile.mkdtemp(prefix="soak-", dir=a.out)
    client_ports = [22181, 22182, 22183]
    peers = ",".join("%d=127.0.0.1:%d" % (i, 29900 + i) for i in (1, 2, 3))
    procs = []
    try:
        for i in (1, 2, 3):
            log = open(os.path.join(data, "server-%d.log" % i), "w")
            procs.append(subprocess.Popen([
                a.baton, "--server-id", str(i), "--peer", peers,
                "--client-addr", "127.0.0.1:%d" % client_ports[i - 1], "--etcd-addr", "off", "--admin-addr", "off",
                "--data-dir", os.path.join(data, "server-%d" % i),
                "--snapshot-every-entries", "100000", "--snapshots-to-keep", "3",
                "--max-client-cnxns", "0",  # every load client comes from 127.0.0.1
            ], stdout=log, stderr=subprocess.STDOUT))
        deadline = time.time() + 60
        while time.time() < deadline:
            modes = [mode(p) for p in client_ports]
            if modes.count("leader") == 1 and modes.count("follower") == 2:
                break
            time.sleep(0.2)
        else:
            sys.exit("no leader within 60 s: %s" % modes)

        result_file = os.path.join(data, "bench.jsonl")
        capacity = bench(a.bench, client_ports, 20, None, result_file)["ops_per_sec"]
        rate = capacity / 2
        print("capacity %.0f writes/s; soaking at %.0f/s for %.0f min" % (capacity, rate, a.minutes), flush=True)

        samples = []  # (t, [rss KiB per server], [fds per server])
        stop = threading.Event()
        started = time.time()

        def sample():
            while not stop.is_set():
                samples.append((time.time() - started,
                                [rss_kib(p.pid) for p in procs], [open_files(p.pid) for p in procs]))
                stop.wait(5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        intervals = []
        while time.time() - started < a.minutes * 60:
            t0 = time.time() - started
            r = bench(a.bench, client_ports, a.interval, rate, result_file)
            t1 = time.time() - started
            inside = [s for s in samples if t0 <= s[0] <= t1]
            rss = max((max(x for x in s[1] if x) for s in inside), default=0)
            fds = max((max(x for x in s[2] if x) for s in inside), default=0)
            intervals.append({"t0_s": t0, "t1_s": t1, "ops_per_sec": r["ops_per_sec"], "p50_ms": r["p50_ms"],
                              "p99_ms": r["p99_ms"], "rss_max_mib": rss / 1024, "fds_max": fds})
            print("%6.0f s  %8.0f ops/s  p50 %6.2f ms  p99 %7.2f ms  rss max %6.1f MiB  fds max %4d" % (
                t1, r["ops_per_sec"], r["p50_ms"], r["p99_ms"], rss / 1024, fds), flush=True)
        stop.set()
        sampler.join()
        for p in procs:
            if p.poll() is not None:
                sys.exit("server %d exited during the soak (status %s)" % (p.pid, p.returncode))

        window = 300
        total = time.time() - started
        first = [i for i in intervals if i["t1_s"] <= window]
        last = [i for i in intervals if i["t0_s"] >= total - window]
        first_s = [s for s in samples if s[0] <= window]
        last_s = [s for s in samples if s[0] >= total - window]

        def rss_mean(ss):
            return statistics.mean(sum(x for x in s[1] if x) for s in ss) / 1024

        def fds_mean(ss):
            return statistics.mean(sum(x for x in s[2] if x) for s in ss)

        summary = {
            "capacity_ops_per_sec": capacity, "rate": rate, "minutes": a.minutes,
            "first5": {"p99_ms_median": statistics.median(i["p99_ms"] for i in first),
                       "rss_mib_all_servers": rss_mean(first_s), "open_files_all_servers": fds_mean(first_s)},
            "last5": {"p99_ms_median": statistics.median(i["p99_ms"] for i in last),
                      "rss_mib_all_servers": rss_mean(last_s), "open_files_all_servers": fds_mean(last_s)},
            "intervals": intervals,
        }
        with open(os.path.join(a.out, "soak.json"), "w") as f:
            json.dump(summary, f, indent=1)
        f5, l5 = summary["first5"], summary["last5"]
        print("first 5 min: p99 %.2f ms, RSS %.1f MiB (3 servers), %.0f open files" % (
            f5["p99_ms_median"], f5["rss_mib_all_servers"], f5["open_files_all_servers"]))
        print("last 5 min:  p99 %.2f ms, RSS %.1f MiB (3 servers), %.0f open files" % (
            l5["p99_ms_median"], l5["rss_mib_all_servers"], l5["open_files_all_servers"]))
        grew = []
        if l5["rss_mib_all_servers"] > max(f5["rss_mib_all_servers"] * 1.2, f5["rss_mib_all_servers"] + 64):
            grew.append("resident memory")
        if l5["open_files_all_servers"] > max(f5["open_files_all_servers"] * 1.2, f5["open_files_all_servers"] + 16):
            grew.append("open files")
        if l5["p99_ms_median"] > 2 * f5["p99_ms_median"]:
            grew.append("p99 latency")
        if grew:
            sys.exit("not flat: " + ", ".join(grew))
        print("flat: memory, open files and p99 from the first to the last five minutes")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
