//! Segment files: naming, and the header block that opens each one.
//!
//! A segment is a preallocated file named `wal-<first zxid, 16 hex>.log`. Its first
//! [`SEGMENT_HEADER_BYTES`] hold the header; records follow from there.
//!
//! ```text
//!  0          8         12      16           24              32     40        48         56          64
//!  | "BATONWAL" | version | flags | first_zxid | segment_bytes | salt | prev_end | prev_last | checksum | 0…4096
//! ```
//!
//! - `salt` is drawn at random for every segment and seeds every record checksum in it, so a
//!   record can only verify inside the segment it was written for. That is what makes
//!   *recycling* safe: a segment released by a snapshot purge is reused as the next segment
//!   without being zeroed (see `spare.rs`), and its stale records of a previous life, which
//!   lie beyond the new log's end, can never verify as new ones.
//! - `flags` bit 0 ([`FLAG_RECYCLED`]) says the space after the log's end holds stale bytes
//!   rather than zeros, so recovery does not mistake them for a torn tail.
//! - `prev_end` and `prev_last` are where the previous segment's log ended (its offset past the
//!   last record, and that record's zxid), known when this one is created because every
//!   earlier batch is durable by then. Recovery checks the previous segment against them: a
//!   damaged last record of a sealed segment is corruption, never a silently shorter log.

use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::WalError;
use crate::le::{array_at, u64_at};
use crate::log::Zxid;

/// Magic bytes at the start of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"BATONWAL";
/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// Header flag: the segment reuses a released file; bytes after the log's end are stale.
pub const FLAG_RECYCLED: u32 = 1;
/// Bytes reserved for the header; one direct-I/O block, so records start block-aligned.
pub const SEGMENT_HEADER_BYTES: usize = 4096;
/// Alignment of direct-I/O writes (covers 512-byte and 4 KiB devices).
pub const IO_ALIGN: usize = 4096;

const HEADER_USED: usize = 64;

/// The parsed segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Zxid of the first record the segment was created for.
    pub first_zxid: Zxid,
    /// Preallocated size of the segment file.
    pub segment_bytes: u64,
    /// Seeds every record checksum of this segment.
    pub salt: u64,
    /// The file was recycled: bytes past the log's end are stale, not zero.
    pub recycled: bool,
    /// Where the previous segment's log ended, if there was one: (offset, last zxid).
    pub prev: Option<(u64, Zxid)>,
}

/// A fresh salt for a new segment: the standard library's per-process random hash keys (which
/// it also varies per call) over the zxid, a counter and the pid. No clock: time is an input.
pub fn new_salt(first_zxid: Zxid) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    first_zxid.0.hash(&mut h);
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut h);
    std::process::id().hash(&mut h);
    h.finish()
}

impl SegmentHeader {
    /// Writes the header into the first `SEGMENT_HEADER_BYTES` of `dst` (zeroing the rest).
    pub fn encode(&self, dst: &mut [u8]) {
        let dst = &mut dst[..SEGMENT_HEADER_BYTES];
        dst.fill(0);
        dst[0..8].copy_from_slice(&SEGMENT_MAGIC);
        dst[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        dst[16..24].copy_from_slice(&self.first_zxid.0.to_le_bytes());
        dst[12..16].copy_from_slice(&(if self.recycled { FLAG_RECYCLED } else { 0 }).to_le_bytes());
        dst[24..32].copy_from_slice(&self.segment_bytes.to_le_bytes());
        dst[32..40].copy_from_slice(&self.salt.to_le_bytes());
        let (prev_end, prev_last) = self.prev.map_or((0, 0), |(end, last)| (end, last.0));
        dst[40..48].copy_from_slice(&prev_end.to_le_bytes());
        dst[48..56].copy_from_slice(&prev_last.to_le_bytes());
        let sum = xxh3_64(&dst[0..56]);
        dst[56..64].copy_from_slice(&sum.to_le_bytes());
    }

    /// Parses and verifies a header; `path` is for error messages only.
    #[deny(clippy::indexing_slicing, reason = "decodes bytes from the disk")]
    pub fn decode(bytes: &[u8], path: &Path) -> Result<SegmentHeader, WalError> {
        let Some(raw) = bytes.get(..HEADER_USED) else {
            return Err(WalError::corrupt(path, 0, "segment shorter than its header"));
        };
        let short = || WalError::corrupt(path, 0, "segment shorter than its header");
        let word = |at: usize| u64_at(raw, at).ok_or_else(short);
        if array_at::<8>(raw, 0) != Some(SEGMENT_MAGIC) {
            return Err(WalError::corrupt(path, 0, "bad segment magic"));
        }
        let version = word(8)? as u32;
        if version != FORMAT_VERSION {
            return Err(WalError::Version { path: path.to_path_buf(), found: version, supported: FORMAT_VERSION });
        }
        if xxh3_64(raw.get(..56).ok_or_else(short)?) != word(56)? {
            return Err(WalError::corrupt(path, 0, "segment header checksum mismatch"));
        }
        let flags = (word(8)? >> 32) as u32;
        if flags & !FLAG_RECYCLED != 0 {
            return Err(WalError::corrupt(path, 0, "unknown segment header flags"));
        }
        let prev = match word(40)? {
            0 => None,
            end => Some((end, Zxid(word(48)?))),
        };
        Ok(SegmentHeader {
            first_zxid: Zxid(word(16)?),
            segment_bytes: word(24)?,
            salt: word(32)?,
            recycled: flags & FLAG_RECYCLED != 0,
            prev,
        })
    }
}

/// File name of the segment whose first record has `first_zxid`.
pub fn segment_file_name(first_zxid: Zxid) -> String {
    format!("wal-{:016x}.log", first_zxid.0)
}

/// Full path of a segment.
pub fn segment_path(dir: &Path, first_zxid: Zxid) -> PathBuf {
    dir.join(segment_file_name(first_zxid))
}

/// The first zxid encoded in a segment file name, or `None` if it is not a segment name.
pub fn parse_segment_file_name(name: &str) -> Option<Zxid> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Zxid)
}

/// The segments in `dir`, sorted by first zxid.
pub fn list_segments(dir: &Path) -> Result<Vec<(Zxid, PathBuf)>, WalError> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| WalError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        let name = entry.file_name();
        if let Some(zxid) = name.to_str().and_then(parse_segment_file_name) {
            found.push((zxid, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let header = SegmentHeader {
            first_zxid: Zxid::new(3, 1),
            segment_bytes: 1 << 20,
            salt: 0x1234_5678_9abc_def0,
            recycled: true,
            prev: Some((8192, Zxid::new(3, 0))),
        };
        let mut block = vec![0u8; SEGMENT_HEADER_BYTES];
        header.encode(&mut block);
        let path = Path::new("x");
        assert_eq!(SegmentHeader::decode(&block, path).expect("valid"), header);
        for byte in 0..HEADER_USED {
            let mut bad = block.clone();
            bad[byte] ^= 0x10;
            assert!(SegmentHeader::decode(&bad, path).is_err(), "byte {byte}");
        }
    }

    #[test]
    fn other_version_is_reported_as_version_error() {
        let mut block = vec![0u8; SEGMENT_HEADER_BYTES];
        SegmentHeader { first_zxid: Zxid(1), segment_bytes: 8192, salt: 5, recycled: false, prev: None }
            .encode(&mut block);
        block[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(SegmentHeader::decode(&block, Path::new("x")), Err(WalError::Version { found: 1, .. })));
    }

    #[test]
    fn salts_differ() {
        let a = new_salt(Zxid(1));
        let b = new_salt(Zxid(1));
        assert_ne!(a, b);
    }

    #[test]
    fn segment_names_sort_by_zxid_and_parse_back() {
        let name = segment_file_name(Zxid::new(1, 0x20));
        assert_eq!(name, "wal-0000000100000020.log");
        assert_eq!(parse_segment_file_name(&name), Some(Zxid::new(1, 0x20)));
        assert_eq!(parse_segment_file_name("wal-12.log"), None);
        assert_eq!(parse_segment_file_name("snap-0000000100000020.log"), None);
    }
}
