//! A real `baton` process: restarts after SIGKILL, session expiry, and hostile input.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use baton_server::zk::jute::Writer;
use baton_server::zk::proto::op;
use baton_tests::raw::{closed_by_server, four_letter, RawClient};
use baton_tests::server::BatonProcess;
use baton_tests::temp_dir;

fn start(dir: &std::path::Path, extra: &[&str]) -> BatonProcess {
    BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir, extra)
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Segments of the WAL in `dir` whose header says they reuse a released file.
fn recycled_segments(dir: &std::path::Path) -> usize {
    let reader = baton_engine::wal::WalReader::open(dir).expect("the WAL verifies");
    reader.segments().iter().filter(|s| s.header.recycled).count()
}

/// The same count for a WAL a live server is writing: a segment's header is written and
/// synced before the segment gets its name, so reading the headers beside the writer is safe.
fn live_recycled_segments(dir: &std::path::Path) -> usize {
    use baton_engine::wal::segment::{list_segments, SegmentHeader};
    let segments = list_segments(dir).unwrap_or_default();
    segments
        .iter()
        .filter(|(_, path)| {
            // A segment released since the listing is simply not counted.
            std::fs::read(path).is_ok_and(|bytes| SegmentHeader::decode(&bytes, path).is_ok_and(|h| h.recycled))
        })
        .count()
}

#[test]
fn sigkill_and_restart_keep_every_acknowledged_write_and_expire_dead_sessions() {
    let dir = temp_dir();
    // Small snapshot interval and WAL segments so that recovery exercises snapshot + WAL
    // replay together, over segments that reuse files released by earlier snapshots.
    let flags = [
        "--tick-ms",
        "250",
        "--snapshot-every-entries",
        "150",
        "--wal-segment-bytes",
        "65536",
        "--max-frame-bytes",
        "16384",
    ];
    let mut server = start(dir.path(), &flags);
    let mut writer = RawClient::connect(server.addr, 500, None).expect("connect");
    let mut acknowledged = Vec::new();
    for i in 0..2000 {
        let path = format!("/k{i:04}");
        let reply = writer.create(&path, format!("value-{i}").as_bytes(), 0).expect("reply");
        assert_eq!(reply.err, 0, "create {path}");
        acknowledged.push(path);
    }
    // Segments are recycled once a snapshot has released older ones, in the background: how
    // many creates that takes depends on the build's speed. Keep writing until one has been.
    let wal = dir.path().join("wal");
    let mut i = acknowledged.len();
    while live_recycled_segments(&wal) == 0 {
        assert!(i < 40_000, "no WAL segment reused a released file after {i} creates");
        for _ in 0..200 {
            let path = format!("/k{i:05}");
            let reply = writer.create(&path, format!("value-{i}").as_bytes(), 0).expect("reply");
            assert_eq!(reply.err, 0, "create {path}");
            acknowledged.push(path);
            i += 1;
        }
    }
    let eph = writer.create("/lease", b"", 1).expect("reply");
    assert_eq!(eph.err, 0);
    // The writer's session dies with the server and is never resumed.
    server.kill();
    let recycled = recycled_segments(&dir.path().join("wal"));
    assert!(recycled > 0, "some WAL segments reuse released files");
    server.restart();
    let mut reader = RawClient::connect(server.addr, 5000, None).expect("reconnect");
    for path in &acknowledged {
        let reply = reader.exists(path).expect("reply");
        assert_eq!(reply.err, 0, "acknowledged {path} lost across SIGKILL");
    }
    // The dead session's ephemeral survives the restart until the session expires (a full
    // timeout after recovery, as ZooKeeper), then vanishes.
    let gone = wait_until(Duration::from_secs(10), || reader.exists("/lease").is_some_and(|r| r.err == -101));
    assert!(gone, "the ephemeral of an expired session is still there");
    // Restart again: still all there, and the expiry itself was durable.
    server.restart();
    let mut again = RawClient::connect(server.addr, 5000, None).expect("reconnect");
    assert_eq!(again.exists("/k1999").expect("reply").err, 0);
    assert_eq!(again.exists("/lease").expect("reply").err, -101);
}

#[test]
fn a_session_resumes_on_reconnect_with_its_password_and_not_without() {
    let dir = temp_dir();
    let server = start(dir.path(), &["--tick-ms", "500"]);
    let mut first = RawClient::connect(server.addr, 4000, None).expect("connect");
    assert_eq!(first.create("/mine", b"", 1).expect("reply").err, 0);
    let (id, passwd) = (first.session_id, first.passwd.clone());
    drop(first);
    let mut resumed = RawClient::connect(server.addr, 4000, Some((id, passwd))).expect("resume");
    assert_eq!(resumed.session_id, id);
    assert_eq!(resumed.exists("/mine").expect("reply").err, 0, "the ephemeral lives on with its session");
    assert!(RawClient::connect(server.addr, 4000, Some((id, vec![7; 16]))).is_none(), "wrong password is refused");
    assert!(RawClient::connect(server.addr, 4000, Some((0x1234, vec![0; 16]))).is_none(), "unknown session is refused");
}

#[test]
fn hostile_input_costs_only_the_offending_connection() {
    let dir = temp_dir();
    let mut server = start(dir.path(), &["--max-frame-bytes", "4096"]);
    let mut healthy = RawClient::connect(server.addr, 4000, None).expect("connect");
    assert_eq!(healthy.create("/ok", b"", 0).expect("reply").err, 0);

    // Garbage instead of a connect request.
    let mut s = TcpStream::connect(server.addr).expect("tcp");
    s.write_all(&[0x00, 0x00, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]).expect("write");
    assert!(closed_by_server(&mut s, Duration::from_secs(5)), "garbage connect must close");
    // An oversized length prefix.
    let mut s = TcpStream::connect(server.addr).expect("tcp");
    s.write_all(&0x7fff_ffffu32.to_be_bytes()).expect("write");
    assert!(closed_by_server(&mut s, Duration::from_secs(5)), "oversized frame must close");
    // A truncated frame, then the client goes away.
    let mut s = TcpStream::connect(server.addr).expect("tcp");
    s.write_all(&[0, 0, 0, 40, 1, 2]).expect("write");
    drop(s);

    let mut c = RawClient::connect(server.addr, 4000, None).expect("connect");
    // An unknown opcode gets ZooKeeper's Unimplemented error; the connection stays usable.
    let reply = c.call(9999, &[]).expect("reply");
    assert_eq!(reply.err, -6);
    // Invalid paths get ZooKeeper's codes: BadArguments, or NoNode where it looks up the
    // parent first (`/a//b`'s parent is `/a/`).
    assert_eq!(c.create("no-slash", b"", 0).expect("reply").err, -8);
    assert_eq!(c.create("//", b"", 0).expect("reply").err, -8);
    assert_eq!(c.create("/a//b", b"", 0).expect("reply").err, -101);
    // A bad version and a missing node get their codes.
    let mut w = Writer::new();
    w.string("/ok").buffer(b"x").int(42);
    assert_eq!(c.call(op::SET_DATA, &w.into_bytes()).expect("reply").err, -103);
    assert_eq!(c.exists("/missing").expect("reply").err, -101);
    // An oversized request on an established connection closes it.
    let mut big = Writer::new();
    big.string("/big").buffer(&vec![0u8; 8192]).int(0).int(0);
    assert!(c.call(op::CREATE, &big.into_bytes()).is_none(), "frame over max-frame-bytes must close");

    // A malformed body of a known opcode closes that connection (as ZooKeeper does).
    let mut d = RawClient::connect(server.addr, 4000, None).expect("connect");
    assert!(d.call(op::CREATE, &[0, 0, 0, 9, b'/']).is_none(), "truncated create must close");

    // Requests after closeSession are not served.
    let mut e = RawClient::connect(server.addr, 4000, None).expect("connect");
    assert_eq!(e.call(op::CLOSE_SESSION, &[]).expect("close reply").err, 0);
    assert!(closed_by_server(&mut e.stream, Duration::from_secs(5)));

    // Everyone else carried on, and nothing was lost.
    assert!(server.is_running());
    assert_eq!(healthy.exists("/ok").expect("reply").err, 0);
    assert_eq!(healthy.create("/after", b"", 0).expect("reply").err, 0);
}

#[test]
fn sigterm_stops_the_server_cleanly_and_a_toml_config_file_is_honoured() {
    let dir = temp_dir();
    let config = dir.path().join("baton.toml");
    std::fs::write(&config, "tick_ms = 300\nfour_letter_words = [\"ruok\", \"conf\"]\n").expect("write config");
    let config_arg = config.to_string_lossy().to_string();
    let mut server = start(&dir.path().join("data"), &["--config", &config_arg, "--max-connections", "77"]);
    let mut c = RawClient::connect(server.addr, 4000, None).expect("connect");
    assert_eq!(c.create("/before-term", b"x", 0).expect("reply").err, 0);
    let conf = four_letter(server.addr, b"conf");
    assert!(conf.contains("tickTime=300"), "the file set the tick: {conf}");
    assert!(conf.contains("baton.maxConnections=77"), "the flag set max connections: {conf}");
    assert!(four_letter(server.addr, b"srvr").contains("not in the whitelist"), "the file set the whitelist");
    let status = server.terminate(Duration::from_secs(10)).expect("exited after SIGTERM");
    assert!(status.success(), "SIGTERM exit status {status}");
    server.start_again();
    let mut c = RawClient::connect(server.addr, 4000, None).expect("connect");
    assert_eq!(c.exists("/before-term").expect("reply").err, 0);
}

#[test]
fn a_second_server_on_the_same_port_refuses_to_start() {
    let dir = temp_dir();
    let first = start(&dir.path().join("one"), &[]);
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_baton_test_server"))
        .arg("--client-addr")
        .arg(first.addr.to_string())
        .args(["--etcd-addr", "off", "--admin-addr", "off"])
        .arg("--data-dir")
        .arg(dir.path().join("two"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let exited = wait_until(Duration::from_secs(10), || matches!(second.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = second.kill();
        let _ = second.wait();
        panic!("a second server shared the client port");
    }
    assert!(!second.wait().expect("status").success(), "it must fail, not serve");
}

#[test]
fn a_port_with_another_servers_connections_in_time_wait_can_be_served() {
    // Another program (no SO_REUSEPORT) served the port and closed its side of a connection
    // first, leaving it in TIME_WAIT for a minute: Baton must still bind (SO_REUSEADDR).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(addr).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    drop(accepted);
    drop(listener);
    std::thread::sleep(Duration::from_millis(100));
    drop(client);
    let dir = temp_dir();
    let mut server = BatonProcess::start_on(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), addr, &[]);
    let mut c = RawClient::connect(server.addr, 10_000, None).expect("a client connects");
    assert_eq!(c.create("/up", b"", 0).expect("create").err, 0);
    server.kill();
}

#[test]
fn a_failed_authentication_is_answered_auth_failed_then_the_connection_closes_and_the_session_lives() {
    let dir = temp_dir();
    let server = start(dir.path(), &[]);
    let mut c = RawClient::connect(server.addr, 10_000, None).expect("connect");
    let session = (c.session_id, c.passwd.clone());
    // AuthPacket { type 0, scheme, auth } with an unknown scheme.
    let mut w = baton_server::zk::jute::Writer::new();
    w.int(0).string("nosuchscheme").buffer(b"x");
    let reply = c.call(100, &w.into_bytes()).expect("an answer, not silence");
    assert_eq!(reply.err, -115, "AuthFailed");
    assert!(baton_tests::raw::closed_by_server(&mut c.stream, Duration::from_secs(5)), "then the connection closes");
    // The session itself lives on (ZooKeeper closes the connection, not the session).
    let again = RawClient::resume(server.addr, 10_000, session);
    assert!(again.is_ok(), "the session resumes on a new connection");
}

#[test]
fn four_letter_words_dump_sessions_and_report_real_latency_in_zookeepers_format() {
    let dir = temp_dir();
    let server = start(dir.path(), &[]);
    let mut c = RawClient::connect(server.addr, 10_000, None).expect("connect");
    assert_eq!(c.create("/eph", b"x", 1).expect("reply").err, 0);
    for _ in 0..20 {
        c.exists("/eph").expect("reply");
    }
    let dump = four_letter(server.addr, b"dump");
    let session = format!("0x{:x}", c.session_id);
    assert!(dump.starts_with("SessionTracker dump:\nGlobal Sessions(1):\n"), "{dump}");
    assert!(dump.contains(&format!("{session}\t10000ms\n")), "{dump}");
    assert!(dump.contains(&format!("Sessions with Ephemerals (1):\n{session}:\n\t/eph\n")), "{dump}");
    let srvr = four_letter(server.addr, b"srvr");
    let line = srvr.lines().find(|l| l.starts_with("Latency min/avg/max: ")).expect("a latency line");
    let parts: Vec<&str> = line["Latency min/avg/max: ".len()..].split('/').collect();
    assert_eq!(parts.len(), 3, "{line}");
    assert!(parts[0].parse::<u64>().is_ok() && parts[2].parse::<u64>().is_ok(), "whole milliseconds: {line}");
    assert!(parts[1].contains('.') && parts[1].replace(['.', 'E', '-'], "").parse::<u64>().is_ok(), "{line}");
    let conf = four_letter(server.addr, b"conf");
    let keys: Vec<&str> = conf.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    let zookeepers = [
        "clientPort",
        "secureClientPort",
        "dataDir",
        "dataDirSize",
        "dataLogDir",
        "dataLogSize",
        "tickTime",
        "maxClientCnxns",
        "minSessionTimeout",
        "maxSessionTimeout",
        "clientPortListenBacklog",
        "serverId",
    ];
    assert_eq!(&keys[..zookeepers.len()], &zookeepers, "ZooKeeper's keys in its order:\n{conf}");
    assert!(conf.contains("serverId=0\n"), "standalone: {conf}");
}

#[test]
fn connections_beyond_max_client_cnxns_from_one_address_are_refused_and_others_carry_on() {
    let dir = temp_dir();
    let server = start(dir.path(), &["--max-client-cnxns", "3"]);
    let three: Vec<RawClient> =
        (0..3).map(|_| RawClient::connect(server.addr, 10_000, None).expect("within the limit")).collect();
    let mut fourth = TcpStream::connect(server.addr).expect("tcp");
    assert!(closed_by_server(&mut fourth, Duration::from_secs(5)), "the fourth from one address is refused");
    assert!(server.log_tail(50).contains("Too many connections from /127.0.0.1 - max is 3"), "ZooKeeper's words");
    // One closes: room for another.
    drop(three);
    let end = Instant::now() + Duration::from_secs(10);
    let again = loop {
        if let Some(c) = RawClient::connect(server.addr, 10_000, None) {
            break c;
        }
        assert!(Instant::now() < end, "a connection is admitted once others closed");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(again);
    assert!(four_letter(server.addr, b"conf").contains("maxClientCnxns=3\n"));
}

#[test]
fn the_readme_command_serves_zookeeper_on_2181_etcd_on_2379_and_admin_http_on_8080_with_data_in_baton_data() {
    use std::io::{BufRead, BufReader};
    let dir = temp_dir();
    // `cargo run --release -p baton-server` with no arguments, in a fresh directory.
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_baton_test_server"))
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn baton with no arguments");
    let stdout = server.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = Vec::new();
    while !said.iter().any(|l: &String| l.contains("serving ZooKeeper clients")) {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => said.push(line),
            Err(_) => {
                let _ = server.kill();
                let _ = server.wait();
                panic!("baton did not start (are ports 2181, 2379 and 8080 free?): {said:?}");
            }
        }
    }
    assert!(said.iter().any(|l| l.contains("serving etcd v3 clients on 127.0.0.1:2379")), "{said:?}");
    assert!(said.iter().any(|l| l.contains("admin HTTP (/metrics, /commands, /health, /ready) on 127.0.0.1:8080")));
    let ready = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:8080").expect("the admin port");
        s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("ask");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        answer
    };
    assert!(ready.starts_with("HTTP/1.1 200") && ready.contains("\"ready\": true"), "{ready}");
    let zk = "127.0.0.1:2181".parse().expect("an address");
    assert_eq!(four_letter(zk, b"ruok"), "imok");
    let (put, out) = baton_tests::clients::etcdctl("127.0.0.1:2379", &["put", "readme", "yes"], "");
    assert!(put, "{out}");
    let (got, out) = baton_tests::clients::etcdctl("127.0.0.1:2379", &["get", "readme", "--print-value-only"], "");
    assert!(got && out == "yes\n", "{out}");
    assert!(dir.path().join("baton-data").join("wal").is_dir(), "data in ./baton-data");
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert!(wait_until(Duration::from_secs(20), || matches!(server.try_wait(), Ok(Some(_)))), "SIGTERM stops it");
    let _ = server.wait();
}
