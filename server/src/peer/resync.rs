//! `--resync`: a server whose log is damaged discards it and is synchronised from the leader.
//!
//! Its WAL and snapshots are moved aside (never deleted: they are the evidence) into
//! `<data-dir>/discarded-<unix seconds>/`, and a marker file, `resync-pending`, stays in the
//! data directory until a leader has synchronised the server. While the marker is there the
//! server votes for no one (`ZabConfig::resynchronising`): its empty log must not help elect
//! a leader that lacks entries only it had acknowledged. The epochs file is kept — what a
//! server promised about epochs outlives its log.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use baton_engine::replica::{EpochFile, Epochs};

/// The marker: present from the discard until a leader synchronised the server.
pub const MARKER: &str = "resync-pending";

/// Moves `wal/` and `snapshots/` aside and leaves the marker, durably; returns where the
/// old files went.
pub fn discard(data_dir: &Path) -> io::Result<PathBuf> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let aside = data_dir.join(format!("discarded-{secs}"));
    fs::create_dir_all(&aside)?;
    // In this order, each step durable before the next, so that a crash anywhere leaves a
    // server that abstains (the marker) and claims no history (the epoch) before its log
    // is gone.
    let marker = data_dir.join(MARKER);
    fs::File::create(&marker)?.sync_all()?;
    sync_dir(data_dir)?;
    // The accepted epoch is a promise (never to acknowledge an older leader) and stays. The
    // current epoch describes the history, which is going: kept, it would tell every new
    // leader that this server holds a more recent history than the leader's, and no leader
    // could ever be established (found by the simulator).
    let mut epochs = EpochFile::new(data_dir);
    let (accepted, current) = epochs.load().map_err(io::Error::other)?;
    epochs.save(accepted.max(current), 0).map_err(io::Error::other)?;
    for name in ["wal", "snapshots"] {
        let from = data_dir.join(name);
        if from.exists() {
            fs::rename(&from, aside.join(name))?;
        }
    }
    sync_dir(&aside)?;
    sync_dir(data_dir)?;
    Ok(aside)
}

/// Whether the server still waits to be synchronised after a discard.
pub fn pending(data_dir: &Path) -> bool {
    data_dir.join(MARKER).exists()
}

/// A leader synchronised the server: it votes again after a restart too.
pub fn finished(data_dir: &Path) -> io::Result<()> {
    match fs::remove_file(data_dir.join(MARKER)) {
        Ok(()) => sync_dir(data_dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discard_moves_the_log_aside_and_the_marker_lasts_until_finished() {
        let dir = std::env::temp_dir().join(format!("baton-resync-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("wal")).expect("wal");
        fs::write(dir.join("wal/wal-0000000000000001.log"), b"damaged").expect("segment");
        EpochFile::new(&dir).save(7, 6).expect("epochs");
        assert!(!pending(&dir));
        let aside = discard(&dir).expect("discard");
        assert!(pending(&dir));
        assert!(!dir.join("wal").exists(), "the log is gone from where the server looks");
        assert_eq!(fs::read(aside.join("wal/wal-0000000000000001.log")).expect("kept aside"), b"damaged");
        assert_eq!(EpochFile::new(&dir).load().expect("epochs"), (7, 0), "the promise stays, the history's epoch goes");
        finished(&dir).expect("finished");
        assert!(!pending(&dir));
        finished(&dir).expect("twice is fine");
        let _ = fs::remove_dir_all(&dir);
    }
}
