//! `baton-bench compare`: starts each target on 127.0.0.1 (Baton, ZooKeeper 3.8 and etcd
//! 3.4 from Debian's packages, single node or three nodes), runs the chosen workloads
//! against each in turn with the same load, stops everything it started, and reports a
//! side-by-side table with ratios, JSON, and SVG plots — with the machine it ran on.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::load::{Load, Outcome};

/// A server setup to compare.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum Target {
    /// One Baton server.
    Baton,
    /// One Baton server with TLS alone on its ZooKeeper port (the wire driver over rustls).
    BatonTls,
    /// A three-server Baton ensemble.
    Baton3,
    /// A three-server Baton ensemble with two observers (clients spread over all five).
    Baton3Observers,
    /// Standalone ZooKeeper 3.8.
    Zookeeper,
    /// A three-server ZooKeeper 3.8 ensemble.
    Zookeeper3,
    /// A single etcd 3.4 member.
    Etcd,
    /// A three-member etcd 3.4 cluster.
    Etcd3,
    /// One Baton server driven through its etcd v3 port (the etcd driver).
    BatonEtcd,
    /// A three-server Baton ensemble driven through its etcd v3 ports.
    BatonEtcd3,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Baton => "baton",
            Target::BatonTls => "baton-tls",
            Target::Baton3 => "baton x3",
            Target::Baton3Observers => "baton x3+2obs",
            Target::Zookeeper => "zookeeper",
            Target::Zookeeper3 => "zookeeper x3",
            Target::Etcd => "etcd",
            Target::Etcd3 => "etcd x3",
            Target::BatonEtcd => "baton-etcd",
            Target::BatonEtcd3 => "baton-etcd x3",
        }
    }

    fn is_baton(self) -> bool {
        matches!(
            self,
            Target::Baton
                | Target::BatonTls
                | Target::Baton3
                | Target::Baton3Observers
                | Target::BatonEtcd
                | Target::BatonEtcd3
        )
    }

    /// Driven through etcd's API (etcd itself, or Baton's etcd front).
    fn is_etcd(self) -> bool {
        matches!(self, Target::Etcd | Target::Etcd3 | Target::BatonEtcd | Target::BatonEtcd3)
    }
}

/// `baton-bench compare`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Targets, in the order they run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "baton,zookeeper,etcd")]
    pub targets: Vec<Target>,
    /// Workloads (names as `zk --workload`; etcd runs its counterparts).
    #[arg(long, value_delimiter = ',', default_value = "write,read,create-delete")]
    pub workloads: Vec<String>,
    #[command(flatten)]
    pub load: Load,
    /// Directory for results.json, the SVG plots and the servers' data and logs.
    #[arg(long, default_value = "compare-results")]
    pub out: PathBuf,
    /// The baton binary (default: beside this one, then on PATH).
    #[arg(long)]
    pub baton: Option<PathBuf>,
    /// First of the 127.0.0.1 ports the servers use (20 per target, from here).
    #[arg(long, default_value_t = 24100)]
    pub base_port: u16,
}

/// Processes started for one target; killed (by process group) when dropped.
struct Running {
    children: Vec<Child>,
    /// What the client connects to.
    target: String,
    /// Each server's client port (in the order of `children`).
    ports: Vec<u16>,
}

impl Running {
    /// Waits until every client port of the servers it started accepts, then points the
    /// load at all of them.
    fn serving(&mut self, clients: &[(u16, PathBuf)], what: &str) -> anyhow::Result<()> {
        for (port, log) in clients {
            wait_port(*port, what, log, &mut self.children)?;
        }
        self.target = clients.iter().map(|(p, _)| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        self.ports = clients.iter().map(|(p, _)| *p).collect();
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SAFETY: signalling the process group of a child we started.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

/// Nothing listens on the port (a connection in TIME_WAIT does not count).
fn port_free(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_err()
}

/// Waits (at most 60 s) until every Baton server of an ensemble serves (its `srvr` names a
/// mode other than looking).
fn wait_baton_ensemble(clients: &[(u16, PathBuf)]) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    for (port, log) in clients {
        loop {
            if mode(*port).is_some_and(|m| m != "looking") {
                break;
            }
            if Instant::now() > end {
                anyhow::bail!("baton on port {port} has no leader after 60 s; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// The mode a ZooKeeper-protocol server on `port` reports in `srvr` (leader, follower,
/// observer, standalone, looking), if it answers.
fn mode(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).ok()?;
    s.write_all(b"srvr").ok()?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.lines().find_map(|l| l.strip_prefix("Mode: ").map(str::to_string))
}

/// Waits until something listens on `port`; fails at once if one of `children` exits.
fn wait_port(port: u16, what: &str, log: &Path, children: &mut [Child]) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        for child in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                anyhow::bail!(
                    "{what} exited ({status}) before opening port {port}; last lines of {}:\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("{what} did not open port {port} within 60 s; its log is {}", log.display())
}

/// Installs a Debian package if its file is missing (as root), or says what to do.
fn ensure_package(file: &str, package: &str) -> anyhow::Result<()> {
    if Path::new(file).exists() {
        return Ok(());
    }
    eprintln!("{file} is missing; installing Debian's {package} package");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}"))
        .status();
    match status {
        Ok(s) if s.success() && Path::new(file).exists() => Ok(()),
        _ => anyhow::bail!("{file} is missing and `apt-get install {package}` did not provide it (run it as root)"),
    }
}

fn baton_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.baton {
        return Ok(path.clone());
    }
    let beside = std::env::current_exe()?.with_file_name("baton");
    if beside.exists() {
        return Ok(beside);
    }
    Ok(PathBuf::from("baton"))
}

/// Ports each target may use from its base: a three-server Baton with etcd ports takes
/// eleven (client, peer and etcd ports from base to base + 10), and a killed server's
/// io_uring listeners can accept for a moment after it is gone, so targets never share one.
const PORTS_PER_TARGET: u16 = 20;

fn start(target: Target, args: &Args, dir: &Path, base: u16) -> anyhow::Result<Running> {
    std::fs::create_dir_all(dir)?;
    let ports: Vec<u16> = (base..base + PORTS_PER_TARGET).collect();
    if let Some(busy) = ports.iter().find(|&&p| !port_free(p)) {
        anyhow::bail!("port {busy} on 127.0.0.1 is taken; pick another --base-port");
    }
    match target {
        Target::BatonEtcd => {
            let log = dir.join("baton.log");
            let etcd = format!("127.0.0.1:{}", base + 1);
            let child = spawn(
                Command::new(baton_binary(args)?)
                    .arg("--data-dir")
                    .arg(dir.join("data"))
                    .args(["--client-addr", &format!("127.0.0.1:{base}"), "--etcd-addr", &etcd])
                    .args(["--max-client-cnxns", "0", "--admin-addr", "off"]),
                &log,
            )?;
            let mut running = Running { children: vec![child], target: etcd, ports: vec![base] };
            // The etcd port opens before the ZooKeeper one.
            wait_port(base, "baton", &log, &mut running.children)?;
            Ok(running)
        }
        Target::BatonEtcd3 => {
            // ZooKeeper clients on base..base+2 (unused), peers on base+5..base+7, etcd
            // clients on base+8..base+10.
            let peers: Vec<String> = (1..=3).map(|i| format!("{i}=127.0.0.1:{}", base + 4 + i as u16)).collect();
            let mut running = Running { children: Vec::new(), target: String::new(), ports: Vec::new() };
            let mut clients = Vec::new();
            let mut endpoints = Vec::new();
            for i in 1..=3u16 {
                let port = base + i - 1;
                let etcd = format!("127.0.0.1:{}", base + 7 + i);
                let log = dir.join(format!("baton{i}.log"));
                let child = spawn(
                    Command::new(baton_binary(args)?)
                        .arg("--data-dir")
                        .arg(dir.join(format!("n{i}")))
                        .args(["--client-addr", &format!("127.0.0.1:{port}"), "--cores", "1"])
                        .args(["--etcd-addr", &etcd, "--max-client-cnxns", "0", "--admin-addr", "off"])
                        .args(["--server-id", &i.to_string(), "--peer", &peers.join(",")]),
                    &log,
                )?;
                running.children.push(child);
                clients.push((port, log));
                endpoints.push(etcd);
            }
            running.serving(&clients, "baton")?;
            wait_baton_ensemble(&clients)?;
            running.target = endpoints.join(",");
            running.ports = clients.iter().map(|(p, _)| *p).collect();
            Ok(running)
        }
        Target::Baton => {
            let log = dir.join("baton.log");
            let child = spawn(
                Command::new(baton_binary(args)?)
                    .arg("--data-dir")
                    .arg(dir.join("data"))
                    .args(["--client-addr", &format!("127.0.0.1:{base}")])
                    // Driven through the ZooKeeper protocol here; etcd's port stays closed.
                    .args(["--etcd-addr", "off"])
                    // Every client of a benchmark comes from one address, as ZooKeeper's
                    // maxClientCnxns=0 above.
                    .args(["--max-client-cnxns", "0", "--admin-addr", "off"]),
                &log,
            )?;
            let mut running = Running { children: vec![child], target: format!("127.0.0.1:{base}"), ports: vec![base] };
            wait_port(base, "baton", &log, &mut running.children)?;
            Ok(running)
        }
        Target::BatonTls => {
            let log = dir.join("baton.log");
            let (cert, key) = make_certificates(&dir.join("certs"))?;
            let child = spawn(
                Command::new(baton_binary(args)?)
                    .arg("--data-dir")
                    .arg(dir.join("data"))
                    .args(["--client-addr", "off", "--secure-client-addr", &format!("127.0.0.1:{base}")])
                    .arg("--tls-cert")
                    .arg(cert)
                    .arg("--tls-key")
                    .arg(key)
                    .args(["--etcd-addr", "off", "--max-client-cnxns", "0", "--admin-addr", "off"]),
                &log,
            )?;
            let mut running = Running { children: vec![child], target: format!("127.0.0.1:{base}"), ports: vec![base] };
            wait_port(base, "baton", &log, &mut running.children)?;
            Ok(running)
        }
        Target::Baton3 | Target::Baton3Observers => {
            // Clients on base..base+4, peers on base+5..base+9; one shard each (they share
            // the machine's cores, as the other ensembles do).
            let observers = if target == Target::Baton3Observers { 2 } else { 0 };
            let n = 3 + observers;
            let peers: Vec<String> = (1..=n)
                .map(|i| {
                    let role = if i > 3 { ":observer" } else { "" };
                    format!("{i}=127.0.0.1:{}{role}", base + 4 + i as u16)
                })
                .collect();
            let mut running = Running { children: Vec::new(), target: String::new(), ports: Vec::new() };
            let mut clients = Vec::new();
            for i in 1..=n {
                let port = base + i as u16 - 1;
                let log = dir.join(format!("baton{i}.log"));
                let child = spawn(
                    Command::new(baton_binary(args)?)
                        .arg("--data-dir")
                        .arg(dir.join(format!("n{i}")))
                        .args(["--client-addr", &format!("127.0.0.1:{port}"), "--cores", "1"])
                        .args(["--etcd-addr", "off"])
                        .args(["--max-client-cnxns", "0", "--admin-addr", "off"])
                        .args(["--server-id", &i.to_string(), "--peer", &peers.join(",")]),
                    &log,
                )?;
                running.children.push(child);
                clients.push((port, log));
            }
            running.serving(&clients, "baton")?;
            wait_baton_ensemble(&clients)?;
            Ok(running)
        }
        Target::Zookeeper | Target::Zookeeper3 => {
            let script = "/usr/share/zookeeper/bin/zkServer.sh";
            ensure_package(script, "zookeeper")?;
            let n = if target == Target::Zookeeper3 { 3 } else { 1 };
            let mut running = Running { children: Vec::new(), target: String::new(), ports: Vec::new() };
            let mut servers = String::new();
            for i in 1..=n {
                let (peer, election) = (base + 3 + 2 * i as u16, base + 4 + 2 * i as u16);
                let _ = writeln!(servers, "server.{i}=127.0.0.1:{peer}:{election}");
            }
            let mut clients = Vec::new();
            for i in 1..=n {
                let node = dir.join(format!("zk{i}"));
                std::fs::create_dir_all(node.join("data"))?;
                std::fs::write(node.join("data/myid"), format!("{i}\n"))?;
                let port = base + i as u16 - 1;
                let mut cfg = format!(
                    "tickTime=2000\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\n4lw.commands.whitelist=*\nforceSync=yes\n",
                    node.join("data").display()
                );
                if n > 1 {
                    cfg.push_str(&servers);
                }
                std::fs::write(node.join("zoo.cfg"), cfg)?;
                let log = node.join("zookeeper.log");
                let child = spawn(
                    Command::new(script).arg("start-foreground").arg(node.join("zoo.cfg")).env("ZOO_LOG_DIR", &node),
                    &log,
                )?;
                running.children.push(child);
                clients.push((port, log));
            }
            running.serving(&clients, "zookeeper")?;
            Ok(running)
        }
        Target::Etcd | Target::Etcd3 => {
            ensure_package("/usr/bin/etcd", "etcd-server")?;
            let n = if target == Target::Etcd3 { 3 } else { 1 };
            let peer = |i: u16| format!("http://127.0.0.1:{}", base + 5 + i);
            let cluster: Vec<String> = (0..n).map(|i| format!("m{i}={}", peer(i))).collect();
            let mut running = Running { children: Vec::new(), target: String::new(), ports: Vec::new() };
            let mut clients = Vec::new();
            for i in 0..n {
                let client = base + i;
                let log = dir.join(format!("etcd{i}.log"));
                let url = format!("http://127.0.0.1:{client}");
                let child = spawn(
                    Command::new("etcd")
                        .args(["--name", &format!("m{i}"), "--data-dir"])
                        .arg(dir.join(format!("etcd{i}")))
                        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
                        .args(["--listen-peer-urls", &peer(i), "--initial-advertise-peer-urls", &peer(i)])
                        .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"]),
                    &log,
                )?;
                running.children.push(child);
                clients.push((client, log));
            }
            running.serving(&clients, "etcd")?;
            Ok(running)
        }
    }
}

/// Median and p99 of `write(4 KiB) + fdatasync` in `dir`, in milliseconds.
/// For `baton-tls`: a CA (`ca.pem`, which the load trusts) and a server certificate it
/// signed for 127.0.0.1, in `dir`; the certificate's and key's paths.
fn make_certificates(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "baton-bench CA");
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca.self_signed(&ca_key)?;
    let mut server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    server.distinguished_name.push(rcgen::DnType::CommonName, "baton");
    let key = rcgen::KeyPair::generate()?;
    let cert = server.signed_by(&key, &ca, &ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("server.pem"), cert.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok((dir.join("server.pem"), dir.join("server.key")))
}

fn fsync_latency(dir: &Path) -> anyhow::Result<(f64, f64)> {
    use std::io::{Seek, Write};
    let path = dir.join("fsync-probe");
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    let block = vec![7u8; 4096];
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        file.seek(std::io::SeekFrom::Start(0))?;
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    samples.sort_by(f64::total_cmp);
    Ok((samples[samples.len() / 2], samples[samples.len() * 99 / 100]))
}

fn machine(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let (p50, p99) = fsync_latency(dir)?;
    Ok(serde_json::json!({
        "cores": cores, "memory_gib": (mem_gib * 10.0).round() / 10.0, "kernel": kernel,
        "fsync_4k_p50_ms": p50, "fsync_4k_p99_ms": p99,
    }))
}

async fn run_one(target: Target, address: &str, workload: &str, load: &Load) -> anyhow::Result<Option<Outcome>> {
    let mut load = load.clone();
    load.label = target.name().replace(' ', "");
    load.json = None;
    // `serializable-read`: etcd's serializable reads (served by the member alone), against
    // ZooKeeper's reads, which are always that.
    let (workload, serializable) = match workload {
        "serializable-read" => ("read", true),
        other => (other, false),
    };
    if target.is_etcd() {
        let workload = <crate::etcd::Workload as clap::ValueEnum>::from_str(workload, true)
            .map_err(|e| anyhow::anyhow!("etcd has no workload {workload}: {e}"))?;
        crate::etcd::run(crate::etcd::Args { target: address.to_string(), workload, serializable, count: 0, load })
            .await
    } else {
        let workload = <crate::zk::Workload as clap::ValueEnum>::from_str(workload, true)
            .map_err(|e| anyhow::anyhow!("no workload {workload}: {e}"))?;
        crate::zk::run(crate::zk::Args { target: address.to_string(), workload, load, count: 0 }).await
    }
}

/// The ZooKeeper-protocol ensembles a leader kill can be measured on.
fn has_leader(target: Target) -> bool {
    matches!(target, Target::Baton3 | Target::Baton3Observers | Target::Zookeeper3 | Target::Etcd3 | Target::BatonEtcd3)
}

/// `failover` through etcd's API: 8 writers, each putting a key of its own through one member
/// and moving to the next member on an error or after 1 s without an answer (the wire
/// driver: no client library's back-off); after 2 s the leader (the member whose Status says
/// it leads) is SIGKILLed with its process group. For each writer, the first put *sent*
/// after the kill that is acknowledged marks when it resumed; the same JSON as the
/// ZooKeeper one.
async fn etcd_failover(running: &Running) -> anyhow::Result<serde_json::Value> {
    use baton_server::etcd::pb::etcdserverpb as pb;
    use prost::Message;
    let endpoints: Vec<String> = running.target.split(',').map(str::to_string).collect();
    let calls = endpoints.iter().map(|e| crate::grpc::Calls::new(e)).collect::<anyhow::Result<Vec<_>>>()?;
    // Who leads: the member whose own id is the leader its Status names.
    let mut leader = None;
    for (i, e) in endpoints.iter().enumerate() {
        let mut send = crate::grpc::connect(e).await?;
        let uri: tonic::codegen::http::Uri = format!("http://{e}/etcdserverpb.Maintenance/Status").parse()?;
        let answer = crate::grpc::unary(&mut send, &uri, crate::grpc::frame(&pb::StatusRequest {})).await?;
        let status = pb::StatusResponse::decode(answer.get(5..).unwrap_or_default())?;
        if status.header.is_some_and(|h| h.member_id == status.leader) {
            leader = Some(i);
        }
    }
    let leader = leader.context("no member says it leads")?;
    let pgid = running.children.get(leader).context("leader process")?.id();
    let writers = 8;
    let killed_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked_before = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (endpoints, calls, killed_at, stop, acked_before) =
            (endpoints.clone(), calls.clone(), killed_at.clone(), stop.clone(), acked_before.clone());
        tasks.push(tokio::spawn(async move {
            let put = crate::grpc::frame(&pb::PutRequest {
                key: format!("failover/w{w}").into_bytes(),
                value: vec![b'v'; 64],
                ..Default::default()
            });
            let mut at = w % endpoints.len();
            let mut conn = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let e = &endpoints[at];
                if conn.is_none() {
                    conn = tokio::time::timeout(Duration::from_secs(1), crate::grpc::connect(e))
                        .await
                        .ok()
                        .and_then(Result::ok);
                }
                let Some(send) = conn.as_mut() else {
                    at = (at + 1) % endpoints.len();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let sent = Instant::now();
                let ok = matches!(
                    tokio::time::timeout(
                        Duration::from_secs(1),
                        crate::grpc::unary(send, calls[at].put(), put.clone())
                    )
                    .await,
                    Ok(Ok(_))
                );
                let kill = *killed_at.lock().unwrap_or_else(|p| p.into_inner());
                match (ok, kill) {
                    // Resumed: from the kill until this put's acknowledgement.
                    (true, Some(t)) if sent >= t => return Some(t.elapsed().as_secs_f64()),
                    (true, None) => {
                        acked_before.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    (true, Some(_)) => {}
                    (false, _) => {
                        conn = None;
                        at = (at + 1) % endpoints.len();
                    }
                }
            }
            None
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    *killed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    // SAFETY: signalling the process group of a child we started.
    unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
    let limit = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(limit);
    let mut resumed = Vec::new();
    for t in tasks {
        tokio::select! {
            r = t => resumed.push(r.ok().flatten()),
            _ = &mut limit => resumed.push(None),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done: Vec<f64> = resumed.iter().flatten().copied().collect();
    anyhow::ensure!(!done.is_empty(), "no writer resumed within 60 s");
    Ok(serde_json::json!({
        "first_s": done.iter().copied().fold(f64::INFINITY, f64::min),
        "all_s": if done.len() == writers { serde_json::json!(done.iter().copied().fold(0.0, f64::max)) } else { serde_json::Value::Null },
        "acked_before_kill": acked_before.load(std::sync::atomic::Ordering::Relaxed),
    }))
}

/// `failover`: kazoo writers on the whole ensemble, SIGKILL of the leader's process group,
/// time until writes sent after the kill are acknowledged (`scripts/failover.py`).
fn failover(running: &Running, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let leader = running
        .ports
        .iter()
        .position(|&port| mode(port).as_deref() == Some("leader"))
        .context("no server says it leads")?;
    let pgid = running.children.get(leader).context("leader process")?.id();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/failover.py");
    let output = Command::new("timeout")
        .args(["120", "python3", script, &running.target, &pgid.to_string(), "8", "2"])
        .stderr(Stdio::from(std::fs::File::create(dir.join("failover.log"))?))
        .output()
        .context("running scripts/failover.py (needs python3 with kazoo)")?;
    let line = String::from_utf8_lossy(&output.stdout);
    let line = line.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("failover.py said {line:?}; see {}", dir.display()))
}

/// Runs the comparison.
pub async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let machine = machine(&args.out)?;
    println!(
        "machine: {} cores, {} GiB, Linux {}, write 4 KiB + fdatasync p50 {:.3} ms (p99 {:.3} ms)",
        machine["cores"],
        machine["memory_gib"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["fsync_4k_p50_ms"].as_f64().unwrap_or(0.0),
        machine["fsync_4k_p99_ms"].as_f64().unwrap_or(0.0),
    );
    println!(
        "load: {} sessions x {} in flight, {} B values, ZooKeeper-protocol driver {:?} (see --driver)",
        args.load.clients, args.load.depth, args.load.value_bytes, args.load.driver
    );
    let mut results: Vec<(Target, String, Outcome)> = Vec::new();
    let mut failovers: Vec<(Target, serde_json::Value)> = Vec::new();
    for (index, &target) in args.targets.iter().enumerate() {
        let dir = args.out.join(target.name().replace(' ', "-"));
        let _ = std::fs::remove_dir_all(&dir);
        println!("== {}", target.name());
        // Each target gets its own ports: the last one's connections linger in TIME_WAIT.
        let base = args.base_port + PORTS_PER_TARGET * index as u16;
        let running = start(target, &args, &dir, base)?;
        // Let elections settle and JVMs warm their first classes.
        tokio::time::sleep(Duration::from_secs(if target.is_baton() { 1 } else { 3 })).await;
        let pids: Vec<u32> = running.children.iter().map(Child::id).collect();
        let mut load = args.load.clone();
        if target == Target::BatonTls {
            load.tls_ca = Some(dir.join("certs").join("ca.pem"));
        }
        for workload in args.workloads.iter().filter(|w| *w != "failover") {
            // Every run is bounded: a server that stops answering costs this run, not the rest.
            let bound = Duration::from_secs_f64(args.load.seconds * 2.0 + 60.0);
            let cpu_before = server_cpu_seconds(&pids);
            match tokio::time::timeout(bound, run_one(target, &running.target, workload, &load)).await {
                Ok(Ok(Some(mut outcome))) => {
                    // The servers' CPU over the warm-up (a fifth) and the window, per operation.
                    let ops = outcome.ops_per_sec * args.load.seconds * 1.2;
                    if ops > 0.0 {
                        outcome.server_cpu_us = Some((server_cpu_seconds(&pids) - cpu_before) * 1e6 / ops);
                    }
                    results.push((target, workload.clone(), outcome))
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => eprintln!("{} {workload}: {e:#}", target.name()),
                Err(_) => eprintln!("{} {workload}: no result within {} s; skipped", target.name(), bound.as_secs()),
            }
        }
        // Last: it kills the leader.
        if args.workloads.iter().any(|w| w == "failover") && has_leader(target) {
            let measured = if target.is_etcd() { etcd_failover(&running).await } else { failover(&running, &dir) };
            match measured {
                Ok(v) => failovers.push((target, v)),
                Err(e) => eprintln!("{} failover: {e:#}", target.name()),
            }
        }
        drop(running);
    }
    print_table(&args, &results);
    if !failovers.is_empty() {
        println!();
        println!("| failover (SIGKILL of the leader, 8 writers: kazoo, or etcd gRPC) | first write after the kill | all writers | acked before |");
        println!("|---|---:|---:|---:|");
        let secs = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |s| format!("{s:.3} s"));
        for (t, v) in &failovers {
            println!("| {} | {} | {} | {} |", t.name(), secs(&v["first_s"]), secs(&v["all_s"]), v["acked_before_kill"]);
        }
    }
    let json = serde_json::json!({
        "failover": failovers.iter().map(|(t, v)| serde_json::json!({"target": t.name(), "result": v})).collect::<Vec<_>>(),
        "machine": machine,
        "load": { "clients": args.load.clients, "depth": args.load.depth, "value_bytes": args.load.value_bytes,
                  "seconds": args.load.seconds, "open_loop_rate": args.load.rate,
                  "zookeeper_driver": format!("{:?}", args.load.driver).to_lowercase() },
        "results": results.iter().map(|(t, w, o)| serde_json::json!({
            "target": t.name(), "workload": w, "ops_per_sec": o.ops_per_sec, "p50_ms": o.p50, "p90_ms": o.p90,
            "p99_ms": o.p99, "p999_ms": o.p999, "max_ms": o.max, "server_cpu_us_per_op": o.server_cpu_us,
            "cdf": o.cdf.iter().map(|(q, ms)| serde_json::json!([q, ms])).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(args.out.join("throughput.svg"), throughput_svg(&args, &results))?;
    for workload in args.workloads.iter().filter(|w| *w != "failover") {
        let file = args.out.join(format!("latency-{workload}.svg"));
        std::fs::write(file, latency_svg(workload, &results))?;
    }
    println!("results: {}/results.json, throughput.svg, latency-<workload>.svg", args.out.display());
    Ok(())
}

/// CPU seconds (user and system) used so far by the processes `roots` and every process
/// below them (a server started through a script runs as its child).
fn server_cpu_seconds(roots: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut procs: Vec<(u32, u32, u64)> = Vec::new(); // (pid, parent, ticks)
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the command name (which may hold spaces): state ppid ... utime stime.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        procs.push((pid, num(1) as u32, num(11) + num(12)));
    }
    let mut inside: std::collections::BTreeSet<u32> = roots.iter().copied().collect();
    loop {
        let before = inside.len();
        for (pid, parent, _) in &procs {
            if inside.contains(parent) {
                inside.insert(*pid);
            }
        }
        if inside.len() == before {
            break;
        }
    }
    procs.iter().filter(|(pid, _, _)| inside.contains(pid)).map(|(_, _, t)| *t as f64).sum::<f64>() / hz
}

fn print_table(args: &Args, results: &[(Target, String, Outcome)]) {
    let of = |target: Target, w: &str| results.iter().find(|(t, rw, _)| *t == target && rw == w).map(|r| &r.2);
    let ratio = |b: Option<&Outcome>, o: &Outcome| match b {
        Some(b) if o.ops_per_sec > 0.0 => {
            format!("{:.2}x (p99 {:.2}x)", b.ops_per_sec / o.ops_per_sec, b.p99 / o.p99.max(1e-9))
        }
        _ => String::new(),
    };
    println!();
    println!("| workload | target | ops/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/op | Baton / this | Baton x3 / this |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for w in &args.workloads {
        for (t, rw, o) in results.iter().filter(|(_, rw, _)| rw == w) {
            let (single, three) = if t.is_baton() {
                (String::new(), String::new())
            } else {
                // etcd is compared with Baton's etcd front when it ran, else with Baton.
                let etcd_front = of(Target::BatonEtcd, w).is_some() || of(Target::BatonEtcd3, w).is_some();
                let (one, three) = if t.is_etcd() && etcd_front {
                    (Target::BatonEtcd, Target::BatonEtcd3)
                } else {
                    (Target::Baton, Target::Baton3)
                };
                (ratio(of(one, w), o), ratio(of(three, w), o))
            };
            let cpu = o.server_cpu_us.map_or("-".to_string(), |us| format!("{us:.1}"));
            println!(
                "| {rw} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {cpu} | {single} | {three} |",
                t.name(),
                o.ops_per_sec,
                o.p50,
                o.p99,
                o.p999
            );
        }
    }
}

const COLORS: [&str; 7] = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"];

pub(crate) fn color(targets: &[Target], t: Target) -> &'static str {
    COLORS[targets.iter().position(|&x| x == t).unwrap_or(0) % COLORS.len()]
}

/// A colour key for `targets` in the top right corner of a plot `w` wide.
pub(crate) fn legend(svg: &mut String, targets: &[Target], w: f64) {
    for (i, &t) in targets.iter().enumerate() {
        let y = 40.0 + i as f64 * 16.0;
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{y}">{}</text>"#,
            w - 140.0,
            y - 9.0,
            color(targets, t),
            w - 125.0,
            t.name()
        );
    }
}

fn throughput_svg(args: &Args, results: &[(Target, String, Outcome)]) -> String {
    let (w, h, left, bottom) = (760.0, 420.0, 70.0, 60.0);
    // Each workload on its own scale (a lock acquisition and a read differ by 100x).
    let max_of =
        |workload: &str| results.iter().filter(|r| r.1 == workload).map(|r| r.2.ops_per_sec).fold(1.0, f64::max);
    let workloads: Vec<&String> = args.workloads.iter().filter(|w| *w != "failover").collect();
    let groups = workloads.len().max(1) as f64;
    let per = args.targets.len().max(1) as f64;
    let group_w = (w - left - 20.0) / groups;
    let bar_w = group_w * 0.8 / per;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><text x="{left}" y="20" font-size="14">Throughput (ops/s), same load on each target; each workload on its own scale</text>"#
    );
    let plot_h = h - bottom - 40.0;
    for (gi, workload) in workloads.into_iter().enumerate() {
        let x0 = left + gi as f64 * group_w + group_w * 0.1;
        let max = max_of(workload);
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{workload}</text>"#,
            x0 + group_w * 0.4,
            h - bottom + 20.0
        );
        for (ti, &t) in args.targets.iter().enumerate() {
            if let Some((_, _, o)) = results.iter().find(|(rt, rw, _)| *rt == t && rw == workload) {
                let bh = plot_h * o.ops_per_sec / max;
                let (x, y) = (x0 + ti as f64 * bar_w, h - bottom - bh);
                let _ = write!(
                    svg,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{} {workload}: {:.0} ops/s</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                    bar_w * 0.9,
                    color(&args.targets, t),
                    t.name(),
                    o.ops_per_sec,
                    x + bar_w * 0.45,
                    y - 3.0,
                    if o.ops_per_sec >= 10_000.0 {
                        format!("{:.0}k", o.ops_per_sec / 1000.0)
                    } else {
                        format!("{:.0}", o.ops_per_sec)
                    }
                );
            }
        }
    }
    legend(&mut svg, &args.targets, w);
    close_with_axis(&mut svg, left, w, h - bottom);
    svg
}

/// Draws the x axis at height `y` from `left` to 20 short of `w`, and closes the plot.
pub(crate) fn close_with_axis(svg: &mut String, left: f64, w: f64, y: f64) {
    let _ = write!(svg, r#"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="black"/></svg>"#, w - 20.0);
}

fn latency_svg(workload: &str, results: &[(Target, String, Outcome)]) -> String {
    let (w, h, left, bottom) = (760.0, 420.0, 70.0, 50.0);
    let rows: Vec<_> = results.iter().filter(|(_, rw, _)| rw == workload).collect();
    let targets: Vec<Target> = rows.iter().map(|r| r.0).collect();
    let max = rows.iter().flat_map(|r| r.2.cdf.iter().map(|p| p.1)).fold(0.01, f64::max);
    let min = 0.01f64;
    // Log-scale milliseconds on x, quantile on y.
    let x = |ms: f64| left + (w - left - 20.0) * ((ms.max(min) / min).ln() / (max / min).ln());
    let y = |q: f64| h - bottom - (h - bottom - 40.0) * q;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><text x="{left}" y="20" font-size="14">Latency CDF: {workload} (ms, log scale)</text>"#
    );
    for (t, _, o) in &rows {
        let points: Vec<String> = o.cdf.iter().map(|(q, ms)| format!("{:.1},{:.1}", x(*ms), y(*q))).collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke-width="2" stroke="{}" points="{}"><title>{}</title></polyline>"#,
            color(&targets, *t),
            points.join(" "),
            t.name()
        );
    }
    let mut tick = min;
    while tick <= max * 1.0001 {
        let _ = write!(svg, r#"<text x="{:.1}" y="{}" text-anchor="middle">{tick}</text>"#, x(tick), h - bottom + 18.0);
        tick *= 10.0;
    }
    for q in [0.5, 0.9, 0.99] {
        let _ =
            write!(svg, r#"<text x="{}" y="{:.1}" text-anchor="end">p{}</text>"#, left - 6.0, y(q) + 4.0, q * 100.0);
    }
    legend(&mut svg, &targets, w);
    svg.push_str("</svg>");
    svg
}
