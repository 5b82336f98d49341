//! Real `baton` processes on 127.0.0.1 for tests: started on a free port with their own data
//! directory, killed with SIGKILL or stopped by pid, never left running.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running server process.
pub struct BatonProcess {
    bin: PathBuf,
    child: Option<Child>,
    /// Its client address.
    pub addr: SocketAddr,
    /// Its data directory.
    pub dir: PathBuf,
    extra: Vec<String>,
}

/// A port on 127.0.0.1 free at the moment of asking.
pub fn free_port() -> u16 {
    // Bind port 0 and release it; the server binds it right after (tests run on loopback).
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("addr").port()
}

impl BatonProcess {
    /// Starts the server binary `bin` (an integration test passes
    /// `env!("CARGO_BIN_EXE_baton_test_server")`) with its data in `dir` and `extra` flags, and
    /// waits until it serves.
    pub fn start(bin: &str, dir: &Path, extra: &[&str]) -> BatonProcess {
        BatonProcess::start_on(bin, dir, SocketAddr::from(([127, 0, 0, 1], free_port())), extra)
    }

    /// As [`BatonProcess::start`], on a given client address.
    pub fn start_on(bin: &str, dir: &Path, addr: SocketAddr, extra: &[&str]) -> BatonProcess {
        let mut p = BatonProcess {
            bin: PathBuf::from(bin),
            child: None,
            addr,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        p.launch();
        p
    }

    fn launch(&mut self) {
        if let Err(why) = self.try_launch() {
            panic!("{why}");
        }
    }

    /// Starts the process and waits until it serves; on failure, why, with its log.
    fn try_launch(&mut self) -> Result<(), String> {
        // etcd's port only for the tests that ask for one: servers run side by side here.
        let etcd_off: &[&str] =
            if self.extra.iter().any(|a| a == "--etcd-addr") { &[] } else { &["--etcd-addr", "off"] };
        let admin_off: &[&str] =
            if self.extra.iter().any(|a| a == "--admin-addr") { &[] } else { &["--admin-addr", "off"] };
        let mut child = Command::new(&self.bin)
            .arg("--client-addr")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.dir)
            .args(etcd_off)
            .args(admin_off)
            .args(&self.extra)
            // Warnings, and the replica's own news (roles, snapshots, SNAPs: a handful of
            // lines per event, which some tests wait for).
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,baton_engine::replica=info".into()))
            .env("BATON_FAILPOINTS_FILE", self.failpoints_path())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(self.open_log()))
            .spawn()
            .expect("spawn baton");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("serving ZooKeeper clients") {
                    let _ = tx.send(());
                }
            }
        });
        let end = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("baton exited before serving ({status}); its log:\n{}", self.log_tail(100)));
            }
            if std::time::Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("baton did not start serving within 30 s; its log:\n{}", self.log_tail(100)));
            }
        }
        self.child = Some(child);
        Ok(())
    }

    /// The connection string for clients.
    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILLs the process (no chance to flush anything).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (at most `limit`) for the process to exit; returns its status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Starts it again (after `kill` or `terminate`, or killing it first).
    pub fn start_again(&mut self) {
        self.launch();
    }

    /// Tries to start it again; `Err` holds why it did not serve, with its log.
    pub fn try_start_again(&mut self) -> Result<(), String> {
        self.try_launch()
    }

    /// Tries to start it again with `more` flags, for this start only.
    pub fn try_start_again_with(&mut self, more: &[&str]) -> Result<(), String> {
        let kept = self.extra.len();
        self.extra.extend(more.iter().map(|s| s.to_string()));
        let started = self.try_launch();
        self.extra.truncate(kept);
        started
    }

    /// Starts it again on the same address and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits (at most `limit`) for the process to exit by itself; returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = std::time::Instant::now() + limit;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The file the test server watches for failpoint settings (`name=actions` lines, see
    /// `baton_engine::faults`); it sits beside the data directory and outlives restarts.
    pub fn failpoints_path(&self) -> PathBuf {
        let mut name = self.dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".failpoints");
        self.dir.with_file_name(name)
    }

    /// Replaces the running server's failpoints (empty clears them) and waits (at most 5 s)
    /// until it says it applied them.
    pub fn set_failpoints(&self, spec: &str) {
        let path = self.failpoints_path();
        if std::fs::read_to_string(&path).is_ok_and(|old| old == spec) {
            return;
        }
        let applied =
            || std::fs::read_to_string(self.log_path()).unwrap_or_default().matches("failpoints now:").count();
        let before = applied();
        let tmp = path.with_extension("failpoints.tmp");
        std::fs::write(&tmp, spec).expect("write failpoints");
        std::fs::rename(&tmp, &path).expect("install failpoints");
        if self.child.is_none() {
            return;
        }
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while applied() == before && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl BatonProcess {
    /// Where its log goes: beside its data directory, appended across restarts.
    pub fn log_path(&self) -> PathBuf {
        let mut name = self.dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".log");
        self.dir.with_file_name(name)
    }

    fn open_log(&self) -> std::fs::File {
        let path = self.log_path();
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open the server's log")
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for BatonProcess {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the server said (its log goes with its directory).
        if std::thread::panicking() {
            eprintln!("---- {} (last 200 lines) ----\n{}", self.log_path().display(), self.log_tail(200));
        }
    }
}
