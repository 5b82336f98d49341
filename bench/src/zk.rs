//! The ZooKeeper-protocol target (Baton, Apache ZooKeeper), through the `zookeeper-client`
//! crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use zookeeper_client as zk;

use crate::load::{histogram, Driver, Load, Outcome, Window};
pub use crate::workload::Workload;

/// `baton-bench zk`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// host:port of the server.
    #[arg(long, default_value = "127.0.0.1:2181")]
    pub target: String,
    #[arg(long, value_enum, default_value = "write")]
    pub workload: Workload,
    #[command(flatten)]
    pub load: Load,
    /// Znodes to create with `--workload fill`.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
}

fn open() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

async fn connect(target: &str) -> anyhow::Result<zk::Client> {
    zk::Client::connect(target).await.with_context(|| format!("connecting to {target}"))
}

/// The session for the requests around a run: the crate's client, or over TLS (which the
/// crate does not speak) the wire driver's.
enum Admin {
    Crate(zk::Client),
    Wire(crate::wire::Admin),
}

impl Admin {
    async fn connect(target: &str, tls: &crate::wire::Tls) -> anyhow::Result<Admin> {
        Ok(match tls {
            None => Admin::Crate(connect(target).await?),
            Some(_) => Admin::Wire(crate::wire::Admin::connect(target, tls).await?),
        })
    }

    async fn create_root(&mut self, root: &str) -> anyhow::Result<()> {
        match self {
            Admin::Crate(c) => {
                c.create(root, b"", &open()).await.context("creating the bench root")?;
            }
            Admin::Wire(w) => {
                let err = w.create(root, b"").await?;
                anyhow::ensure!(err == 0, "creating the bench root failed with ZooKeeper error {err}");
            }
        }
        Ok(())
    }

    /// A znode's value and version.
    async fn get(&mut self, path: &str) -> anyhow::Result<(Vec<u8>, i32)> {
        match self {
            Admin::Crate(c) => Ok(c.get_data(path).await.map(|(data, stat)| (data, stat.version))?),
            Admin::Wire(w) => w.get(path).await,
        }
    }
}

/// Runs the workload and prints its result.
pub async fn run(args: Args) -> anyhow::Result<Option<Outcome>> {
    match args.workload {
        Workload::Fill => return fill(&args).await.map(|()| None),
        Workload::WatchFanout => return watch_fanout(&args).await.map(Some),
        _ => {}
    }
    let load = &args.load;
    let root = crate::load::run_root("bench");
    let wire = load.driver == Driver::Wire && crate::wire::supports(args.workload) && load.rate.is_none();
    let tls = load.tls_ca.as_deref().map(crate::wire::connector).transpose()?;
    anyhow::ensure!(
        tls.is_none() || wire,
        "--tls-ca needs the wire driver, closed loop, and a workload it runs (write, read, mixed, create-delete)"
    );
    let mut admin = Admin::connect(&args.target, &tls).await?;
    admin.create_root(&root).await?;
    let value = vec![b'v'; load.value_bytes];
    let window = Window::new()?.slow_log(load.slow_ms);
    let mut tasks = Vec::new();
    // The wire driver's sessions, or the crate's clients below (none when the wire runs).
    let crate_clients = if wire {
        tasks = crate::wire::run(&args.target, &tls, args.workload, load, &root, &window).await?;
        0
    } else {
        load.clients
    };
    for c in 0..crate_clients {
        let client = connect(&args.target).await?;
        let key = format!("{root}/k{c}");
        client.create(&key, &value, &open()).await.context("creating a key")?;
        for d in 0..load.depth {
            let index = c * load.depth + d;
            let (client, key, value, window, target) =
                (client.clone(), key.clone(), value.clone(), window.clone(), args.target.clone());
            let (workload, mut pacer, mut mix) = (args.workload, load.pacer(index), load.mix(index));
            let mine = format!("{key}-e{d}");
            let lock_dir = format!("{root}/lock");
            tasks.push(tokio::spawn(async move {
                let mut local = histogram()?;
                let mut n = 0u64;
                let eph = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
                while !window.stop.load(Ordering::Relaxed) {
                    let start = pacer.start().await;
                    match workload {
                        Workload::Write => {
                            client.set_data(&key, &value, None).await?;
                        }
                        Workload::Read => {
                            client.get_data(&key).await?;
                        }
                        Workload::Mixed => {
                            if mix.next_is_read() {
                                client.get_data(&key).await?;
                            } else {
                                client.set_data(&key, &value, None).await?;
                            }
                        }
                        Workload::CreateDelete => {
                            client.create(&mine, &value, &eph).await?;
                            client.delete(&mine, None).await?;
                        }
                        Workload::Sessions => {
                            let session = connect(&target).await?;
                            session.get_data("/").await?;
                            drop(session);
                        }
                        Workload::Lock => {
                            let prefix = zk::LockPrefix::new_curator(&lock_dir, "lock-")?;
                            let options = zk::LockOptions::new(zk::Acls::anyone_all()).with_ancestor_options(open())?;
                            let held = client.lock(prefix, b"", options).await?;
                            // Release: delete the lock node before the next attempt.
                            let path = held.lock_path().to_string();
                            std::mem::forget(held);
                            client.delete(&path, None).await?;
                        }
                        Workload::Fill | Workload::WatchFanout => anyhow::bail!("runs separately"),
                    }
                    window.record(&mut local, &mut n, start)?;
                }
                window.add(n, &local)
            }));
        }
    }
    let elapsed = window.run(load.seconds, &load.label).await;
    for t in tasks {
        t.await??;
    }
    // The counted writes really happened: every key holds the value and has been versioned.
    // (With `--spread` the writes went elsewhere; each reply was checked for success.)
    if matches!(args.workload, Workload::Write | Workload::Mixed) && load.read_ratio < 1.0 && load.spread == 0 {
        for c in 0..load.clients {
            let key = format!("{root}/k{c}");
            let (data, version) = admin.get(&key).await?;
            anyhow::ensure!(data == value && version > 0, "key {c} was not written");
        }
    }
    if let (Workload::Lock, Admin::Crate(admin)) = (args.workload, &admin) {
        let (children, _) = admin.get_children(&format!("{root}/lock")).await?;
        anyhow::ensure!(children.is_empty(), "locks left held: {children:?}");
    }
    let workload = format!("{:?}", args.workload);
    window.report(load, "zookeeper-protocol", &workload, if wire { "wire" } else { "crate" }, elapsed).map(Some)
}

/// `watch-fanout`: `clients - 1` sessions watch one key; one session writes it, waits until
/// every watcher has seen the change, and writes again. Each notification's latency is
/// counted from its write.
async fn watch_fanout(args: &Args) -> anyhow::Result<Outcome> {
    let load = &args.load;
    let watchers = load.clients.saturating_sub(1).max(1);
    let key = crate::load::run_root("bench-watched");
    let writer = connect(&args.target).await?;
    writer.create(&key, b"0", &open()).await.context("creating the watched key")?;
    let window = Window::new()?.slow_log(load.slow_ms);
    let epoch = Instant::now();
    // Nanoseconds since `epoch` of the write being delivered, and how many saw it.
    let sent_at = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let client = connect(&args.target).await?;
        let (key, window, sent_at, seen) = (key.clone(), window.clone(), sent_at.clone(), seen.clone());
        let (_, _, watch) = client.get_and_watch_data(&key).await?;
        tasks.push(tokio::spawn(async move {
            let mut local = histogram()?;
            let mut n = 0u64;
            let mut pending = Box::pin(watch.changed());
            while !window.stop.load(Ordering::Relaxed) {
                let changed = tokio::time::timeout(std::time::Duration::from_millis(200), &mut pending).await;
                let Ok(_event) = changed else { continue };
                let start = epoch + std::time::Duration::from_nanos(sent_at.load(Ordering::Acquire));
                window.record(&mut local, &mut n, start)?;
                let (_, _, watch) = client.get_and_watch_data(&key).await?;
                pending = Box::pin(watch.changed());
                seen.fetch_add(1, Ordering::AcqRel);
            }
            window.add(n, &local)
        }));
    }
    let driver = {
        let (window, sent_at, seen, key) = (window.clone(), sent_at.clone(), seen.clone(), key.clone());
        tokio::spawn(async move {
            let mut round = 0u64;
            while !window.stop.load(Ordering::Relaxed) {
                round += 1;
                seen.store(0, Ordering::Release);
                sent_at.store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
                writer.set_data(&key, round.to_string().as_bytes(), None).await?;
                // Every watcher re-arms before the next write (or the run ends).
                while seen.load(Ordering::Acquire) < watchers as u64 && !window.stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                }
            }
            Ok::<u64, anyhow::Error>(round)
        })
    };
    let elapsed = window.run(load.seconds, &load.label).await;
    let rounds = driver.await??;
    for t in tasks {
        t.await??;
    }
    anyhow::ensure!(rounds > 1, "no write went around");
    window.report(load, "zookeeper-protocol", &format!("WatchFanout watchers={watchers}"), "crate", elapsed)
}

async fn fill(args: &Args) -> anyhow::Result<()> {
    let load = &args.load;
    let root = "/fill";
    let admin = connect(&args.target).await?;
    let _ = admin.create(root, b"", &open()).await;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..load.clients {
        let client = connect(&args.target).await?;
        for _ in 0..load.depth {
            let (client, next, count) = (client.clone(), next.clone(), args.count);
            let value = vec![b'v'; load.value_bytes];
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<(), anyhow::Error>(());
                    }
                    client.create(&format!("/fill/n{i:09}"), &value, &open()).await?;
                }
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let (_, stat) = admin.get_data(root).await?;
    anyhow::ensure!(stat.num_children as u64 >= args.count, "only {} znodes exist", stat.num_children);
    println!(
        "{}: created {} znodes of {} B in {:.1} s",
        load.label,
        args.count,
        load.value_bytes,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
