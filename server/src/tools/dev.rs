//! `baton dev`: a local ensemble on 127.0.0.1 for trying Baton out and for benchmarks. It runs
//! one `baton` process per server (this same executable), prints the connect string, and
//! stops them all (SIGTERM, then SIGKILL after 15 s) on Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context;

/// What `baton dev` starts.
#[derive(Debug, Clone, clap::Args)]
pub struct DevConfig {
    /// Voting servers.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Non-voting observers added to them.
    #[arg(long, default_value_t = 0)]
    pub observers: usize,
    /// Each server's data goes in a directory `n<ID>` under this one.
    #[arg(long, default_value = "baton-dev")]
    pub data_dir: PathBuf,
    /// Server i's clients connect to this port + i - 1 (on 127.0.0.1).
    #[arg(long, default_value_t = 2181)]
    pub client_port: u16,
    /// Server i's peer port is this port + i - 1 (on 127.0.0.1).
    #[arg(long, default_value_t = 2888)]
    pub peer_port: u16,
    /// Server i serves etcd v3 clients on this port + i - 1 (on 127.0.0.1); 0: no etcd port.
    #[arg(long, default_value_t = 2379)]
    pub etcd_port: u16,
    /// Server i serves its admin HTTP API (`/metrics`, `/commands/`) on this port + i - 1 (on
    /// 127.0.0.1); 0: none.
    #[arg(long, default_value_t = 8080)]
    pub admin_port: u16,
    /// Flags passed to every server (after `--`), e.g. `-- --cores 1 --tick-ms 500`.
    #[arg(last = true)]
    pub server_flags: Vec<String>,
}

/// Runs the ensemble until Ctrl-C or SIGTERM.
pub fn run(config: DevConfig) -> anyhow::Result<()> {
    let total = config.nodes + config.observers;
    anyhow::ensure!(config.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(total <= 255, "at most 255 servers");
    let exe = std::env::current_exe().context("finding the baton executable")?;
    let peers: Vec<String> = (1..=total)
        .map(|id| {
            let port = config.peer_port as usize + id - 1;
            let role = if id > config.nodes { ":observer" } else { "" };
            // Each member's etcd address, for etcd's MemberList.
            let etcd = match config.etcd_port {
                0 => String::new(),
                base => format!(";127.0.0.1:{}", base as usize + id - 1),
            };
            format!("{id}=127.0.0.1:{port}{role}{etcd}")
        })
        .collect();
    // What happens to the ensemble arrives on one channel: a server exited, or Ctrl-C/SIGTERM
    // (handled from before the first server starts).
    let (events, happened) = std::sync::mpsc::channel::<Happened>();
    let stop = crate::runtime::stop::shutdown();
    let stopped = events.clone();
    std::thread::spawn(move || {
        futures_lite::future::block_on(stop.wait());
        let _ = stopped.send(Happened::Stop);
    });
    let mut running: BTreeMap<usize, Child> = BTreeMap::new();
    let mut clients = Vec::with_capacity(total);
    let mut etcd_endpoints = Vec::with_capacity(total);
    for id in 1..=total {
        let client = format!("127.0.0.1:{}", config.client_port as usize + id - 1);
        let etcd = if config.etcd_port == 0 {
            "off".to_string()
        } else {
            format!("127.0.0.1:{}", config.etcd_port as usize + id - 1)
        };
        let admin = match config.admin_port {
            0 => "off".to_string(),
            base => format!("127.0.0.1:{}", base as usize + id - 1),
        };
        let child = Command::new(&exe)
            .arg("--admin-addr")
            .arg(&admin)
            .arg("--server-id")
            .arg(id.to_string())
            .arg("--peer")
            .arg(peers.join(","))
            .arg("--client-addr")
            .arg(&client)
            .arg("--etcd-addr")
            .arg(&etcd)
            .arg("--data-dir")
            .arg(config.data_dir.join(format!("n{id}")))
            .args(&config.server_flags)
            .spawn()
            .with_context(|| format!("starting server {id}"));
        match child {
            Ok(c) => {
                watch(id, c.id(), events.clone());
                running.insert(id, c);
            }
            Err(e) => {
                stop_all(&mut running, &happened);
                return Err(e);
            }
        }
        clients.push(client);
        if config.etcd_port != 0 {
            etcd_endpoints.push(etcd);
        }
    }
    let mut etcd = if etcd_endpoints.is_empty() {
        String::new()
    } else {
        format!("; etcd endpoints {}", etcd_endpoints.join(","))
    };
    if config.admin_port != 0 {
        let last = config.admin_port as usize + total - 1;
        etcd.push_str(&format!("; admin HTTP on 127.0.0.1:{}-{last}", config.admin_port));
    }
    println!(
        "baton dev: {} voters and {} observers; connect string {}{etcd}; data under {}; Ctrl-C stops them all",
        config.nodes,
        config.observers,
        clients.join(","),
        config.data_dir.display()
    );
    while let Ok(Happened::Exited(id)) = happened.recv() {
        if let Some(mut child) = running.remove(&id) {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            tracing::warn!(server = id, %status, "a server exited; the others go on");
        }
        if running.is_empty() {
            anyhow::bail!("every server exited");
        }
    }
    stop_all(&mut running, &happened);
    Ok(())
}

/// What `baton dev` waits for.
enum Happened {
    /// Server `id` exited (not reaped yet: its pid stays its own until `Child::wait`).
    Exited(usize),
    /// Ctrl-C or SIGTERM.
    Stop,
}

/// A thread that waits for server `id` (process `pid`) to exit, without reaping it, and says
/// so: the main thread reaps it, so signals sent by pid never reach a recycled one.
fn watch(id: usize, pid: u32, events: std::sync::mpsc::Sender<Happened>) {
    std::thread::spawn(move || loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waiting, without reaping (WNOWAIT), for our own child to exit.
        let waited = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if waited == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            let _ = events.send(Happened::Exited(id));
            return;
        }
    });
}

/// SIGTERM to each server still running, then SIGKILL to those still running after 15 s.
fn stop_all(running: &mut BTreeMap<usize, Child>, happened: &std::sync::mpsc::Receiver<Happened>) {
    for child in running.values() {
        // SAFETY: signalling our own child, not yet reaped (only this thread reaps).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let end = Instant::now() + Duration::from_secs(15);
    while !running.is_empty() {
        match happened.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(Happened::Exited(id)) => {
                if let Some(mut child) = running.remove(&id) {
                    let _ = child.wait();
                }
            }
            Ok(Happened::Stop) => {}
            Err(_) => break,
        }
    }
    for (id, mut child) in std::mem::take(running) {
        tracing::warn!(server = id, "did not stop within 15 s; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}
