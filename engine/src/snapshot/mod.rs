//! Snapshots: point-in-time images of the state machine, and purging what they cover.
//!
//! The store is generic: it writes and loads an opaque payload (the data tree serializes
//! itself with rkyv) under a header that names the zxid the image covers.
//!
//! ```text
//!  snap-<zxid, 16 hex>.snap
//!  0          8         12   16     24            32              40       56       64
//!  | "BATONSNP" | version | 0 | zxid | payload_len | payload_xxh3 | zeros | hdr_xxh3 | payload...
//! ```
//!
//! Writing goes to `snap-….tmp`, is fsync'ed, renamed, and the directory fsync'ed, so a crash
//! leaves either the whole snapshot or none. Loading tries the newest first and falls back to
//! older ones when a file is damaged, reporting every one it skipped.

mod store;

pub use store::{LoadOutcome, LoadedSnapshot, Resident, SnapshotError, SnapshotInfo, SnapshotStore, SnapshotWriter};

use crate::log::Zxid;
use crate::wal::{Wal, WalError};

/// Deletes all but the newest `keep` snapshots, then the WAL segments wholly covered by the
/// oldest snapshot kept (so every kept snapshot can still be replayed forward). Returns the
/// zxid of the oldest snapshot kept, if any.
pub fn purge(store: &SnapshotStore, wal: &Wal, keep: usize) -> Result<Option<Zxid>, PurgeError> {
    let oldest_kept = store.purge(keep.max(1))?;
    if let Some(zxid) = oldest_kept {
        wal.purge_through(zxid)?;
    }
    Ok(oldest_kept)
}

/// Failure of [`purge`].
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// Deleting snapshots failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Deleting segments failed.
    #[error(transparent)]
    Wal(#[from] WalError),
}
