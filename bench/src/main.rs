//! `baton-bench zk --target 127.0.0.1:2181 --workload write --clients 32 --depth 8`
//! `baton-bench etcd --target 127.0.0.1:2379 --workload read --serializable`
//! `baton-bench sweep --workload write --loads 32x8,32x32 --reps 3`
//!
//! Closed loop by default (`clients` sessions, each with `depth` requests in flight), open
//! loop with `--rate`; warm-up excluded; HdrHistogram percentiles; a progress bar on a
//! terminal; `--json FILE` appends the result. Every write workload checks afterwards that
//! its writes happened.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod compare;
mod etcd;
mod grpc;
mod load;
mod sweep;
mod wire;
mod workload;
mod zk;

#[global_allocator]
static GLOBAL: baton_engine::alloc::Mimalloc = baton_engine::alloc::Mimalloc;

#[derive(Parser)]
#[command(name = "baton-bench", about = "Load generator for Baton, Apache ZooKeeper and etcd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a ZooKeeper-protocol server (Baton, Apache ZooKeeper).
    Zk(zk::Args),
    /// Drive an etcd v3 server through its gRPC API.
    Etcd(etcd::Args),
    /// Start Baton, ZooKeeper and etcd in turn, run the same workloads on each, and report
    /// side by side (table, JSON, SVG plots).
    Compare(compare::Args),
    /// Run `compare` for one workload on two targets at several loads, repeated, and report
    /// the median ratio at each load and peak against peak (table, JSON, SVG plot).
    Sweep(sweep::Args),
    /// Time from now until an etcd server answers a linearizable read of a key (after a
    /// restart), retrying every 5 ms.
    EtcdReady {
        /// host:port.
        #[arg(long)]
        target: String,
        /// The key to read (it must be there); without it, any answer will do.
        #[arg(long)]
        key: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300.0)]
        timeout: f64,
    },
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    })
}

fn main() {
    // One line with the whole chain of causes: "connecting to 127.0.0.1:1: connection refused".
    if let Err(e) = run() {
        eprintln!("baton-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Zk(args) => {
            let rt = runtime(args.load.threads)?;
            let bound = Duration::from_secs_f64(args.load.seconds * 2.0 + 60.0 + args.count as f64 / 5_000.0);
            rt.block_on(async move { tokio::time::timeout(bound, zk::run(args)).await })
                .context("the run exceeded its time bound")?
                .map(|_| ())
        }
        Command::Etcd(args) => {
            let rt = runtime(args.load.threads)?;
            let bound = Duration::from_secs_f64(args.load.seconds * 2.0 + 60.0 + args.count as f64 / 2_000.0);
            rt.block_on(async move { tokio::time::timeout(bound, etcd::run(args)).await })
                .context("the run exceeded its time bound")?
                .map(|_| ())
        }
        Command::Compare(args) => {
            let rt = runtime(args.load.threads)?;
            rt.block_on(compare::run(args))
        }
        Command::Sweep(args) => sweep::run(args),
        Command::EtcdReady { target, key, timeout } => {
            let rt = runtime(1)?;
            let secs = rt.block_on(etcd::ready(&target, key.as_deref(), Duration::from_secs_f64(timeout)))?;
            println!("{secs:.3}");
            Ok(())
        }
    }
}
