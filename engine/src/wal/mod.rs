//! The write-ahead log.
//!
//! - [`record`]: the `[len][magic][xxh3][zxid][batch_start][payload]` framing.
//! - [`segment`]: segment naming and header.
//! - [`Wal`]: group commit on glommio DMA files (io_uring), with background zero-filled
//!   segment preparation, crash-safe truncation and purge.
//! - [`WalReader`]: recovery — memory-maps segments, verifies every record, cuts a torn
//!   tail, reports corruption with file and offset, and yields records in place.

mod error;
mod files;
mod group_commit;
#[cfg(test)]
mod model_tests;
mod reader;
pub mod record;
pub mod segment;
mod spare;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use error::WalError;
pub use files::{DirLock, LOCK_FILE, SPARE_FILE, TRUNCATE_INTENT_FILE};
pub use group_commit::{Durable, Idle, Ready, Wal, WalStats};
pub use reader::{ReadSegment, TornTail, WalReader};
pub use record::LogEntryRef;

/// WAL settings. Every queue and batch has a bound (STYLE: "everything has a bound").
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Directory holding the segments.
    pub dir: PathBuf,
    /// Size of each preallocated segment file (multiple of 4 KiB, at least 64 KiB).
    pub segment_bytes: u64,
    /// Record bytes one batch (one write + fdatasync) may carry; a larger single entry gets
    /// a batch of its own.
    pub batch_bytes_max: usize,
    /// Entries one batch may carry.
    pub batch_entries_max: usize,
    /// Largest entry payload accepted.
    pub entry_bytes_max: usize,
    /// Record bytes that may be submitted but not yet durable.
    pub queued_bytes_max: usize,
    /// Zero-fill each segment before use (in the background) instead of only preallocating
    /// it. Overwriting written blocks lets `fdatasync` skip a journal commit, which halves its
    /// latency on ext4 here, at the price of writing every segment twice. See `spare.rs`.
    pub zero_fill_segments: bool,
    /// Released segments (see [`Wal::recycle_through`]) kept for reuse as future segments.
    /// Each costs `segment_bytes` of disk while it waits; 0 turns recycling off.
    pub recycle_segments: usize,
    /// Times each fdatasync for [`WalStats::fdatasync_us`] (none by default).
    pub clock: crate::stats::Clock,
}

impl WalConfig {
    /// Defaults for `dir`: 64 MiB segments, 1 MiB / 8192-entry batches, 4 MiB entries,
    /// 64 MiB queued, zero-filled segments, up to 2 released segments kept for reuse.
    pub fn new(dir: impl Into<PathBuf>) -> WalConfig {
        WalConfig {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            batch_bytes_max: 1 << 20,
            batch_entries_max: 8192,
            entry_bytes_max: 4 << 20,
            queued_bytes_max: 64 << 20,
            zero_fill_segments: true,
            recycle_segments: 2,
            clock: crate::stats::no_clock,
        }
    }

    /// Checks the settings are consistent.
    pub fn validate(&self) -> Result<(), WalError> {
        let bad = |why: &'static str| Err(WalError::Config(why));
        if self.segment_bytes % segment::IO_ALIGN as u64 != 0 || self.segment_bytes < 64 << 10 {
            return bad("segment_bytes must be a multiple of 4096 and at least 64 KiB");
        }
        let room = self.segment_bytes as usize - segment::SEGMENT_HEADER_BYTES;
        if record::encoded_len(self.entry_bytes_max) > room {
            return bad("entry_bytes_max must fit in one segment");
        }
        if self.batch_bytes_max == 0 || self.batch_entries_max == 0 {
            return bad("batch limits must be positive");
        }
        if self.queued_bytes_max < record::encoded_len(self.entry_bytes_max) {
            return bad("queued_bytes_max must hold at least one maximal entry");
        }
        Ok(())
    }
}
