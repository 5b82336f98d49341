//! The third-party clients the compatibility tests drive: Debian's zkCli (ZooKeeper 3.8's
//! own Java client), kazoo scripts, Debian's etcdctl (etcd 3.4's) and python-etcd3 scripts.
//! `tests/run-all.sh`
//! installs them; without them the tests fail, they do not skip.

use std::io::Write;
use std::process::{Command, Stdio};

/// Debian's zkCli.
pub const ZKCLI: &str = "/usr/share/zookeeper/bin/zkCli.sh";

/// Runs zkCli against `connect` with `script` on its stdin and `env` set (e.g.
/// `CLIENT_JVMFLAGS` for a JAAS file); returns what it printed, stdout then stderr (query
/// results go to stdout, "Created ..." lines and watch events to stderr).
pub fn zkcli(connect: &str, script: &str, env: &[(&str, &str)]) -> String {
    zkcli_args(&["-server", connect], script, env)
}

/// As [`zkcli`], with zkCli's own arguments (`-r` for a read-only client, `-server HOSTS`).
pub fn zkcli_args(args: &[&str], script: &str, env: &[(&str, &str)]) -> String {
    let mut child = Command::new("timeout")
        .args(["60", ZKCLI])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run zkCli.sh (tests/run-all.sh installs Debian's zookeeper package)");
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write script");
    let out = child.wait_with_output().expect("zkCli output");
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs the kazoo script `tests/kazoo/<name>` with `args` (at most two minutes); returns
/// whether it succeeded and what it printed.
pub fn kazoo(name: &str, args: &[&str]) -> (bool, String) {
    let script = format!("{}/kazoo/{name}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3 (is kazoo installed? tests/run-all.sh installs it)");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

/// Runs Debian's `etcdctl` (API v3) against `endpoint` with `args` and `stdin` (at most a
/// minute); returns whether it succeeded and what it printed, stdout then stderr.
pub fn etcdctl(endpoint: &str, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("timeout")
        .args(["60", "etcdctl", "--endpoints", endpoint])
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl (tests/run-all.sh installs Debian's etcd-client package)");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("etcdctl output");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

/// Runs the python-etcd3 script `tests/etcd3/<name>` with `args` (at most two minutes);
/// returns whether it succeeded and what it printed. (python-etcd3's generated modules
/// predate protobuf 4, hence the pure-Python protobuf.)
pub fn python_etcd3(name: &str, args: &[&str]) -> (bool, String) {
    let script = format!("{}/etcd3/{name}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(script)
        .args(args)
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .output()
        .expect("run python3 (is etcd3 installed? tests/run-all.sh installs it)");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

/// A plain HTTP/1.1 GET (the admin server's API): (status, content type, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers, then a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// An admin command's JSON answer (or another JSON resource), asserting a 200 with JSON.
pub fn http_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let (status, content_type, body) = http_get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(content_type, "application/json", "{path}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// The Grafana dashboard (`server/dashboards/baton.json`): every query is valid PromQL (as
/// promtool checks a recording rule) and every metric it names is one `/metrics` serves (a
/// leader's: it has learners).
pub fn dashboard_queries_parse_and_name_served_metrics(metrics: &str, rules: &std::path::Path) {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../server/dashboards/baton.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard")).expect("JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("an expr").replace("$job", ".*").replace("$instance", ".*"))
        .collect();
    assert!(exprs.len() >= 16, "{exprs:?}");
    for expr in &exprs {
        // Each metric is written NAME{job=~"…", instance=~"…"}.
        for piece in expr.split("{job=~").take(expr.matches("{job=~").count()) {
            let name: String = piece
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            // A sample, or (a learner's lag on a server with no learners) the family's type.
            let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(
                metrics.lines().any(|l| l.starts_with(&name) && l[name.len()..].starts_with([' ', '{']))
                    || metrics.lines().any(|l| l.starts_with(&format!("# TYPE {family} "))),
                "the dashboard's {name} is not served (in {expr})"
            );
        }
    }
    // JSON is YAML: a rule file of one recording rule per query.
    let rules_json = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": exprs.iter().enumerate()
        .map(|(i, e)| serde_json::json!({ "record": format!("baton:dashboard:{i}"), "expr": e })).collect::<Vec<_>>() }] });
    std::fs::write(rules, rules_json.to_string()).expect("write the rules");
    let checked =
        std::process::Command::new("promtool").args(["check", "rules"]).arg(rules).output().expect("promtool runs");
    assert!(
        checked.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
