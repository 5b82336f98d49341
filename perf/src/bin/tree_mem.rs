//! The data tree's memory per znode, on its own: builds the tree `baton-bench --workload
//! fill` makes (`/fill/n000000000`… with values of 100 B) by applying creates in multis, and
//! prints the process's resident memory per znode every step, so that the engine's share of
//! a server's memory is told apart from the rest.
//!
//! `cargo run --release -p baton-perf --bin tree-mem -- --count 1000000`

use baton_engine::log::{CreateTxn, MultiOp, NodeKind, Transaction, Txn};
use baton_engine::tree::{open_acl, DataTree};
use baton_engine::{SessionId, Zxid};
use baton_perf::counting::{rss_kb, Counting, Live};
use clap::Parser;

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser, Debug)]
#[command(name = "tree-mem", about = "Resident memory per znode of Baton's data tree alone")]
struct Args {
    /// Znodes to create under /fill.
    #[arg(long, default_value_t = 1_000_000)]
    count: u32,
    /// Value bytes per znode.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Creates per multi (one applied entry).
    #[arg(long, default_value_t = 1000)]
    batch: u32,
    /// Report every this many znodes.
    #[arg(long, default_value_t = 250_000)]
    every: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut tree = DataTree::new();
    let mut zxid = 0u32;
    let mut apply = |tree: &mut DataTree, txn: Txn| -> anyhow::Result<()> {
        zxid += 1;
        let t = Transaction { zxid: Zxid::new(1, zxid), session_id: SessionId(1), cxid: 1, time_ms: 1, txn };
        let bytes = t.encode();
        let archived = Transaction::access(&bytes)?;
        tree.apply(archived);
        Ok(())
    };
    let create = |path: String, data: Vec<u8>, parent_cversion: i32| {
        MultiOp::Create(CreateTxn { path, data, acl: open_acl(), kind: NodeKind::Persistent, parent_cversion })
    };
    apply(&mut tree, Txn::Multi(vec![create("/fill".into(), Vec::new(), 2)]))?;
    let base = rss_kb();
    let before = Live::now();
    let value = vec![b'v'; args.value_bytes];
    let mut made = 0u32;
    println!(
        "{:>12} {:>12} {:>10} {:>14} {:>15} {:>14}",
        "znodes", "RSS delta", "B/znode", "asked B/znode", "usable B/znode", "blocks/znode"
    );
    while made < args.count {
        let n = args.batch.min(args.count - made);
        let ops = (made..made + n).map(|i| create(format!("/fill/n{i:09}"), value.clone(), i as i32 + 1)).collect();
        apply(&mut tree, Txn::Multi(ops))?;
        made += n;
        if made % args.every == 0 || made == args.count {
            let delta = rss_kb().saturating_sub(base) * 1024;
            let Live { bytes: asked, blocks, usable } = Live::now().since(&before);
            let per = |x: u64| x as f64 / f64::from(made);
            println!(
                "{made:>12} {:>10} MB {:>10.1} {:>14.1} {:>15.1} {:>14.2}",
                delta >> 20,
                per(delta),
                per(asked),
                per(usable),
                per(blocks)
            );
        }
    }
    anyhow::ensure!(tree.node_count() as u64 >= u64::from(args.count), "the tree holds {} znodes", tree.node_count());
    Ok(())
}
