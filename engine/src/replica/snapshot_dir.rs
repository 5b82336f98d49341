//! [`SnapshotDir`]: the production [`Snapshots`] store, a directory of snapshot files
//! ([`SnapshotStore`]) written on a thread of their own.

use std::thread::JoinHandle;

use std::io::Write;

use super::storage::{ImageSink, SnapshotImage, Snapshots};
use super::StorageError;
use crate::log::Zxid;
use crate::snapshot::{LoadedSnapshot, Resident, SnapshotError, SnapshotStore, SnapshotWriter};

/// What a background write's thread hands back: once written and old ones purged, the
/// oldest snapshot kept; and the image when there was one, to be freed on the applying
/// thread (see `SnapshotImage::release_step`).
/// And the written file's pages, to let go of once the image's values have moved into it.
type Outcome = (Result<Option<Zxid>, SnapshotError>, Option<Box<dyn SnapshotImage>>, Option<Resident>);

/// A background write: the zxid it covers, and its thread.
struct Job {
    zxid: Zxid,
    thread: JoinHandle<Outcome>,
}

/// Snapshots in a directory, keeping the newest `keep`.
pub struct SnapshotDir {
    store: SnapshotStore,
    keep: usize,
    running: Option<Job>,
    /// The image of the last background write, freed a part per step.
    releasing: Option<Box<dyn SnapshotImage>>,
    /// The pages of the file that image's values move into (read to check each value as it
    /// moves), let go of once it is freed; or of the snapshot loaded, once installed.
    resident: Option<Resident>,
    /// Bytes of the newest snapshot written or loaded.
    newest_bytes: u64,
}

impl SnapshotDir {
    /// The snapshots in `store`, of which the newest `keep` (at least one) are kept.
    pub fn new(store: SnapshotStore, keep: usize) -> SnapshotDir {
        SnapshotDir { store, keep: keep.max(1), running: None, releasing: None, resident: None, newest_bytes: 0 }
    }
}

impl Snapshots for SnapshotDir {
    type Image = LoadedSnapshot;

    fn load_newest(&mut self) -> Result<Option<(Zxid, LoadedSnapshot)>, StorageError> {
        let loaded = self.store.load_newest()?;
        if let Some(s) = &loaded.snapshot {
            self.newest_bytes = s.payload().len() as u64;
            self.resident = Some(s.resident());
        }
        Ok(loaded.snapshot.map(|s| (s.info.zxid, s)))
    }

    fn start(&mut self, zxid: Zxid, data: Vec<u8>) {
        if self.running.is_some() {
            return;
        }
        tracing::info!(%zxid, bytes = data.len(), "writing a snapshot in the background");
        let (store, keep) = (self.store.clone(), self.keep);
        let thread = std::thread::spawn(move || {
            let written = store.write(zxid, &data).map(|_| ());
            drop(data);
            (written.and_then(|()| store.purge(keep)), None, None)
        });
        self.running = Some(Job { zxid, thread });
    }

    fn start_image(&mut self, zxid: Zxid, image: Box<dyn SnapshotImage>) {
        if self.running.is_some() {
            return;
        }
        tracing::info!(%zxid, "writing a snapshot in the background as it is made");
        let (store, keep) = (self.store.clone(), self.keep);
        let thread = std::thread::spawn(move || {
            crate::sys::background_thread();
            let mut image = image;
            image.note_placement();
            let mut resident = None;
            let written = store.write_with(zxid, |w| image.write_to(w)).and_then(|info| {
                let bytes = std::fs::metadata(&info.path).map_or(0, |m| m.len());
                tracing::info!(%zxid, bytes, "snapshot streamed to disk");
                // The state may keep views of the file instead of its own copies.
                match store.map_written(&info) {
                    Ok(file) => {
                        resident = Some(file.resident());
                        image.written(file.into());
                    }
                    Err(e) => tracing::warn!(%zxid, error = %e, "the snapshot just written could not be mapped"),
                }
                store.purge(keep)
            });
            (written, Some(image), resident)
        });
        self.running = Some(Job { zxid, thread });
    }

    fn busy(&self) -> bool {
        self.running.is_some() || self.releasing.is_some()
    }

    fn release_step(&mut self) {
        if let Some(image) = self.releasing.as_mut() {
            if !image.release_step() {
                self.releasing = None;
                self.installed();
            }
        }
    }

    fn installed(&mut self) {
        if let Some(pages) = self.resident.take() {
            pages.release();
        }
    }

    fn newest_bytes(&self) -> u64 {
        self.newest_bytes
    }

    fn finished(&mut self) -> Option<(Zxid, Result<Option<Zxid>, StorageError>)> {
        if !self.running.as_ref().is_some_and(|j| j.thread.is_finished()) {
            return None;
        }
        let job = self.running.take()?;
        let written = match job.thread.join() {
            Ok((written, image, resident)) => {
                self.releasing = image;
                self.resident = resident;
                written
            }
            Err(_) => Err(SnapshotError::Io {
                path: self.store.dir().to_path_buf(),
                source: std::io::Error::other("the snapshot thread panicked"),
            }),
        };
        let written = match written {
            Ok(oldest) => {
                let path = self.store.path_of(job.zxid);
                self.newest_bytes = std::fs::metadata(path).map_or(self.newest_bytes, |m| m.len());
                Ok(oldest)
            }
            Err(e) => Err(StorageError::from(e)),
        };
        Some((job.zxid, written))
    }

    fn write(&mut self, zxid: Zxid, data: &[u8]) -> Result<(), StorageError> {
        self.store.write(zxid, data)?;
        Ok(())
    }

    fn receive(&mut self, zxid: Zxid) -> Result<Box<dyn ImageSink>, StorageError> {
        Ok(Box::new(IncomingFile(Some(self.store.writer(zxid)?))))
    }

    fn received(&mut self, zxid: Zxid, sink: Box<dyn ImageSink>) -> Result<(), StorageError> {
        let sink: Box<dyn std::any::Any> = sink;
        let writer = sink.downcast::<IncomingFile>().ok().and_then(|mut r| r.0.take());
        let Some(writer) = writer else {
            return Err(StorageError::Received { zxid, reason: "not a snapshot this store began".into() });
        };
        let info = writer.finish()?;
        self.newest_bytes = std::fs::metadata(&info.path).map_or(self.newest_bytes, |m| m.len());
        Ok(())
    }
}

/// A SNAP written to its snapshot file as it arrives. Abandoned (dropped unfinished), its
/// temporary file is deleted in steps on a thread of its own (one unlink of gigabytes would
/// stall the WAL behind ext4's journal).
struct IncomingFile(Option<SnapshotWriter>);

impl ImageSink for IncomingFile {
    fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        let Some(writer) = self.0.as_mut() else { return Err("the snapshot file was already finished".into()) };
        writer.write_all(bytes).map_err(|e| format!("writing {}: {e}", writer.temp_path().display()))
    }
}

impl Drop for IncomingFile {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take() {
            let tmp = writer.temp_path().to_path_buf();
            drop(writer);
            let removing = std::thread::Builder::new().name("snap-abandoned".into()).spawn(move || {
                crate::sys::background_thread();
                crate::sys::shrink_then_remove(&tmp, 1 << 20, std::time::Duration::from_millis(5))
            });
            if let Err(e) = removing {
                tracing::warn!(error = %e, "no thread to delete an abandoned SNAP's file; it goes at the next start");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{KeySpace, PutRequest, RangeRequest};
    use crate::state::StateImage;
    use crate::test_support::temp_dir;
    use crate::tree::DataTree;

    /// The address ranges mapped from `path` (`/proc/self/maps`).
    fn mapped_ranges(path: &std::path::Path) -> Vec<(usize, usize)> {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
        let path = path.to_string_lossy();
        maps.lines()
            .filter(|l| l.ends_with(path.as_ref()) || l.ends_with(&format!("{path} (deleted)")))
            .filter_map(|l| {
                let (from, to) = l.split_whitespace().next()?.split_once('-')?;
                Some((usize::from_str_radix(from, 16).ok()?, usize::from_str_radix(to, 16).ok()?))
            })
            .collect()
    }

    #[test]
    fn after_a_snapshot_is_written_the_live_keyspaces_values_are_views_of_its_file() {
        let dir = temp_dir();
        let mut snapshots = SnapshotDir::new(SnapshotStore::open(dir.path()).expect("open"), 2);
        let mut live = KeySpace::new();
        for i in 0..20_000 {
            let key = format!("key{:05}", i % 5_000).into_bytes();
            live.put(&PutRequest { key, value: vec![i as u8; 200], ..PutRequest::default() }).expect("put");
        }
        let tree = DataTree::new();
        let zxid = Zxid::new(1, 7);
        snapshots.start_image(zxid, Box::new(StateImage::new(tree.view(), live.clone())));
        let (done, written) = loop {
            if let Some(done) = snapshots.finished() {
                break done;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(done, zxid);
        written.expect("written");
        let mut steps = 0;
        while snapshots.busy() {
            snapshots.release_step();
            steps += 1;
        }
        assert!(steps > 2, "the values moved in steps ({steps})");
        let file = snapshots.store.path_of(zxid).canonicalize().expect("written");
        let ranges = mapped_ranges(&file);
        assert!(!ranges.is_empty(), "{} is mapped", file.display());
        let all = RangeRequest { key: vec![0], range_end: vec![0], ..RangeRequest::default() };
        let kvs = live.range(&all).expect("read").kvs;
        assert_eq!(kvs.len(), 5_000);
        for kv in &kvs {
            let at = kv.value.as_ptr() as usize;
            assert!(ranges.iter().any(|&(from, to)| from <= at && at + kv.value.len() <= to), "{kv:?} is in the file");
        }
        // Purged once two newer snapshots are written, the file is set aside while viewed;
        // its views still read.
        for n in [8, 9] {
            snapshots.write(Zxid::new(1, n), b"another").expect("write");
        }
        snapshots.store.purge(2).expect("purge");
        assert!(!file.exists());
        let aside = file.with_extension("viewed.tmp");
        assert!(!mapped_ranges(&aside).is_empty(), "{} is mapped", aside.display());
        assert_eq!(live.range(&all).expect("read").kvs, kvs);
        drop((kvs, live));
        assert!(mapped_ranges(&aside).is_empty(), "unmapped once no view is left");
        snapshots.store.purge(2).expect("purge");
        assert!(!aside.exists(), "and removed by the next purge");
    }
}
