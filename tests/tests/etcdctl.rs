//! etcd's own command-line client (Debian's etcdctl, etcd 3.4) and python-etcd3 against a
//! real `baton` process: the commands people type, and what they print.

use std::process::{Command, Stdio};
use std::time::Duration;

use baton_tests::clients::etcdctl;
use baton_tests::server::{free_port, BatonProcess};
use baton_tests::temp_dir;

/// A server in `dir` serving etcd clients on a free port; the server and the port.
fn start(dir: &std::path::Path, extra: &[&str]) -> (BatonProcess, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--tick-ms", "500", "--etcd-addr", addr.as_str()];
    args.extend_from_slice(extra);
    let server = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir, &args);
    (server, port)
}

/// Runs etcdctl and expects success; returns its output.
fn ok(endpoint: &str, args: &[&str], stdin: &str) -> String {
    let (success, said) = etcdctl(endpoint, args, stdin);
    assert!(success, "etcdctl {args:?} failed: {said}");
    said
}

#[test]
fn etcdctl_puts_gets_txns_watches_leases_compacts_and_saves_snapshots() {
    let dir = temp_dir();
    let (_server, port) = start(dir.path(), &[]);
    let addr = format!("127.0.0.1:{port}");
    let e = addr.as_str();
    assert_eq!(ok(e, &["put", "foo", "bar"], ""), "OK\n");
    assert_eq!(ok(e, &["get", "foo"], ""), "foo\nbar\n");
    let json = ok(e, &["get", "foo", "-w", "json"], "");
    assert!(json.contains("\"create_revision\":2") && json.contains("\"version\":1"), "{json}");
    // A txn from stdin: compares, a blank line, success ops, a blank line, failure ops.
    let said = ok(e, &["txn"], "value(\"foo\") = \"bar\"\n\nput a 1\nget foo\n\nput b 2\n\n");
    assert!(said.starts_with("SUCCESS"), "{said}");
    assert_eq!(ok(e, &["get", "a", "--print-value-only"], ""), "1\n");
    assert_eq!(ok(e, &["get", "b"], ""), "");
    assert_eq!(ok(e, &["del", "a"], ""), "1\n");
    // A watch prints the puts that follow it.
    let watch = Command::new("timeout")
        .args(["4", "etcdctl", "--endpoints", e, "watch", "w", "--prefix"])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl watch");
    std::thread::sleep(Duration::from_millis(1500));
    ok(e, &["put", "w1", "x"], "");
    ok(e, &["put", "w2", "y"], "");
    let watched = watch.wait_with_output().expect("watch output");
    let watched = String::from_utf8_lossy(&watched.stdout);
    assert_eq!(watched, "PUT\nw1\nx\nPUT\nw2\ny\n");
    // Leases: grant, attach, time to live with keys, revoke (the key goes).
    let granted = ok(e, &["lease", "grant", "60"], "");
    let id = granted.split_whitespace().nth(1).expect("lease ID").to_string();
    assert!(granted.ends_with("granted with TTL(60s)\n"), "{granted}");
    ok(e, &["put", "leased", "v", &format!("--lease={id}")], "");
    let ttl = ok(e, &["lease", "timetolive", &id, "--keys"], "");
    assert!(ttl.contains("granted with TTL(60s)") && ttl.contains("attached keys([leased])"), "{ttl}");
    assert!(ok(e, &["lease", "revoke", &id], "").contains("revoked"));
    assert_eq!(ok(e, &["get", "leased"], ""), "");
    // Status and membership as operators read them.
    let status = ok(e, &["endpoint", "status", "-w", "json"], "");
    assert!(status.contains("\"version\":\"3.5.0\""), "{status}");
    let members = ok(e, &["member", "list"], "");
    assert!(members.starts_with("1, started, baton-1, "), "{members}");
    ok(e, &["endpoint", "hashkv"], "");
    ok(e, &["defrag"], "");
    assert_eq!(ok(e, &["alarm", "list"], ""), "");
    // Compaction, then a read before it: etcd's error.
    assert_eq!(ok(e, &["compaction", "3"], ""), "compacted revision 3\n");
    let (success, said) = etcdctl(e, &["get", "foo", "--rev=2"], "");
    assert!(!success && said.contains("required revision has been compacted"), "{said}");
    // A snapshot is saved (Baton's state image in etcd's stream shape).
    let file = dir.path().join("snap.db");
    let said = ok(e, &["snapshot", "save", file.to_str().expect("a path")], "");
    assert!(said.contains("Snapshot saved at"), "{said}");
    let saved = std::fs::read(&file).expect("the saved snapshot");
    assert!(saved.starts_with(b"BETCDIMG") && (saved.len() - 32) % 512 == 0);
}

#[test]
fn python_etcd3_reads_writes_transacts_leases_watches_and_locks() {
    let dir = temp_dir();
    let (_server, port) = start(dir.path(), &[]);
    let (ok, said) = baton_tests::clients::python_etcd3("compat.py", &["127.0.0.1", &port.to_string()]);
    assert!(ok, "{said}");
    assert!(said.contains("python-etcd3 compatibility: ok"), "{said}");
}

#[test]
fn etcdctl_sees_the_nospace_alarm_and_an_operator_frees_space_and_disarms_it() {
    let dir = temp_dir();
    let (_server, port) = start(dir.path(), &["--etcd-quota-bytes", "20000"]);
    let addr = format!("127.0.0.1:{port}");
    let e = addr.as_str();
    let value = "v".repeat(1000);
    let mut refused = None;
    for i in 0..40 {
        let (success, said) = etcdctl(e, &["put", &format!("big/{i:02}"), &value], "");
        if !success {
            refused = Some(said);
            break;
        }
    }
    let refused = refused.expect("the quota refused a put");
    assert!(refused.contains("etcdserver: mvcc: database space exceeded"), "{refused}");
    let mut listed = String::new();
    for _ in 0..50 {
        listed = ok(e, &["alarm", "list"], "");
        if !listed.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(listed, "memberID:1 alarm:NOSPACE \n");
    let status = ok(e, &["endpoint", "status"], "");
    assert!(status.contains("memberID:1 alarm:NOSPACE"), "{status}");
    // The operator's way out: delete, compact (physically), defragment, disarm.
    ok(e, &["del", "big/", "--prefix"], "");
    let rev = ok(e, &["get", "big/", "-w", "json"], "");
    let rev: i64 = rev
        .split("\"revision\":")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|r| r.parse().ok())
        .expect("a revision");
    ok(e, &["compaction", &rev.to_string(), "--physical"], "");
    ok(e, &["defrag"], "");
    assert_eq!(ok(e, &["alarm", "disarm"], ""), "memberID:1 alarm:NOSPACE \n");
    assert_eq!(ok(e, &["alarm", "list"], ""), "");
    assert_eq!(ok(e, &["put", "after", "1"], ""), "OK\n");
}
