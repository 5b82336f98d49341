//! Appends to a WAL under load until killed, printing each zxid once it is durable.
//!
//! Usage: `wal_crash_child <dir> <round> <tasks>`. Recovers the log, then `tasks`
//! concurrent appenders write zxids last+1, last+2, ... with `crash_payload::make(z, round)`.
//! Meanwhile, as a server does after snapshots, segments wholly more than [`KEEP`] entries
//! behind the durable end are released for reuse, so new segments recycle old files.

use std::cell::Cell;
use std::io::Write;
use std::rc::Rc;

use baton_engine::wal::{Wal, WalConfig};
use baton_engine::Zxid;
use baton_tests::crash_payload;

/// Entries behind the durable end that are never released (the test relies on it).
pub const KEEP: u64 = baton_tests::CRASH_KEEP_ENTRIES;

#[global_allocator]
static GLOBAL: baton_engine::alloc::Mimalloc = baton_engine::alloc::Mimalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 4, "usage: wal_crash_child <dir> <round> <tasks>");
    let dir = std::path::PathBuf::from(&args[1]);
    let round: u32 = args[2].parse()?;
    let tasks: usize = args[3].parse()?;
    baton_engine::sys::raise_memlock_limit();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .map_err(std::io::Error::from)?;
    executor.run(baton_engine::sys::with_reactor_ticking(async move {
        let config = WalConfig {
            segment_bytes: 256 << 10,
            batch_bytes_max: 32 << 10,
            entry_bytes_max: 64 << 10,
            ..WalConfig::new(&dir)
        };
        let (wal, reader) = Wal::open(config).await?;
        let next = Rc::new(Cell::new(reader.last_zxid().0 + 1));
        drop(reader);
        let wal = Rc::new(wal);
        let mut handles = Vec::new();
        let releaser = {
            let wal = wal.clone();
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                    let durable = wal.durable_zxid().0;
                    for path in wal.recycle_through(Zxid(durable.saturating_sub(KEEP)))? {
                        std::fs::remove_file(path)?;
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), anyhow::Error>(())
            })
        };
        handles.push(releaser);
        for _ in 0..tasks {
            let (wal, next) = (wal.clone(), next.clone());
            handles.push(glommio::spawn_local(async move {
                loop {
                    let z = next.get();
                    next.set(z + 1);
                    let durable = wal.submit(Zxid(z), &crash_payload::make(z, round))?;
                    durable.await?;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{z}")?;
                    out.flush()?;
                }
                #[allow(unreachable_code)]
                Ok::<(), anyhow::Error>(())
            }));
        }
        for h in handles {
            h.await?;
        }
        Ok(())
    }))
}
