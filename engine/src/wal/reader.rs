//! Recovery: map every segment with memmap2, verify every record, and classify damage.
//!
//! Group commit writes one batch at a time and starts the next write only after the previous
//! batch's `fdatasync` returned. So at a crash at most the last batch can be partly on disk,
//! and its blocks may have landed in any order. Damage is therefore classified like this:
//!
//! - A segment followed by another was sealed: every batch in it was durable when the next
//!   segment was started, and the next segment's header records where its log ended. Its log
//!   must end exactly there; anything else is **corruption**.
//! - In the last segment, damage (a bad record, or in a fresh segment zeros followed by
//!   non-zero bytes) is a **torn tail** when no valid record after it belongs to a *later*
//!   batch (every valid record beyond it has `batch_start` ≤ the damaged offset). The tail is
//!   cut there: those records were never acknowledged. Otherwise it is corruption.
//! - Corruption stops recovery with [`WalError::Corrupt`] naming the file and offset. It never
//!   skips a record silently.
//! - A recycled segment (see `segment.rs`) holds stale bytes after its log's end; they never
//!   verify under the segment's salt and mark the end like zeros do.
//!
//! Limitation (documented in SAFETY.md): bit rot inside the very last batch is
//! indistinguishable from a torn write and is cut as one.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap, MmapOptions};

use super::record::{self, Decoded, LogEntryRef, RECORD_ALIGN};
use super::segment::{list_segments, SegmentHeader, SEGMENT_HEADER_BYTES};
use super::WalError;
use crate::log::Zxid;

/// One verified segment.
#[derive(Debug)]
pub struct ReadSegment {
    /// Segment file.
    pub path: PathBuf,
    /// Its header.
    pub header: SegmentHeader,
    /// Offset just past the last valid record (the write position for appends).
    pub end: usize,
    /// Zxid of its last valid record, if any.
    pub last_zxid: Option<Zxid>,
    /// Number of valid records.
    pub records: u64,
    map: Mmap,
}

impl ReadSegment {
    /// The mapped bytes of the segment.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// Damage at the end of the last segment that recovery will cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Segment file.
    pub path: PathBuf,
    /// Offset of the first byte that is not part of a valid record.
    pub offset: u64,
    /// Offset just past the last non-zero byte of the segment.
    pub dirty_end: u64,
}

/// A verified, memory-mapped view of the whole log, for replay.
#[derive(Debug)]
pub struct WalReader {
    dir: PathBuf,
    segments: Vec<ReadSegment>,
    torn_tail: Option<TornTail>,
}

impl WalReader {
    /// Maps and verifies every segment of `dir`. A torn tail is reported in
    /// [`WalReader::torn_tail`] and excluded from the records; anything else that fails
    /// verification is an error. Does not modify any file.
    pub fn open(dir: &Path) -> Result<WalReader, WalError> {
        let listed = list_segments(dir)?;
        let count = listed.len();
        let mut segments: Vec<ReadSegment> = Vec::with_capacity(count);
        let mut torn_tail = None;
        let mut last = Zxid::ZERO;
        let maps = listed
            .into_iter()
            .map(|(zxid, path)| map_segment(&path).map(|map| (zxid, path, map)))
            .collect::<Result<Vec<_>, _>>()?;
        // Every header first: a segment's end is checked against the next one's record of it.
        let headers = maps
            .iter()
            .map(|(name_zxid, path, map)| {
                let header = SegmentHeader::decode(map, path)?;
                if header.first_zxid != *name_zxid {
                    return Err(WalError::corrupt(path, 0, "header zxid differs from file name"));
                }
                Ok(header)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (index, (_, path, map)) in maps.into_iter().enumerate() {
            let header = headers[index];
            if header.first_zxid <= last {
                return Err(WalError::corrupt(&path, 0, "segment starts at or below the previous segment's last zxid"));
            }
            let scan = match headers.get(index + 1) {
                Some(next) => scan_sealed(&map, &path, header, last, next)?,
                None => scan_last(&map, &path, header, last)?,
            };
            if let Some(tail) = scan.torn_tail {
                torn_tail = Some(tail);
            }
            if let Some(zxid) = scan.last_zxid {
                last = zxid;
            }
            segments.push(ReadSegment {
                path,
                header,
                end: scan.end,
                last_zxid: scan.last_zxid,
                records: scan.records,
                map,
            });
        }
        Ok(WalReader { dir: dir.to_path_buf(), segments, torn_tail })
    }

    /// The directory read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The verified segments, oldest first.
    pub fn segments(&self) -> &[ReadSegment] {
        &self.segments
    }

    /// The torn tail that recovery found (and that [`super::Wal::open`] zeroes).
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// Zxid of the last valid record, or `Zxid::ZERO` for an empty log.
    pub fn last_zxid(&self) -> Zxid {
        self.segments.iter().rev().find_map(|s| s.last_zxid).unwrap_or(Zxid::ZERO)
    }

    /// Number of valid records.
    pub fn record_count(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }

    /// Bytes of valid log (headers and records) scanned.
    pub fn log_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.end as u64).sum()
    }

    /// Every valid record in zxid order, borrowed from the mapped segments (no copy).
    pub fn records(&self) -> impl Iterator<Item = LogEntryRef<'_>> + '_ {
        self.segments
            .iter()
            .flat_map(|segment| SegmentRecords { bytes: &segment.map[..segment.end], offset: SEGMENT_HEADER_BYTES })
    }

    /// The valid records with zxid above `after`, for replay after a snapshot.
    pub fn records_after(&self, after: Zxid) -> impl Iterator<Item = LogEntryRef<'_>> + '_ {
        // Skip whole segments that end at or below `after`.
        let first =
            self.segments.iter().position(|s| s.last_zxid.is_some_and(|z| z > after)).unwrap_or(self.segments.len());
        self.segments[first..]
            .iter()
            .flat_map(|segment| SegmentRecords { bytes: &segment.map[..segment.end], offset: SEGMENT_HEADER_BYTES })
            .filter(move |r| r.zxid > after)
    }
}

/// Walks records that [`WalReader::open`] already verified, up to the segment's valid end.
struct SegmentRecords<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for SegmentRecords<'a> {
    type Item = LogEntryRef<'a>;

    fn next(&mut self) -> Option<LogEntryRef<'a>> {
        // Verified at open; a re-decode here would hash everything twice. The map is
        // read-only and private to this reader, so the bytes cannot have changed below `end`.
        let record = record::parse_verified(self.bytes, self.offset)?;
        self.offset = record.next;
        Some(record)
    }
}

fn map_segment(path: &Path) -> Result<Mmap, WalError> {
    let file = File::open(path).map_err(|e| WalError::io(path, e))?;
    // SAFETY: the map is read-only and shared. Baton's WAL writer only writes at or beyond a
    // segment's valid end (or zeroes a cut tail), which this reader never hands out; another
    // process modifying the data directory is prevented by the WAL's directory lock. Every
    // byte read from the map is bounds-checked and checksum-verified before use.
    let map = unsafe { MmapOptions::new().map(&file) }.map_err(|e| WalError::io(path, e))?;
    // Sequential advice widens kernel readahead for the scan. Measured on this project's
    // machine (cold cache, 5 × 64 MiB): plain 1.73 GB/s, MAP_POPULATE 1.91, MADV_SEQUENTIAL
    // 2.17, SEQUENTIAL + WILLNEED 1.48. Advice is a hint: failing changes speed, not results.
    let _ = map.advise(Advice::Sequential);
    Ok(map)
}

struct Scan {
    end: usize,
    last_zxid: Option<Zxid>,
    records: u64,
    torn_tail: Option<TornTail>,
}

/// The valid records from the segment's start: where they stop, and why.
struct Walk {
    end: usize,
    last_zxid: Option<Zxid>,
    records: u64,
    /// Why the record at `end` did not decode (`None`: an all-zero header).
    stop: Option<&'static str>,
}

fn walk(bytes: &[u8], path: &Path, header: SegmentHeader, mut last: Zxid) -> Result<Walk, WalError> {
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut last_zxid = None;
    let mut records = 0u64;
    loop {
        match record::decode(bytes, header.salt, offset) {
            Decoded::Record(r) => {
                if records == 0 && r.zxid != header.first_zxid {
                    return Err(WalError::corrupt(
                        path,
                        offset as u64,
                        "first record's zxid differs from the segment's",
                    ));
                }
                if r.zxid <= last {
                    return Err(WalError::corrupt(
                        path,
                        offset as u64,
                        format!("zxid {} does not follow {}", r.zxid, last),
                    ));
                }
                if r.batch_start > offset as u64 || (r.batch_start as usize) < SEGMENT_HEADER_BYTES {
                    return Err(WalError::corrupt(path, offset as u64, "record's batch start is impossible"));
                }
                last = r.zxid;
                last_zxid = Some(r.zxid);
                records += 1;
                offset = r.next;
            }
            Decoded::End => return Ok(Walk { end: offset, last_zxid, records, stop: None }),
            Decoded::Bad(reason) => return Ok(Walk { end: offset, last_zxid, records, stop: Some(reason) }),
        }
    }
}

/// A segment that is followed by another: its log must end exactly where the next segment's
/// header says it did when that segment was started (everything in it was durable then).
fn scan_sealed(
    bytes: &[u8],
    path: &Path,
    header: SegmentHeader,
    last: Zxid,
    next: &SegmentHeader,
) -> Result<Scan, WalError> {
    let walk = walk(bytes, path, header, last)?;
    let found = (walk.end as u64, walk.last_zxid);
    match next.prev {
        Some((end, last_zxid)) if found == (end, Some(last_zxid)) => {
            Ok(Scan { end: walk.end, last_zxid: walk.last_zxid, records: walk.records, torn_tail: None })
        }
        Some((end, last_zxid)) => {
            // The same bytes are seen when a whole segment between the two is gone.
            let missing = if walk.last_zxid.is_some_and(|found| found < last_zxid) {
                ", or a segment between the two is missing"
            } else {
                ""
            };
            Err(WalError::corrupt(
                path,
                walk.end as u64,
                format!(
                    "{} in a segment that is not the last: its log stops here, but it ended at offset {end} \
                     (zxid {last_zxid}) when the next segment (first zxid {}) was started{missing}",
                    walk.stop.unwrap_or("zeros"),
                    next.first_zxid
                ),
            ))
        }
        None => Err(WalError::corrupt(path, walk.end as u64, "the next segment does not record where this one ended")),
    }
}

/// The segment being written when the log was closed or the process died.
fn scan_last(bytes: &[u8], path: &Path, header: SegmentHeader, last: Zxid) -> Result<Scan, WalError> {
    let walk = walk(bytes, path, header, last)?;
    let torn_tail = classify_tail(bytes, path, header, &walk, last)?;
    Ok(Scan { end: walk.end, last_zxid: walk.last_zxid, records: walk.records, torn_tail })
}

fn torn(path: &Path, offset: usize, dirty_end: usize) -> TornTail {
    TornTail { path: path.to_path_buf(), offset: offset as u64, dirty_end: dirty_end as u64 }
}

/// Decides what lies after the last valid record of the last segment: nothing (the clean end
/// of the log), a torn tail (`Some`, to be cut), or corruption (`Err`).
///
/// Any record of this segment that verifies beyond the stop and belongs to a *later* batch
/// proves the damaged bytes were durable before it was written: corruption. Records of the
/// same batch beyond the stop are a torn write's remains, cut with it. In a fresh segment the
/// space after the log is zero, so any other non-zero byte is a torn write too; in a recycled
/// one it is stale bytes of the file's previous life, which cannot verify under this
/// segment's salt and are left alone (only a header of this life at the stop counts as torn).
fn classify_tail(
    bytes: &[u8],
    path: &Path,
    header: SegmentHeader,
    walk: &Walk,
    last: Zxid,
) -> Result<Option<TornTail>, WalError> {
    let offset = walk.end;
    let rest = bytes.get(offset..).unwrap_or(&[]);
    let limit = if header.recycled {
        bytes.len()
    } else {
        match last_nonzero(rest) {
            None => return Ok(None),
            Some(i) => record::align_up(offset + i + 1, RECORD_ALIGN),
        }
    };
    let reason = walk.stop.unwrap_or("zeros followed by data");
    let mut remains_end = None;
    let mut probe = offset + RECORD_ALIGN;
    while probe < limit {
        match record::decode(bytes, header.salt, probe) {
            Decoded::Record(r) if r.batch_start > offset as u64 => {
                return Err(WalError::corrupt(
                    path,
                    offset as u64,
                    format!("{reason}, followed by a later durable batch at offset {probe}"),
                ));
            }
            Decoded::Record(r) => {
                remains_end = Some(r.next);
                probe = r.next;
            }
            _ => probe += RECORD_ALIGN,
        }
    }
    if !header.recycled {
        return Ok(Some(torn(path, offset, limit)));
    }
    if let Some(end) = remains_end {
        return Ok(Some(torn(path, offset, end)));
    }
    let this_life = walk.stop.is_some() && record::peek_zxid(bytes, offset).is_some_and(|z| z > last);
    Ok(this_life.then(|| torn(path, offset, offset + record::RECORD_HEADER_BYTES)))
}

/// Index of the last non-zero byte. Walks forward in chunks: on a cold mapping a backward
/// walk defeats readahead and faults one page at a time (measured: ~0.5 s for the zeroed
/// remainder of a 64 MiB segment, against ~30 ms forward).
pub(crate) fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    const CHUNK: usize = 64 << 10;
    let mut last_dirty_chunk = None;
    for (index, chunk) in bytes.chunks(CHUNK).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            last_dirty_chunk = Some(index);
        }
    }
    let index = last_dirty_chunk?;
    let start = index * CHUNK;
    let chunk = &bytes[start..(start + CHUNK).min(bytes.len())];
    chunk.iter().rposition(|&b| b != 0).map(|i| start + i)
}

#[cfg(test)]
mod tests {
    use super::last_nonzero;

    #[test]
    fn last_nonzero_finds_the_last_dirty_byte_across_chunks() {
        let mut bytes = vec![0u8; 300_000];
        assert_eq!(last_nonzero(&bytes), None);
        bytes[5] = 1;
        assert_eq!(last_nonzero(&bytes), Some(5));
        bytes[70_000] = 9;
        assert_eq!(last_nonzero(&bytes), Some(70_000));
        bytes[299_999] = 3;
        assert_eq!(last_nonzero(&bytes), Some(299_999));
        assert_eq!(last_nonzero(&[]), None);
    }
}
