//! Read-only mode (`--read-only-mode`, ZooKeeper's readonlymode.enabled) with real processes
//! and real clients: a server of three cut off from the others serves read-only sessions
//! (kazoo with `read_only=True`, zkCli with `-r`), tells `isro`/`srvr` so, and when the
//! quorum is back closes them so that they come back as read-write sessions.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::clients::zkcli_args;
use baton_tests::cluster::Cluster;
use baton_tests::raw::{four_letter, RawClient};
use baton_tests::temp_dir;

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_server_without_quorum_serves_read_only_clients_until_the_quorum_returns() {
    let dir = temp_dir();
    let cluster = Cluster::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), 3, 26_100, &["--read-only-mode"]);
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(30)).expect("a leader");
    let cut = if leader == 3 { 2 } else { 3 };
    let addr = cluster.nodes[cut - 1].addr;
    let mut c = RawClient::connect(cluster.nodes[leader - 1].addr, 10_000, None).expect("connect to the leader");
    assert_eq!(c.create("/ro-data", b"before the cut", 0).map(|r| r.err), Some(0));
    wait_for("the write to reach the follower", Duration::from_secs(10), || {
        four_letter(addr, b"srvr").contains("Node count: 5")
    });
    assert_eq!(four_letter(addr, b"isro"), "rw");

    cluster.isolate(cut);
    wait_for("read-only mode", Duration::from_secs(20), || four_letter(addr, b"isro") == "ro");
    let srvr = four_letter(addr, b"srvr");
    assert!(srvr.contains("READ-ONLY mode; serving only read-only clients\n"), "{srvr}");
    assert!(srvr.contains("Mode: read-only"), "{srvr}");

    // ZooKeeper's own Java client with -r: reads served, writes refused.
    let script = "get /ro-data\ncreate /zkcli-ro x\nquit\n";
    let text = zkcli_args(&["-r", "-server", &addr.to_string()], script, &[]);
    assert!(text.contains("state:ConnectedReadOnly"), "zkCli -r connects read-only:\n{text}");
    assert!(text.contains("before the cut"), "zkCli -r reads:\n{text}");
    assert!(text.contains("Not a read-only call"), "zkCli -r gets NotReadOnly for a write:\n{text}");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/kazoo/read_only.py");
    let mut child = Command::new("timeout")
        .args(["120", "python3", script, &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3 (is kazoo installed? tests/run-all.sh installs it)");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("the script's first phase");
    assert_eq!(line.trim(), "read-only: ok", "kazoo in read-only mode");

    cluster.heal();
    wait_for("the server to rejoin", Duration::from_secs(30), || four_letter(addr, b"isro") == "rw");
    child.stdin.take().expect("stdin").write_all(b"healed\n").expect("tell the script");
    line.clear();
    out.read_line(&mut line).expect("the script's second phase");
    let status = child.wait().expect("wait for the script");
    assert!(status.success() && line.trim() == "read-write again: ok", "kazoo after the quorum returned: {line}");
}
