//! One conformance suite for the replica's stores (`baton_engine::replica::{Log, Epochs,
//! Snapshots}`), run against the production ones (WAL, epochs file, snapshot directory, in
//! `tests/tests/storage_conformance.rs`) and the simulator's (`crate::sim`): what the shared
//! driver relies on must hold for both, or the simulator proves nothing about production.

use baton_engine::replica::{Epochs, Log, Snapshots};
use baton_engine::zab::{LogEntry, Payload};
use baton_engine::Zxid;

/// A set of stores over one data directory (real or simulated) that can be reopened, as a
/// restarted server does.
#[allow(async_fn_in_trait, reason = "single-threaded executors: no future here needs to be Send")]
pub trait Backend {
    /// The log store.
    type Log: Log;
    /// The epochs store.
    type Epochs: Epochs;
    /// The snapshot store.
    type Snapshots: Snapshots;

    /// Opens the stores (the first time, or again after [`Backend::close`] or a crash) and
    /// the durable log as recovery reads it.
    async fn open(&mut self) -> (Self::Log, Self::Epochs, Self::Snapshots, Vec<LogEntry>);

    /// Waits until every append so far has been reported durable; returns the last zxid
    /// reported.
    async fn settle(&mut self, log: &mut Self::Log) -> Zxid;

    /// Waits for the background snapshot to end and returns what `finished` said.
    async fn finish_snapshot(&mut self, snapshots: &mut Self::Snapshots) -> Option<Zxid>;

    /// Stops the stores cleanly.
    async fn close(&mut self, log: Self::Log);
}

/// An entry of some 300 bytes (so that a few hundred fill several small WAL segments).
fn entry(epoch: u32, counter: u32) -> LogEntry {
    let payload: Payload = format!("entry {epoch}:{counter} {:>290}", "").into_bytes().into();
    LogEntry::new(Zxid::new(epoch, counter), payload)
}

fn entries(epoch: u32, counters: std::ops::RangeInclusive<u32>) -> Vec<LogEntry> {
    counters.map(|c| entry(epoch, c)).collect()
}

/// Every case, each on a fresh backend from `fresh`.
pub async fn run_all<B: Backend>(mut fresh: impl FnMut() -> B) {
    appends_are_reported_durable_and_recovered_in_order(&mut fresh()).await;
    truncation_drops_every_entry_above_the_point(&mut fresh()).await;
    release_keeps_every_entry_above_the_point(&mut fresh()).await;
    epochs_start_at_zero_and_survive_a_restart(&mut fresh()).await;
    background_snapshots_keep_the_newest_and_load_the_newest(&mut fresh()).await;
}

/// Appends are reported durable in order, and recovery reads back exactly what was
/// appended, in order.
pub async fn appends_are_reported_durable_and_recovered_in_order<B: Backend>(b: &mut B) {
    let (mut log, _, _, recovered) = b.open().await;
    assert!(recovered.is_empty(), "a fresh log is empty");
    let all = entries(1, 1..=30);
    for chunk in all.chunks(7) {
        log.append(chunk).await.expect("append");
    }
    assert_eq!(b.settle(&mut log).await, Zxid::new(1, 30));
    assert_eq!(log.durable(), Zxid::new(1, 30));
    b.close(log).await;
    let (log, _, _, recovered) = b.open().await;
    assert_eq!(recovered, all, "recovered in order");
    b.close(log).await;
}

/// A truncation drops every entry above its point, durably, and the log goes on after it.
pub async fn truncation_drops_every_entry_above_the_point<B: Backend>(b: &mut B) {
    let (mut log, _, _, _) = b.open().await;
    log.append(&entries(1, 1..=5)).await.expect("append");
    log.truncate_after(Zxid::new(1, 3)).await.expect("truncate");
    // What follows the cut: another leader's history.
    log.append(&entries(2, 1..=2)).await.expect("append after the cut");
    assert_eq!(b.settle(&mut log).await, Zxid::new(2, 2));
    b.close(log).await;
    let (mut log, _, _, recovered) = b.open().await;
    let mut expected = entries(1, 1..=3);
    expected.extend(entries(2, 1..=2));
    assert_eq!(recovered, expected);
    // Down to nothing (a SNAP replaces the whole log).
    log.truncate_after(Zxid::ZERO).await.expect("truncate everything");
    b.close(log).await;
    let (log, _, _, recovered) = b.open().await;
    assert!(recovered.is_empty(), "{recovered:?}");
    b.close(log).await;
}

/// Releasing the log a snapshot covers keeps every entry above it (a store may keep some
/// below it too, as a contiguous run).
pub async fn release_keeps_every_entry_above_the_point<B: Backend>(b: &mut B) {
    let (mut log, _, _, _) = b.open().await;
    let all = entries(1, 1..=400);
    for chunk in all.chunks(50) {
        log.append(chunk).await.expect("append");
    }
    b.settle(&mut log).await;
    log.release_through(Zxid::new(1, 300)).expect("release");
    log.append(&entries(1, 401..=410)).await.expect("append after a release");
    b.settle(&mut log).await;
    b.close(log).await;
    let (log, _, _, recovered) = b.open().await;
    let above: Vec<LogEntry> = recovered.iter().filter(|e| e.zxid > Zxid::new(1, 300)).cloned().collect();
    assert_eq!(above, entries(1, 301..=410), "every entry above the point");
    let first = recovered.first().map(|e| e.zxid.counter()).unwrap_or(301);
    assert_eq!(recovered, entries(1, first..=410), "a contiguous run");
    assert!(first > 1, "something was released");
    b.close(log).await;
}

/// Epochs read (0, 0) on a fresh store and what was saved after a restart.
pub async fn epochs_start_at_zero_and_survive_a_restart<B: Backend>(b: &mut B) {
    let (log, mut epochs, _, _) = b.open().await;
    assert_eq!(epochs.load().expect("load"), (0, 0));
    epochs.save(3, 2).expect("save");
    epochs.save(4, 4).expect("save again");
    b.close(log).await;
    let (log, mut epochs, _, _) = b.open().await;
    assert_eq!(epochs.load().expect("load"), (4, 4));
    b.close(log).await;
}

/// Background snapshots: busy while one runs, finished once (with the oldest kept), the
/// newest loads; a synchronous write (a SNAP) is newest at once.
pub async fn background_snapshots_keep_the_newest_and_load_the_newest<B: Backend>(b: &mut B) {
    let (log, _, mut snapshots, _) = b.open().await;
    assert!(snapshots.load_newest().expect("load").is_none(), "no snapshot yet");
    let mut oldest = Vec::new();
    for (k, data) in [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()].into_iter().enumerate() {
        snapshots.start(Zxid::new(1, 10 * (k as u32 + 1)), data);
        assert!(snapshots.busy());
        oldest.push(b.finish_snapshot(&mut snapshots).await);
        assert!(!snapshots.busy());
        assert!(snapshots.finished().is_none(), "reported once");
    }
    // The backends keep two.
    assert_eq!(oldest, vec![Some(Zxid::new(1, 10)), Some(Zxid::new(1, 10)), Some(Zxid::new(1, 20))]);
    let (zxid, image) = snapshots.load_newest().expect("load").expect("a snapshot");
    assert_eq!((zxid, image.as_ref()), (Zxid::new(1, 30), &b"three"[..]));
    snapshots.write(Zxid::new(2, 5), b"from the leader").expect("write");
    b.close(log).await;
    let (log, _, mut snapshots, _) = b.open().await;
    let (zxid, image) = snapshots.load_newest().expect("load").expect("a snapshot");
    assert_eq!((zxid, image.as_ref()), (Zxid::new(2, 5), &b"from the leader"[..]));
    b.close(log).await;
}
