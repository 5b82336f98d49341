//! Behaviour tests of the WAL against real files (O_DIRECT, fdatasync) on glommio.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::record::{self, RECORD_HEADER_BYTES};
use super::segment::{list_segments, SEGMENT_HEADER_BYTES};
use super::{Wal, WalConfig, WalError, WalReader};
use crate::log::Zxid;
use crate::test_support::{run, temp_dir};

/// A payload that is a pure function of the zxid, so a reader can check every byte.
pub(crate) fn payload(zxid: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (zxid as usize).wrapping_mul(31).wrapping_add(i) as u8).collect()
}

fn small_config(dir: &Path) -> WalConfig {
    WalConfig {
        segment_bytes: 64 << 10,
        batch_bytes_max: 8 << 10,
        entry_bytes_max: 16 << 10,
        queued_bytes_max: 1 << 20,
        ..WalConfig::new(dir)
    }
}

/// A fresh directory holding a closed log of zxids `1..=to` (small segments).
fn logged(to: u64, lens: &[usize], tasks: usize) -> tempfile::TempDir {
    let dir = temp_dir();
    let (d, lens) = (dir.path().to_path_buf(), lens.to_vec());
    run(async move {
        let (wal, _) = Wal::open(small_config(&d)).await.expect("open");
        let wal = Rc::new(wal);
        append_range(&wal, 1, to, &lens, tasks).await;
        close(wal).await;
    });
    dir
}

fn read_all(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let reader = WalReader::open(dir).expect("log verifies");
    reader.records().map(|r| (r.zxid.0, r.payload.to_vec())).collect()
}

/// Appends zxids `from..=to` (payload lengths cycling through `lens`) from `tasks`
/// concurrent tasks, waiting for each to be durable.
async fn append_range(wal: &Rc<Wal>, from: u64, to: u64, lens: &[usize], tasks: usize) {
    let next = Rc::new(std::cell::Cell::new(from));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (wal, next, lens) = (wal.clone(), next.clone(), lens.to_vec());
        handles.push(glommio::spawn_local(async move {
            loop {
                let z = next.get();
                if z > to {
                    break;
                }
                next.set(z + 1);
                let p = payload(z, lens[z as usize % lens.len()]);
                wal.submit(Zxid(z), &p).expect("submit").await.expect("durable");
            }
        }));
    }
    for h in handles {
        h.await;
    }
}

async fn close(wal: Rc<Wal>) {
    Rc::try_unwrap(wal).ok().expect("sole owner").close().await.expect("close");
}

fn expected(from: u64, to: u64, lens: &[usize]) -> Vec<(u64, Vec<u8>)> {
    (from..=to).map(|z| (z, payload(z, lens[z as usize % lens.len()]))).collect()
}

#[test]
fn appends_from_many_tasks_recover_in_zxid_order() {
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, reader) = Wal::open(WalConfig::new(&d)).await.expect("open");
        assert_eq!(reader.record_count(), 0);
        let wal = Rc::new(wal);
        append_range(&wal, 1, 2000, &[1, 100, 256, 1000], 64).await;
        let stats = wal.stats();
        assert_eq!(stats.entries_durable, 2000);
        assert!(stats.batches < 2000, "group commit must batch: {stats:?}");
        close(wal).await;
    });
    assert_eq!(read_all(dir.path()), expected(1, 2000, &[1, 100, 256, 1000]));
}

#[test]
fn reopen_continues_the_log_after_the_last_record() {
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    run(async move {
        for round in 0..3u64 {
            let (wal, reader) = Wal::open(small_config(&d)).await.expect("open");
            assert_eq!(reader.last_zxid(), Zxid(round * 100));
            let wal = Rc::new(wal);
            append_range(&wal, round * 100 + 1, round * 100 + 100, &[7, 33, 500], 4).await;
            close(wal).await;
        }
    });
    assert_eq!(read_all(dir.path()), expected(1, 300, &[7, 33, 500]));
}

#[test]
fn segments_roll_at_the_configured_size() {
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    let count = run(async move {
        let (wal, _) = Wal::open(small_config(&d)).await.expect("open");
        let wal = Rc::new(wal);
        append_range(&wal, 1, 600, &[300, 1200], 8).await;
        let n = wal.segment_count();
        close(wal).await;
        n
    });
    let segments = list_segments(dir.path()).expect("list");
    assert!(segments.len() >= 6, "expected several 64 KiB segments, got {}", segments.len());
    assert_eq!(count, segments.len());
    for (_, path) in &segments {
        assert_eq!(std::fs::metadata(path).expect("stat").len(), 64 << 10);
    }
    assert_eq!(read_all(dir.path()), expected(1, 600, &[300, 1200]));
}

#[test]
fn api_errors_leave_the_wal_usable() {
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, _) = Wal::open(small_config(&d)).await.expect("open");
        wal.append(Zxid(5), b"five").await.expect("append");
        assert!(matches!(wal.submit(Zxid(5), b"again"), Err(WalError::ZxidOrder { .. })));
        assert!(matches!(wal.submit(Zxid(3), b"lower"), Err(WalError::ZxidOrder { .. })));
        assert!(matches!(wal.submit(Zxid(6), b""), Err(WalError::EntryTooLarge { .. })));
        assert!(matches!(wal.submit(Zxid(6), &vec![0; 17 << 10]), Err(WalError::EntryTooLarge { .. })));
        wal.append(Zxid(6), b"six").await.expect("append after errors");
        assert_eq!(wal.durable_zxid(), Zxid(6));
        wal.close().await.expect("close");
    });
    assert_eq!(read_all(dir.path()), vec![(5, b"five".to_vec()), (6, b"six".to_vec())]);
}

#[test]
fn queue_bound_is_enforced_and_ready_waits_for_room() {
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    run(async move {
        let config = WalConfig { queued_bytes_max: 64 << 10, ..small_config(&d) };
        let (wal, _) = Wal::open(config).await.expect("open");
        let mut pending = Vec::new();
        let mut refused = false;
        for z in 1..=100u64 {
            match wal.submit(Zxid(z), &payload(z, 4000)) {
                Ok(d) => pending.push(d),
                Err(WalError::QueueFull { .. }) => {
                    refused = true;
                    wal.ready().await;
                    pending.push(wal.submit(Zxid(z), &payload(z, 4000)).expect("room after ready"));
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(refused, "64 KiB of queue cannot hold 100 × 4 KB without a flush in between");
        for d in pending {
            d.await.expect("durable");
        }
        wal.close().await.expect("close");
    });
    assert_eq!(read_all(dir.path()).len(), 100);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, _) = Wal::open(small_config(&d)).await.expect("open");
        let second = Wal::open(small_config(&d)).await;
        assert!(matches!(second, Err(WalError::Busy(_))));
        wal.close().await.expect("close");
        let (again, _) = Wal::open(small_config(&d)).await.expect("open after close");
        again.close().await.expect("close");
    });
}

#[test]
fn truncate_after_drops_the_suffix_across_segments() {
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, _) = Wal::open(small_config(&d)).await.expect("open");
        let wal = Rc::new(wal);
        append_range(&wal, 1, 400, &[900], 4).await;
        assert!(wal.segment_count() > 3);
        wal.truncate_after(Zxid(150)).await.expect("truncate");
        assert_eq!(wal.last_zxid(), Zxid(150));
        // New history after the cut: different payloads at the same zxids.
        for z in 151..=160u64 {
            wal.append(Zxid(z), &payload(z + 1000, 64)).await.expect("append");
        }
        close(wal).await;
    });
    let mut want = expected(1, 150, &[900]);
    want.extend((151..=160u64).map(|z| (z, payload(z + 1000, 64))));
    assert_eq!(read_all(dir.path()), want);
}

#[test]
fn truncate_to_nothing_and_start_again() {
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, _) = Wal::open(small_config(&d)).await.expect("open");
        let wal = Rc::new(wal);
        append_range(&wal, 10, 50, &[100], 2).await;
        wal.truncate_after(Zxid(0)).await.expect("truncate");
        assert_eq!(wal.segment_count(), 0);
        wal.append(Zxid(3), b"restart").await.expect("append");
        close(wal).await;
    });
    assert_eq!(read_all(dir.path()), vec![(3, b"restart".to_vec())]);
}

#[test]
fn truncation_interrupted_by_a_crash_is_finished_at_open() {
    let dir = logged(300, &[700], 4);
    // The crash came after the intent was durable and before any file was touched.
    super::files::write_truncate_intent(dir.path(), Zxid(120)).expect("intent");
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, reader) = Wal::open(small_config(&d)).await.expect("open");
        assert_eq!(reader.last_zxid(), Zxid(120));
        wal.close().await.expect("close");
    });
    assert!(!dir.path().join(super::TRUNCATE_INTENT_FILE).exists());
    assert_eq!(read_all(dir.path()), expected(1, 120, &[700]));
}

#[test]
fn purge_removes_only_segments_wholly_covered() {
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, _) = Wal::open(small_config(&d)).await.expect("open");
        let wal = Rc::new(wal);
        append_range(&wal, 1, 500, &[1000], 4).await;
        let before = list_segments(&d).expect("list");
        // The segment holding zxid 300 must survive, with everything after it.
        let holding = before.iter().rev().find(|(first, _)| first.0 <= 300).expect("segment").0;
        let removed = wal.purge_through(Zxid(300)).expect("purge");
        let after = list_segments(&d).expect("list");
        assert_eq!(removed, before.len() - after.len());
        assert!(removed > 0);
        assert!(after.iter().any(|(first, _)| *first == holding));
        assert!(after[0].0 .0 <= 301);
        // Purging everything still keeps the segment receiving appends.
        wal.purge_through(Zxid(10_000)).expect("purge all");
        assert_eq!(wal.segment_count(), 1);
        close(wal).await;
    });
    let records = read_all(dir.path());
    assert_eq!(records.last().map(|r| r.0), Some(500));
}

/// Builds a log whose last batch holds exactly one record (zxid `n`), and returns the
/// segment path and that record's offset and encoded length.
fn log_with_lone_last_record(dir: &Path, n: u64, last_len: usize) -> (PathBuf, usize, usize) {
    let d = dir.to_path_buf();
    run(async move {
        let (wal, _) = Wal::open(small_config(&d)).await.expect("open");
        let wal = Rc::new(wal);
        append_range(&wal, 1, n - 1, &[40, 90], 3).await;
        wal.append(Zxid(n), &payload(n, last_len)).await.expect("last append");
        close(wal).await;
    });
    let reader = WalReader::open(dir).expect("verify");
    let segment = reader.segments().last().expect("a segment");
    let end = segment.end;
    (segment.path.clone(), end - record::encoded_len(last_len), record::encoded_len(last_len))
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn a_tail_torn_at_every_byte_offset_is_cut_and_the_log_goes_on() {
    let src = temp_dir();
    let n = 30;
    let (path, start, len) = log_with_lone_last_record(src.path(), n, 200);
    let name = path.file_name().expect("name").to_owned();
    let original = std::fs::read(&path).expect("read");
    // Bytes past header + payload are padding: once they are on disk the record is whole.
    let meaningful = RECORD_HEADER_BYTES + 200;
    assert!(meaningful <= len);
    for written in 0..meaningful {
        // Only the first `written` bytes of the last record reached the disk.
        let dir = temp_dir();
        copy_dir(src.path(), dir.path());
        let mut bytes = original.clone();
        bytes[start + written..start + len].fill(0);
        std::fs::write(dir.path().join(&name), &bytes).expect("write");

        let reader = WalReader::open(dir.path()).expect("a torn tail is not an error");
        assert_eq!(reader.last_zxid(), Zxid(n - 1), "written={written}");
        let torn = reader.torn_tail().cloned();
        let tail_has_data = bytes[start..start + len].iter().any(|&b| b != 0);
        assert_eq!(torn.is_some(), tail_has_data, "written={written}");
        drop(reader);

        let d = dir.path().to_path_buf();
        run(async move {
            let (wal, reader) = Wal::open(small_config(&d)).await.expect("recover");
            assert_eq!(reader.last_zxid(), Zxid(n - 1));
            wal.append(Zxid(n), b"rewritten").await.expect("append after cut");
            wal.close().await.expect("close");
        });
        let records = read_all(dir.path());
        assert_eq!(records.len() as u64, n, "written={written}");
        assert_eq!(records.last().expect("last").1, b"rewritten".to_vec());
    }
}

#[test]
fn a_tail_torn_with_garbage_instead_of_zeros_is_cut() {
    let src = temp_dir();
    let (path, start, len) = log_with_lone_last_record(src.path(), 20, 300);
    let mut bytes = std::fs::read(&path).expect("read");
    for (i, b) in bytes[start + 100..start + len].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151) | 1;
    }
    std::fs::write(&path, &bytes).expect("write");
    let reader = WalReader::open(src.path()).expect("torn tail");
    assert_eq!(reader.last_zxid(), Zxid(19));
    assert_eq!(reader.torn_tail().map(|t| t.offset), Some(start as u64));
}

#[test]
fn flipped_bytes_in_earlier_records_are_reported_as_corruption() {
    let src = temp_dir();
    let (path, last_start, _) = log_with_lone_last_record(src.path(), 40, 64);
    let original = std::fs::read(&path).expect("read");
    let reader = WalReader::open(src.path()).expect("verify");
    let offsets: Vec<usize> = {
        let segment = reader.segments().last().expect("segment");
        let mut at = SEGMENT_HEADER_BYTES;
        let mut v = Vec::new();
        while let record::Decoded::Record(r) = record::decode(segment.bytes(), segment.header.salt, at) {
            v.push(at);
            at = r.next;
        }
        v
    };
    drop(reader);
    let mut checked = 0;
    for &record_start in offsets.iter().filter(|&&o| o < last_start) {
        for delta in [0, 5, 9, 17, 25, RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + 7] {
            let mut bytes = original.clone();
            bytes[record_start + delta] ^= 0x40;
            std::fs::write(&path, &bytes).expect("write");
            match WalReader::open(src.path()) {
                Err(WalError::Corrupt { path: p, offset, .. }) => {
                    assert_eq!(p, path);
                    assert_eq!(offset, record_start as u64);
                }
                other => panic!("flip at {record_start}+{delta}: expected corruption, got {other:?}"),
            }
            checked += 1;
        }
    }
    assert!(checked > 50);
    std::fs::write(&path, &original).expect("restore");
    assert!(WalReader::open(src.path()).is_ok());
}

#[test]
fn corruption_in_an_earlier_segment_is_reported_and_open_refuses() {
    let dir = logged(300, &[1000], 2);
    let segments = list_segments(dir.path()).expect("list");
    let (_, first) = &segments[0];
    let mut bytes = std::fs::read(first).expect("read");
    // The last record of the first segment: a bad record in a non-last segment.
    let reader = WalReader::open(dir.path()).expect("verify");
    let end = reader.segments()[0].end;
    drop(reader);
    // Payloads of 1000 bytes are padded by 8: `end - 11` is the payload's third-last byte.
    bytes[end - 11] ^= 1;
    std::fs::write(first, &bytes).expect("write");
    assert!(matches!(WalReader::open(dir.path()), Err(WalError::Corrupt { .. })));
    let d = dir.path().to_path_buf();
    let opened = run(async move { Wal::open(small_config(&d)).await.map(|_| ()) });
    assert!(matches!(opened, Err(WalError::Corrupt { .. })), "{opened:?}");
}

#[test]
fn a_damaged_segment_header_is_corruption() {
    let dir = temp_dir();
    let (path, _, _) = log_with_lone_last_record(dir.path(), 5, 10);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[20] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    assert!(matches!(WalReader::open(dir.path()), Err(WalError::Corrupt { offset: 0, .. })));
}

#[test]
fn an_empty_last_segment_left_by_a_crash_is_removed() {
    let dir = temp_dir();
    let (_, start, len) = log_with_lone_last_record(dir.path(), 5, 10);
    // A segment created for zxid 6 whose first batch never reached the disk.
    let mut header = vec![0u8; 64 << 10];
    super::segment::SegmentHeader {
        first_zxid: Zxid(6),
        segment_bytes: 64 << 10,
        salt: 99,
        recycled: false,
        prev: Some(((start + len) as u64, Zxid(5))),
    }
    .encode(&mut header);
    std::fs::write(super::segment::segment_path(dir.path(), Zxid(6)), &header).expect("write");
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, reader) = Wal::open(small_config(&d)).await.expect("open");
        assert_eq!(reader.last_zxid(), Zxid(5));
        // A new leader's history may go on with another zxid.
        wal.append(Zxid::new(1, 1), b"next epoch").await.expect("append");
        wal.close().await.expect("close");
    });
    let records = read_all(dir.path());
    assert_eq!(records.len(), 6);
    assert_eq!(records[5].0, Zxid::new(1, 1).0);
}

#[test]
fn records_after_skips_what_a_snapshot_covers() {
    let dir = logged(300, &[800], 2);
    let reader = WalReader::open(dir.path()).expect("verify");
    let zxids: Vec<u64> = reader.records_after(Zxid(123)).map(|r| r.zxid.0).collect();
    assert_eq!(zxids, (124..=300).collect::<Vec<_>>());
    for r in reader.records() {
        assert_eq!(r.payload.as_ptr() as usize % 16, 0, "payloads are aligned for rkyv");
    }
}

#[test]
fn entries_are_readable_in_place_from_the_mapped_log() {
    use crate::log::{Transaction, Txn};
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, _) = Wal::open(small_config(&d)).await.expect("open");
        for z in 1..=20u64 {
            let entry = Transaction {
                zxid: Zxid(z),
                session_id: crate::log::SessionId(7),
                cxid: z as i32,
                time_ms: 1000 + z as i64,
                txn: Txn::SetData { path: format!("/n{z}"), data: payload(z, 50), version: z as i32 },
            };
            wal.append(Zxid(z), &entry.encode()).await.expect("append");
        }
        wal.close().await.expect("close");
    });
    let reader = WalReader::open(dir.path()).expect("verify");
    for r in reader.records() {
        let entry = Transaction::access(r.payload).expect("valid archive");
        assert_eq!(entry.zxid.0, r.zxid.0);
        assert_eq!(entry.cxid.to_native() as u64, r.zxid.0);
    }
}

/// A log of 64 KiB segments in which the later segments reuse released files.
fn recycled_log(dir: &Path) -> u64 {
    let d = dir.to_path_buf();
    run(async move {
        let config = WalConfig { recycle_segments: 8, ..small_config(&d) };
        let (wal, _) = Wal::open(config).await.expect("open");
        let wal = Rc::new(wal);
        append_range(&wal, 1, 600, &[1000, 40], 3).await;
        // As a server does after a snapshot at zxid 550.
        let doomed = wal.recycle_through(Zxid(550)).expect("recycle");
        assert!(doomed.is_empty(), "the pool holds them all");
        for path in &doomed {
            std::fs::remove_file(path).expect("delete");
        }
        // The spare prepared before the release is a fresh one; the rolls after it reuse.
        append_range(&wal, 601, 1000, &[1000, 40], 3).await;
        let stats = wal.stats();
        assert!(stats.segments_recycled >= 2, "released segments were reused: {stats:?}");
        close(wal).await;
        stats.segments_recycled
    })
}

/// The incident of walbug2: a server releases segments after each snapshot; the pool takes
/// what it has room for and the rest waits for a janitor thread that deletes about one 64 MiB
/// segment a second, oldest first. A later release finds room in the pool again (rolls have
/// reused its files) and takes a *newer* segment out of the log while older released ones
/// still wait for the janitor under their segment names. Killed then, the server found
/// released segments, a missing one, more released ones, then its live log, and refused to
/// start: the gap read as lost records at the end of the released segment before it.
#[test]
fn segments_released_while_the_janitor_lags_leave_no_hole_in_the_log() {
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    let (lagging, later) = run(async move {
        let config = WalConfig { recycle_segments: 1, ..small_config(&d) };
        let (wal, _) = Wal::open(config).await.expect("open");
        let wal = Rc::new(wal);
        append_range(&wal, 1, 400, &[1000], 2).await;
        // A snapshot at 300: one segment goes to the pool, the rest to a janitor that never
        // gets to them before the process dies.
        let lagging = wal.recycle_through(Zxid(300)).expect("release");
        assert!(lagging.len() >= 2, "segments wait for the janitor: {lagging:?}");
        // The rolls reuse the pooled file, which leaves room in the pool.
        append_range(&wal, 401, 800, &[1000], 2).await;
        assert!(wal.stats().segments_recycled >= 1, "the pooled file was reused");
        // A snapshot at 700: the pool takes the oldest of the newly released segments.
        let later = wal.recycle_through(Zxid(700)).expect("release");
        close(wal).await;
        (lagging, later)
    });
    assert!(!later.is_empty());
    // Recovery finds a gap-free log (it used to find a hole where the pooled segment was).
    let reader = WalReader::open(dir.path()).expect("the log verifies");
    assert_eq!(reader.last_zxid(), Zxid(800));
    drop(reader);
    // Whatever the janitor has not deleted yet is out of the log already.
    let listed: Vec<PathBuf> = list_segments(dir.path()).expect("list").into_iter().map(|(_, p)| p).collect();
    for path in lagging.iter().chain(&later) {
        assert!(!listed.contains(path), "{} is released but still a segment of the log", path.display());
    }
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, reader) = Wal::open(small_config(&d)).await.expect("the log opens");
        assert_eq!(reader.last_zxid(), Zxid(800));
        drop(reader);
        wal.close().await.expect("close");
    });
    for path in lagging.iter().chain(&later) {
        assert!(!path.exists(), "{} was deleted at open", path.display());
    }
    let records = read_all(dir.path());
    let first = records.first().map(|r| r.0).expect("records");
    assert!(first <= 701, "everything after the release point is there (first {first})");
    assert_eq!(records, expected(first, 800, &[1000]));
}

#[test]
fn a_released_segment_half_deleted_when_the_server_died_is_not_a_cut_in_the_log() {
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    let doomed = run(async move {
        let config = WalConfig { recycle_segments: 0, ..small_config(&d) };
        let (wal, _) = Wal::open(config).await.expect("open");
        let wal = Rc::new(wal);
        append_range(&wal, 1, 600, &[1000, 40], 3).await;
        // As a server does after a snapshot at zxid 550, with no pool to keep them in.
        let doomed = wal.recycle_through(Zxid(550)).expect("release");
        close(wal).await;
        doomed
    });
    assert!(doomed.len() >= 2, "segments were released: {doomed:?}");
    // The janitor had cut the first down part-way when the process died; the others it
    // never reached. All were renamed out of the log when they were released.
    let segments = list_segments(dir.path()).expect("list");
    assert!(doomed.iter().all(|path| segments.iter().all(|(_, p)| p != path)), "released files are not segments");
    let file = std::fs::OpenOptions::new().write(true).open(&doomed[0]).expect("open");
    file.set_len(file.metadata().expect("metadata").len() / 2).expect("cut");
    drop(file);
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, reader) = Wal::open(small_config(&d)).await.expect("the log opens");
        assert_eq!(reader.last_zxid(), Zxid(600));
        drop(reader);
        wal.close().await.expect("close");
    });
    assert!(doomed.iter().all(|path| !path.exists()), "the released files are gone");
    let first = read_all(dir.path()).first().map(|r| r.0).expect("records");
    assert!(first <= 551, "everything after the release point is there (first {first})");
}

#[test]
fn recycled_segments_are_reused_and_read_back_exactly() {
    let dir = temp_dir();
    recycled_log(dir.path());
    let reader = WalReader::open(dir.path()).expect("verify");
    assert!(reader.torn_tail().is_none(), "stale bytes of a recycled segment are not a torn tail");
    let recycled = reader.segments().iter().filter(|s| s.header.recycled).count();
    assert!(recycled >= 2);
    let first = reader.records().next().expect("records").zxid.0;
    assert!(first <= 551, "everything after the purge point is kept (first {first})");
    drop(reader);
    assert_eq!(read_all(dir.path()), expected(first, 1000, &[1000, 40]));
    // And the log goes on after a reopen, into recycled space and past it.
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, reader) = Wal::open(small_config(&d)).await.expect("reopen");
        assert_eq!(reader.last_zxid(), Zxid(1000));
        drop(reader);
        let wal = Rc::new(wal);
        append_range(&wal, 1001, 1200, &[1000, 40], 2).await;
        close(wal).await;
    });
    assert_eq!(read_all(dir.path()), expected(first, 1200, &[1000, 40]));
}

#[test]
fn a_torn_tail_in_a_recycled_segment_is_cut() {
    let dir = temp_dir();
    recycled_log(dir.path());
    let reader = WalReader::open(dir.path()).expect("verify");
    let last = reader.segments().last().expect("segment");
    assert!(last.header.recycled, "the last segment reuses a released file");
    let (path, end) = (last.path.clone(), last.end);
    let mut at = SEGMENT_HEADER_BYTES;
    let mut last_start = at;
    while let record::Decoded::Record(r) = record::decode(last.bytes(), last.header.salt, at) {
        last_start = at;
        at = r.next;
    }
    assert_eq!(at, end);
    drop(reader);
    // The last record half written: its payload's second half still holds stale bytes.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[last_start + RECORD_HEADER_BYTES + 10] ^= 0x5a;
    std::fs::write(&path, &bytes).expect("write");
    let reader = WalReader::open(dir.path()).expect("a torn tail, not corruption");
    assert_eq!(reader.last_zxid(), Zxid(999));
    assert_eq!(reader.torn_tail().map(|t| t.offset), Some(last_start as u64));
    drop(reader);
    let d = dir.path().to_path_buf();
    run(async move {
        let (wal, _) = Wal::open(small_config(&d)).await.expect("reopen cuts the tail");
        wal.append(Zxid(1000), b"rewritten").await.expect("append");
        wal.close().await.expect("close");
    });
    let records = read_all(dir.path());
    assert_eq!(records.last().map(|r| (r.0, r.1.as_slice())), Some((1000, &b"rewritten"[..])));
}

#[test]
fn a_sealed_segment_cut_short_is_corruption_even_at_a_record_boundary() {
    let dir = logged(300, &[1000], 2);
    let reader = WalReader::open(dir.path()).expect("verify");
    let first = &reader.segments()[0];
    let (path, end) = (first.path.clone(), first.end);
    drop(reader);
    // Zero the whole last record of the first segment: it reads like a clean end.
    let mut bytes = std::fs::read(&path).expect("read");
    let last_start = end - record::encoded_len(1000);
    bytes[last_start..end].fill(0);
    std::fs::write(&path, &bytes).expect("write");
    match WalReader::open(dir.path()) {
        Err(WalError::Corrupt { path: p, offset, .. }) => {
            assert_eq!(p, path);
            assert_eq!(offset, last_start as u64);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn released_segments_beyond_the_pool_are_returned_for_deletion() {
    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    run(async move {
        let config = WalConfig { recycle_segments: 1, ..small_config(&d) };
        let (wal, _) = Wal::open(config.clone()).await.expect("open");
        let wal = Rc::new(wal);
        append_range(&wal, 1, 400, &[1000], 2).await;
        let segments = wal.segment_count();
        let doomed = wal.recycle_through(Zxid(10_000)).expect("recycle");
        assert_eq!(doomed.len(), segments - 2, "one kept for reuse, the one being written stays");
        for path in &doomed {
            std::fs::remove_file(path).expect("delete");
        }
        close(wal).await;
        // The pool survives a reopen and is used by the next roll.
        let (wal, _) = Wal::open(config).await.expect("reopen");
        let wal = Rc::new(wal);
        append_range(&wal, 401, 600, &[1000], 2).await;
        assert_eq!(wal.stats().segments_recycled, 1);
        close(wal).await;
    });
    let records = read_all(dir.path());
    assert_eq!(records.last().map(|r| r.0), Some(600));
}

/// Counts the wakes it receives.
#[derive(Default)]
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_waiter_is_woken_only_once_its_entry_is_durable() {
    use std::future::Future;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    let dir = temp_dir();
    let d = dir.path().to_path_buf();
    let (apart, woken_early) = run(async move {
        let (wal, _) = Wal::open(WalConfig::new(&d)).await.expect("open");
        let (mut apart, mut woken_early) = (0, 0);
        for round in 0..300u64 {
            let (first_zxid, second_zxid) = (Zxid(2 * round + 1), Zxid(2 * round + 2));
            let first = wal.submit(first_zxid, &payload(first_zxid.0, 64)).expect("submit");
            // One reactor pass: the writer takes the batch holding `first` and issues its write.
            glommio::timer::sleep(std::time::Duration::from_micros(1)).await;
            let mut second = wal.submit(second_zxid, &payload(second_zxid.0, 64)).expect("submit");
            let counter = Arc::new(CountingWaker::default());
            let waker = Waker::from(counter.clone());
            let polled = std::pin::Pin::new(&mut second).poll(&mut Context::from_waker(&waker));
            assert!(matches!(polled, Poll::Pending), "an entry just submitted cannot be durable");
            first.await.expect("durable");
            glommio::timer::sleep(std::time::Duration::from_micros(1)).await;
            if wal.durable_zxid() < second_zxid {
                // The flush of `first` did not cover `second`: it must not have woken it.
                apart += 1;
                woken_early += counter.0.load(Ordering::Relaxed);
            }
            second.await.expect("durable");
        }
        wal.close().await.expect("close");
        (apart, woken_early)
    });
    assert!(apart > 0, "some rounds must put the two entries in different batches");
    assert_eq!(woken_early, 0, "a flush woke a waiter whose entry it did not make durable");
}
