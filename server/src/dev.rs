//! `baton dev`: a local ensemble on 127.0.0.1 for trying Baton out and for benchmarks. It runs
//! one `baton` process per server (this same executable), prints the connect string, and
//! stops them all (SIGTERM, then SIGKILL after 15 s) on Ctrl-C or SIGTERM.

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
            format!("{id}=127.0.0.1:{port}{role}")
        })
        .collect();
    let stop = crate::runtime::shutdown_flag();
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(total);
    let mut clients = Vec::with_capacity(total);
    for id in 1..=total {
        let client = format!("127.0.0.1:{}", config.client_port as usize + id - 1);
        let child = Command::new(&exe)
            .arg("--server-id")
            .arg(id.to_string())
            .arg("--peer")
            .arg(peers.join(","))
            .arg("--client-addr")
            .arg(&client)
            .arg("--data-dir")
            .arg(config.data_dir.join(format!("n{id}")))
            .args(&config.server_flags)
            .spawn()
            .with_context(|| format!("starting server {id}"));
        match child {
            Ok(c) => children.push((id, c)),
            Err(e) => {
                stop_all(&mut children);
                return Err(e);
            }
        }
        clients.push(client);
    }
    println!(
        "baton dev: {} voters and {} observers; connect string {}; data under {}; Ctrl-C stops them all",
        config.nodes,
        config.observers,
        clients.join(","),
        config.data_dir.display()
    );
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for (id, child) in &mut children {
            if let Ok(Some(status)) = child.try_wait() {
                tracing::warn!(server = *id, %status, "a server exited; the others go on");
            }
        }
        children.retain_mut(|(_, c)| matches!(c.try_wait(), Ok(None)));
        if children.is_empty() {
            anyhow::bail!("every server exited");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_all(&mut children);
    Ok(())
}

/// SIGTERM to each child, then SIGKILL to those still running after 15 s.
fn stop_all(children: &mut Vec<(usize, Child)>) {
    for (_, child) in children.iter() {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end && children.iter_mut().any(|(_, c)| matches!(c.try_wait(), Ok(None))) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (id, child) in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            tracing::warn!(server = *id, "did not stop within 15 s; killing it");
            let _ = child.kill();
        }
        let _ = child.wait();
    }
    children.clear();
}
