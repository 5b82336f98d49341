//! Operator tools: verify and dump a WAL directory, list snapshots — like ZooKeeper's
//! `TxnLogToolkit` and `SnapshotFormatter`, for Baton's formats.

use std::fmt::Write as _;
use std::path::Path;

use baton_engine::log::Transaction;
use baton_engine::snapshot::SnapshotStore;
use baton_engine::wal::{WalError, WalReader};
use baton_engine::Zxid;

/// A summary of a verified WAL directory, one line per segment and a total.
pub fn verify_wal(dir: &Path) -> Result<String, WalError> {
    let reader = WalReader::open(dir)?;
    let mut out = String::new();
    for s in reader.segments() {
        let _ = writeln!(
            out,
            "{}  first {}  last {}  {} records  {} bytes used of {}",
            s.path.display(),
            s.header.first_zxid,
            s.last_zxid.map_or("-".to_string(), |z| z.to_string()),
            s.records,
            s.end,
            s.header.segment_bytes
        );
    }
    if let Some(t) = reader.torn_tail() {
        let _ = writeln!(
            out,
            "torn tail in {} at offset {} (up to {}): an unacknowledged batch cut short by a crash; \
             it is zeroed at the next open",
            t.path.display(),
            t.offset,
            t.dirty_end
        );
    }
    let _ = writeln!(
        out,
        "ok: {} segments, {} records, last zxid {}",
        reader.segments().len(),
        reader.record_count(),
        reader.last_zxid()
    );
    Ok(out)
}

/// One line per record above `after` (at most `limit`), decoding entries where they are
/// archived `Transaction`s.
pub fn dump_wal(dir: &Path, after: Zxid, limit: usize) -> Result<String, WalError> {
    let reader = WalReader::open(dir)?;
    let mut out = String::new();
    for record in reader.records_after(after).take(limit) {
        match Transaction::decode(record.payload) {
            Ok(e) => {
                let _ = writeln!(
                    out,
                    "{} session {} cxid {} time {} {:?}",
                    record.zxid, e.session_id, e.cxid, e.time_ms, e.txn
                );
            }
            Err(err) => {
                let _ = writeln!(out, "{} {} bytes (not an entry: {err})", record.zxid, record.payload.len());
            }
        }
    }
    Ok(out)
}

/// One line per snapshot, newest last, saying which one recovery would load.
pub fn list_snapshots(dir: &Path) -> Result<String, baton_engine::snapshot::SnapshotError> {
    // Read only: the server may be running, writing and purging snapshots beside it.
    let store = SnapshotStore::open_read_only(dir);
    let mut out = String::new();
    for s in store.list()? {
        let _ = writeln!(out, "{}  zxid {}", s.path.display(), s.zxid);
    }
    let outcome = store.load_newest()?;
    for skipped in &outcome.skipped {
        let _ = writeln!(out, "damaged: {skipped}");
    }
    match outcome.snapshot {
        Some(s) => {
            let _ = writeln!(out, "recovery loads zxid {} ({} payload bytes)", s.info.zxid, s.payload().len());
        }
        None => {
            let _ = writeln!(out, "no valid snapshot");
        }
    }
    Ok(out)
}
