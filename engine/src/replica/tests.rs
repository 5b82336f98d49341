//! The driver's own decisions, with in-memory stores: one input, then the exact effect on
//! the stores and the state machine.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use super::*;
use crate::zab::{LogEntry, Payload, Role, ZabConfig};

/// Runs a future whose stores never wait (all of these): one poll must finish it.
fn now<T>(future: impl Future<Output = T>) -> T {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory store waited"),
    }
}

#[derive(Default)]
struct MemLog {
    entries: Vec<LogEntry>,
    released_through: Zxid,
}

impl Log for MemLog {
    async fn append(&mut self, entries: &[LogEntry]) -> Result<(), StorageError> {
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    async fn truncate_after(&mut self, after: Zxid) -> Result<(), StorageError> {
        self.entries.retain(|e| e.zxid <= after);
        Ok(())
    }

    fn release_through(&mut self, zxid: Zxid) -> Result<(), StorageError> {
        self.released_through = zxid;
        self.entries.retain(|e| e.zxid > zxid);
        Ok(())
    }

    fn durable(&self) -> Zxid {
        self.entries.last().map_or(Zxid::ZERO, |e| e.zxid)
    }
}

#[derive(Default)]
struct MemEpochs {
    saved: Option<(u32, u32)>,
    saves: usize,
}

impl Epochs for MemEpochs {
    fn load(&mut self) -> Result<(u32, u32), StorageError> {
        Ok(self.saved.unwrap_or((0, 0)))
    }

    fn save(&mut self, accepted: u32, current: u32) -> Result<(), StorageError> {
        self.saved = Some((accepted, current));
        self.saves += 1;
        Ok(())
    }
}

#[derive(Default)]
struct MemSnapshots {
    written: Vec<(Zxid, Vec<u8>)>,
    running: Option<(Zxid, Vec<u8>)>,
    done: bool,
    /// What the store says the newest snapshot weighs.
    newest: u64,
    /// Parts of a written image still to free, and the steps taken.
    releasing: usize,
    release_steps: usize,
}

impl Snapshots for MemSnapshots {
    type Image = Vec<u8>;

    fn load_newest(&mut self) -> Result<Option<(Zxid, Vec<u8>)>, StorageError> {
        Ok(self.written.last().cloned())
    }

    fn start(&mut self, zxid: Zxid, data: Vec<u8>) {
        self.running = Some((zxid, data));
    }

    fn busy(&self) -> bool {
        self.running.is_some() || self.releasing > 0
    }

    fn release_step(&mut self) {
        if self.releasing > 0 {
            self.releasing -= 1;
            self.release_steps += 1;
        }
    }

    fn newest_bytes(&self) -> u64 {
        self.newest
    }

    fn finished(&mut self) -> Option<(Zxid, Result<Option<Zxid>, StorageError>)> {
        if !self.done {
            return None;
        }
        let (zxid, data) = self.running.take()?;
        self.written.push((zxid, data));
        Some((zxid, Ok(Some(zxid))))
    }

    fn write(&mut self, zxid: Zxid, data: &[u8]) -> Result<(), StorageError> {
        self.written.push((zxid, data.to_vec()));
        Ok(())
    }
}

#[derive(Default)]
struct NoPeers;

impl Peers for NoPeers {
    fn send(&mut self, _to: u64, _msg: crate::zab::Message) {}
}

#[derive(Default)]
struct Applied {
    entries: Vec<LogEntry>,
    roles: Vec<Role>,
}

impl StateMachine for Applied {
    fn apply(&mut self, entries: &[LogEntry]) {
        self.entries.extend_from_slice(entries);
    }

    fn snapshot(&self) -> Vec<u8> {
        self.entries.iter().map(|e| e.zxid.counter() as u8).collect()
    }

    fn install(&mut self, _zxid: Zxid, _data: &[u8]) {}

    fn role_changed(&mut self, role: Role, _last_logged: Zxid) {
        self.roles.push(role);
    }
}

type TestReplica = Replica<MemLog, MemEpochs, MemSnapshots, NoPeers, Applied>;

fn entry(epoch: u32, counter: u32) -> LogEntry {
    LogEntry::new(Zxid::new(epoch, counter), vec![counter as u8].into())
}

fn payloads(n: u8) -> Vec<Payload> {
    (0..n).map(|i| Payload::from(vec![i])).collect()
}

/// A server alone in its ensemble, recovered from `parts` and started: it leads at once.
fn lone(config: ReplicaConfig, parts: Parts<MemLog, MemEpochs, MemSnapshots, NoPeers, Applied>) -> TestReplica {
    let logged = parts.log.entries.clone();
    let (mut replica, _) = Replica::recover(config, parts, |_| logged.into_iter()).expect("recovers");
    now(replica.start()).expect("starts");
    replica
}

fn fresh_parts() -> Parts<MemLog, MemEpochs, MemSnapshots, NoPeers, Applied> {
    Parts {
        log: MemLog::default(),
        epochs: MemEpochs::default(),
        snapshots: MemSnapshots::default(),
        peers: NoPeers,
        state: Applied::default(),
    }
}

#[test]
fn recovery_raises_the_epochs_to_the_last_logged_epoch() {
    // A data directory with a log of epoch 3 and no epochs record (from before replication,
    // or the file was lost): the epochs become 3, durably, before the core starts.
    let mut parts = fresh_parts();
    parts.log.entries = vec![entry(3, 1), entry(3, 2)];
    let config = ReplicaConfig::new(ZabConfig::new(1, vec![1, 2, 3]));
    let logged = parts.log.entries.clone();
    let (replica, recovered) = Replica::recover(config, parts, |_| logged.into_iter()).expect("recovers");
    assert_eq!(recovered.epochs, (3, 3));
    assert_eq!(recovered.logged, 2);
    assert_eq!(replica.zab().epochs(), (3, 3));
    let parts = replica.into_parts();
    assert_eq!((parts.epochs.saved, parts.epochs.saves), (Some((3, 3)), 1));
}

#[test]
fn recovery_keeps_epochs_that_are_ahead_of_the_log() {
    let mut parts = fresh_parts();
    parts.log.entries = vec![entry(3, 1)];
    parts.epochs.saved = Some((5, 4));
    let config = ReplicaConfig::new(ZabConfig::new(1, vec![1, 2, 3]));
    let logged = parts.log.entries.clone();
    let (replica, _) = Replica::recover(config, parts, |_| logged.into_iter()).expect("recovers");
    assert_eq!(replica.zab().epochs(), (5, 4));
    assert_eq!(replica.into_parts().epochs.saves, 0, "nothing to raise, nothing saved");
}

#[test]
fn a_lone_server_replays_its_whole_log_at_recovery() {
    let mut parts = fresh_parts();
    parts.log.entries = vec![entry(1, 1), entry(1, 2), entry(1, 3)];
    parts.snapshots.written = vec![(Zxid::new(1, 1), vec![1])];
    let config = ReplicaConfig { compact_on_commit: true, ..ReplicaConfig::new(ZabConfig::new(1, vec![1])) };
    let logged = parts.log.entries.clone();
    let (replica, recovered) = Replica::recover(config, parts, |_| logged.into_iter()).expect("recovers");
    assert_eq!((recovered.applied, recovered.replayed, recovered.logged), (Zxid::new(1, 3), 2, 0));
    let applied: Vec<Zxid> = replica.state().entries.iter().map(|e| e.zxid).collect();
    assert_eq!(applied, vec![Zxid::new(1, 2), Zxid::new(1, 3)], "the snapshot covers 1");
}

#[test]
fn proposals_prepared_for_another_leadership_are_dropped() {
    let mut replica = lone(ReplicaConfig::new(ZabConfig::new(1, vec![1])), fresh_parts());
    assert_eq!(replica.zab().role(), Role::Leading { epoch: 1, established: true });
    let next = replica.zab().next_zxid().expect("leads");
    assert_eq!(next, Zxid::new(1, 1));
    // Prepared for zxids of another leadership (say, epoch 0's): dropped, nothing logged.
    let stale = now(replica.propose(Some(Zxid::new(0, 5)), payloads(2))).expect("no store error");
    assert_eq!(stale, None);
    assert!(replica.log().entries.is_empty());
    // Prepared for the zxid this leadership continues with: proposed and logged.
    let zxids = now(replica.propose(Some(next), payloads(2))).expect("no store error");
    assert_eq!(zxids, Some(vec![Zxid::new(1, 1), Zxid::new(1, 2)]));
    assert_eq!(replica.log().entries.len(), 2);
    // Without a first zxid (entries that do not carry theirs), whatever comes next.
    let zxids = now(replica.propose(None, payloads(1))).expect("no store error");
    assert_eq!(zxids, Some(vec![Zxid::new(1, 3)]));
}

#[test]
fn a_snapshot_every_n_entries_then_compaction_once_it_is_written() {
    let config = ReplicaConfig { snapshot_every_entries: 3, ..ReplicaConfig::new(ZabConfig::new(1, vec![1])) };
    let mut replica = lone(config, fresh_parts());
    now(replica.propose(None, payloads(2))).expect("proposes");
    now(replica.step(Input::Durable(Zxid::new(1, 2)))).expect("commits");
    assert_eq!(replica.applied(), Zxid::new(1, 2));
    assert!(!replica.snapshots_mut().busy(), "2 of 3 entries: no snapshot yet");
    now(replica.propose(None, payloads(2))).expect("proposes");
    now(replica.step(Input::Durable(Zxid::new(1, 4)))).expect("commits");
    assert_eq!(replica.snapshots_mut().running.as_ref().map(|r| r.0), Some(Zxid::new(1, 4)));
    // Not written yet: the log and the core's history keep everything.
    now(replica.step(Input::Tick)).expect("ticks");
    assert_eq!(replica.zab().history().base(), Zxid::ZERO);
    // Written: the core compacts through it and the store releases through the oldest kept.
    replica.snapshots_mut().done = true;
    now(replica.step(Input::Tick)).expect("ticks");
    assert_eq!(replica.zab().history().base(), Zxid::new(1, 4));
    let parts = replica.into_parts();
    assert_eq!(parts.log.released_through, Zxid::new(1, 4));
    assert!(parts.log.entries.is_empty());
    assert_eq!(parts.snapshots.written, vec![(Zxid::new(1, 4), vec![1, 2, 3, 4])]);
}

#[test]
fn a_written_snapshots_image_is_freed_a_part_per_batch_and_per_tick_and_no_snapshot_starts_before() {
    let config = ReplicaConfig { snapshot_every_entries: 2, ..ReplicaConfig::new(ZabConfig::new(1, vec![1])) };
    let mut replica = lone(config, fresh_parts());
    now(replica.propose(None, payloads(2))).expect("proposes");
    now(replica.step(Input::Durable(Zxid::new(1, 2)))).expect("commits");
    replica.snapshots_mut().done = true;
    now(replica.step(Input::Tick)).expect("ticks");
    assert_eq!(replica.snapshots_mut().written.len(), 1, "the snapshot was written");
    // Its image, in 9 parts, comes back to be freed here.
    replica.snapshots_mut().releasing = 9;
    // Under load: a part per batch applied, and no new snapshot while parts are left.
    for counter in [3, 5] {
        now(replica.propose(None, payloads(2))).expect("proposes");
        now(replica.step(Input::Durable(Zxid::new(1, counter + 1)))).expect("commits");
    }
    assert_eq!(replica.snapshots_mut().release_steps, 2, "one part per batch");
    assert!(replica.snapshots_mut().running.is_none(), "no snapshot while the last one's image is being freed");
    // Idle: ticks free the rest.
    now(replica.step(Input::Tick)).expect("ticks");
    assert_eq!(replica.snapshots_mut().release_steps, 2 + driver::RELEASE_STEPS_PER_TICK);
    now(replica.step(Input::Tick)).expect("ticks");
    assert_eq!(replica.snapshots_mut().release_steps, 9, "all freed, and no step past the last part");
    assert!(!replica.snapshots_mut().busy());
    // Then the next snapshot comes with the next batch past the count.
    now(replica.propose(None, payloads(2))).expect("proposes");
    now(replica.step(Input::Durable(Zxid::new(1, 8)))).expect("commits");
    assert_eq!(replica.snapshots_mut().running.as_ref().map(|r| r.0), Some(Zxid::new(1, 8)));
}

#[test]
fn a_failed_snapshot_keeps_the_log() {
    struct Failing(MemSnapshots);
    impl Snapshots for Failing {
        type Image = Vec<u8>;
        fn load_newest(&mut self) -> Result<Option<(Zxid, Vec<u8>)>, StorageError> {
            Ok(None)
        }
        fn start(&mut self, zxid: Zxid, data: Vec<u8>) {
            self.0.start(zxid, data)
        }
        fn busy(&self) -> bool {
            self.0.busy()
        }
        fn finished(&mut self) -> Option<(Zxid, Result<Option<Zxid>, StorageError>)> {
            let (zxid, _) = self.0.running.take()?;
            let error = std::io::Error::other("disk full");
            let path = std::path::PathBuf::from("snapshots");
            Some((zxid, Err(StorageError::Snapshot(crate::snapshot::SnapshotError::Io { path, source: error }))))
        }
        fn write(&mut self, zxid: Zxid, data: &[u8]) -> Result<(), StorageError> {
            self.0.write(zxid, data)
        }
    }
    let config = ReplicaConfig { snapshot_every_entries: 1, ..ReplicaConfig::new(ZabConfig::new(1, vec![1])) };
    let parts = Parts {
        log: MemLog::default(),
        epochs: MemEpochs::default(),
        snapshots: Failing(MemSnapshots::default()),
        peers: NoPeers,
        state: Applied::default(),
    };
    let (mut replica, _) = Replica::recover(config, parts, |_| std::iter::empty()).expect("recovers");
    now(replica.start()).expect("starts");
    now(replica.propose(None, payloads(1))).expect("proposes");
    now(replica.step(Input::Durable(Zxid::new(1, 1)))).expect("commits");
    now(replica.step(Input::Tick)).expect("a failed snapshot is not a failed replica");
    assert_eq!(replica.zab().history().base(), Zxid::ZERO, "nothing compacted");
    assert_eq!(replica.into_parts().log.entries.len(), 1);
}

#[test]
fn no_snapshot_before_the_log_has_grown_by_half_the_newest_one() {
    // Every 2 entries, but the newest snapshot weighs 8 bytes: entries of a byte each must
    // add up to 4 first.
    let config = ReplicaConfig { snapshot_every_entries: 2, ..ReplicaConfig::new(ZabConfig::new(1, vec![1])) };
    let mut parts = fresh_parts();
    parts.snapshots.newest = 8;
    let mut replica = lone(config, parts);
    now(replica.propose(None, payloads(3))).expect("proposes");
    now(replica.step(Input::Durable(Zxid::new(1, 3)))).expect("commits");
    assert!(!replica.snapshots_mut().busy(), "3 entries, 3 bytes: not yet half of 8");
    now(replica.propose(None, payloads(1))).expect("proposes");
    now(replica.step(Input::Durable(Zxid::new(1, 4)))).expect("commits");
    assert_eq!(replica.snapshots_mut().running.as_ref().map(|r| r.0), Some(Zxid::new(1, 4)), "4 bytes: due");
}

#[test]
fn snapshots_come_by_bytes_too_and_spread_between_half_and_all_of_the_count() {
    // By bytes: 1,000 entries between snapshots, but a byte limit that two entries reach.
    let config = ReplicaConfig {
        snapshot_every_entries: 1_000,
        snapshot_every_bytes: 2,
        ..ReplicaConfig::new(ZabConfig::new(1, vec![1]))
    };
    let mut replica = lone(config, fresh_parts());
    now(replica.propose(None, payloads(2))).expect("proposes");
    now(replica.step(Input::Durable(Zxid::new(1, 2)))).expect("commits");
    assert!(replica.snapshots_mut().busy(), "two entries of at least a byte each: a snapshot by bytes");

    // Spread: with a seed, each point falls in [every/2, every], and not always the same.
    let config = ReplicaConfig {
        snapshot_every_entries: 100,
        snapshot_spread_seed: Some(7),
        ..ReplicaConfig::new(ZabConfig::new(1, vec![1]))
    };
    let mut replica = lone(config, fresh_parts());
    let draws: Vec<u64> = (0..50).map(|_| replica.next_snapshot_due()).collect();
    assert!(draws.iter().all(|d| (50..=100).contains(d)), "{draws:?}");
    assert!(draws.iter().any(|&d| d != draws[0]), "spread: {draws:?}");
    // Without a seed: exactly every N.
    let mut exact = lone(
        ReplicaConfig { snapshot_every_entries: 100, ..ReplicaConfig::new(ZabConfig::new(1, vec![1])) },
        fresh_parts(),
    );
    assert_eq!(exact.next_snapshot_due(), 100);
}
