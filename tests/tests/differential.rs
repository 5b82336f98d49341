//! The differential test of issue 16: the same seeded random operations, sent through kazoo to
//! Debian's ZooKeeper 3.8 and to Baton, must get the same replies, Stat fields (zxids by their
//! order) and watch events (`kazoo/differential.py` says what is compared, and lists the known
//! differences it steers around). CI runs a short run; `BATON_DIFF_SEEDS` and `BATON_DIFF_OPS`
//! ask for a longer one, `BATON_DIFF_SEED` replays one seed (as a mismatch prints it).
//! `tests/run-all.sh` installs kazoo and the zookeeper package; without them this test fails,
//! it does not skip.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::server::BatonProcess;
use baton_tests::temp_dir;

/// ZooKeeper's client port (no other test uses 27_5xx).
const ZK_PORT: u16 = 27_500;
/// super:test, the super user the script cleans up with.
const SUPER_DIGEST: &str = "super:D/InIHSb7yEEbrWz8b9l71RjZJU=";

/// A standalone ZooKeeper 3.8 started with `zkServer.sh start-foreground` (which execs the
/// JVM) in its own process group; killed by that group when dropped.
struct Zookeeper {
    child: Child,
    dir: std::path::PathBuf,
}

impl Zookeeper {
    fn start(dir: &Path, port: u16) -> Zookeeper {
        let script = "/usr/share/zookeeper/bin/zkServer.sh";
        assert!(Path::new(script).exists(), "{script} is missing (apt-get install zookeeper; tests/run-all.sh does)");
        std::fs::create_dir_all(dir.join("data")).expect("zookeeper data dir");
        let cfg = format!(
            "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nmaxClientCnxns=0\n\
             admin.enableServer=false\n4lw.commands.whitelist=*\nforceSync=no\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("zoo.cfg"), cfg).expect("write zoo.cfg");
        let log = std::fs::File::create(dir.join("zookeeper.out")).expect("zookeeper log");
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new(script)
                .arg("start-foreground")
                .arg(dir.join("zoo.cfg"))
                .env("ZOO_LOG_DIR", dir)
                // TTL nodes, prompt container and TTL reaping, and the super user.
                .env(
                    "SERVER_JVMFLAGS",
                    format!(
                        "-Dzookeeper.extendedTypesEnabled=true -Dznode.container.checkIntervalMs=100 \
                         -Dzookeeper.DigestAuthenticationProvider.superDigest={SUPER_DIGEST}"
                    ),
                )
                .stdout(Stdio::from(log.try_clone().expect("log")))
                .stderr(Stdio::from(log)),
            0,
        )
        .spawn()
        .expect("start zkServer.sh");
        let zk = Zookeeper { child, dir: dir.to_path_buf() };
        zk.wait_serving(port);
        zk
    }

    fn wait_serving(&self, port: u16) {
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            if ruok(port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(self.dir.join("zookeeper.out")).unwrap_or_default();
        panic!("ZooKeeper did not answer ruok on {port} within 60 s; its output:\n{log}");
    }
}

impl Drop for Zookeeper {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created for our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Whether the server on `port` answers the `ruok` four-letter word with `imok`.
fn ruok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut out = String::new();
    s.write_all(b"ruok").is_ok() && s.read_to_string(&mut out).is_ok() && out == "imok"
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[test]
fn baton_answers_as_zookeeper_3_8_does_to_random_operations() {
    let dir = temp_dir();
    let zk = Zookeeper::start(&dir.path().join("zk"), ZK_PORT);
    let flags = ["--tick-ms", "500", "--max-client-cnxns", "0", "--super-digest", SUPER_DIGEST];
    let baton = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), &dir.path().join("baton"), &flags);
    assert!(ruok(baton.addr.port()), "baton does not answer ruok");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/kazoo/differential.py");
    let mut args = vec![format!("127.0.0.1:{ZK_PORT}"), baton.connect_string()];
    match std::env::var("BATON_DIFF_SEED") {
        Ok(seed) => args.extend(["--seed".to_string(), seed, "--trace".to_string()]),
        Err(_) => args.extend(["--seeds".to_string(), env_or("BATON_DIFF_SEEDS", "20")]),
    }
    args.extend(["--ops".to_string(), env_or("BATON_DIFF_OPS", "150")]);
    let started = Instant::now();
    let output = Command::new("timeout")
        .arg(env_or("BATON_DIFF_TIMEOUT_S", "600"))
        .arg("python3")
        .arg(script)
        .args(&args)
        .output()
        .expect("run python3 (is kazoo installed? tests/run-all.sh installs it)");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{said}\n(differential run took {:.1} s)", started.elapsed().as_secs_f64());
    drop(zk);
    assert!(output.status.success(), "ZooKeeper and Baton differ ({}):\n{said}", output.status);
}
