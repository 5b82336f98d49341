//! The two epochs a server must never forget (ZooKeeper's `acceptedEpoch` and
//! `currentEpoch` files), in one small checksummed file replaced atomically.
//!
//! Forgetting them would let a server acknowledge a LEADERINFO or NEWLEADER it had already
//! promised not to (an epoch at or below one it accepted): so a missing file reads as a fresh
//! server (both 0), but a damaged one is an error, never silently 0.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

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

/// Reads (accepted epoch, current epoch) from `dir`; (0, 0) when there is no file yet.
pub fn load(dir: &Path) -> Result<(u32, u32), EpochError> {
    let path = dir.join(FILE);
    let raw = match fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io(&path)(e)),
    };
    let corrupt = |why| EpochError::Corrupt { path: path.clone(), why };
    if raw.len() != LEN {
        return Err(corrupt("wrong length"));
    }
    if raw[..8] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let word = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&raw[16..24]);
    if xxh3_64(&raw[..16]) != u64::from_le_bytes(sum) {
        return Err(corrupt("checksum mismatch"));
    }
    let (accepted, current) = (word(8), word(12));
    if current > accepted {
        return Err(corrupt("current epoch above accepted epoch"));
    }
    Ok((accepted, current))
}

/// Durably replaces the epochs in `dir`: temporary file, fsync, rename, directory fsync.
pub fn save(dir: &Path, accepted: u32, current: u32) -> Result<(), EpochError> {
    let mut raw = [0u8; LEN];
    raw[..8].copy_from_slice(&MAGIC);
    raw[8..12].copy_from_slice(&accepted.to_le_bytes());
    raw[12..16].copy_from_slice(&current.to_le_bytes());
    let sum = xxh3_64(&raw[..16]);
    raw[16..24].copy_from_slice(&sum.to_le_bytes());
    let tmp = dir.join(TMP);
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&raw).and_then(|_| file.sync_all()).map_err(io(&tmp))?;
    let path = dir.join(FILE);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
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
