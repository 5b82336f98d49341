//! Operations against a real `baton` process: the admin HTTP server (ZooKeeper's admin
//! commands compared key by key with ZooKeeper 3.8's own answers in
//! `tests/zookeeper-3.8-admin/`, `/metrics` checked by Prometheus's `promtool`, `/health`,
//! `/ready`), `--check-config`, and log lines fit for files.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use baton_tests::clients::{http_get as get, http_json as get_json};
use baton_tests::raw::RawClient;
use baton_tests::server::{free_port, BatonProcess};
use baton_tests::temp_dir;
use serde_json::Value;

const EPHEMERAL: i32 = 1;

/// ZooKeeper 3.8's answer to a command (captured by `tests/zookeeper-3.8-admin/capture.sh`).
fn zookeepers(command: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("zookeeper-3.8-admin/{command}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("ZooKeeper's JSON")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every key of `ours` is one of `theirs`, with a value of the same JSON type (compared inside
/// objects, and inside the first element of arrays both have). Not their order: ZooKeeper's
/// is that of Java's reflection and hash maps, and differs between its own runs (`uptime`
/// moved from fifth to last in `server_stats` between two captures).
fn same_keys(at: &str, ours: &Value, theirs: &Value) {
    // Objects keyed by data (session ids, paths): compare one entry's value with one of theirs.
    let data_keyed = |m: &serde_json::Map<String, Value>| {
        !m.is_empty() && m.keys().all(|k| k.starts_with('/') || k.parse::<i64>().is_ok())
    };
    match (ours, theirs) {
        (Value::Object(o), Value::Object(t)) if data_keyed(t) => {
            if let (Some(o), Some(t)) = (o.values().next(), t.values().next()) {
                assert_eq!(kind(o), kind(t), "{at}: {o} against ZooKeeper's {t}");
                same_keys(&format!("{at}[*]"), o, t);
            }
        }
        (Value::Object(o), Value::Object(t)) => {
            for (key, value) in o {
                let Some(theirs) = t.get(key) else {
                    panic!("{at}: ZooKeeper has no key {key:?} (it has {:?})", t.keys().collect::<Vec<_>>())
                };
                // A null is ZooKeeper's "no error"; an empty collection says nothing of types.
                if !theirs.is_null() {
                    assert_eq!(kind(value), kind(theirs), "{at}.{key}: {value} against ZooKeeper's {theirs}");
                }
                same_keys(&format!("{at}.{key}"), value, theirs);
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            if let (Some(o), Some(t)) = (o.first(), t.first()) {
                same_keys(&format!("{at}[0]"), o, t);
            }
        }
        _ => {}
    }
}

#[test]
fn the_admin_server_answers_zookeepers_commands_with_zookeepers_keys() {
    let dir = temp_dir();
    let port = free_port();
    let admin = SocketAddr::from(([127, 0, 0, 1], port));
    let flag = admin.to_string();
    let server = BatonProcess::start(
        env!("CARGO_BIN_EXE_baton_test_server"),
        dir.path(),
        &["--admin-addr", &flag, "--four-letter-words", "srvr,srst,crst"],
    );
    // Much as ZooKeeper's reference run: nodes with data, an ephemeral, two watches.
    let mut c = RawClient::connect(server.addr, 30_000, None).expect("connect");
    assert_eq!(c.create("/a", b"x", 0).expect("create").err, 0);
    assert_eq!(c.create("/a/b", b"yy", 0).expect("create").err, 0);
    assert_eq!(c.create("/a/eph", b"", EPHEMERAL).expect("create").err, 0);
    c.get_data("/a", true).expect("a data watch");
    c.get_data("/a/b", true).expect("another");

    assert_eq!(get_json(admin, "/health")["status"], "ok");
    let ready = get_json(admin, "/ready");
    assert_eq!((ready["ready"].as_bool(), ready["state"].as_str()), (Some(true), Some("standalone")), "{ready}");
    let (status, _, index) = get(admin, "/commands");
    assert_eq!(status, 200);
    let listed: Vec<&str> =
        index.lines().filter_map(|l| l.strip_prefix("<a href=\"/commands/")?.split('"').next()).collect();
    assert!(listed.len() >= 12 && listed.contains(&"monitor") && listed.contains(&"server_stats"), "{index}");
    for name in &listed {
        let ours = get_json(admin, &format!("/commands/{name}"));
        assert_eq!(ours["command"], *name, "{ours}");
        same_keys(name, &ours, &zookeepers(name));
    }
    // Aliases answer as their command; names are matched exactly, as ZooKeeper does.
    let monitor = get_json(admin, "/commands/mntr");
    assert_eq!(monitor["command"], "monitor");
    assert_eq!(monitor["znode_count"], 7, "/, /zookeeper, /zookeeper/config, /zookeeper/quota and three: {monitor}");
    assert_eq!(monitor["ephemerals_count"], 1);
    assert_eq!(monitor["server_state"], "standalone");
    assert_eq!(get_json(admin, "/commands/isro")["read_only"], false);
    let unknown = get_json(admin, "/commands/RUOK");
    assert_eq!(unknown, serde_json::json!({ "command": "RUOK", "error": "Unknown command: RUOK" }));
    let dump = get_json(admin, "/commands/dump");
    let paths: Vec<&Value> = dump["session_id_to_ephemeral_paths"].as_object().expect("sessions").values().collect();
    assert_eq!(paths, [&serde_json::json!(["/a/eph"])], "{dump}");
    let summary = get_json(admin, "/commands/wchs");
    assert_eq!(summary["num_total_watches"], 2, "{summary}");
    let stats = get_json(admin, "/commands/stat");
    assert_eq!(stats["connections"].as_array().map(Vec::len), Some(1), "{stats}");
    assert_eq!(stats["server_stats"]["server_state"], "standalone");
    assert_eq!(get_json(admin, "/commands/lead")["error"], "server is not initialized", "standalone");
    // Watches from every shard, by session and by path.
    let by_session = get_json(admin, "/commands/wchc");
    let watched: Vec<&Value> =
        by_session["session_id_to_watched_paths"].as_object().expect("sessions").values().collect();
    assert_eq!(watched, [&serde_json::json!(["/a", "/a/b"])], "{by_session}");
    let by_path = get_json(admin, "/commands/watches_by_path");
    let paths: Vec<&String> = by_path["path_to_session_ids"].as_object().expect("paths").keys().collect();
    assert_eq!(paths, ["/a", "/a/b"], "{by_path}");
    // connection_stat_reset starts the connection's counts over; stat_reset the server's.
    // (The loop above ran both once: a request since.)
    c.get_data("/a", false).expect("a read");
    assert!(get_json(admin, "/commands/cons")["connections"][0]["packets_received"].as_u64() > Some(0));
    assert_eq!(get_json(admin, "/commands/crst")["error"], Value::Null);
    assert_eq!(get_json(admin, "/commands/cons")["connections"][0]["packets_received"], 0);
    assert!(get_json(admin, "/commands/srvr")["server_stats"]["packets_received"].as_u64() > Some(0));
    get_json(admin, "/commands/srst");
    assert_eq!(get_json(admin, "/commands/srvr")["server_stats"]["packets_received"], 0);
    assert_eq!(get_json(admin, "/commands/stmk?traceMask=0")["tracemask"], 0);
    assert_eq!(get_json(admin, "/commands/gtmk")["tracemask"], 0);
    // The same two resets as four-letter words, answered in ZooKeeper's words.
    c.get_data("/a", false).expect("a read");
    assert_eq!(baton_tests::raw::four_letter(server.addr, b"srst"), "Server stats reset.\n");
    assert_eq!(get_json(admin, "/commands/srvr")["server_stats"]["packets_received"], 0);
    assert_eq!(baton_tests::raw::four_letter(server.addr, b"crst"), "Connection stats reset.\n");
    assert_eq!(get_json(admin, "/commands/cons")["connections"][0]["packets_received"], 0);
    let snapshot = get_json(admin, "/commands/lsnp");
    assert!(snapshot["zxid"].is_string() && snapshot["timestamp"].is_i64(), "{snapshot}");
}

#[test]
fn metrics_pass_promtool_and_count_what_clients_did() {
    let dir = temp_dir();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let flag = admin.to_string();
    let etcd = format!("127.0.0.1:{}", free_port());
    let server = BatonProcess::start(
        env!("CARGO_BIN_EXE_baton_test_server"),
        dir.path(),
        &["--admin-addr", &flag, "--etcd-addr", &etcd],
    );
    // Before any etcd request its family is empty, and left out without the ones after it.
    let first = get(admin, "/metrics").2;
    assert!(!first.contains("grpc_server_handled_total") && first.contains("baton_shard_connections{"), "{first}");
    let mut c = RawClient::connect(server.addr, 30_000, None).expect("connect");
    for i in 0..5 {
        assert_eq!(c.create(&format!("/m{i}"), b"v", 0).expect("create").err, 0);
    }
    c.get_data("/m0", false).expect("read");
    assert_eq!(c.create("/m0", b"v", 0).expect("create").err, -110, "NodeExists");
    let (put, said) = baton_tests::clients::etcdctl(&etcd, &["put", "k", "v"], "");
    assert!(put, "{said}");
    let (refused, _) = baton_tests::clients::etcdctl(&etcd, &["get", "k", "--rev", "99"], "");
    assert!(!refused, "a revision in the future is refused (OutOfRange)");
    // The replica's counters are published a few times a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (status, content_type, text) = loop {
        let scraped = get(admin, "/metrics");
        // Every write here has committed, and been published (with the replica's counters).
        let commits = scraped.2.lines().find_map(|l| l.strip_prefix("baton_commit_latency_seconds_count "));
        if scraped.2.contains("baton_fdatasync_seconds_count ")
            && !scraped.2.contains("baton_fdatasync_seconds_count 0\n")
            && commits.and_then(|n| n.parse::<u64>().ok()) >= Some(7)
        {
            break scraped;
        }
        assert!(std::time::Instant::now() < deadline, "no fdatasync counted: {}", scraped.2);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let value = |sample: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '));
        let line = line.unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
    };
    assert_eq!(value("znodes"), 9.0, "four of the server's own and five");
    assert_eq!(value("baton_zk_requests_total{op=\"create\"}"), 6.0, "five and one refused");
    assert_eq!(value("baton_zk_requests_total{op=\"getData\"}"), 1.0);
    assert_eq!(value("baton_server_state{state=\"standalone\"}"), 1.0);
    // Replies by result, and etcd's requests by RPC and status, as etcd names them.
    assert_eq!(value("baton_zk_replies_total{result=\"OK\"}"), 6.0, "{text}");
    assert_eq!(value("baton_zk_replies_total{result=\"NODEEXISTS\"}"), 1.0);
    let handled = |method: &str, code: &str| {
        text.lines().any(|l| {
            l.starts_with("grpc_server_handled_total{")
                && l.contains(&format!("grpc_method=\"{method}\""))
                && l.contains(&format!("grpc_code=\"{code}\""))
                && l.ends_with(" 1")
        })
    };
    assert!(handled("Put", "OK") && handled("Range", "OutOfRange"), "{text}");
    // Families after the learners' (empty on a standalone server) are there too.
    assert_eq!(value("baton_looking_total"), 0.0, "{text}");
    assert!(value("baton_request_latency_seconds_count") >= 6.0, "{text}");
    assert!(value("baton_wal_entries_durable_total") >= 5.0);
    assert!(value("baton_request_latency_seconds_bucket{le=\"+Inf\"}") >= 6.0);
    assert!(value("baton_wal_batch_entries_sum") >= 5.0, "every create was logged in some batch");
    assert!(value("baton_wal_written_bytes_total") > 0.0);
    assert!(value("baton_fdatasync_seconds_sum") > 0.0, "fdatasyncs take time");
    // The session, five creates and the etcd put committed (the refused create did not).
    assert_eq!(value("baton_commit_latency_seconds_count"), 7.0, "{text}");
    assert!(value("baton_commit_latency_seconds_sum") > 0.0);
    // Prometheus's own checker (Debian's `prometheus` package; tests/run-all.sh installs it).
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) runs");
    promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool ends");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn readiness_waits_for_a_leader_while_health_answers_at_once() {
    // One voter of a two-voter ensemble whose other member never comes: alive, not ready.
    let dir = temp_dir();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (p1, p2) = (free_port(), free_port());
    let peers = format!("1=127.0.0.1:{p1},2=127.0.0.1:{p2}");
    let flag = admin.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton_test_server"))
        .args(["--client-addr", &format!("127.0.0.1:{}", free_port()), "--etcd-addr", "off"])
        .args(["--admin-addr", &flag, "--server-id", "1", "--peer", &peers])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let health = loop {
        if let Ok(stream) = TcpStream::connect(admin) {
            drop(stream);
            break get(admin, "/health");
        }
        assert!(std::time::Instant::now() < deadline, "the admin port never opened");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ready = get(admin, "/ready");
    let leader = get(admin, "/commands/leader");
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert_eq!(health.0, 200, "{health:?}");
    assert_eq!(ready.0, 503, "{ready:?}");
    assert!(ready.2.contains("\"looking\""), "{ready:?}");
    assert!(leader.2.contains("server is not initialized"), "{leader:?}");
}

/// Runs `baton ARGS` to its end: (exit code, stdout, stderr).
fn baton(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton_test_server")).args(args).output().expect("run baton");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn check_config_validates_a_file_and_names_the_key_and_value_it_refuses() {
    let dir = temp_dir();
    let file = dir.path().join("baton.toml");
    let path = file.to_str().expect("a UTF-8 path");
    std::fs::write(&file, "tick_ms = 500\nadmin_addr = \"off\"\n").expect("write");
    let (code, out, err) = baton(&["--check-config", "--config", path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the configuration is valid") && out.contains("tick_ms: 500"), "{out}");
    std::fs::write(&file, "tick_ms = \"soon\"\n").expect("write");
    let (code, _, err) = baton(&["--check-config", "--config", path]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("key tick_ms = \"soon\"") && err.contains(path), "{err}");
    std::fs::write(&file, "no_such_setting = 1\n").expect("write");
    let (code, _, err) = baton(&["--check-config", "--config", path]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("key no_such_setting"), "{err}");
    // Settings that parse but do not fit together.
    let (code, _, err) = baton(&["--check-config", "--server-id", "3", "--peer", "1=127.0.0.1:1,2=127.0.0.1:2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--server-id 3 is not among the --peer entries"), "{err}");
}

#[test]
fn logs_are_json_lines_on_request_and_plain_text_without_colours_in_a_file() {
    let dir = temp_dir();
    // An admin port already taken: each server logs an error (and serves without it), so
    // both logs have at least that line.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr").to_string();
    let bin = env!("CARGO_BIN_EXE_baton_test_server");
    let json = BatonProcess::start(bin, &dir.path().join("json"), &["--log-format", "json", "--admin-addr", &taken]);
    let text = BatonProcess::start(bin, &dir.path().join("text"), &["--admin-addr", &taken]);
    let json_log = std::fs::read_to_string(json.log_path()).expect("the JSON log");
    // Every line but the test build's own note of its failpoints (not a log line).
    let lines: Vec<&str> =
        json_log.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("failpoints now:")).collect();
    assert!(!lines.is_empty(), "the server logged something");
    for line in &lines {
        let object: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(object["level"].is_string() && object["fields"].is_object(), "{line}");
    }
    assert!(json_log.contains("the admin server could not start"), "{json_log}");
    let text_log = std::fs::read_to_string(text.log_path()).expect("the text log");
    assert!(text_log.contains("the admin server could not start"), "{text_log}");
    assert!(!text_log.contains('\u{1b}'), "no terminal escapes in a file: {text_log:?}");
}

#[test]
fn a_flood_of_bad_frames_costs_a_log_line_a_second_per_shard_and_nothing_else() {
    let dir = temp_dir();
    let server = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), &["--cores", "2"]);
    let started = std::time::Instant::now();
    for _ in 0..300 {
        // A length prefix far over jute.maxbuffer: the connection is refused.
        let mut s = TcpStream::connect(server.addr).expect("connect");
        s.write_all(&0x7fff_ffffu32.to_be_bytes()).expect("send");
        let _ = s.read(&mut [0u8; 16]);
    }
    // Every other client carries on.
    assert_eq!(baton_tests::raw::four_letter(server.addr, b"ruok"), "imok");
    let mut c = RawClient::connect(server.addr, 30_000, None).expect("connect");
    assert_eq!(c.create("/still", b"", 0).expect("create").err, 0);
    let seconds = started.elapsed().as_secs() + 1;
    let log = std::fs::read_to_string(server.log_path()).expect("the log");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("refusing an oversized or malformed frame")).collect();
    assert!(!lines.is_empty(), "the refusals are logged: {log}");
    assert!(lines.len() as u64 <= 2 * seconds, "at most a line a second per shard, not one per refusal: {lines:#?}");
}
