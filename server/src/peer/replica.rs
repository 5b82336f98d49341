//! A replica: the glommio driver of one server's Zab core. It gathers inputs (peer events,
//! ticks, WAL durability, proposals, syncs), steps the core and carries out its actions in
//! order against the WAL, the epochs file, the peer links and a [`StateMachine`]. It makes no
//! protocol decisions (STYLE: "thin runtime").

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use baton_engine::snapshot::{SnapshotError, SnapshotStore};
use baton_engine::wal::{Wal, WalConfig, WalError};
use baton_engine::zab::{epochs, Action, LogEntry, Message, Payload, Persisted, Role, ServerId, Zab, ZabConfig};
use baton_engine::Zxid;

use super::transport::{PeerEvent, Transport};

/// What a replica applies committed entries to, and hears the protocol's other news on.
/// Every call runs on the replica's executor, between two protocol steps.
pub trait StateMachine {
    /// Applies committed entries: consecutive, zxids strictly increasing across calls.
    fn apply(&mut self, entries: &[LogEntry]);
    /// Replays entries of a lone server's own log at start, before it serves anyone (it is
    /// its own quorum, so its whole log is committed). Nothing waits for them.
    fn replay(&mut self, entries: &[LogEntry]) {
        self.apply(entries);
    }
    /// The whole applied state, as bytes [`StateMachine::install`] takes back.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot covering everything up to `zxid`.
    fn install(&mut self, zxid: Zxid, data: &[u8]);
    /// Sync `id` (see [`ReplicaHandle::sync`]) is done: the entries applied so far include
    /// every write proposed before it. `None`: this server has no leader to sync with.
    fn synced(&mut self, _id: u64, _zxid: Option<Zxid>) {}
    /// (Leader only.) These sessions were seen alive somewhere in the ensemble.
    fn touched(&mut self, _sessions: Vec<u64>) {}
    /// The role changed; `last_logged` is the log's last zxid at that moment (for a leader
    /// that just got established: where its proposals continue).
    fn role_changed(&mut self, _role: Role, _last_logged: Zxid) {}
    /// A peer's driver sent `data` ([`ReplicaHandle::send`]).
    fn message(&mut self, _from: ServerId, _data: &[u8]) {}
}

/// Settings of a replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Protocol settings (id, voters, observers, limits in ticks).
    pub zab: ZabConfig,
    /// Where peers connect (`None` for a server alone in its ensemble: no peer port).
    pub listen: Option<SocketAddr>,
    /// Every member's peer address (this one's included or not).
    pub peers: BTreeMap<ServerId, SocketAddr>,
    /// The epochs file and `snapshots/` live here.
    pub data_dir: PathBuf,
    /// The WAL.
    pub wal: WalConfig,
    /// Real time per tick.
    pub tick: Duration,
    /// Largest peer frame accepted.
    pub frame_bytes_max: usize,
    /// Bytes waiting to be sent to one peer before its link counts as broken, once its
    /// connection took nothing for a second (a follower that stopped reading is dropped and
    /// resynchronised rather than holding the leader back).
    pub queue_bytes_max: usize,
    /// Snapshot the state and compact the log after this many applied entries (0: never).
    pub snapshot_every_entries: u64,
    /// Snapshots kept; the WAL segments older ones covered are released.
    pub snapshots_to_keep: usize,
    /// Drop committed entries from memory as soon as they are applied and durable. The core
    /// keeps the log since the last snapshot to bring followers up to date with a DIFF; a
    /// server alone in its ensemble has no one to send it to (and keeps 30 bytes per znode
    /// less at a million znodes).
    pub compact_on_commit: bool,
}

impl ReplicaConfig {
    /// A replica of `zab`'s ensemble with its files under `data_dir` and default limits.
    pub fn new(zab: ZabConfig, data_dir: PathBuf) -> ReplicaConfig {
        ReplicaConfig {
            zab,
            listen: None,
            peers: BTreeMap::new(),
            wal: WalConfig::new(data_dir.join("wal")),
            data_dir,
            tick: Duration::from_millis(100),
            frame_bytes_max: 64 << 20,
            queue_bytes_max: 64 << 20,
            snapshot_every_entries: 0,
            snapshots_to_keep: 2,
            compact_on_commit: false,
        }
    }
}

/// Failures that stop a replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The WAL failed (a failed fsync poisons it: fail-stop).
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The epochs file could not be read or written.
    #[error(transparent)]
    Epochs(#[from] epochs::EpochError),
    /// A snapshot could not be written or read.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The peer port could not be bound.
    #[error("peer port {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

enum Input {
    Peer(PeerEvent),
    Tick,
    Durable(Zxid),
    Propose(Option<Zxid>, Vec<Payload>),
    Sync(u64),
    Touch(Vec<u64>),
    Stop,
}

#[derive(Default)]
struct Inputs {
    queue: VecDeque<Input>,
    waker: Option<Waker>,
}

impl Inputs {
    fn push(&mut self, input: Input) {
        self.queue.push_back(input);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// Inputs queued beyond this make [`ReplicaHandle::ready`] wait.
const INPUTS_MAX: usize = 4096;

/// What a replica reports about itself (for logs, `srvr`, `mntr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The role.
    pub role: Role,
    /// (accepted, current) epoch.
    pub epochs: (u32, u32),
    /// The last logged zxid.
    pub last_logged: Zxid,
    /// The commit point.
    pub committed: Zxid,
    /// Entries durable in the WAL since start.
    pub wal_entries_durable: u64,
    /// WAL flushes since start.
    pub wal_batches: u64,
}

/// A handle to a running replica, on its executor.
#[derive(Clone)]
pub struct ReplicaHandle {
    inputs: Rc<RefCell<Inputs>>,
    status: Rc<std::cell::Cell<Status>>,
    transport: Option<Rc<Transport>>,
    wal: Rc<Wal>,
}

impl ReplicaHandle {
    /// Proposes entries. Dropped unless this replica is an established leader when the
    /// driver gets to them and, if `first` is given, the first would get that zxid (entries
    /// that carry their zxid inside must not be logged under another).
    pub fn propose(&self, first: Option<Zxid>, payloads: Vec<Payload>) {
        self.inputs.borrow_mut().push(Input::Propose(first, payloads));
    }

    /// A client's sync: [`StateMachine::synced`] follows.
    pub fn sync(&self, id: u64) {
        self.inputs.borrow_mut().push(Input::Sync(id));
    }

    /// Reports client sessions alive here (to the leader, which owns expiry).
    pub fn touch(&self, sessions: Vec<u64>) {
        self.inputs.borrow_mut().push(Input::Touch(sessions));
    }

    /// Sends `data` to peer `to`'s [`StateMachine::message`], on the FIFO link that carries
    /// the protocol (so it is ordered with the syncs and touches sent after it).
    pub fn send(&self, to: ServerId, data: Payload) {
        if let Some(t) = &self.transport {
            t.send(to, &Message::Forward { data });
        }
    }

    /// Waits until the replica can take more proposals (its input queue and the WAL's).
    pub async fn ready(&self) {
        loop {
            if self.inputs.borrow().queue.len() < INPUTS_MAX && self.wal.has_room() {
                return;
            }
            if self.wal.has_room() {
                glommio::timer::sleep(Duration::from_micros(200)).await;
            } else {
                self.wal.ready().await;
            }
        }
    }

    /// The replica's role.
    pub fn role(&self) -> Role {
        self.status.get().role
    }

    /// What the replica reports about itself.
    pub fn status(&self) -> Status {
        self.status.get()
    }

    /// Stops the replica's loop (the links close with it).
    pub fn stop(&self) {
        self.inputs.borrow_mut().push(Input::Stop);
    }
}

/// Opens the WAL and epochs, starts the links and runs the replica until stopped. `ready`
/// receives a handle once it runs. Recovery installs the newest valid snapshot into `state`;
/// the logged entries after it are applied only once a leader commits them.
pub async fn run<S: StateMachine>(
    config: ReplicaConfig,
    state: Rc<RefCell<S>>,
    ready: impl FnOnce(ReplicaHandle),
) -> Result<(), ReplicaError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| ReplicaError::Epochs(epochs::EpochError::Io { path: config.data_dir.clone(), source: e }))?;
    let started = std::time::Instant::now();
    let (mut accepted_epoch, mut current_epoch) = epochs::load(&config.data_dir)?;
    // Recovery: the newest valid snapshot, then the log after it.
    let snapshots = SnapshotStore::open(config.data_dir.join("snapshots"))?;
    let mut snapshot_zxid = Zxid::ZERO;
    let loaded = snapshots.load_newest()?;
    for skipped in &loaded.skipped {
        tracing::error!(error = %skipped, "passed over a damaged snapshot");
    }
    if let Some(snapshot) = &loaded.snapshot {
        snapshot_zxid = snapshot.info.zxid;
        state.borrow_mut().install(snapshot_zxid, snapshot.payload());
    }
    drop(loaded);
    let (wal, reader) = Wal::open(config.wal.clone()).await?;
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut replayed = 0u64;
    if config.compact_on_commit {
        // Alone in its ensemble: the log is committed as it stands. Replay it in pieces
        // (the core would commit it whole on its first election and keep none of it).
        let mut records = reader.records_after(snapshot_zxid).map(|r| (r.zxid, Payload::from(r.payload)));
        loop {
            let chunk: Vec<LogEntry> = records.by_ref().take(4096).collect();
            let Some((last, _)) = chunk.last() else { break };
            snapshot_zxid = *last;
            replayed += chunk.len() as u64;
            state.borrow_mut().replay(&chunk);
        }
    } else {
        entries = reader.records_after(snapshot_zxid).map(|r| (r.zxid, Payload::from(r.payload))).collect();
    }
    drop(reader);
    // No epochs file but a log (a data directory of a server from before replication, or a
    // lost file): as ZooKeeper, take the epoch of the last logged zxid as the current one.
    let logged_epoch = entries.last().map_or(snapshot_zxid, |(z, _)| *z).epoch();
    if current_epoch < logged_epoch {
        tracing::warn!(current_epoch, logged_epoch, "the epochs file is behind the log; using the log's epoch");
        current_epoch = logged_epoch;
        accepted_epoch = accepted_epoch.max(logged_epoch);
        epochs::save(&config.data_dir, accepted_epoch, current_epoch)?;
    }
    tracing::info!(
        applied = %snapshot_zxid,
        replayed,
        logged = entries.len(),
        accepted_epoch,
        current_epoch,
        ms = started.elapsed().as_millis() as u64,
        "recovered"
    );
    let persisted = Persisted { accepted_epoch, current_epoch, snapshot_zxid, entries };
    let transport = match config.listen {
        Some(listen) => {
            let listener = crate::runtime::bind_listener(listen, false)
                .map_err(|source| ReplicaError::Listen { addr: listen, source })?;
            Some(Rc::new(Transport::start(
                config.zab.id,
                listener,
                &config.peers,
                config.frame_bytes_max,
                config.queue_bytes_max,
            )))
        }
        None => None,
    };
    let inputs = Rc::new(RefCell::new(Inputs::default()));
    let wal = Rc::new(wal);
    let status = Status {
        role: Role::Looking,
        epochs: (accepted_epoch, current_epoch),
        last_logged: Zxid::ZERO,
        committed: snapshot_zxid,
        wal_entries_durable: 0,
        wal_batches: 0,
    };
    let handle = ReplicaHandle {
        inputs: inputs.clone(),
        status: Rc::new(std::cell::Cell::new(status)),
        transport: transport.clone(),
        wal: wal.clone(),
    };
    let pump = transport.clone().map(|transport| {
        let inputs = inputs.clone();
        glommio::spawn_local(async move {
            loop {
                let event = transport.next_event().await;
                inputs.borrow_mut().push(Input::Peer(event));
            }
        })
    });
    let ticker = {
        let (inputs, tick) = (inputs.clone(), config.tick);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(tick).await;
                inputs.borrow_mut().push(Input::Tick);
            }
        })
    };
    let mut driver = Driver {
        zab: Zab::new(config.zab.clone(), persisted),
        wal,
        transport: transport.clone(),
        inputs: inputs.clone(),
        state,
        applied: snapshot_zxid,
        snapshot_every: config.snapshot_every_entries,
        snapshots_to_keep: config.snapshots_to_keep.max(1),
        compact_on_commit: config.compact_on_commit,
        since_snapshot: replayed,
        snapshot_running: None,
        snapshots,
        janitor: janitor(),
        data_dir: config.data_dir.clone(),
        status: handle.status.clone(),
    };
    ready(handle);
    let result = driver.run().await;
    if let Some(t) = &transport {
        t.stop();
    }
    drop(pump);
    drop(ticker);
    let wal = driver.wal.clone();
    drop(driver);
    if let Ok(wal) = Rc::try_unwrap(wal) {
        let _ = wal.close().await;
    }
    result
}

/// A background snapshot: the zxid it covers and, once written and old ones purged, the
/// oldest snapshot kept.
struct SnapshotJob {
    zxid: Zxid,
    thread: std::thread::JoinHandle<Result<Option<Zxid>, SnapshotError>>,
}

struct Driver<S> {
    zab: Zab,
    wal: Rc<Wal>,
    transport: Option<Rc<Transport>>,
    inputs: Rc<RefCell<Inputs>>,
    state: Rc<RefCell<S>>,
    applied: Zxid,
    /// Entries applied since the last snapshot decide when to take the next.
    snapshot_every: u64,
    snapshots_to_keep: usize,
    compact_on_commit: bool,
    since_snapshot: u64,
    snapshot_running: Option<SnapshotJob>,
    snapshots: SnapshotStore,
    /// Deletes released WAL segments the recycling pool cannot hold, off the I/O thread.
    janitor: std::sync::mpsc::Sender<Vec<PathBuf>>,
    data_dir: PathBuf,
    status: Rc<std::cell::Cell<Status>>,
}

impl<S: StateMachine> Driver<S> {
    /// Waits until the appends in flight are durable: the WAL truncates only when idle.
    async fn wal_idle(&self) {
        while self.wal.durable_zxid() < self.wal.last_zxid() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Starts writing a snapshot of the applied state on a thread of its own (the tree's
    /// image is taken here, between two steps, so it is exactly the state at `applied`).
    fn start_snapshot(&mut self) {
        if self.snapshot_running.is_some() {
            return;
        }
        let started = std::time::Instant::now();
        let data = self.state.borrow().snapshot();
        // The image is taken between two protocol steps (so it is exactly the state at
        // `applied`); this is how long the write path paused for it.
        tracing::info!(zxid = %self.applied, bytes = data.len(), ms = started.elapsed().as_millis() as u64, "snapshot image taken");
        let (store, keep, zxid) = (self.snapshots.clone(), self.snapshots_to_keep, self.applied);
        self.since_snapshot = 0;
        let thread = std::thread::spawn(move || {
            store.write(zxid, &data)?;
            drop(data);
            store.purge(keep)
        });
        self.snapshot_running = Some(SnapshotJob { zxid, thread });
    }

    /// Once the background snapshot is written: the core forgets the log it covers and the
    /// WAL releases the segments no kept snapshot needs (kept for reuse as new segments; what
    /// the pool cannot hold goes to the janitor, so the I/O thread never waits for unlinks).
    fn finish_snapshot(&mut self) -> Result<(), ReplicaError> {
        if !self.snapshot_running.as_ref().is_some_and(|j| j.thread.is_finished()) {
            return Ok(());
        }
        let Some(job) = self.snapshot_running.take() else { return Ok(()) };
        let oldest_kept = match job.thread.join() {
            Ok(Ok(oldest)) => oldest,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "snapshot failed");
                return Ok(());
            }
            Err(_) => {
                tracing::error!("snapshot thread panicked");
                return Ok(());
            }
        };
        self.zab.compact(job.zxid);
        let released = match oldest_kept {
            Some(oldest) => self.wal.recycle_through(oldest)?,
            None => Vec::new(),
        };
        tracing::info!(zxid = %job.zxid, ?oldest_kept, deleted_segments = released.len(), "snapshot written; log compacted");
        if !released.is_empty() && self.janitor.send(released).is_err() {
            tracing::warn!("WAL janitor gone; released segments stay on disk");
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<(), ReplicaError> {
        self.carry_out().await?;
        loop {
            let input = poll_fn(|cx| {
                let mut inputs = self.inputs.borrow_mut();
                match inputs.queue.pop_front() {
                    Some(i) => Poll::Ready(i),
                    None => {
                        inputs.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
            .await;
            match input {
                Input::Peer(PeerEvent::Message(from, Message::Forward { data })) => {
                    self.state.borrow_mut().message(from, &data);
                }
                Input::Peer(PeerEvent::Message(from, msg)) => self.zab.on_message(from, msg),
                Input::Peer(PeerEvent::Disconnected(peer)) => self.zab.on_disconnected(peer),
                Input::Tick => {
                    self.zab.on_tick();
                    self.finish_snapshot()?;
                }
                Input::Durable(zxid) => self.zab.on_durable(zxid),
                Input::Propose(first, payloads) => match (first, self.zab.next_zxid()) {
                    (Some(f), Ok(next)) if f != next => {
                        // Prepared by a sequencer of another leadership of this server: the
                        // role change that ended it already failed their clients.
                        tracing::warn!(first = %f, next = %next, count = payloads.len(), "dropping proposals of an earlier leadership");
                    }
                    _ => {
                        let _ = self.zab.propose(payloads);
                    }
                },
                Input::Sync(id) => {
                    if !self.zab.sync(id) {
                        self.state.borrow_mut().synced(id, None);
                    }
                }
                Input::Touch(sessions) => {
                    let _ = self.zab.touch(sessions);
                }
                Input::Stop => return Ok(()),
            }
            self.carry_out().await?;
        }
    }

    /// Runs the core's actions in order.
    async fn carry_out(&mut self) -> Result<(), ReplicaError> {
        loop {
            let actions = self.zab.take_actions();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                self.act(action).await?;
            }
        }
        let history = self.zab.history();
        let wal = self.wal.stats();
        self.status.set(Status {
            role: self.zab.role(),
            epochs: self.zab.epochs(),
            last_logged: history.last(),
            committed: history.committed(),
            wal_entries_durable: wal.entries_durable,
            wal_batches: wal.batches,
        });
        Ok(())
    }

    async fn act(&mut self, action: Action) -> Result<(), ReplicaError> {
        match action {
            Action::Send { to, msg } => {
                if let Some(t) = &self.transport {
                    t.send(to, &msg);
                }
            }
            Action::SaveEpochs { accepted, current } => epochs::save(&self.data_dir, accepted, current)?,
            Action::Append { entries } => {
                let Some(last) = entries.last().map(|(z, _)| *z) else { return Ok(()) };
                let mut durables = Vec::with_capacity(entries.len());
                for (zxid, payload) in &entries {
                    self.wal.ready().await;
                    durables.push(self.wal.submit(*zxid, payload)?);
                }
                let inputs = self.inputs.clone();
                glommio::spawn_local(async move {
                    for d in durables {
                        if d.await.is_err() {
                            return; // the WAL is poisoned; the next submit reports it
                        }
                    }
                    inputs.borrow_mut().push(Input::Durable(last));
                })
                .detach();
            }
            Action::Truncate { after } => {
                self.wal_idle().await;
                self.wal.truncate_after(after).await?;
            }
            Action::Commit { through } => {
                let entries: Vec<LogEntry> = self.zab.history().range(self.applied, through).cloned().collect();
                let Some(last) = entries.last().map(|(z, _)| *z) else { return Ok(()) };
                self.state.borrow_mut().apply(&entries);
                self.applied = last;
                if self.compact_on_commit {
                    self.zab.compact(last.min(self.wal.durable_zxid()));
                }
                self.since_snapshot += entries.len() as u64;
                if self.snapshot_every > 0 && self.since_snapshot >= self.snapshot_every {
                    self.start_snapshot();
                }
            }
            Action::RoleChanged(role) => {
                let id = self.zab.id();
                let (accepted, current) = self.zab.epochs();
                let last = self.zab.history().last();
                tracing::info!(id, ?role, accepted_epoch = accepted, current_epoch = current, last_logged = %last, "role");
                let mut status = self.status.get();
                status.role = role;
                self.status.set(status);
                self.state.borrow_mut().role_changed(role, last);
            }
            Action::Synced { id, zxid } => self.state.borrow_mut().synced(id, Some(zxid)),
            Action::Touched { sessions } => self.state.borrow_mut().touched(sessions),
            Action::TakeSnapshot { peer } => {
                let data = self.state.borrow().snapshot();
                self.zab.on_snapshot(peer, self.applied, data.into());
            }
            Action::InstallSnapshot { zxid, data } => {
                // Durable before anything after it: the snapshot, then a log emptied of
                // everything it replaces (the WAL truncates only when idle).
                self.state.borrow_mut().install(zxid, &data);
                self.snapshots.write(zxid, &data)?;
                self.wal_idle().await;
                self.wal.truncate_after(Zxid::ZERO).await?;
                self.applied = zxid;
                self.since_snapshot = 0;
            }
        }
        Ok(())
    }
}

/// A thread that deletes released WAL segments, oldest first: the files left after a crash
/// are always a contiguous run of the log, which recovery skips (a snapshot covers them).
fn janitor() -> std::sync::mpsc::Sender<Vec<PathBuf>> {
    let (janitor, doomed) = std::sync::mpsc::channel::<Vec<PathBuf>>();
    let spawned = std::thread::Builder::new().name("baton-wal-janitor".into()).spawn(move || {
        for paths in doomed {
            for path in paths {
                if let Err(e) = shrink_then_remove(&path) {
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

/// Deletes a file by cutting it down 1 MiB at a time, 20 ms apart, then unlinking it. On
/// ext4 freeing a 64 MiB segment in one unlink is one large journal transaction, and the
/// WAL's next fdatasync waits for it: measured p99.9 write latency 31-46 ms with plain
/// unlinks, 11-14 ms with none. Small steps keep each transaction short.
fn shrink_then_remove(path: &std::path::Path) -> std::io::Result<()> {
    const STEP: u64 = 1 << 20;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut len = file.metadata()?.len();
    while len > STEP {
        len -= STEP;
        file.set_len(len)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(file);
    std::fs::remove_file(path)
}
