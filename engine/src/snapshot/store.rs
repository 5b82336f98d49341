use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use memmap2::Mmap;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::log::Zxid;

const MAGIC: [u8; 8] = *b"BATONSNP";
/// The suffix of a purged snapshot still viewed ([`SnapshotStore::purge`]).
const VIEWED: &str = ".viewed.tmp";
const VERSION: u32 = 1;
/// Header size; the payload starts here, 16-byte aligned for rkyv.
pub const HEADER_BYTES: usize = 64;

/// Errors of the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An operating-system I/O error.
    #[error("snapshot I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A snapshot that fails verification.
    #[error("corrupt snapshot {path}: {reason}")]
    Corrupt {
        /// Snapshot file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A snapshot of another format version.
    #[error("snapshot {path} has format version {found}; this build reads {supported}")]
    Version {
        /// Snapshot file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_path_buf(), source }
}

/// A snapshot file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The zxid of the last transaction the image includes.
    pub zxid: Zxid,
    /// Its file.
    pub path: PathBuf,
}

/// A verified snapshot, memory-mapped.
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// Which snapshot.
    pub info: SnapshotInfo,
    map: Arc<Mmap>,
    len: usize,
    /// Alive while the file is mapped: a purge then neither reuses nor cuts the file.
    _pin: Arc<()>,
}

/// A hold on a mapped snapshot's pages, to let them go from the process's resident memory once
/// read ([`Resident::release`]).
#[derive(Debug)]
pub struct Resident {
    map: Arc<Mmap>,
    _pin: Arc<()>,
}

impl Resident {
    /// Drops the pages read so far from the process's resident memory. They stay in the page
    /// cache (the kernel's to keep or reclaim) and come back when read again.
    pub fn release(&self) {
        // SAFETY: a shared read-only mapping of a file (`map` maps with MAP_SHARED): dropping
        // its pages loses nothing, the next read faults the same bytes in from the file.
        if let Err(e) = unsafe { self.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) } {
            tracing::debug!(error = %e, "madvise(DONTNEED) on a snapshot mapping");
        }
    }
}

impl LoadedSnapshot {
    /// A hold on its pages (see [`Resident`]).
    pub fn resident(&self) -> Resident {
        Resident { map: self.map.clone(), _pin: self._pin.clone() }
    }

    /// The payload, in place (16-byte aligned).
    pub fn payload(&self) -> &[u8] {
        &self.map[HEADER_BYTES..HEADER_BYTES + self.len]
    }
}

impl AsRef<[u8]> for LoadedSnapshot {
    fn as_ref(&self) -> &[u8] {
        self.payload()
    }
}

/// The payload, shared: the file stays mapped until the last view of it is dropped (a
/// purge unlinks it meanwhile but never reuses or cuts it, see [`SnapshotStore::purge`]).
impl From<LoadedSnapshot> for bytes::Bytes {
    fn from(snapshot: LoadedSnapshot) -> bytes::Bytes {
        bytes::Bytes::from_owner(snapshot)
    }
}

/// What [`SnapshotStore::load_newest`] found.
#[derive(Debug)]
pub struct LoadOutcome {
    /// The newest valid snapshot, if any.
    pub snapshot: Option<LoadedSnapshot>,
    /// Newer snapshots that failed verification and were passed over, with why.
    pub skipped: Vec<SnapshotError>,
}

/// The snapshots of one node, in one directory.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    /// The snapshots loaded (mapped) and still in use, by zxid: their files are only ever
    /// unlinked, never overwritten or cut, which would change or take away the pages of a
    /// live mapping (a state keeps views of the values in the file it was loaded from).
    mapped: Arc<Mutex<Vec<Mapped>>>,
}

/// A loaded snapshot and whether it is still mapped (see `SnapshotStore::mapped`).
type Mapped = (Zxid, Weak<()>);

impl SnapshotStore {
    /// A store in `dir` (created if missing). Leftover temporary files of an interrupted
    /// write are removed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<SnapshotStore, SnapshotError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("snap-") && name.ends_with(".tmp") {
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
            }
        }
        Ok(SnapshotStore { dir, mapped: Arc::default() })
    }

    /// The snapshots in `dir` as they are, for reading only (a tool beside a running
    /// server): nothing is created or removed, its temporary files included.
    pub fn open_read_only(dir: impl Into<PathBuf>) -> SnapshotStore {
        SnapshotStore { dir: dir.into(), mapped: Arc::default() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the snapshot at `zxid` (once written).
    pub fn path_of(&self, zxid: Zxid) -> PathBuf {
        self.final_path(zxid)
    }

    fn final_path(&self, zxid: Zxid) -> PathBuf {
        self.dir.join(format!("snap-{:016x}.snap", zxid.0))
    }

    /// Writes a snapshot covering `zxid` with this payload, atomically and durably.
    pub fn write(&self, zxid: Zxid, payload: &[u8]) -> Result<SnapshotInfo, SnapshotError> {
        self.write_with(zxid, |w| w.write_all(payload))
    }

    /// As [`SnapshotStore::write`], the payload written by `produce` as it makes it (through
    /// the writer's buffer: no copy of the whole payload is held).
    pub fn write_with(
        &self,
        zxid: Zxid,
        produce: impl FnOnce(&mut SnapshotWriter) -> io::Result<()>,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let mut writer = self.writer(zxid)?;
        let tmp = writer.tmp.clone();
        let result = match produce(&mut writer) {
            Ok(()) => writer.finish(),
            Err(e) => Err(io_err(&tmp)(e)),
        };
        if result.is_err() {
            // A failed write (a full disk, say) gives its space back now, not at the next
            // start.
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Starts a streamed snapshot covering `zxid`; write the payload into it, then call
    /// [`SnapshotWriter::finish`]. Dropping it unfinished leaves only a temporary file,
    /// removed at the next [`SnapshotStore::open`].
    pub fn writer(&self, zxid: Zxid) -> Result<SnapshotWriter, SnapshotError> {
        // A name of its own: a snapshot written here and one received at the same zxid (or a
        // SNAP begun again) must not share a file, which one of them could cut or overwrite
        // under the other (or under a mapping of it once renamed).
        static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!("snap-{:016x}-{n}.tmp", zxid.0));
        // The spare a purge kept, if there is one: overwriting its blocks allocates nothing
        // (its stale tail is cut at `finish`). Another writer may have taken it first.
        let reused = fs::rename(self.spare_path(), &tmp).is_ok();
        let file = if reused { OpenOptions::new().write(true).open(&tmp) } else { File::create(&tmp) };
        let mut file = file.map_err(io_err(&tmp))?;
        file.write_all(&[0u8; HEADER_BYTES]).map_err(io_err(&tmp))?;
        Ok(SnapshotWriter {
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: Xxh3::new(),
            len: 0,
            flushed: 0,
            zxid,
            tmp,
            dest: self.final_path(zxid),
            dir: self.dir.clone(),
        })
    }

    /// A purged snapshot's file kept for the next snapshot to overwrite (removed by `open`,
    /// as every `snap-*.tmp`).
    fn spare_path(&self) -> PathBuf {
        self.dir.join("snap-spare.tmp")
    }

    /// Where a purged snapshot still viewed waits (removed by `open`, as every `snap-*.tmp`,
    /// or by a purge once nothing views it).
    fn viewed_path(&self, zxid: Zxid) -> PathBuf {
        self.dir.join(format!("snap-{:016x}{VIEWED}", zxid.0))
    }

    /// Every snapshot file, oldest first (not verified).
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let parsed = name
                .to_str()
                .and_then(|n| n.strip_prefix("snap-")?.strip_suffix(".snap"))
                .filter(|hex| hex.len() == 16)
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            if let Some(z) = parsed {
                found.push(SnapshotInfo { zxid: Zxid(z), path: entry.path() });
            }
        }
        found.sort_by_key(|s| s.zxid);
        Ok(found)
    }

    /// Loads the newest snapshot that verifies, passing over damaged newer ones.
    pub fn load_newest(&self) -> Result<LoadOutcome, SnapshotError> {
        let mut skipped = Vec::new();
        for info in self.list()?.into_iter().rev() {
            match map(&info, true) {
                Ok(snapshot) => {
                    self.note_mapped(&snapshot);
                    return Ok(LoadOutcome { snapshot: Some(snapshot), skipped });
                }
                Err(err @ (SnapshotError::Corrupt { .. } | SnapshotError::Version { .. })) => {
                    tracing::error!(error = %err, "passing over a damaged snapshot");
                    skipped.push(err);
                }
                Err(err) => return Err(err),
            }
        }
        Ok(LoadOutcome { snapshot: None, skipped })
    }

    /// Maps a snapshot this store just wrote (its payload was checksummed as it was written
    /// and the file synced): only the header is checked, the payload is not read, so none
    /// of it becomes resident until used. Registered as mapped (see [`SnapshotStore::purge`]).
    pub fn map_written(&self, info: &SnapshotInfo) -> Result<LoadedSnapshot, SnapshotError> {
        let snapshot = map(info, false)?;
        self.note_mapped(&snapshot);
        Ok(snapshot)
    }

    fn note_mapped(&self, snapshot: &LoadedSnapshot) {
        if let Ok(mut mapped) = self.mapped.lock() {
            mapped.retain(|(_, pin)| pin.strong_count() > 0);
            mapped.push((snapshot.info.zxid, Arc::downgrade(&snapshot._pin)));
        }
    }

    /// Deletes all but the newest `keep` snapshots; returns the zxid of the oldest kept.
    pub fn purge(&self, keep: usize) -> Result<Option<Zxid>, SnapshotError> {
        let all = self.list()?;
        let cut = all.len().saturating_sub(keep);
        for old in &all[..cut] {
            if self.in_use(old.zxid) {
                // Mapped: neither reused nor cut, but set aside under a temporary name until no
                // view is left (unlinked now, its blocks would be freed by whichever thread
                // drops the last view: a large file's freeing stalls the WAL's fdatasync
                // behind ext4's journal, the reason for the steps below).
                fs::rename(&old.path, self.viewed_path(old.zxid)).map_err(io_err(&old.path))?;
                continue;
            }
            // The newest purged becomes the next snapshot's file when there is no spare:
            // freeing a large file (and allocating the next) is a large journal transaction
            // that the WAL's fdatasync waits behind (measured up to 119 ms on ext4 with
            // `discard`); reusing its blocks costs neither.
            if Some(old) == all[..cut].last() && !self.spare_path().exists() {
                fs::rename(&old.path, self.spare_path()).map_err(io_err(&old.path))?;
                continue;
            }
            // Out of sight first (a temporary name, removed at the next open if a crash
            // interrupts), then cut down in steps.
            let doomed = self.dir.join(format!("snap-{:016x}.purged.tmp", old.zxid.0));
            fs::rename(&old.path, &doomed).map_err(io_err(&old.path))?;
            sync_dir(&self.dir)?;
            crate::sys::shrink_then_remove(&doomed, 1 << 20, std::time::Duration::from_millis(5))
                .map_err(io_err(&doomed))?;
        }
        // Files set aside while viewed go once nothing views them.
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let zxid = name
                .to_str()
                .and_then(|n| n.strip_prefix("snap-")?.strip_suffix(VIEWED))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            if zxid.is_some_and(|z| !self.in_use(Zxid(z))) {
                crate::sys::shrink_then_remove(&entry.path(), 1 << 20, std::time::Duration::from_millis(5))
                    .map_err(io_err(&entry.path()))?;
            }
        }
        if cut > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(all.get(cut).map(|s| s.zxid))
    }
}

impl SnapshotStore {
    /// Whether the snapshot at `zxid` is mapped by a loaded state still in use.
    fn in_use(&self, zxid: Zxid) -> bool {
        // A poisoned lock: assume in use (unlinking is always safe).
        self.mapped.lock().map_or(true, |m| m.iter().any(|(z, pin)| *z == zxid && pin.strong_count() > 0))
    }
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Maps a snapshot file and checks its header; with `verify`, its payload's checksum too
/// (which reads all of it).
fn map(info: &SnapshotInfo, verify: bool) -> Result<LoadedSnapshot, SnapshotError> {
    let path = &info.path;
    let corrupt = |reason: &str| SnapshotError::Corrupt { path: path.clone(), reason: reason.to_string() };
    let file = File::open(path).map_err(io_err(path))?;
    let mut options = memmap2::MmapOptions::new();
    if verify {
        options.populate();
    }
    // SAFETY: a read-only view of a file that is never modified after its rename (snapshots
    // are immutable), nor cut or reused while mapped (`SnapshotStore::purge`); every byte
    // used is bounds-checked, and checksummed (here, or as this process wrote it).
    let map = unsafe { options.map(&file) }.map_err(io_err(path))?;
    let Some(header) = map.get(..HEADER_BYTES) else {
        return Err(corrupt("shorter than its header"));
    };
    if header[0..8] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    if xxh3_64(&header[0..56]) != word(header, 56) {
        return Err(corrupt("header checksum mismatch"));
    }
    let version = word(header, 8) as u32;
    if version != VERSION {
        return Err(SnapshotError::Version { path: path.clone(), found: version, supported: VERSION });
    }
    if word(header, 16) != info.zxid.0 {
        return Err(corrupt("header zxid differs from file name"));
    }
    let len = usize::try_from(word(header, 24)).map_err(|_| corrupt("payload length overflows"))?;
    let Some(payload) = map.get(HEADER_BYTES..HEADER_BYTES.saturating_add(len)) else {
        return Err(corrupt("payload shorter than its header says"));
    };
    if verify && xxh3_64(payload) != word(header, 32) {
        return Err(corrupt("payload checksum mismatch"));
    }
    Ok(LoadedSnapshot { info: info.clone(), map: Arc::new(map), len, _pin: Arc::new(()) })
}

/// A snapshot being written; see [`SnapshotStore::writer`].
pub struct SnapshotWriter {
    file: io::BufWriter<File>,
    hasher: Xxh3,
    len: u64,
    /// Bytes of the file (from the payload's start) already written back to the disk.
    flushed: u64,
    zxid: Zxid,
    tmp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("zxid", &self.zxid)
            .field("len", &self.len)
            .field("tmp", &self.tmp)
            .finish()
    }
}

/// Dirty bytes a snapshot being written may leave for the kernel to write back at once.
const WRITEBACK_STEP: u64 = 4 << 20;

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::faults::io_blocking(crate::faults::SNAPSHOT_WRITE)?;
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        if self.len - self.flushed >= 2 * WRITEBACK_STEP {
            self.write_back()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl SnapshotWriter {
    /// Paces the disk: starts writing back the newest step of the file and waits for the one
    /// before it. A snapshot of gigabytes left to a final fsync would queue all of them in
    /// front of the WAL's next fdatasync (ZooKeeper's snapshots are known to stall its log
    /// this way); in steps, a WAL fdatasync waits behind a few MiB at most, and the final
    /// fsync has little left to do.
    fn write_back(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.file.get_ref());
        let base = HEADER_BYTES as u64;
        let end = self.len - self.len % WRITEBACK_STEP;
        // SAFETY: a plain syscall on an open file descriptor owned by `self.file`.
        let started = unsafe {
            libc::sync_file_range(
                fd,
                (base + self.flushed) as libc::off64_t,
                (end - self.flushed) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if started != 0 {
            return Err(io::Error::last_os_error());
        }
        if self.flushed >= WRITEBACK_STEP {
            let from = self.flushed - WRITEBACK_STEP;
            // SAFETY: as above.
            let waited = unsafe {
                libc::sync_file_range(
                    fd,
                    (base + from) as libc::off64_t,
                    WRITEBACK_STEP as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )
            };
            if waited != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.flushed = end;
        Ok(())
    }

    /// The temporary file being written (renamed into place by [`SnapshotWriter::finish`]).
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Writes the header, fsyncs, renames into place and fsyncs the directory.
    pub fn finish(self) -> Result<SnapshotInfo, SnapshotError> {
        let tmp = self.tmp.clone();
        let mut file =
            self.file.into_inner().map_err(|e| SnapshotError::Io { path: tmp.clone(), source: e.into_error() })?;
        // A reused file may be longer than this snapshot: its stale tail goes.
        file.set_len(HEADER_BYTES as u64 + self.len).map_err(io_err(&tmp))?;
        let mut header = [0u8; HEADER_BYTES];
        header[0..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[16..24].copy_from_slice(&self.zxid.0.to_le_bytes());
        header[24..32].copy_from_slice(&self.len.to_le_bytes());
        header[32..40].copy_from_slice(&self.hasher.digest().to_le_bytes());
        let sum = xxh3_64(&header[0..56]);
        header[56..64].copy_from_slice(&sum.to_le_bytes());
        file.seek(SeekFrom::Start(0)).map_err(io_err(&tmp))?;
        file.write_all(&header).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        crate::faults::io_blocking(crate::faults::SNAPSHOT_RENAME).map_err(io_err(&self.dest))?;
        fs::rename(&tmp, &self.dest).map_err(io_err(&self.dest))?;
        sync_dir(&self.dir)?;
        Ok(SnapshotInfo { zxid: self.zxid, path: self.dest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_dir;

    fn body(zxid: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u64 ^ zxid) as u8).collect()
    }

    #[test]
    fn snapshot_round_trips_with_aligned_payload() {
        let dir = temp_dir();
        let store = SnapshotStore::open(dir.path()).expect("open");
        store.write(Zxid(42), &body(42, 100_000)).expect("write");
        let outcome = store.load_newest().expect("load");
        let snap = outcome.snapshot.expect("a snapshot");
        assert_eq!(snap.info.zxid, Zxid(42));
        assert_eq!(snap.payload(), body(42, 100_000).as_slice());
        assert_eq!(snap.payload().as_ptr() as usize % 16, 0);
        assert!(outcome.skipped.is_empty());
    }

    #[test]
    fn a_snapshot_still_viewed_is_set_aside_by_a_purge_never_reused_or_cut_and_removed_once_unviewed() {
        let dir = temp_dir();
        let store = SnapshotStore::open(dir.path()).expect("open");
        let spare = dir.path().join("snap-spare.tmp");
        let aside = dir.path().join("snap-0000000000000001.viewed.tmp");
        store.write(Zxid(1), &body(1, 300_000)).expect("write");
        let view = bytes::Bytes::from(store.load_newest().expect("load").snapshot.expect("a snapshot"));
        let part = view.slice(1000..200_000);
        drop(view);
        // A newer snapshot and a purge keeping one: snapshot 1's file would become the spare
        // the next write overwrites.
        store.write(Zxid(2), &body(2, 300_000)).expect("write");
        store.purge(1).expect("purge");
        assert!(!spare.exists(), "a viewed file is not kept as the spare");
        assert!(aside.exists(), "it waits under a temporary name");
        assert_eq!(store.list().expect("list").iter().map(|s| s.zxid).collect::<Vec<_>>(), vec![Zxid(2)]);
        store.write(Zxid(3), &body(3, 300_000)).expect("write");
        store.write(Zxid(4), &body(4, 300_000)).expect("write");
        store.purge(1).expect("purge");
        store.write(Zxid(5), &body(5, 300_000)).expect("write");
        assert_eq!(&part[..], &body(1, 300_000)[1000..200_000], "the view still reads what was loaded");
        assert!(aside.exists(), "still viewed");
        drop(part);
        store.purge(1).expect("purge");
        assert!(!aside.exists(), "removed by the first purge once nothing views it");

        // Once no view is left, the purged file is the spare as before.
        store.write(Zxid(6), &body(6, 300_000)).expect("write");
        drop(store.load_newest().expect("load").snapshot.expect("a snapshot"));
        store.write(Zxid(7), &body(7, 300_000)).expect("write");
        store.purge(1).expect("purge");
        assert!(spare.exists());
    }

    #[test]
    fn a_read_only_store_lists_and_loads_and_leaves_a_running_servers_files_alone() {
        let dir = temp_dir();
        let store = SnapshotStore::open(dir.path()).expect("open");
        store.write(Zxid(3), &body(3, 1000)).expect("write");
        let in_flight = store.writer(Zxid(4)).expect("a snapshot being written");
        let reader = SnapshotStore::open_read_only(dir.path());
        assert_eq!(reader.list().expect("list").len(), 1);
        assert_eq!(reader.load_newest().expect("load").snapshot.expect("a snapshot").info.zxid, Zxid(3));
        assert!(in_flight.temp_path().exists(), "the writer's file is still there");
        in_flight.finish().expect("and it finishes");
        // A store opened for writing cleans up, as at a server's start.
        let _ = store.writer(Zxid(5)).expect("a writer").temp_path().to_path_buf();
        SnapshotStore::open(dir.path()).expect("open");
        assert!(fs::read_dir(dir.path()).expect("dir").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }

    #[test]
    fn a_damaged_newest_snapshot_falls_back_to_the_previous_one() {
        let dir = temp_dir();
        let store = SnapshotStore::open(dir.path()).expect("open");
        store.write(Zxid(10), &body(10, 5000)).expect("write");
        let newest = store.write(Zxid(20), &body(20, 5000)).expect("write");
        for (offset, what) in [(3000usize, "payload"), (20, "header"), (2, "magic")] {
            let mut bytes = fs::read(&newest.path).expect("read");
            let original = bytes.clone();
            bytes[offset] ^= 0x01;
            fs::write(&newest.path, &bytes).expect("write");
            let outcome = store.load_newest().expect("load");
            assert_eq!(outcome.snapshot.expect("fallback").info.zxid, Zxid(10), "{what}");
            assert_eq!(outcome.skipped.len(), 1, "{what}");
            assert!(matches!(outcome.skipped[0], SnapshotError::Corrupt { .. }), "{what}");
            fs::write(&newest.path, &original).expect("restore");
        }
        // A truncated newest snapshot also falls back.
        let bytes = fs::read(&newest.path).expect("read");
        fs::write(&newest.path, &bytes[..bytes.len() - 1]).expect("truncate");
        assert_eq!(store.load_newest().expect("load").snapshot.expect("fallback").info.zxid, Zxid(10));
    }

    #[test]
    fn an_unfinished_write_leaves_no_snapshot_and_is_cleaned_up() {
        let dir = temp_dir();
        let store = SnapshotStore::open(dir.path()).expect("open");
        let mut writer = store.writer(Zxid(5)).expect("writer");
        writer.write_all(b"partial").expect("write");
        drop(writer);
        assert!(store.load_newest().expect("load").snapshot.is_none());
        let reopened = SnapshotStore::open(dir.path()).expect("reopen");
        assert_eq!(fs::read_dir(reopened.dir()).expect("ls").count(), 0);
    }

    #[test]
    fn purge_keeps_the_newest_and_reports_the_oldest_kept() {
        let dir = temp_dir();
        let store = SnapshotStore::open(dir.path()).expect("open");
        for z in [5u64, 9, 12, 30] {
            store.write(Zxid(z), &body(z, 10)).expect("write");
        }
        assert_eq!(store.purge(2).expect("purge"), Some(Zxid(12)));
        let left: Vec<u64> = store.list().expect("list").iter().map(|s| s.zxid.0).collect();
        assert_eq!(left, vec![12, 30]);
        assert_eq!(store.purge(5).expect("purge"), Some(Zxid(12)));
    }

    #[test]
    fn a_purged_snapshot_file_is_overwritten_by_the_next_one_and_cut_to_its_length() {
        use std::os::unix::fs::MetadataExt;
        let dir = temp_dir();
        let store = SnapshotStore::open(dir.path()).expect("open");
        store.write(Zxid(5), &body(5, 100_000)).expect("write");
        let inode = fs::metadata(store.path_of(Zxid(5))).expect("metadata").ino();
        store.write(Zxid(9), &body(9, 10)).expect("write");
        store.purge(1).expect("purge");
        assert!(store.spare_path().exists(), "the purged file waits as a spare");
        // A smaller snapshot overwrites the spare's blocks: same file, stale tail cut.
        let info = store.write(Zxid(12), &body(12, 1000)).expect("write");
        assert_eq!(fs::metadata(&info.path).expect("metadata").ino(), inode, "the spare was reused");
        assert_eq!(fs::metadata(&info.path).expect("metadata").len(), (HEADER_BYTES + 1000) as u64);
        assert!(!store.spare_path().exists());
        let loaded = store.load_newest().expect("load").snapshot.expect("a snapshot");
        assert_eq!((loaded.info.zxid, loaded.payload()), (Zxid(12), body(12, 1000).as_slice()));
        // Reopening removes a spare nobody took.
        store.purge(1).expect("purge");
        assert!(store.spare_path().exists());
        let reopened = SnapshotStore::open(dir.path()).expect("reopen");
        assert!(!reopened.spare_path().exists());
    }

    #[test]
    fn other_versions_are_refused_with_a_version_error() {
        let dir = temp_dir();
        let store = SnapshotStore::open(dir.path()).expect("open");
        let info = store.write(Zxid(1), b"x").expect("write");
        let mut bytes = fs::read(&info.path).expect("read");
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        let sum = xxh3_64(&bytes[0..56]);
        bytes[56..64].copy_from_slice(&sum.to_le_bytes());
        fs::write(&info.path, &bytes).expect("write");
        let outcome = store.load_newest().expect("load");
        assert!(outcome.snapshot.is_none());
        assert!(matches!(outcome.skipped[0], SnapshotError::Version { found: 7, .. }));
    }
}
