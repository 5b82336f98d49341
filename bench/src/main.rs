//! `baton-bench zk --target 127.0.0.1:2181 --workload write --clients 32 --depth 8`
//!
//! Closed loop: `clients` sessions, each with `depth` requests in flight; warm-up excluded;
//! HdrHistogram percentiles. Every write is checked (a setData reply is its proof), and the
//! keys are read back at the end so counted operations really happened.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use zookeeper_client as zk;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "baton-bench", about = "Load generator for ZooKeeper-protocol servers (Baton, ZooKeeper)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a ZooKeeper-protocol server.
    Zk(ZkArgs),
    /// Drive an etcd v3 server through its gRPC API.
    Etcd(EtcdArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum EtcdWorkload {
    /// put of `value-bytes` on a key per client.
    Write,
    /// get of a key per client.
    Read,
    /// put with a lease, then delete (etcd's counterpart of an ephemeral znode).
    CreateDelete,
}

#[derive(clap::Args, Clone)]
struct EtcdArgs {
    /// host:port of the server's client URL.
    #[arg(long, default_value = "127.0.0.1:2379")]
    target: String,
    #[arg(long, value_enum, default_value = "write")]
    workload: EtcdWorkload,
    /// Reads served by the member without a quorum round (etcd's serializable reads);
    /// the default is linearizable.
    #[arg(long)]
    serializable: bool,
    /// gRPC connections.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Seconds measured (after a warm-up of a fifth of that).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Label printed with the result.
    #[arg(long, default_value = "etcd")]
    label: String,
    /// Load-generator threads (see `zk --threads`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Workload {
    /// setData of `value-bytes` on a key per session.
    Write,
    /// getData of a key per session.
    Read,
    /// create + delete of ephemeral znodes.
    CreateDelete,
    /// Create `--count` persistent znodes of `value-bytes` (for memory and restart tests).
    Fill,
}

#[derive(clap::Args, Clone)]
struct ZkArgs {
    /// host:port of the server.
    #[arg(long, default_value = "127.0.0.1:2181")]
    target: String,
    #[arg(long, value_enum, default_value = "write")]
    workload: Workload,
    /// Sessions.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests in flight per session.
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Seconds measured (after a warm-up of a fifth of that).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Label printed with the result (for example "baton" or "zookeeper").
    #[arg(long, default_value = "target")]
    label: String,
    /// Load-generator threads (1: a single-threaded runtime, which costs the least CPU per
    /// request on a small machine shared with the server).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Znodes to create with `--workload fill`.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Zk(args) => {
            let rt = runtime(args.threads)?;
            let bound = Duration::from_secs_f64(args.seconds * 2.0 + 60.0 + args.count as f64 / 5_000.0);
            rt.block_on(async move { tokio::time::timeout(bound, run(args)).await })
                .context("the run exceeded its time bound")?
        }
        Command::Etcd(args) => {
            let rt = runtime(args.threads)?;
            let bound = Duration::from_secs_f64(args.seconds * 2.0 + 60.0);
            rt.block_on(async move { tokio::time::timeout(bound, etcd::run(args)).await })
                .context("the run exceeded its time bound")?
        }
    }
}

/// One closed-loop run's shared state: whether to record, whether to stop, and the totals.
#[derive(Clone)]
struct Window {
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    hist: Arc<Mutex<Histogram<u64>>>,
}

impl Window {
    fn new() -> anyhow::Result<Window> {
        Ok(Window {
            measuring: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            ops: Arc::new(AtomicU64::new(0)),
            hist: Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?)),
        })
    }

    /// Warm-up (a fifth of `seconds`), then the measured window; returns its length.
    async fn run(&self, seconds: f64) -> Duration {
        let measure = Duration::from_secs_f64(seconds);
        tokio::time::sleep(measure / 5).await;
        self.measuring.store(true, Ordering::Relaxed);
        let start = Instant::now();
        tokio::time::sleep(measure).await;
        self.measuring.store(false, Ordering::Relaxed);
        let elapsed = start.elapsed();
        self.stop.store(true, Ordering::Relaxed);
        elapsed
    }

    /// Adds one task's results.
    fn add(&self, n: u64, local: &Histogram<u64>) -> anyhow::Result<()> {
        self.ops.fetch_add(n, Ordering::Relaxed);
        self.hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.add(local)?;
        Ok(())
    }

    fn report(&self, what: String, elapsed: Duration) -> anyhow::Result<()> {
        let h = self.hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let n = self.ops.load(Ordering::Relaxed);
        println!(
            "{what}: {:>9.0} ops/s  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
            n as f64 / elapsed.as_secs_f64(),
            h.value_at_quantile(0.5) as f64 / 1e6,
            h.value_at_quantile(0.9) as f64 / 1e6,
            h.value_at_quantile(0.99) as f64 / 1e6,
            h.value_at_quantile(0.999) as f64 / 1e6,
            h.max() as f64 / 1e6,
        );
        Ok(())
    }
}

mod etcd;

async fn fill(args: &ZkArgs) -> anyhow::Result<()> {
    let root = "/fill";
    let admin = zk::Client::connect(&args.target).await.with_context(|| format!("connecting to {}", args.target))?;
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let _ = admin.create(root, b"", &open).await;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let client = zk::Client::connect(&args.target).await?;
        for _ in 0..args.depth {
            let (client, next, count) = (client.clone(), next.clone(), args.count);
            let value = vec![b'v'; args.value_bytes];
            tasks.push(tokio::spawn(async move {
                let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<(), anyhow::Error>(());
                    }
                    client.create(&format!("/fill/n{i:09}"), &value, &open).await?;
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
        args.label,
        args.count,
        args.value_bytes,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn run(args: ZkArgs) -> anyhow::Result<()> {
    if args.workload == Workload::Fill {
        return fill(&args).await;
    }
    let root = format!("/bench-{}", std::process::id());
    let admin = zk::Client::connect(&args.target).await.with_context(|| format!("connecting to {}", args.target))?;
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    admin.create(&root, b"", &open).await.context("creating the bench root")?;
    let value = vec![b'v'; args.value_bytes];
    let window = Window::new()?;
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = zk::Client::connect(&args.target).await.context("connecting a session")?;
        let key = format!("{root}/k{c}");
        client.create(&key, &value, &open).await.context("creating a key")?;
        for d in 0..args.depth {
            let (client, key, value, window) = (client.clone(), key.clone(), value.clone(), window.clone());
            let workload = args.workload;
            let mine = format!("{key}-e{d}");
            tasks.push(tokio::spawn(async move {
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
                let mut n = 0u64;
                let eph = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
                while !window.stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match workload {
                        Workload::Write => {
                            client.set_data(&key, &value, None).await?;
                        }
                        Workload::Read => {
                            client.get_data(&key).await?;
                        }
                        Workload::Fill => unreachable!("fill runs separately"),
                        Workload::CreateDelete => {
                            client.create(&mine, &value, &eph).await?;
                            client.delete(&mine, None).await?;
                        }
                    }
                    if window.measuring.load(Ordering::Relaxed) {
                        local.record(t.elapsed().as_nanos() as u64)?;
                        n += 1;
                    }
                }
                window.add(n, &local)
            }));
        }
    }
    let elapsed = window.run(args.seconds).await;
    for t in tasks {
        t.await??;
    }
    // The counted writes really happened: every key holds the value and has been versioned.
    if args.workload == Workload::Write {
        for c in 0..args.clients {
            let (data, stat) = admin.get_data(&format!("{root}/k{c}")).await?;
            anyhow::ensure!(data == value && stat.version > 0, "key {c} was not written");
        }
    }
    window.report(
        format!(
            "{:<10} {:?} clients={} depth={} value={}B",
            args.label, args.workload, args.clients, args.depth, args.value_bytes
        ),
        elapsed,
    )
}
