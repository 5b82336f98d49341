//! [`WalLog`]: the production [`Log`] store, the group-commit WAL on glommio DMA files.
//!
//! An append never waits for the WAL: what its queue cannot take yet waits in a backlog that
//! a feeder task hands to the WAL as room appears. The replica's loop must keep stepping
//! (ticks, pings, a disk-full withdrawal) while its disk is slow or full; the backlog is
//! bounded by its owner, which stops reading peer messages and taking proposals while
//! [`LogRoom::wait`] is pending.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use super::storage::Log;
use super::StorageError;
use crate::log::Zxid;
use crate::wal::{Durable, Wal, WalError};
use crate::zab::LogEntry;

/// Entries appended but not yet handed to the WAL (its queue was full), shared by the log,
/// its feeder task and the owner's [`LogRoom`].
struct Backlog {
    entries: RefCell<VecDeque<LogEntry>>,
    /// Payload bytes in `entries`.
    bytes: Cell<usize>,
    /// Above this many bytes, [`LogRoom::wait`] waits.
    bytes_max: usize,
    /// The first error the feeder met handing entries over (the WAL refuses all after it).
    failed: RefCell<Option<Arc<WalError>>>,
    /// The feeder, waiting for entries.
    feeder: Cell<Option<Waker>>,
    /// Whoever waits for the backlog to shrink or empty.
    waiters: RefCell<Vec<Waker>>,
}

impl Backlog {
    fn push(&self, entry: LogEntry) {
        self.bytes.set(self.bytes.get() + entry.payload.len());
        self.entries.borrow_mut().push_back(entry);
        if let Some(w) = self.feeder.take() {
            w.wake();
        }
    }

    fn push_front(&self, entry: LogEntry) {
        self.bytes.set(self.bytes.get() + entry.payload.len());
        self.entries.borrow_mut().push_front(entry);
    }

    fn pop(&self) -> Option<LogEntry> {
        let entry = self.entries.borrow_mut().pop_front()?;
        self.bytes.set(self.bytes.get() - entry.payload.len());
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
        Some(entry)
    }

    fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }

    /// Resolves once `done` holds, re-checked whenever the backlog shrinks.
    async fn until(&self, done: impl Fn(&Backlog) -> bool) {
        poll_fn(|cx| {
            if done(self) || self.failed.borrow().is_some() {
                return Poll::Ready(());
            }
            // A waiter polled again (or re-created) while the WAL is stuck is kept once.
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// The owner's view of a [`WalLog`]'s backlog: whether it may give the log more to append.
#[derive(Clone)]
pub struct LogRoom(Rc<Backlog>);

impl LogRoom {
    /// Resolves while the backlog is below its bound (at once, mostly).
    pub async fn wait(&self) {
        self.0.until(|b| b.bytes.get() < b.bytes_max).await
    }

    /// Entries waiting for room in the WAL's queue.
    pub fn backlog(&self) -> usize {
        self.0.entries.borrow().len()
    }
}

/// The WAL as a replica's log. Lives on the WAL's glommio executor.
pub struct WalLog {
    wal: Rc<Wal>,
    backlog: Rc<Backlog>,
    /// Hands the backlog to the WAL; started with the first entry that must wait.
    feeder: Option<glommio::task::JoinHandle<()>>,
    /// Told the last zxid of each append once it is durable (the owner turns it into
    /// [`super::Input::Durable`]).
    durable: Rc<dyn Fn(Zxid)>,
    /// Deletes released segments the recycling pool cannot hold, off the I/O thread.
    janitor: std::sync::mpsc::Sender<Vec<PathBuf>>,
}

impl WalLog {
    /// The log over `wal`; `durable` is called on the executor with the last zxid of each
    /// append once it is durable (not at all once the WAL is poisoned: the next append or
    /// truncation reports the error). At most `backlog_bytes_max` payload bytes wait for
    /// the WAL's queue before [`LogRoom::wait`] holds the owner back.
    pub fn new(wal: Rc<Wal>, backlog_bytes_max: usize, durable: impl Fn(Zxid) + 'static) -> WalLog {
        let backlog = Rc::new(Backlog {
            entries: RefCell::new(VecDeque::new()),
            bytes: Cell::new(0),
            bytes_max: backlog_bytes_max.max(1),
            failed: RefCell::new(None),
            feeder: Cell::new(None),
            waiters: RefCell::new(Vec::new()),
        });
        WalLog { wal, backlog, feeder: None, durable: Rc::new(durable), janitor: janitor() }
    }

    /// The WAL.
    pub fn wal(&self) -> &Rc<Wal> {
        &self.wal
    }

    /// Resolves once everything appended so far is in the WAL and durable (or the WAL
    /// stopped).
    pub async fn drained(&self) {
        self.backlog.until(Backlog::is_empty).await;
        self.wal.idle().await;
    }

    /// What the owner waits on before giving the log more.
    pub fn room(&self) -> LogRoom {
        LogRoom(self.backlog.clone())
    }

    fn start_feeder(&mut self) {
        if self.feeder.is_some() {
            return;
        }
        // The feeder holds the WAL weakly: whoever closes it after the log is dropped must
        // be its only owner.
        let (wal, backlog, durable) = (Rc::downgrade(&self.wal), self.backlog.clone(), self.durable.clone());
        let task = glommio::spawn_local(async move {
            loop {
                let ready = poll_fn(|cx| {
                    if backlog.is_empty() {
                        backlog.feeder.set(Some(cx.waker().clone()));
                        return Poll::Pending;
                    }
                    Poll::Ready(())
                });
                ready.await;
                let Some(ready) = wal.upgrade().map(|w| w.ready()) else { return };
                ready.await;
                let Some(wal) = wal.upgrade() else { return };
                let mut durables = Vec::new();
                let mut last = None;
                // One entry at least after `ready` (a stopped WAL answers it at once, and the
                // submit then says why), then as many as the queue takes.
                while let Some(entry) = backlog.pop() {
                    match wal.submit(entry.zxid, &entry.payload) {
                        Ok(d) => {
                            durables.push(d);
                            last = Some(entry.zxid);
                        }
                        Err(WalError::QueueFull { .. }) => {
                            backlog.push_front(entry);
                            break;
                        }
                        Err(e) => {
                            *backlog.failed.borrow_mut() = Some(Arc::new(e));
                            backlog.entries.borrow_mut().clear();
                            backlog.bytes.set(0);
                            for w in backlog.waiters.borrow_mut().drain(..) {
                                w.wake();
                            }
                            return;
                        }
                    }
                    if !wal.has_room() {
                        break;
                    }
                }
                drop(wal);
                if last.is_none() {
                    // Ready but full (closing): look again shortly rather than spin.
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                if let Some(last) = last {
                    report_when_durable(durables, last, durable.clone());
                }
            }
        });
        self.feeder = Some(task.detach());
    }

    fn fed_error(&self) -> Result<(), StorageError> {
        match self.backlog.failed.borrow().as_ref() {
            Some(e) => Err(WalError::Poisoned(e.clone()).into()),
            None => Ok(()),
        }
    }
}

impl Drop for WalLog {
    fn drop(&mut self) {
        if let Some(feeder) = self.feeder.take() {
            feeder.cancel();
        }
    }
}

/// Calls `durable(last)` once every one of `durables` has resolved (never if the WAL is
/// poisoned: the next submit reports it).
fn report_when_durable(durables: Vec<Durable>, last: Zxid, durable: Rc<dyn Fn(Zxid)>) {
    glommio::spawn_local(async move {
        for d in durables {
            if d.await.is_err() {
                return;
            }
        }
        durable(last);
    })
    .detach();
}

impl Log for WalLog {
    async fn append(&mut self, entries: &[LogEntry]) -> Result<(), StorageError> {
        self.fed_error()?;
        let mut durables = Vec::with_capacity(entries.len());
        let mut last = None;
        for (i, entry) in entries.iter().enumerate() {
            if self.backlog.is_empty() {
                match self.wal.submit(entry.zxid, &entry.payload) {
                    Ok(d) => {
                        durables.push(d);
                        last = Some(entry.zxid);
                        continue;
                    }
                    Err(WalError::QueueFull { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            // The WAL's queue is full: the rest waits, in order, for the feeder.
            for entry in &entries[i..] {
                self.backlog.push(entry.clone());
            }
            self.start_feeder();
            break;
        }
        if let Some(last) = last {
            report_when_durable(durables, last, self.durable.clone());
        }
        Ok(())
    }

    async fn truncate_after(&mut self, after: Zxid) -> Result<(), StorageError> {
        self.fed_error()?;
        // What still waits above the cut is dropped; the rest reaches the WAL first.
        {
            let mut entries = self.backlog.entries.borrow_mut();
            while entries.back().is_some_and(|e| e.zxid > after) {
                if let Some(e) = entries.pop_back() {
                    self.backlog.bytes.set(self.backlog.bytes.get() - e.payload.len());
                }
            }
        }
        self.backlog.until(Backlog::is_empty).await;
        self.fed_error()?;
        // The WAL truncates only when idle.
        self.wal.idle().await;
        self.wal.truncate_after(after).await?;
        Ok(())
    }

    fn release_through(&mut self, zxid: Zxid) -> Result<(), StorageError> {
        // Segments are kept for reuse as new ones; what the pool cannot hold goes to the
        // janitor, so the I/O thread never waits for unlinks.
        let released = self.wal.recycle_through(zxid)?;
        if !released.is_empty() && self.janitor.send(released).is_err() {
            tracing::warn!("WAL janitor gone; released segments stay on disk");
        }
        Ok(())
    }

    fn durable(&self) -> Zxid {
        self.wal.durable_zxid()
    }

    fn failed(&self) -> Result<(), StorageError> {
        if let Some(fatal) = self.wal.fatal_error() {
            return Err(WalError::Poisoned(fatal).into());
        }
        self.fed_error()
    }

    fn out_of_space(&self) -> bool {
        self.wal.out_of_space()
    }
}

/// A thread that deletes released WAL segments. [`Wal::recycle_through`] has renamed them out
/// of the log already (it must: were they left named as segments until this thread reached
/// them, a newer segment taken into the recycling pool meanwhile would leave a hole in the
/// log at a crash), so a crash leaves only files that the next open deletes.
fn janitor() -> std::sync::mpsc::Sender<Vec<PathBuf>> {
    let (janitor, doomed) = std::sync::mpsc::channel::<Vec<PathBuf>>();
    let spawned = std::thread::Builder::new().name("baton-wal-janitor".into()).spawn(move || {
        for paths in doomed {
            // Their new names must be durable before any is cut: after a power loss a cut
            // file must not reappear under its segment name.
            let synced = paths.first().and_then(|p| p.parent()).map(|dir| std::fs::File::open(dir)?.sync_all());
            if let Some(Err(e)) = synced {
                tracing::warn!(error = %e, "could not sync the WAL directory; released segments stay until the next start");
                continue;
            }
            for path in paths {
                // 1 MiB at a time, 20 ms apart (see `crate::sys::shrink_then_remove`).
                if let Err(e) = crate::sys::shrink_then_remove(&path, 1 << 20, Duration::from_millis(20)) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), error = %e, "could not delete a released WAL segment");
                    }
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no WAL janitor thread; released segments stay on disk");
    }
    janitor
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::test_support::{run, temp_dir};
    use crate::wal::record::encoded_len;
    use crate::wal::{WalConfig, WalReader};
    use crate::zab::Payload;

    fn entry(counter: u32) -> LogEntry {
        LogEntry::new(Zxid::new(1, counter), Payload::from(vec![counter as u8; 3000]))
    }

    /// A WAL whose queue holds about one entry of 3000 bytes, so the rest waits beside it.
    fn tiny_queue(dir: &Path) -> WalConfig {
        WalConfig {
            segment_bytes: 64 << 10,
            entry_bytes_max: 4 << 10,
            queued_bytes_max: encoded_len(4 << 10),
            ..WalConfig::new(dir)
        }
    }

    #[test]
    fn an_append_never_waits_for_the_wal_and_everything_lands_in_order() {
        let dir = temp_dir();
        let d = dir.path().to_path_buf();
        let durable = run(async move {
            let (wal, _) = Wal::open(tiny_queue(&d)).await.expect("open");
            let wal = Rc::new(wal);
            let reported = Rc::new(Cell::new(Zxid::ZERO));
            let seen = reported.clone();
            let mut log = WalLog::new(wal.clone(), 1 << 20, move |z| {
                assert!(z >= seen.get(), "durability reports only move forward");
                seen.set(z);
            });
            let room = log.room();
            let all: Vec<LogEntry> = (1..=40).map(entry).collect();
            for chunk in all.chunks(10) {
                log.append(chunk).await.expect("append");
            }
            assert!(room.backlog() > 20, "most entries wait beside the full queue ({} do)", room.backlog());
            log.drained().await;
            for _ in 0..1000 {
                if reported.get() == Zxid::new(1, 40) {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            drop(log);
            let wal = Rc::try_unwrap(wal).ok().expect("the log held the WAL only");
            wal.close().await.expect("close");
            reported.get()
        });
        assert_eq!(durable, Zxid::new(1, 40));
        let read: Vec<Zxid> = WalReader::open(dir.path()).expect("verifies").records().map(|r| r.zxid).collect();
        assert_eq!(read, (1..=40).map(|c| Zxid::new(1, c)).collect::<Vec<_>>());
    }

    #[test]
    fn a_truncation_drops_what_waits_above_the_cut() {
        let dir = temp_dir();
        let d = dir.path().to_path_buf();
        run(async move {
            let (wal, _) = Wal::open(tiny_queue(&d)).await.expect("open");
            let wal = Rc::new(wal);
            let mut log = WalLog::new(wal.clone(), 1 << 20, |_| {});
            let all: Vec<LogEntry> = (1..=20).map(entry).collect();
            log.append(&all).await.expect("append");
            assert!(log.room().backlog() > 10);
            log.truncate_after(Zxid::new(1, 5)).await.expect("truncate");
            log.append(&[LogEntry::new(Zxid::new(2, 1), Payload::from(vec![7; 10]))]).await.expect("after the cut");
            log.drained().await;
            drop(log);
            let wal = Rc::try_unwrap(wal).ok().expect("the log held the WAL only");
            wal.close().await.expect("close");
        });
        let read: Vec<Zxid> = WalReader::open(dir.path()).expect("verifies").records().map(|r| r.zxid).collect();
        let mut expected: Vec<Zxid> = (1..=5).map(|c| Zxid::new(1, c)).collect();
        expected.push(Zxid::new(2, 1));
        assert_eq!(read, expected);
    }
}
