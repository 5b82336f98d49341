//! Bad input on the peer port: garbage, a server of another ensemble, an id that is not a
//! member, a peer claiming the server's own id, and two servers configured with one id. Each
//! gets its connection closed and a log line naming the caller and why; the ensemble goes on
//! serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use baton_server::peer::hello::{ensemble_fingerprint, Hello, HELLO_BYTES};
use baton_tests::cluster::Cluster;
use baton_tests::raw::RawClient;
use baton_tests::temp_dir;

const LIMIT: Duration = Duration::from_secs(30);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_baton_test_server")
}

/// Sends `bytes` to `addr` and waits for the server to close the connection; returns what
/// it answered before closing.
fn refused(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to the peer port");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(bytes).expect("send");
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => answer,
        Err(e) => panic!("the server kept a bad peer connection open: {e}"),
    }
}

/// Waits until server `i`'s log has a line containing every one of `words`.
fn logged(cluster: &Cluster, i: usize, words: &[&str]) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(cluster.nodes[i - 1].log_path()).unwrap_or_default();
        if log.lines().any(|l| words.iter().all(|w| l.contains(w))) {
            return;
        }
        assert!(Instant::now() < end, "server {i} never logged {words:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_peers_are_refused_with_a_reason_and_the_ensemble_goes_on() {
    let dir = temp_dir();
    let cluster = Cluster::start(bin(), dir.path(), 3, 29_600, &[]);
    cluster.wait_for_leader(&[1, 2, 3], LIMIT).expect("a leader");
    let ours = ensemble_fingerprint("baton", &[(1, false), (2, false), (3, false)]);
    let port = cluster.peer_addr(2);
    let hello = |ensemble, from| Hello { ensemble, from, incarnation: 42 }.encode();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n12345".to_vec(), "not a Baton peer"),
        (hello(ensemble_fingerprint("other", &[(1, false), (2, false), (3, false)]), 1).to_vec(), "another ensemble"),
        (hello(ours, 9).to_vec(), "server id 9 is not a member"),
        (hello(ours, 2).to_vec(), "claims this server's own id 2"),
    ];
    for (bytes, why) in cases {
        assert!(bytes.len() >= HELLO_BYTES);
        let answer = refused(port, &bytes);
        assert!(answer.is_empty(), "a refused caller is told nothing: {answer:?}");
        logged(&cluster, 2, &["[server 2]", "refusing a connection on the peer port", why]);
        // One refusal line a second: the next case gets its own.
        std::thread::sleep(Duration::from_millis(1100));
    }
    // A caller that says nothing is dropped after a second.
    let silent = TcpStream::connect_timeout(&port, Duration::from_secs(2)).expect("connect");
    silent.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    assert_eq!((&silent).read(&mut [0u8; 8]).map_err(|e| e.kind()), Ok(0), "closed");
    logged(&cluster, 2, &["refusing a connection on the peer port", "no hello"]);
    // Nothing else was disturbed: every server answers writes.
    for (i, addr) in cluster.addrs().into_iter().enumerate() {
        let mut c = RawClient::connect(addr, 10_000, None).expect("connect");
        let reply = c.create(&format!("/after-{i}"), b"", 0).expect("reply");
        assert_eq!(reply.err, 0, "server {} serves writes", i + 1);
    }
}

#[test]
fn two_servers_with_one_id_are_reported() {
    let dir = temp_dir();
    let cluster = Cluster::start(bin(), dir.path(), 3, 29_700, &[]);
    cluster.wait_for_leader(&[1, 2, 3], LIMIT).expect("a leader");
    let ours = ensemble_fingerprint("baton", &[(1, false), (2, false), (3, false)]);
    // A second "server 3" calls server 1, alternating with the real one's incarnation.
    let port = cluster.peer_addr(1);
    for incarnation in [1u64, 2, 1, 2] {
        let mut s = TcpStream::connect_timeout(&port, Duration::from_secs(2)).expect("connect");
        s.write_all(&Hello { ensemble: ours, from: 3, incarnation }.encode()).expect("hello");
        let mut answer = [0u8; 8];
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.read_exact(&mut answer).expect("a valid hello is answered");
    }
    logged(&cluster, 1, &["two servers seem to be configured with id 3"]);
    // The real server 3 reconnects; the ensemble settles with one leader again.
    assert!(cluster.wait_for_leader(&[1, 2, 3], LIMIT).is_some(), "the ensemble settles");
}
