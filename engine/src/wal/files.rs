//! Small synchronous file operations used outside the hot path: the data-directory lock,
//! directory fsync, zeroing a cut tail, and the truncation intent record.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::WalError;
use crate::log::Zxid;

/// Name of the lock file that keeps a second process out of a WAL directory.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the file that records a truncation in progress (see [`super::Wal::truncate_after`]).
pub const TRUNCATE_INTENT_FILE: &str = "truncate.intent";
/// Name of the zero-filled segment being prepared for the next roll.
pub const SPARE_FILE: &str = "wal-spare.tmp";

/// Holds an exclusive `flock` on `dir/LOCK` for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock, or fails at once if another process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, WalError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| WalError::io(&path, e))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(WalError::Busy("the data directory is locked by another process"));
            }
            return Err(WalError::io(&path, err));
        }
        Ok(DirLock { _file: file })
    }
}

/// fsyncs a directory so that creates, renames and unlinks in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| WalError::io(dir, e))
}

/// Writes zeros over `[from, to)` of `path` and fdatasyncs it.
pub fn zero_range(path: &Path, from: u64, to: u64) -> Result<(), WalError> {
    if to <= from {
        return Ok(());
    }
    let file = OpenOptions::new().write(true).open(path).map_err(|e| WalError::io(path, e))?;
    let chunk = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(chunk.len());
        file.write_all_at(&chunk[..n], at).map_err(|e| WalError::io(path, e))?;
        at += n as u64;
    }
    file.sync_data().map_err(|e| WalError::io(path, e))
}

/// Durably records that the log is being truncated after `zxid`, so that a crash in the
/// middle of the truncation is finished at the next open instead of leaving a log with a
/// hole in it.
pub fn write_truncate_intent(dir: &Path, zxid: Zxid) -> Result<(), WalError> {
    let path = dir.join(TRUNCATE_INTENT_FILE);
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&zxid.0.to_le_bytes());
    let sum = xxh3_64(&raw[0..8]);
    raw[8..16].copy_from_slice(&sum.to_le_bytes());
    let mut file = File::create(&path).map_err(|e| WalError::io(&path, e))?;
    file.write_all(&raw).and_then(|_| file.sync_all()).map_err(|e| WalError::io(&path, e))?;
    sync_dir(dir)
}

/// The truncation recorded in `dir`, if a valid intent exists. A torn intent (the crash
/// came before it was durable, so no truncation step ran) reads as none.
pub fn read_truncate_intent(dir: &Path) -> Result<Option<Zxid>, WalError> {
    let path = dir.join(TRUNCATE_INTENT_FILE);
    let raw = match fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::io(&path, e)),
    };
    let (Some(zxid), Some(sum)) = (raw.get(0..8), raw.get(8..16)) else {
        return Ok(None);
    };
    if xxh3_64(zxid).to_le_bytes() != sum {
        return Ok(None);
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(zxid);
    Ok(Some(Zxid(u64::from_le_bytes(b))))
}

/// Removes the truncation intent (if any) durably.
pub fn clear_truncate_intent(dir: &Path) -> Result<(), WalError> {
    remove_if_exists(&dir.join(TRUNCATE_INTENT_FILE))?;
    sync_dir(dir)
}

/// Prefix and suffix of released segment files kept for reuse.
const RECYCLED_PREFIX: &str = "wal-recycled-";
const RECYCLED_SUFFIX: &str = ".tmp";

/// The name a released segment takes while it waits to be reused.
pub fn recycled_path(dir: &Path, segment: &Path) -> PathBuf {
    let stem = segment.file_stem().and_then(|s| s.to_str()).unwrap_or("segment");
    dir.join(format!("{RECYCLED_PREFIX}{stem}{RECYCLED_SUFFIX}"))
}

/// The released segment files in `dir`, oldest name first; those beyond `keep` are deleted.
pub fn list_recycled(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, WalError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(RECYCLED_PREFIX) && name.ends_with(RECYCLED_SUFFIX) {
            found.push(entry.path());
        }
    }
    found.sort();
    for extra in found.split_off(keep.min(found.len())) {
        remove_if_exists(&extra)?;
    }
    Ok(found)
}

/// Prefix and suffix of released segment files being deleted (see [`released_path`]).
const RELEASED_PREFIX: &str = "wal-released-";

/// The name a released segment takes when it is released (see `Wal::recycle_through`), before
/// it is shrunk and deleted: out of the log at once (the rename is atomic), so that a crash
/// before or part-way through the deletion leaves a file recovery ignores and
/// [`remove_released`] deletes — never a cut segment, nor a hole, in the log.
pub fn released_path(dir: &Path, segment: &Path) -> PathBuf {
    let stem = segment.file_stem().and_then(|s| s.to_str()).unwrap_or("segment");
    dir.join(format!("{RELEASED_PREFIX}{stem}{RECYCLED_SUFFIX}"))
}

/// Deletes released segments a crash left half-deleted.
pub fn remove_released(dir: &Path) -> Result<(), WalError> {
    for entry in fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(RELEASED_PREFIX) && name.ends_with(RECYCLED_SUFFIX) {
            remove_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes a file, treating "already gone" as success.
pub fn remove_if_exists(path: &PathBuf) -> Result<(), WalError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalError::io(path, e)),
    }
}
