//! The record framing shared by the writer, the reader and (later) the replication stream.
//!
//! ```text
//!  0        4        8                16               24               32
//!  +--------+--------+----------------+----------------+----------------+---------- - -
//!  | len    | magic  | checksum       | zxid           | batch_start    | payload (len bytes),
//!  | u32 LE | u32 LE | u64 LE         | u64 LE         | u64 LE         | zero-padded to 16
//!  +--------+--------+----------------+----------------+----------------+---------- - -
//! ```
//!
//! - `checksum` is xxh3-64 of the payload, seeded with xxh3-64 of the other 24 header bytes
//!   and the segment's salt, so one pass covers the payload and binds it to its length, zxid,
//!   batch and segment (a stale record in a recycled segment never verifies).
//! - Records start at 16-byte aligned offsets of a page-aligned segment, so the payload of a
//!   record in a memory-mapped segment is 16-byte aligned and rkyv can read it in place.
//! - `batch_start` is the segment offset of the first record of the group-commit batch this
//!   record was written in. Recovery uses it to tell a torn tail (damage confined to the last
//!   batch, which was never acknowledged) from corruption (damage followed by a later batch,
//!   which was only written after the damaged one had been made durable).
//! - An all-zero header marks the end of the log in a fresh (zero-filled) segment; in a
//!   recycled one the log ends at the first record that does not verify (see `reader.rs`).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::le::{u32_at, u64_at};
use crate::log::Zxid;

/// Alignment of every record start and of every payload.
pub const RECORD_ALIGN: usize = 16;
/// Size of the record header.
pub const RECORD_HEADER_BYTES: usize = 32;
/// Marks a record header; distinguishes records from stray non-zero bytes.
pub const RECORD_MAGIC: u32 = 0xBA70_5EC0;

const _: () = assert!(RECORD_HEADER_BYTES % RECORD_ALIGN == 0);
const _: () = assert!(RECORD_ALIGN.is_power_of_two());

/// Bytes a record with a payload of `payload_len` bytes takes on disk.
pub const fn encoded_len(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + align_up(payload_len, RECORD_ALIGN)
}

/// Rounds `value` up to a multiple of `align` (a power of two).
pub const fn align_up(value: usize, align: usize) -> usize {
    (value + align - 1) & !(align - 1)
}

/// Rounds `value` down to a multiple of `align` (a power of two).
pub const fn align_down(value: usize, align: usize) -> usize {
    value & !(align - 1)
}

fn header_seed(salt: u64, len: u32, zxid: u64, batch_start: u64) -> u64 {
    let mut raw = [0u8; 32];
    raw[0..4].copy_from_slice(&len.to_le_bytes());
    raw[4..8].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    raw[8..16].copy_from_slice(&zxid.to_le_bytes());
    raw[16..24].copy_from_slice(&batch_start.to_le_bytes());
    raw[24..32].copy_from_slice(&salt.to_le_bytes());
    xxh3_64(&raw)
}

/// The checksum stored in a record header; `salt` is the segment's.
pub fn checksum(salt: u64, zxid: u64, batch_start: u64, payload: &[u8]) -> u64 {
    xxh3_64_with_seed(payload, header_seed(salt, payload.len() as u32, zxid, batch_start))
}

/// Writes one record for a segment with this `salt` at the start of `dst` and returns the
/// bytes used (`encoded_len`). `dst` must be at least `encoded_len(payload.len())` long;
/// padding is zeroed.
pub fn encode(dst: &mut [u8], salt: u64, zxid: Zxid, batch_start: u64, payload: &[u8]) -> usize {
    let total = encoded_len(payload.len());
    assert!(dst.len() >= total, "record buffer too small");
    assert!(!payload.is_empty() && payload.len() <= u32::MAX as usize);
    let (header, body) = dst[..total].split_at_mut(RECORD_HEADER_BYTES);
    header[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..8].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    header[8..16].copy_from_slice(&checksum(salt, zxid.0, batch_start, payload).to_le_bytes());
    header[16..24].copy_from_slice(&zxid.0.to_le_bytes());
    header[24..32].copy_from_slice(&batch_start.to_le_bytes());
    body[..payload.len()].copy_from_slice(payload);
    body[payload.len()..].fill(0);
    total
}

/// A record verified in place.
#[derive(Debug, Clone, Copy)]
pub struct LogEntryRef<'a> {
    /// The entry's zxid.
    pub zxid: Zxid,
    /// Segment offset of the first record of this record's batch.
    pub batch_start: u64,
    /// The payload, 16-byte aligned when the segment is.
    pub payload: &'a [u8],
    /// Offset just past this record (its padding included).
    pub next: usize,
}

/// What lies at an offset of a segment.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A complete record whose checksum matches.
    Record(LogEntryRef<'a>),
    /// An all-zero header, or no room for a header: the end of the written log.
    End,
    /// Something that is neither: a torn write or corruption, for the caller to classify.
    Bad(&'static str),
}

/// Decodes the record at `offset` of `segment` (which must be 16-byte aligned), verifying its
/// length and its checksum under the segment's `salt`. Never panics, whatever the bytes.
#[deny(clippy::indexing_slicing, reason = "decodes bytes from the disk")]
pub fn decode(segment: &[u8], salt: u64, offset: usize) -> Decoded<'_> {
    if offset % RECORD_ALIGN != 0 {
        return Decoded::Bad("misaligned record offset");
    }
    let Some(header) = segment.get(offset..offset.saturating_add(RECORD_HEADER_BYTES)) else {
        return Decoded::End;
    };
    if header.iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    let fields = (u32_at(header, 0), u32_at(header, 4), u64_at(header, 8), u64_at(header, 16), u64_at(header, 24));
    let (Some(len), Some(magic), Some(stored), Some(zxid), Some(batch_start)) = fields else {
        return Decoded::Bad("short record header");
    };
    let len = len as usize;
    if magic != RECORD_MAGIC {
        return Decoded::Bad("bad record magic");
    }
    if len == 0 {
        return Decoded::Bad("zero-length record");
    }
    let start = offset.saturating_add(RECORD_HEADER_BYTES);
    let next = start.saturating_add(align_up(len, RECORD_ALIGN));
    let Some(payload) = segment.get(start..start.saturating_add(len)) else {
        return Decoded::Bad("record length runs past the end of the segment");
    };
    if next > segment.len() {
        return Decoded::Bad("record padding runs past the end of the segment");
    }
    if checksum(salt, zxid, batch_start, payload) != stored {
        return Decoded::Bad("record checksum mismatch");
    }
    Decoded::Record(LogEntryRef { zxid: Zxid(zxid), batch_start, payload, next })
}

/// The zxid in a header at `offset` that carries the record magic, verified or not.
#[deny(clippy::indexing_slicing, reason = "decodes bytes from the disk")]
pub fn peek_zxid(segment: &[u8], offset: usize) -> Option<Zxid> {
    let header = segment.get(offset..offset.checked_add(RECORD_HEADER_BYTES)?)?;
    (u32_at(header, 4)? == RECORD_MAGIC).then_some(Zxid(u64_at(header, 16)?))
}

/// Parses the record at `offset` without recomputing its checksum, for bytes that
/// [`decode`] has already verified. Still bounds-checked: returns `None` rather than panic.
#[deny(clippy::indexing_slicing, reason = "decodes bytes from the disk")]
pub fn parse_verified(segment: &[u8], offset: usize) -> Option<LogEntryRef<'_>> {
    let header = segment.get(offset..offset.checked_add(RECORD_HEADER_BYTES)?)?;
    let len = u32_at(header, 0)? as usize;
    if len == 0 {
        return None;
    }
    let start = offset.checked_add(RECORD_HEADER_BYTES)?;
    let payload = segment.get(start..start.checked_add(len)?)?;
    Some(LogEntryRef {
        zxid: Zxid(u64_at(header, 16)?),
        batch_start: u64_at(header, 24)?,
        payload,
        next: start.checked_add(align_up(len, RECORD_ALIGN))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; encoded_len(payload.len()) + 64];
        encode(&mut buf, SALT, Zxid(7), 4096, payload);
        buf
    }

    const SALT: u64 = 0x5a17;

    #[test]
    fn a_record_does_not_verify_under_another_salt() {
        let buf = one(b"stale bytes of a recycled segment");
        assert!(matches!(decode(&buf, SALT, 0), Decoded::Record(_)));
        assert!(matches!(decode(&buf, SALT + 1, 0), Decoded::Bad("record checksum mismatch")));
    }

    #[test]
    fn record_round_trips_with_padding() {
        let buf = one(b"abc");
        assert_eq!(encoded_len(3), 48);
        match decode(&buf, SALT, 0) {
            Decoded::Record(r) => {
                assert_eq!(r.zxid, Zxid(7));
                assert_eq!(r.batch_start, 4096);
                assert_eq!(r.payload, b"abc");
                assert_eq!(r.next, 48);
            }
            other => panic!("expected record, got {other:?}"),
        }
        assert!(matches!(decode(&buf, SALT, 48), Decoded::End));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let body: &[u8] = b"some payload bytes, more than one block of sixteen!";
        let n = body.len();
        let clean = one(body);
        let used = encoded_len(n);
        for byte in 0..used {
            for bit in 0..8 {
                let mut bad = clean.clone();
                bad[byte] ^= 1 << bit;
                // Flipping padding is harmless (not covered), everything else must be caught.
                let in_padding = byte >= RECORD_HEADER_BYTES + n;
                match decode(&bad, SALT, 0) {
                    Decoded::Record(r) => {
                        assert!(in_padding, "flip at byte {byte} bit {bit} went unnoticed");
                        assert_eq!(r.payload, &clean[32..32 + n]);
                    }
                    Decoded::Bad(_) | Decoded::End => assert!(!in_padding),
                }
            }
        }
    }

    #[test]
    fn truncated_record_is_bad_and_never_panics() {
        let buf = one(&[9u8; 100]);
        for cut in 1..encoded_len(100) {
            let _ = decode(&buf[..cut], SALT, 0);
        }
        assert!(matches!(decode(&buf[..40], SALT, 0), Decoded::Bad(_)));
        assert!(matches!(decode(&buf[..20], SALT, 0), Decoded::End));
        assert!(matches!(decode(&buf, SALT, 3), Decoded::Bad(_)));
    }

    #[test]
    fn huge_length_field_is_bad() {
        let mut buf = one(b"x");
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&buf, SALT, 0), Decoded::Bad(_)));
    }
}
