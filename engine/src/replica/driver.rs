//! [`Replica`]: the one driver of a server's Zab core, in production and in the simulator.

use super::storage::{Epochs, ImageSink, Log, Peers, SnapshotImage, Snapshots, StateMachine};
use super::{Input, StorageError};
use crate::log::Zxid;
use crate::stats::{Histogram, DURATION_BOUNDS_US};
use crate::zab::{Action, LogEntry, Message, Payload, Persisted, ServerId, Zab, ZabConfig};

/// Parts of the last snapshot's image freed per tick ([`Snapshots::release_step`]), besides
/// one per batch applied: an idle server frees a 10M-znode tree's (1,221 page directories)
/// within about 30 s of 100 ms ticks, a few milliseconds of freeing each.
pub(super) const RELEASE_STEPS_PER_TICK: usize = 4;

/// Settings of a replica's driver.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Protocol settings (id, voters, observers, limits in ticks).
    pub zab: ZabConfig,
    /// Snapshot the state and compact the log after this many applied entries (0: never),
    /// and never before the log has grown by half the newest snapshot's size since the last
    /// one (see `commit`).
    pub snapshot_every_entries: u64,
    /// Also snapshot once this many bytes of entries were applied since the last one (0:
    /// never): a log of large entries is compacted as soon as one of small ones.
    pub snapshot_every_bytes: u64,
    /// Spread snapshots: with a seed, each snapshot comes after a number of entries drawn
    /// between half and all of `snapshot_every_entries` (ZooKeeper's `snapCount/2 +
    /// random(snapCount/2)`), so that the servers of an ensemble, seeded apart, do not all
    /// snapshot at the same moment. `None`: exactly every `snapshot_every_entries`.
    pub snapshot_spread_seed: Option<u64>,
    /// Drop committed entries from memory as soon as they are applied and durable. The core
    /// keeps the log since the last snapshot to bring followers up to date with a DIFF; a
    /// server alone in its ensemble has no one to send it to (and keeps 30 bytes per znode
    /// less at a million znodes). Its recovery then replays its whole log at once, in
    /// pieces, since it is its own quorum.
    pub compact_on_commit: bool,
    /// Times snapshots and log purges for [`Replica::stats`] (none by default).
    pub clock: crate::stats::Clock,
}

/// What a replica counts for metrics (see [`Replica::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Background snapshots written, from the state frozen to the file synced, in
    /// microseconds (by [`ReplicaConfig::clock`]).
    pub snapshot_us: Histogram,
    /// Background snapshots that failed.
    pub snapshots_failed: u64,
    /// Releases of the log a snapshot made unneeded (segments removed or set aside for
    /// reuse), in microseconds.
    pub purge_us: Histogram,
}

impl ReplicaConfig {
    /// A replica of `zab`'s ensemble that never snapshots by itself.
    pub fn new(zab: ZabConfig) -> ReplicaConfig {
        ReplicaConfig {
            zab,
            snapshot_every_entries: 0,
            snapshot_every_bytes: 0,
            snapshot_spread_seed: None,
            compact_on_commit: false,
            clock: crate::stats::no_clock,
        }
    }
}

/// What a driver runs its actions against.
pub struct Parts<L, E, S, P, M> {
    /// The log.
    pub log: L,
    /// The epochs.
    pub epochs: E,
    /// The snapshots.
    pub snapshots: S,
    /// The links to the other servers.
    pub peers: P,
    /// The state machine.
    pub state: M,
}

/// Entries replayed per [`StateMachine::replay`] call at recovery.
const REPLAY_CHUNK: usize = 4096;

/// What recovery found (for the operator's log line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The zxid the state starts from (the snapshot's, plus what a lone server replayed).
    pub applied: Zxid,
    /// Entries replayed into the state.
    pub replayed: u64,
    /// Entries left in the log for a leader to commit.
    pub logged: usize,
    /// (accepted, current) epochs.
    pub epochs: (u32, u32),
}

/// One server's replica: its Zab core and the stores and state machine that carry out the
/// core's actions. It gathers no inputs itself and reads no clock: its owner delivers
/// [`Input`]s one at a time with [`Replica::step`]. Besides carrying out actions it takes
/// the decisions the core leaves to its driver, each of which the simulator exercises:
///
/// - at recovery, the epochs are raised to the epoch of the last logged entry when the
///   epochs record is behind the log (a data directory from before replication, or a lost
///   file), as ZooKeeper does;
/// - proposals prepared for an earlier leadership of this server are dropped (their zxids
///   would not follow this leadership's log; the role change already failed their clients);
/// - a snapshot is taken every `snapshot_every_entries` applied entries, and once it is
///   written the core forgets the log it covers and the log store releases it.
pub struct Replica<L, E, S, P, M> {
    zab: Zab,
    config: ReplicaConfig,
    log: L,
    epochs: E,
    snapshots: S,
    peers: P,
    state: M,
    /// The last zxid applied to the state. Invariant: applied <= the core's commit point,
    /// except right after a snapshot install (then equal to its base).
    applied: Zxid,
    /// Entries applied since the last snapshot was started.
    since_snapshot: u64,
    /// Bytes of entries applied since then.
    since_snapshot_bytes: u64,
    /// Entries after which the next snapshot starts (see `ReplicaConfig::snapshot_spread_seed`).
    snapshot_due: u64,
    /// The spread's generator state.
    spread: u64,
    /// States frozen for learners by `TakeSnapshot`, until `SendSnapshot` streams them (or
    /// the core turned them down: dropped once its actions are carried out, as a frozen
    /// view holds every page the state changes after it).
    frozen: Vec<(ServerId, Zxid, Box<dyn SnapshotImage>)>,
    /// A SNAP being received from the leader, installed as it arrives.
    receiving: Option<Receiving>,
    /// When the background snapshot under way was started (by the config's clock).
    snapshot_started_us: u64,
    stats: ReplicaStats,
}

/// A SNAP being received: the state machine and the snapshot store take each piece as it
/// comes (neither holds the whole image as one buffer).
struct Receiving {
    zxid: Zxid,
    state: Box<dyn ImageSink>,
    file: Box<dyn ImageSink>,
}

impl<L: Log, E: Epochs, S: Snapshots, P: Peers, M: StateMachine> Replica<L, E, S, P, M> {
    /// Recovers a server from its stores: the newest valid snapshot into the state, then
    /// the log after it (`logged(zxid)`: every durable entry after `zxid`, in order),
    /// and starts its core, LOOKING. The logged entries are applied only once a leader
    /// commits them — except on a server alone in its ensemble (`compact_on_commit`),
    /// which replays them at once.
    pub fn recover<I: Iterator<Item = LogEntry>>(
        config: ReplicaConfig,
        mut parts: Parts<L, E, S, P, M>,
        logged: impl FnOnce(Zxid) -> I,
    ) -> Result<(Self, Recovered), StorageError> {
        let (mut accepted_epoch, mut current_epoch) = parts.epochs.load()?;
        let mut base = Zxid::ZERO;
        if let Some((zxid, image)) = parts.snapshots.load_newest()? {
            base = zxid;
            parts.state.install_shared(zxid, image.into());
            parts.snapshots.installed();
        }
        let snapshot_zxid = base;
        let mut logged = logged(base).filter(move |e| e.zxid > snapshot_zxid);
        let mut entries = Vec::new();
        let mut replayed = 0u64;
        if config.compact_on_commit {
            loop {
                let chunk: Vec<LogEntry> = logged.by_ref().take(REPLAY_CHUNK).collect();
                let Some(last) = chunk.last() else { break };
                base = last.zxid;
                replayed += chunk.len() as u64;
                parts.state.replay(&chunk);
            }
        } else {
            entries = logged.collect();
        }
        let logged_epoch = entries.last().map_or(base, |e| e.zxid).epoch();
        if current_epoch < logged_epoch {
            tracing::warn!(current_epoch, logged_epoch, "the epochs record is behind the log; using the log's epoch");
            current_epoch = logged_epoch;
            accepted_epoch = accepted_epoch.max(logged_epoch);
            parts.epochs.save(accepted_epoch, current_epoch)?;
        }
        let recovered =
            Recovered { applied: base, replayed, logged: entries.len(), epochs: (accepted_epoch, current_epoch) };
        let persisted = Persisted { accepted_epoch, current_epoch, snapshot_zxid: base, entries };
        let mut replica = Replica {
            zab: Zab::new(config.zab.clone(), persisted),
            since_snapshot: replayed,
            since_snapshot_bytes: 0,
            snapshot_due: config.snapshot_every_entries,
            spread: config.snapshot_spread_seed.unwrap_or(0),
            config,
            log: parts.log,
            epochs: parts.epochs,
            snapshots: parts.snapshots,
            peers: parts.peers,
            state: parts.state,
            applied: base,
            frozen: Vec::new(),
            receiving: None,
            snapshot_started_us: 0,
            stats: ReplicaStats::default(),
        };
        replica.snapshot_due = replica.next_snapshot_due();
        Ok((replica, recovered))
    }

    /// Carries out the actions the core queued at its start (its first notifications, and
    /// for a lone server its leadership). Call once, before the first [`Replica::step`].
    pub async fn start(&mut self) -> Result<(), StorageError> {
        self.zab.set_withdrawn(self.log.out_of_space());
        self.carry_out().await
    }

    /// Delivers one input and carries out every action it led to, in order.
    pub async fn step(&mut self, input: Input) -> Result<(), StorageError> {
        match input {
            Input::Message(from, Message::Forward { data }) => self.state.message(from, &data),
            Input::Message(from, msg) => self.zab.on_message(from, msg),
            Input::Disconnected(peer) => self.zab.on_disconnected(peer),
            Input::Tick => {
                // Fail-stop within a tick of a failed fsync, appending or not.
                self.log.failed()?;
                // Out of the ensemble while the disk cannot take the log, back once it can.
                self.zab.set_withdrawn(self.log.out_of_space());
                self.zab.on_tick();
                self.finish_snapshot()?;
                // An idle server frees the last snapshot's image too (a step per batch
                // applied does it under load).
                for _ in 0..RELEASE_STEPS_PER_TICK {
                    self.snapshots.release_step();
                }
            }
            Input::Durable(zxid) => self.zab.on_durable(zxid),
            Input::Propose { first, payloads } => {
                self.propose(first, payloads).await?;
                return Ok(());
            }
            Input::Sync(id) => {
                if !self.zab.sync(id) {
                    self.state.synced(id, None);
                }
            }
            Input::Touch(sessions) => {
                let _ = self.zab.touch(sessions);
            }
        }
        self.carry_out().await
    }

    /// Proposes entries (what [`Input::Propose`] does), returning their zxids — or `None`
    /// when they were not proposed: this server is not an established leader, or `first`
    /// says they were prepared for zxids this leadership does not continue with.
    pub async fn propose(
        &mut self,
        first: Option<Zxid>,
        payloads: Vec<Payload>,
    ) -> Result<Option<Vec<Zxid>>, StorageError> {
        let zxids = match (first, self.zab.next_zxid()) {
            (Some(first), Ok(next)) if first != next => {
                // Prepared by a sequencer of another leadership of this server: the role
                // change that ended it already failed their clients.
                tracing::warn!(%first, %next, count = payloads.len(), "dropping proposals of an earlier leadership");
                None
            }
            _ => self.zab.propose(payloads).ok(),
        };
        self.carry_out().await?;
        Ok(zxids)
    }

    /// What it counted for metrics.
    pub fn stats(&self) -> ReplicaStats {
        self.stats
    }

    /// The protocol core.
    pub fn zab(&self) -> &Zab {
        &self.zab
    }

    /// The state machine.
    pub fn state(&self) -> &M {
        &self.state
    }

    /// The log store.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// The snapshot store.
    pub fn snapshots_mut(&mut self) -> &mut S {
        &mut self.snapshots
    }

    /// The last zxid applied to the state machine.
    pub fn applied(&self) -> Zxid {
        self.applied
    }

    /// The stores and the state machine, giving the replica up (a clean stop).
    pub fn into_parts(self) -> Parts<L, E, S, P, M> {
        Parts { log: self.log, epochs: self.epochs, snapshots: self.snapshots, peers: self.peers, state: self.state }
    }

    /// Checks the invariants of the core and of this driver.
    pub fn check_invariants(&self) {
        self.zab.check_invariants();
        let history = self.zab.history();
        assert!(
            self.applied <= history.committed() || self.applied == history.base(),
            "applied {} beyond the commit point {}",
            self.applied,
            history.committed()
        );
    }

    async fn carry_out(&mut self) -> Result<(), StorageError> {
        loop {
            let actions = self.zab.take_actions();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                self.act(action).await?;
            }
        }
        self.frozen.clear();
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
        Ok(())
    }

    async fn act(&mut self, action: Action) -> Result<(), StorageError> {
        match action {
            Action::Send { to, msg } => self.peers.send(to, msg),
            Action::SaveEpochs { accepted, current } => self.epochs.save(accepted, current)?,
            Action::Append { entries } => self.log.append(&entries).await?,
            Action::Truncate { after } => self.log.truncate_after(after).await?,
            Action::Commit { through } => self.commit(through),
            Action::RoleChanged(role) => {
                if !matches!(role, crate::zab::Role::Following { .. }) {
                    // A SNAP not installed by now never will be (the core left that sync):
                    // what arrived of it goes, state and temporary file.
                    if let Some(r) = self.receiving.take() {
                        tracing::info!(zxid = %r.zxid, "a SNAP cut off before its end; what arrived of it is dropped");
                    }
                }
                let (accepted, current) = self.zab.epochs();
                let last = self.zab.history().last();
                tracing::info!(id = self.zab.id(), ?role, accepted_epoch = accepted, current_epoch = current, last_logged = %last, "role");
                self.state.role_changed(role, last);
            }
            Action::Synced { id, zxid } => self.state.synced(id, Some(zxid)),
            Action::Touched { sessions } => self.state.touched(sessions),
            Action::TakeSnapshot { peer } => {
                // Between two steps: exactly the state at `applied`, frozen in constant time.
                self.frozen.retain(|(id, ..)| *id != peer);
                self.frozen.push((peer, self.applied, self.state.freeze()));
                self.zab.on_snapshot(peer, self.applied);
            }
            Action::SendSnapshot { to, epoch, zxid } => {
                let at = self.frozen.iter().position(|(id, frozen, _)| *id == to && *frozen == zxid);
                // The core asks only for a state it was just told of, in the same carry-out.
                let Some(at) = at else { unreachable!("SendSnapshot for {to} at {zxid} with no state frozen there") };
                let (_, _, image) = self.frozen.swap_remove(at);
                tracing::info!(peer = to, %zxid, "streaming a snapshot to a learner");
                self.peers.send_snapshot(to, epoch, zxid, image);
            }
            Action::SnapshotBegin { zxid } => {
                tracing::info!(%zxid, "receiving a snapshot from the leader");
                // Another SNAP begun before this one (a sync restarted) is dropped first.
                self.receiving = None;
                let file = self.snapshots.receive(zxid)?;
                self.receiving = Some(Receiving { zxid, state: self.state.receive(zxid), file });
            }
            Action::SnapshotChunk { data } => {
                // The core sends chunks only between a SnapshotBegin and its install, and
                // leaves following (dropping the SNAP) before any other role change.
                let Some(r) = self.receiving.as_mut() else {
                    return Err(StorageError::Received {
                        zxid: Zxid::ZERO,
                        reason: "a piece of a SNAP never begun".into(),
                    });
                };
                let zxid = r.zxid;
                r.file.push(&data).map_err(|reason| StorageError::Received { zxid, reason })?;
                r.state.push(&data).map_err(|reason| StorageError::Received { zxid, reason })?;
            }
            Action::InstallSnapshot { zxid } => {
                let Some(r) = self.receiving.take().filter(|r| r.zxid == zxid) else {
                    return Err(StorageError::Received { zxid, reason: "not the SNAP begun".into() });
                };
                // The state first: a snapshot that does not load never becomes the newest on
                // disk (every restart would load it). Then durable before anything after it:
                // the snapshot, then a log emptied of everything it replaces.
                self.state.install_received(zxid, r.state).map_err(|reason| StorageError::Received { zxid, reason })?;
                self.snapshots.received(zxid, r.file)?;
                self.log.truncate_after(Zxid::ZERO).await?;
                self.applied = zxid;
                self.since_snapshot = 0;
                self.since_snapshot_bytes = 0;
                tracing::info!(%zxid, "snapshot from the leader installed");
            }
        }
        Ok(())
    }

    /// Applies the logged entries up to `through`, then compacts (a lone server) or starts
    /// a snapshot when one is due.
    fn commit(&mut self, through: Zxid) {
        let entries: Vec<LogEntry> = self.zab.history().range(self.applied, through).cloned().collect();
        let Some(last) = entries.last().map(|e| e.zxid) else { return };
        // The core commits only what its log holds, and compacts only what was applied.
        assert_eq!(last, through, "commit through {through} but the log stops at {last}");
        self.state.apply(&entries);
        self.applied = last;
        // The last snapshot's image, freed a part per batch on this thread.
        self.snapshots.release_step();
        if self.config.compact_on_commit {
            self.zab.compact(last.min(self.log.durable()));
        }
        self.since_snapshot += entries.len() as u64;
        self.since_snapshot_bytes += entries.iter().map(|e| e.payload.len() as u64).sum::<u64>();
        let (every, every_bytes) = (self.config.snapshot_every_entries, self.config.snapshot_every_bytes);
        // Never before the log has grown by half the newest snapshot: a snapshot costs what
        // its image does (CPU, disk, the pages the tree copies meanwhile), so the writes pay
        // for it at most twice over whatever the tree's size. Counted alone, a fast server
        // with a large tree would snapshot back to back.
        let paid = self.since_snapshot_bytes >= self.snapshots.newest_bytes() / 2;
        let due = paid
            && ((every > 0 && self.since_snapshot >= self.snapshot_due)
                || (every_bytes > 0 && self.since_snapshot_bytes >= every_bytes));
        if due && !self.snapshots.busy() {
            self.since_snapshot = 0;
            self.since_snapshot_bytes = 0;
            self.snapshot_due = self.next_snapshot_due();
            // Between two steps: exactly the state at `applied`, frozen; the store writes it
            // out in the background while entries go on being applied.
            self.snapshot_started_us = (self.config.clock)();
            let image = self.state.freeze();
            self.snapshots.start_image(self.applied, image);
        }
    }

    /// Entries until the next snapshot: `snapshot_every_entries`, or with a spread seed a
    /// number drawn in [every/2, every] (xorshift64*: deterministic for the simulator).
    pub(super) fn next_snapshot_due(&mut self) -> u64 {
        let every = self.config.snapshot_every_entries;
        if self.config.snapshot_spread_seed.is_none() || every < 2 {
            return every;
        }
        let mut x = self.spread | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.spread = x;
        let draw = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        every / 2 + draw % (every - every / 2 + 1)
    }

    /// Once a background snapshot is written: the core forgets the log it covers and the
    /// log store releases what no kept snapshot needs. A failed snapshot is logged and the
    /// log kept (the next one is attempted after as many entries again).
    fn finish_snapshot(&mut self) -> Result<(), StorageError> {
        let Some((zxid, written)) = self.snapshots.finished() else { return Ok(()) };
        let oldest_kept = match written {
            Ok(oldest) => oldest,
            Err(e) => {
                tracing::error!(error = %e, %zxid, "snapshot failed");
                self.stats.snapshots_failed += 1;
                return Ok(());
            }
        };
        let clock = self.config.clock;
        let written_us = clock();
        self.stats.snapshot_us.record(&DURATION_BOUNDS_US, written_us.saturating_sub(self.snapshot_started_us));
        self.zab.compact(zxid);
        if let Some(oldest) = oldest_kept {
            self.log.release_through(oldest)?;
            self.stats.purge_us.record(&DURATION_BOUNDS_US, clock().saturating_sub(written_us));
        }
        tracing::info!(%zxid, ?oldest_kept, "snapshot written; log compacted");
        Ok(())
    }
}
