//! Differential test: any sequence of appends (rolling segments), truncations, purges,
//! segment recycling and reopenings reads back exactly what a plain `Vec` model says.

use std::rc::Rc;

use proptest::prelude::*;

use super::{Wal, WalConfig, WalReader};
use crate::log::Zxid;
use crate::test_support::{run, temp_dir};

#[derive(Debug, Clone)]
enum Op {
    /// Append `count` entries with payload lengths cycling from `len`, `tasks` at a time.
    Append { count: u64, len: usize, tasks: usize },
    /// Truncate after the entry at this fraction (per mille) of the model.
    Truncate { per_mille: u64 },
    /// Purge segments covered through this fraction of the model.
    Purge { per_mille: u64 },
    /// Release them for reuse instead; what the pool cannot hold waits for the janitor.
    Recycle { per_mille: u64 },
    /// The janitor deletes the released files waiting for it (a server's janitor thread
    /// lags behind: files may still wait at a reopen, like at a crash).
    Janitor,
    /// Close and reopen, checking the recovered log.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..120, 1usize..3000, 1usize..6).prop_map(|(count, len, tasks)| Op::Append { count, len, tasks }),
        2 => (0u64..1100).prop_map(|per_mille| Op::Truncate { per_mille }),
        1 => (0u64..1000).prop_map(|per_mille| Op::Purge { per_mille }),
        2 => (0u64..1000).prop_map(|per_mille| Op::Recycle { per_mille }),
        1 => Just(Op::Janitor),
        2 => Just(Op::Reopen),
    ]
}

fn payload(zxid: u64, salt: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (zxid.wrapping_mul(131) ^ salt.wrapping_mul(7) ^ i as u64) as u8).collect()
}

struct Model {
    entries: Vec<(u64, Vec<u8>)>,
    /// Entries at or below this may have been purged.
    purged_through: u64,
    next_zxid: u64,
    /// Appends so far; salts payloads so that zxids reused after a truncation differ.
    appends: u64,
    /// Released files waiting for the janitor.
    doomed: Vec<std::path::PathBuf>,
}

impl Model {
    fn pick(&self, per_mille: u64) -> u64 {
        if self.entries.is_empty() {
            return 0;
        }
        let i = (per_mille as usize * self.entries.len() / 1000).min(self.entries.len() - 1);
        self.entries[i].0
    }

    /// The recovered log must be a suffix of the model holding every unpurged entry.
    fn check(&self, read: &[(u64, Vec<u8>)]) -> Result<(), TestCaseError> {
        prop_assert!(read.len() <= self.entries.len());
        let suffix = &self.entries[self.entries.len() - read.len()..];
        prop_assert!(read == suffix, "recovered log is not a suffix of the model");
        let unpurged = self.entries.iter().filter(|(z, _)| *z > self.purged_through).count();
        prop_assert!(read.len() >= unpurged, "an unpurged entry is missing");
        Ok(())
    }
}

fn config(dir: &std::path::Path) -> WalConfig {
    WalConfig {
        segment_bytes: 64 << 10,
        batch_bytes_max: 6 << 10,
        batch_entries_max: 7,
        entry_bytes_max: 8 << 10,
        queued_bytes_max: 4 << 20,
        ..WalConfig::new(dir)
    }
}

fn read(dir: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    let reader = WalReader::open(dir).expect("log verifies");
    assert!(reader.torn_tail().is_none(), "a clean shutdown leaves no torn tail");
    reader.records().map(|r| (r.zxid.0, r.payload.to_vec())).collect()
}

fn execute(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = temp_dir();
    let path = dir.path().to_path_buf();
    let mut model = Model { entries: Vec::new(), purged_through: 0, next_zxid: 1, appends: 0, doomed: Vec::new() };
    let mut salt = 0u64;
    let mut pending = ops.into_iter().peekable();
    while pending.peek().is_some() {
        // One executor per open/close cycle.
        let mut batch = Vec::new();
        for op in pending.by_ref() {
            let reopen = matches!(op, Op::Reopen);
            batch.push(op);
            if reopen {
                break;
            }
        }
        salt += 1;
        let p = path.clone();
        let empty = Model { entries: Vec::new(), purged_through: 0, next_zxid: 0, appends: 0, doomed: Vec::new() };
        let mut m = std::mem::replace(&mut model, empty);
        model = run(async move {
            let (wal, reader) = Wal::open(config(&p)).await.expect("open");
            let recovered: Vec<_> = reader.records().map(|r| (r.zxid.0, r.payload.to_vec())).collect();
            m.check(&recovered).expect("recovered log matches the model");
            drop(reader);
            let wal = Rc::new(wal);
            for op in batch {
                apply(&wal, &mut m, op, salt).await;
            }
            Rc::try_unwrap(wal).ok().expect("sole owner").close().await.expect("close");
            m
        });
        model.check(&read(&path))?;
    }
    Ok(())
}

async fn apply(wal: &Rc<Wal>, m: &mut Model, op: Op, salt: u64) {
    match op {
        Op::Append { count, len, tasks } => {
            let first = m.next_zxid;
            m.appends += 1;
            let salt = salt * 1000 + m.appends;
            // Up to `tasks` submissions in flight at once, so batches hold several entries.
            let mut durables = Vec::new();
            for k in 0..count {
                let z = first + k;
                let p = payload(z, salt, 1 + (len * (k as usize + 1)) % 5000);
                durables.push(wal.submit(Zxid(z), &p).expect("submit"));
                m.entries.push((z, p));
                if durables.len() >= tasks {
                    for d in durables.drain(..) {
                        d.await.expect("durable");
                    }
                }
            }
            for d in durables {
                d.await.expect("durable");
            }
            m.next_zxid = first + count;
        }
        Op::Truncate { per_mille } => {
            let cut = if per_mille >= 1000 { m.next_zxid } else { m.pick(per_mille) };
            wal.truncate_after(Zxid(cut)).await.expect("truncate");
            m.entries.retain(|(z, _)| *z <= cut);
            // New history reuses the dropped zxids, with other payloads (the salt differs).
            m.next_zxid = cut + 1;
        }
        Op::Purge { per_mille } => {
            let through = m.pick(per_mille);
            wal.purge_through(Zxid(through)).expect("purge");
            m.purged_through = m.purged_through.max(through);
        }
        Op::Recycle { per_mille } => {
            let through = m.pick(per_mille);
            m.doomed.extend(wal.recycle_through(Zxid(through)).expect("recycle"));
            m.purged_through = m.purged_through.max(through);
        }
        Op::Janitor => {
            for path in m.doomed.drain(..) {
                match std::fs::remove_file(&path) {
                    // A reopen deletes what was left.
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("delete {}: {e}", path.display()),
                    _ => {}
                }
            }
        }
        Op::Reopen => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_a_vec_model(ops in proptest::collection::vec(op(), 1..24)) {
        execute(ops)?;
    }
}
