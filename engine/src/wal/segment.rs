//! Segment files: naming, and the header block that opens each one.
//!
//! A segment is a preallocated, zero-filled file named `wal-<first zxid, 16 hex>.log`. Its
//! first [`SEGMENT_HEADER_BYTES`] hold the header; records follow from there.
//!
//! ```text
//!  0          8        12       16         24              32        40
//!  | "BATONWAL" | version | 0     | first_zxid | segment_bytes | checksum | zeros ... 4096
//! ```

use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::WalError;
use crate::log::Zxid;

/// Magic bytes at the start of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"BATONWAL";
/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes reserved for the header; one direct-I/O block, so records start block-aligned.
pub const SEGMENT_HEADER_BYTES: usize = 4096;
/// Alignment of direct-I/O writes (covers 512-byte and 4 KiB devices).
pub const IO_ALIGN: usize = 4096;

const HEADER_USED: usize = 40;

/// The parsed segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Zxid of the first record the segment was created for.
    pub first_zxid: Zxid,
    /// Preallocated size of the segment file.
    pub segment_bytes: u64,
}

impl SegmentHeader {
    /// Writes the header into the first `SEGMENT_HEADER_BYTES` of `dst` (zeroing the rest).
    pub fn encode(&self, dst: &mut [u8]) {
        let dst = &mut dst[..SEGMENT_HEADER_BYTES];
        dst.fill(0);
        dst[0..8].copy_from_slice(&SEGMENT_MAGIC);
        dst[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        dst[16..24].copy_from_slice(&self.first_zxid.0.to_le_bytes());
        dst[24..32].copy_from_slice(&self.segment_bytes.to_le_bytes());
        let sum = xxh3_64(&dst[0..32]);
        dst[32..40].copy_from_slice(&sum.to_le_bytes());
    }

    /// Parses and verifies a header; `path` is for error messages only.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<SegmentHeader, WalError> {
        let Some(raw) = bytes.get(..HEADER_USED) else {
            return Err(WalError::corrupt(path, 0, "segment shorter than its header"));
        };
        if raw[0..8] != SEGMENT_MAGIC {
            return Err(WalError::corrupt(path, 0, "bad segment magic"));
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if xxh3_64(&raw[0..32]) != word(32) {
            return Err(WalError::corrupt(path, 0, "segment header checksum mismatch"));
        }
        let version = word(8) as u32;
        if version != FORMAT_VERSION {
            return Err(WalError::Version { path: path.to_path_buf(), found: version, supported: FORMAT_VERSION });
        }
        Ok(SegmentHeader { first_zxid: Zxid(word(16)), segment_bytes: word(24) })
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
        let header = SegmentHeader { first_zxid: Zxid::new(3, 1), segment_bytes: 1 << 20 };
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
        SegmentHeader { first_zxid: Zxid(1), segment_bytes: 8192 }.encode(&mut block);
        block[8..12].copy_from_slice(&2u32.to_le_bytes());
        let sum = xxh3_64(&block[0..32]);
        block[32..40].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(SegmentHeader::decode(&block, Path::new("x")), Err(WalError::Version { found: 2, .. })));
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
