//! `baton`: Baton's command-line entry point.

use std::path::PathBuf;

use anyhow::Context;
use baton_server::inspect;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "baton", version, about = "Baton: a coordination service speaking the ZooKeeper protocol")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect a write-ahead log directory.
    Wal {
        #[command(subcommand)]
        action: WalAction,
    },
    /// Inspect a snapshot directory.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
}

#[derive(Subcommand)]
enum WalAction {
    /// Verify every record's length and checksum; report a torn tail or corruption (with
    /// file and offset). Exits non-zero on corruption. Never modifies the files.
    Verify { dir: PathBuf },
    /// Print the records, decoded.
    Dump {
        dir: PathBuf,
        /// Only records above this zxid (decimal or 0x-hex).
        #[arg(long, default_value = "0")]
        after: String,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum SnapshotAction {
    /// List snapshots and say which one recovery would load.
    List { dir: PathBuf },
}

fn parse_zxid(text: &str) -> anyhow::Result<baton_engine::Zxid> {
    let value = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .with_context(|| format!("not a zxid: {text}"))?;
    Ok(baton_engine::Zxid(value))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let out = match cli.command {
        Command::Wal { action: WalAction::Verify { dir } } => inspect::verify_wal(&dir)?,
        Command::Wal { action: WalAction::Dump { dir, after, limit } } => {
            inspect::dump_wal(&dir, parse_zxid(&after)?, limit)?
        }
        Command::Snapshot { action: SnapshotAction::List { dir } } => inspect::list_snapshots(&dir)?,
    };
    print!("{out}");
    Ok(())
}
