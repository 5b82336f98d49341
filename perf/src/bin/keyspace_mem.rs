//! etcd's keyspace's memory per key, on its own: the keys `baton-bench etcd --workload fill`
//! puts (`fill/n000000000`… with values of 256 B), its key map repacked as a snapshot's clone
//! does it, then the same keyspace as a restart has it
//! (loaded from its image, which stays mapped: the values are views of it). Prints what the
//! keyspace asks of the allocator per key, what the allocator sets aside for it, and the
//! process's resident memory, so that the keyspace's share of a server's memory is told apart
//! from the rest.
//!
//! `cargo run --release -p baton-perf --bin keyspace-mem -- --count 1000000`

use baton_engine::mvcc::{KeySpace, KeySpaceLoader, PutRequest, Value};
use baton_perf::counting::{rss_kb, Counting, Live};
use clap::Parser;

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser, Debug)]
#[command(name = "keyspace-mem", about = "Memory per key of Baton's etcd keyspace alone")]
struct Args {
    /// Keys to put.
    #[arg(long, default_value_t = 1_000_000)]
    count: u32,
    /// Value bytes per key.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Report every this many keys.
    #[arg(long, default_value_t = 250_000)]
    every: u32,
}

fn report(what: &str, keys: u32, live: Live, rss_delta_kb: u64) {
    let per = |x: u64| x as f64 / f64::from(keys.max(1));
    println!(
        "{what:<22} {keys:>10} {:>8} MB {:>10.1} {:>14.1} {:>15.1} {:>14.2}",
        rss_delta_kb >> 10,
        per(rss_delta_kb * 1024),
        per(live.bytes),
        per(live.usable),
        per(live.blocks)
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "{:<22} {:>10} {:>11} {:>10} {:>14} {:>15} {:>14}",
        "", "keys", "RSS delta", "B/key", "asked B/key", "usable B/key", "blocks/key"
    );
    let base = rss_kb();
    let before = Live::now();
    let mut ks = KeySpace::new();
    let value = vec![b'v'; args.value_bytes];
    for i in 0..args.count {
        let put = PutRequest { key: format!("fill/n{i:09}").into_bytes(), value: value.clone(), ..Default::default() };
        ks.put(&put).map_err(|e| anyhow::anyhow!("put {i}: {e}"))?;
        let made = i + 1;
        if made % args.every == 0 || made == args.count {
            report("put", made, Live::now().since(&before), rss_kb().saturating_sub(base));
        }
    }
    anyhow::ensure!(ks.key_count() == args.count as usize, "the keyspace holds {} keys", ks.key_count());
    // A snapshot's clone builds the key map again with full leaves; the live keyspace takes it.
    let frozen = ks.clone();
    frozen.repack();
    drop(frozen);
    while ks.repack_step(usize::MAX) {}
    report("put, then repacked", args.count, Live::now().since(&before), rss_kb().saturating_sub(base));

    // A restart: the image (a snapshot file's payload, here in memory) and the keyspace
    // loaded from it with its values left in it.
    let image = Value::from(ks.to_image());
    drop(ks);
    let (base, before) = (rss_kb(), Live::now());
    let mut loader = KeySpaceLoader::backed_by(image.clone());
    loader.push(&image)?;
    let loaded = loader.finish()?;
    anyhow::ensure!(loaded.key_count() == args.count as usize, "loaded {} keys", loaded.key_count());
    report("loaded (values mapped)", args.count, Live::now().since(&before), rss_kb().saturating_sub(base));
    println!("image: {} MB", image.len() >> 20);
    Ok(())
}
