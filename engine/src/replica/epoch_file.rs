//! The two epochs a server must never forget (ZooKeeper's `acceptedEpoch` and
//! `currentEpoch` files), in one small checksummed file replaced atomically.
//!
//! Forgetting them would let a server acknowledge a LEADERINFO or NEWLEADER it had already
//! promised not to (an epoch at or below one it accepted): so a missing file reads as a fresh
//! server (both 0), but a damaged one is an error, never silently 0.
#![deny(clippy::indexing_slicing)]

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::storage::Epochs;
use super::StorageError;

const MAGIC: [u8; 8] = *b"BATONEPC";
const FILE: &str = "epochs";
const TMP: &str = "epochs.tmp";
const LEN: usize = 24;

/// Failure to read or write the epochs.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is damaged.
    #[error("{path}: damaged epochs file ({why}); refusing to guess the epochs")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EpochError + '_ {
    move |source| EpochError::Io { path: path.to_path_buf(), source }
}

/// The epochs file in a data directory: the production [`Epochs`] store.
#[derive(Debug, Clone)]
pub struct EpochFile {
    dir: PathBuf,
}

impl EpochFile {
    /// The epochs file in `dir` (created at the first save).
    pub fn new(dir: impl Into<PathBuf>) -> EpochFile {
        EpochFile { dir: dir.into() }
    }
}

impl Epochs for EpochFile {
    fn load(&mut self) -> Result<(u32, u32), StorageError> {
        Ok(load(&self.dir)?)
    }

    fn save(&mut self, accepted: u32, current: u32) -> Result<(), StorageError> {
        Ok(save(&self.dir, accepted, current)?)
    }
}

/// Reads (accepted epoch, current epoch) from `dir`; (0, 0) when there is no file yet.
fn load(dir: &Path) -> Result<(u32, u32), EpochError> {
    let path = dir.join(FILE);
    let raw = match fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io(&path)(e)),
    };
    let corrupt = |why| EpochError::Corrupt { path: path.clone(), why };
    let Ok(raw) = <[u8; LEN]>::try_from(raw.as_slice()) else { return Err(corrupt("wrong length")) };
    let [m0, m1, m2, m3, m4, m5, m6, m7, a0, a1, a2, a3, c0, c1, c2, c3, s0, s1, s2, s3, s4, s5, s6, s7] = raw;
    if [m0, m1, m2, m3, m4, m5, m6, m7] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let (accepted, current) = (u32::from_le_bytes([a0, a1, a2, a3]), u32::from_le_bytes([c0, c1, c2, c3]));
    let summed = [m0, m1, m2, m3, m4, m5, m6, m7, a0, a1, a2, a3, c0, c1, c2, c3];
    if xxh3_64(&summed) != u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]) {
        return Err(corrupt("checksum mismatch"));
    }
    if current > accepted {
        return Err(corrupt("current epoch above accepted epoch"));
    }
    Ok((accepted, current))
}

/// Durably replaces the epochs in `dir`: temporary file, fsync, rename, directory fsync.
fn save(dir: &Path, accepted: u32, current: u32) -> Result<(), EpochError> {
    let mut raw = Vec::with_capacity(LEN);
    raw.extend_from_slice(&MAGIC);
    raw.extend_from_slice(&accepted.to_le_bytes());
    raw.extend_from_slice(&current.to_le_bytes());
    let sum = xxh3_64(&raw);
    raw.extend_from_slice(&sum.to_le_bytes());
    let tmp = dir.join(TMP);
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    crate::faults::io_blocking(crate::faults::EPOCHS_WRITE).map_err(io(&tmp))?;
    file.write_all(&raw).and_then(|_| file.sync_all()).map_err(io(&tmp))?;
    let path = dir.join(FILE);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests damage bytes on purpose")]
mod tests {
    use super::*;

    #[test]
    fn epochs_round_trip_and_a_fresh_directory_reads_zero() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(load(dir.path()).expect("fresh"), (0, 0));
        save(dir.path(), 7, 6).expect("save");
        save(dir.path(), 8, 8).expect("save again");
        assert_eq!(load(dir.path()).expect("load"), (8, 8));
        // A leftover temporary file (a crash before the rename) changes nothing.
        fs::write(dir.path().join(TMP), b"half").expect("write");
        assert_eq!(load(dir.path()).expect("load"), (8, 8));
    }

    #[test]
    fn a_damaged_file_is_an_error_not_zero() {
        let dir = tempfile::tempdir().expect("dir");
        save(dir.path(), 3, 2).expect("save");
        let path = dir.path().join(FILE);
        let good = fs::read(&path).expect("read");
        for i in 0..LEN {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            fs::write(&path, &bad).expect("write");
            assert!(matches!(load(dir.path()), Err(EpochError::Corrupt { .. })), "byte {i}");
        }
        fs::write(&path, &good[..10]).expect("write");
        assert!(matches!(load(dir.path()), Err(EpochError::Corrupt { .. })));
    }
}
