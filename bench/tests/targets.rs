//! baton-bench against real servers: every workload runs briefly against Baton, Apache
//! ZooKeeper 3.8 and etcd 3.4 (Debian's `zookeeper` and `etcd-server`, which the test
//! command installs), and must exit cleanly with a well-formed result. The bench itself
//! checks afterwards that the counted writes happened (and fails otherwise).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process (and its children) killed by process group when dropped.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child's process group.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Server {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("start server");
    Server { child }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn wait_for(addr: SocketAddr, what: &str, log: &Path) {
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start on {addr}: {}", std::fs::read_to_string(log).unwrap_or_default());
}

fn temp_dir() -> tempfile::TempDir {
    let parent = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-tmp");
    std::fs::create_dir_all(&parent).expect("test dir");
    tempfile::tempdir_in(parent).expect("temp dir")
}

/// Runs baton-bench and returns its result line, checking it is well-formed.
fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_baton-bench"))
        .args(args)
        .args(["--seconds", "0.5", "--clients", "3", "--depth", "2"])
        .output()
        .expect("run baton-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "baton-bench {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().last().unwrap_or_default().to_string();
    let ops: f64 = line
        .split("ops/s")
        .next()
        .and_then(|head| head.rsplit(':').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ops/s in {line:?}"));
    assert!(ops > 0.0, "no operations counted: {line}");
    for p in ["p50", "p99", "p99.9", "max"] {
        assert!(line.contains(p), "{p} missing from {line}");
    }
    line
}

const WORKLOADS: [&str; 7] = ["write", "read", "mixed", "create-delete", "sessions", "lock", "watch-fanout"];

/// An open-loop run with JSON output: the record must be there and say what ran.
fn open_loop_json(protocol: &str, target: &str) {
    let dir = temp_dir();
    let json = dir.path().join("results.jsonl");
    let json_arg = json.to_string_lossy().to_string();
    let line = bench(&[protocol, "--target", target, "--workload", "read", "--rate", "400", "--json", &json_arg]);
    assert!(line.contains("open-loop rate=400"), "{line}");
    let text = std::fs::read_to_string(&json).expect("JSON written");
    let record: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
    assert_eq!(record["workload"].as_str().map(|w| w.starts_with("Read")), Some(true), "{record}");
    let rate = record["ops_per_sec"].as_f64().unwrap_or(0.0);
    // A fixed schedule of 400/s: the measured rate is near it, not the closed-loop maximum.
    assert!((200.0..=600.0).contains(&rate), "open loop ran at {rate}/s: {record}");
}

fn zk_workloads(target: &str) {
    for (i, workload) in WORKLOADS.into_iter().enumerate() {
        let line = bench(&["zk", "--target", target, "--workload", workload]);
        println!("{line}");
        // The first four run on the wire driver by default; the crate's driver runs them too.
        if i < 4 {
            assert!(line.contains("driver=wire"), "{line}");
            let line = bench(&["zk", "--target", target, "--workload", workload, "--driver", "crate"]);
            assert!(line.contains("driver=crate"), "{line}");
        }
    }
    open_loop_json("zk", target);
    let out = Command::new(env!("CARGO_BIN_EXE_baton-bench"))
        .args(["zk", "--target", target, "--workload", "fill", "--count", "300", "--clients", "2", "--depth", "4"])
        .output()
        .expect("run fill");
    assert!(out.status.success(), "fill failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("created 300 znodes"));
}

#[test]
fn every_zookeeper_workload_runs_against_baton() {
    let dir = temp_dir();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = baton_server::config::ServerConfig::for_test(addr, dir.path().join("data"));
    baton_engine::sys::raise_memlock_limit();
    // In-process: the server's threads end with the test process.
    std::thread::spawn(move || baton_server::startup::run(config, |_| {}));
    wait_for(addr, "baton", &dir.path().join("none"));
    zk_workloads(&addr.to_string());
}

#[test]
fn every_zookeeper_workload_runs_against_zookeeper() {
    let script = Path::new("/usr/share/zookeeper/bin/zkServer.sh");
    assert!(script.exists(), "Debian's zookeeper package is needed (tests/run-all.sh installs it)");
    let dir = temp_dir();
    let port = free_port();
    let cfg = dir.path().join("zoo.cfg");
    std::fs::write(
        &cfg,
        format!(
            "tickTime=2000\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\nforceSync=yes\n",
            dir.path().join("data").display()
        ),
    )
    .expect("zoo.cfg");
    let log = dir.path().join("zk.log");
    let _zk = spawn(Command::new(script).arg("start-foreground").arg(&cfg).env("ZOO_LOG_DIR", dir.path()), &log);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_for(addr, "zookeeper", &log);
    zk_workloads(&addr.to_string());
}

#[test]
fn every_etcd_workload_runs_against_etcd() {
    let dir = temp_dir();
    let (client, peer) = (free_port(), free_port());
    let log = dir.path().join("etcd.log");
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let _etcd = spawn(
        Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")]),
        &log,
    );
    let addr: SocketAddr = format!("127.0.0.1:{client}").parse().expect("addr");
    wait_for(addr, "etcd", &log);
    let target = addr.to_string();
    for workload in WORKLOADS {
        println!("{}", bench(&["etcd", "--target", &target, "--workload", workload]));
    }
    println!("{}", bench(&["etcd", "--target", &target, "--workload", "read", "--serializable"]));
    open_loop_json("etcd", &target);
}

/// Runs `baton-bench compare` with `args` at a light load (2 clients × 2 in flight, ports
/// from `base`, report in `out`); asserts it succeeded and returns its stdout and the
/// `results.json` it wrote.
fn compare(args: &[&str], base: u16, out: &std::path::Path) -> (String, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_baton-bench"))
        .arg("compare")
        .args(args)
        .args(["--clients", "2", "--depth", "2", "--base-port", &base.to_string(), "--out"])
        .arg(out)
        .output()
        .expect("run compare");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "compare failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    let json =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("results.json")).expect("JSON");
    (stdout, json)
}

/// Asserts nothing accepts connections on 127.0.0.1 at `ports` any more, after `what` ran.
/// (A SIGKILLed glommio process's listener can accept for a moment while the kernel tears
/// down its io_uring instance: each port gets 5 s.)
fn assert_ports_free(ports: std::ops::Range<u16>, what: &str) {
    for port in ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            assert!(std::time::Instant::now() < end, "port {port} still served after {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn compare_starts_zookeeper_and_etcd_and_writes_a_report() {
    let dir = temp_dir();
    let out = dir.path().join("report");
    // Below Linux's ephemeral range (32768+), where the other tests' free ports and every
    // outgoing connection's local port come from.
    let base = 20_000 + (std::process::id() % 1000) as u16 * 10;
    let args = ["--targets", "zookeeper,etcd", "--workloads", "write,read", "--seconds", "0.5"];
    let (stdout, json) = compare(&args, base, &out);
    assert!(stdout.contains("fdatasync p50"), "the machine report: {stdout}");
    let results = json["results"].as_array().expect("results");
    assert_eq!(results.len(), 4, "2 targets x 2 workloads: {json}");
    for r in results {
        assert!(r["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    }
    for svg in ["throughput.svg", "latency-write.svg", "latency-read.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).expect("plot written");
        assert!(text.starts_with("<svg") && text.ends_with("</svg>"), "{svg}");
    }
    // Everything it started is stopped: the ports are free again.
    assert_ports_free(base..base + 20, "compare");
}

#[test]
fn compare_runs_a_baton_ensemble_and_measures_a_leader_failover() {
    let dir = temp_dir();
    let out = dir.path().join("report");
    let base = 21_000 + (std::process::id() % 1000) as u16 * 10;
    let server = env!("CARGO_BIN_EXE_baton-bench-server");
    let args = ["--targets", "baton3", "--workloads", "write,failover", "--seconds", "0.5", "--baton", server];
    let (_, json) = compare(&args, base, &out);
    let results = json["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "one write run: {json}");
    assert!(results[0]["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{json}");
    let failover = &json["failover"][0]["result"];
    assert_eq!(failover["resumed"], 8, "every kazoo writer resumed after the leader's kill: {json}");
    assert!(failover["first_s"].as_f64().is_some_and(|s| s > 0.0), "{json}");
    // Everything it started is stopped.
    assert_ports_free(base..base + 10, "compare");
}

/// `baton-tls`: Baton with TLS alone on its ZooKeeper port, which the wire driver reaches
/// through rustls with the CA `compare` made (the plain port is off, so nothing else could
/// have answered).
#[test]
fn compare_drives_baton_over_tls_beside_plaintext() {
    let dir = temp_dir();
    let out = dir.path().join("report");
    let base = 23_000 + (std::process::id() % 1000) as u16 * 10;
    let server = env!("CARGO_BIN_EXE_baton-bench-server");
    let args = ["--targets", "baton,baton-tls", "--workloads", "write,read", "--seconds", "0.5", "--baton", server];
    let (_, json) = compare(&args, base, &out);
    let results = json["results"].as_array().expect("results");
    assert_eq!(results.len(), 4, "2 targets x 2 workloads: {json}");
    for r in results {
        assert!(r["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    }
    assert!(results.iter().any(|r| r["target"] == "baton-tls"), "{json}");
    assert!(out.join("baton-tls/certs/ca.pem").exists(), "the CA the load trusted");
    assert_ports_free(base..base + 40, "compare");
}

#[test]
fn sweep_compares_two_targets_at_several_loads_and_reports_peak_against_peak() {
    let dir = temp_dir();
    let out = dir.path().join("sweep");
    let base = 22_000 + (std::process::id() % 1000) as u16 * 10;
    let output = Command::new(env!("CARGO_BIN_EXE_baton-bench"))
        .args(["sweep", "--target", "baton", "--against", "zookeeper", "--workload", "write"])
        .args(["--loads", "2x1,2x4", "--reps", "2", "--seconds", "0.5", "--base-port", &base.to_string()])
        // The server package's `baton` is not built for this crate's tests; this one is.
        .args(["--baton", env!("CARGO_BIN_EXE_baton-bench-server"), "--out"])
        .arg(&out)
        .output()
        .expect("run sweep");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "sweep failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("peak against peak"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).expect("sweep.json")).expect("JSON");
    let loads = json["loads"].as_array().expect("loads");
    assert_eq!(loads.len(), 2, "{json}");
    for load in loads {
        for key in ["target_ops", "against_ops"] {
            let runs = load[key].as_array().expect("runs");
            assert_eq!(runs.len(), 2, "one result per repetition: {json}");
            assert!(runs.iter().all(|v| v.as_f64().unwrap_or(0.0) > 0.0), "{json}");
        }
    }
    assert!(json["peak_ratio_median"].as_f64().is_some_and(|r| r > 0.0), "{json}");
    assert_eq!(json["peaks"].as_array().map(Vec::len), Some(2), "{json}");
    let svg = std::fs::read_to_string(out.join("sweep.svg")).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    // Each run's report is kept; the servers' data directories are not.
    let run = out.join("rep1-2x1");
    assert!(run.join("results.json").exists() && run.join("compare.log").exists());
    assert!(std::fs::read_dir(&run).expect("run dir").flatten().all(|e| !e.path().is_dir()), "data left in {run:?}");
    assert_ports_free(base..base + 20, "sweep");
}
