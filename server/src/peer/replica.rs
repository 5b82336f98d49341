//! A replica on glommio: the engine's [`Replica`] driver over the real stores (WAL, epochs
//! file, snapshot directory) and the TCP peer links, fed by one input queue (peer events,
//! ticks, WAL durability, and what the state machine's [`ReplicaHandle`] asks). It makes no
//! protocol decisions: the Zab core and the shared driver do (STYLE: "thin runtime").

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use baton_engine::replica::{
    EpochFile, Input, LogRoom, Parts, Peers, Replica, ReplicaConfig as DriverConfig, ReplicaStats, SnapshotDir,
    SnapshotImage, StateMachine, StorageError, WalLog,
};
use baton_engine::snapshot::SnapshotStore;
use baton_engine::wal::{Wal, WalConfig, WalError};
use baton_engine::zab::{LogEntry, Message, Payload, Role, ServerId, ZabConfig};
use baton_engine::{SessionId, Zxid};

use super::hello::ensemble_fingerprint;
use super::transport::{PeerEvent, Transport};
use crate::config::ServerConfig;
use crate::runtime::local_queue::LocalQueue;
use crate::runtime::{LearnerLag, ReplicaMetrics};

/// The ensemble name when none is configured.
pub const DEFAULT_ENSEMBLE_NAME: &str = "baton";

/// Settings of a replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The driver's settings (protocol, snapshot cadence, compaction).
    pub driver: DriverConfig,
    /// Where peers connect (`None` for a server alone in its ensemble: no peer port).
    pub listen: Option<SocketAddr>,
    /// The ensemble's fingerprint: peers that present another are refused.
    pub ensemble: u64,
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
    /// Snapshots kept; the WAL segments older ones covered are released.
    pub snapshots_to_keep: usize,
    /// Discard the WAL and snapshots at start and be synchronised from the leader (see
    /// [`super::resync`]).
    pub resync: bool,
    /// TLS on the peer port and the links to peers (`--peer-tls`).
    pub peer_tls: Option<crate::runtime::tls::PeerTls>,
}

impl ReplicaConfig {
    /// A replica of `zab`'s ensemble with its files under `data_dir` and default limits.
    pub fn new(zab: ZabConfig, data_dir: PathBuf) -> ReplicaConfig {
        let members: Vec<(ServerId, bool)> =
            zab.voters.iter().map(|&id| (id, false)).chain(zab.observers.iter().map(|&id| (id, true))).collect();
        ReplicaConfig {
            ensemble: ensemble_fingerprint(DEFAULT_ENSEMBLE_NAME, &members),
            driver: DriverConfig::new(zab),
            listen: None,
            peers: BTreeMap::new(),
            wal: WalConfig::new(data_dir.join("wal")),
            data_dir,
            tick: Duration::from_millis(100),
            frame_bytes_max: 64 << 20,
            queue_bytes_max: 64 << 20,
            snapshots_to_keep: 2,
            resync: false,
            peer_tls: None,
        }
    }

    /// The replica a server's flags describe: a standalone server is an ensemble of one
    /// voter with no peer port (and compacts its log as it commits: no follower needs it).
    pub fn for_server(server: &ServerConfig) -> ReplicaConfig {
        let id = server.server_id;
        let mut voters: Vec<ServerId> = server.peers.iter().filter(|p| !p.observer).map(|p| p.id).collect();
        if server.peers.is_empty() {
            voters.push(id);
        }
        let mut zab = ZabConfig::new(id, voters);
        zab.observers = server.peers.iter().filter(|p| p.observer).map(|p| p.id).collect();
        zab.upstream = server.observer_upstream;
        zab.init_limit_ticks = server.init_limit.max(1);
        zab.sync_limit_ticks = server.sync_limit.max(1);
        let peers: BTreeMap<ServerId, SocketAddr> = server.peers.iter().map(|p| (p.id, p.addr)).collect();
        let wal = WalConfig {
            segment_bytes: server.wal_segment_bytes,
            recycle_segments: server.wal_recycle_segments,
            // An entry comes from one request frame: its archive is the request's paths and
            // data plus per-op framing, well under twice the frame. The WAL refuses to open
            // when such an entry would not fit in a segment (a clear error at startup).
            entry_bytes_max: server.max_frame_bytes.saturating_mul(2).saturating_add(4096),
            clock: crate::runtime::clock_us,
            ..WalConfig::new(server.data_dir.join("wal"))
        };
        let driver = DriverConfig {
            snapshot_every_entries: server.snapshot_every_entries,
            snapshot_every_bytes: server.snapshot_every_bytes,
            // Servers of an ensemble draw their snapshot points apart (seeded by their ids).
            snapshot_spread_seed: Some(0x9e37_79b9_7f4a_7c15 ^ id),
            compact_on_commit: server.peers.iter().all(|p| p.id == id),
            clock: crate::runtime::clock_us,
            ..DriverConfig::new(zab)
        };
        let members: Vec<(ServerId, bool)> = server.peers.iter().map(|p| (p.id, p.observer)).collect();
        ReplicaConfig {
            ensemble: ensemble_fingerprint(&server.ensemble_name, &members),
            driver,
            listen: peers.get(&id).copied(),
            peers,
            wal,
            tick: Duration::from_millis(server.peer_tick_ms.max(1)),
            frame_bytes_max: server.max_peer_frame_bytes,
            queue_bytes_max: server.max_peer_queue_bytes,
            snapshots_to_keep: server.snapshots_to_keep.max(1),
            resync: server.resync,
            ..ReplicaConfig::new(ZabConfig::new(id, Vec::new()), server.data_dir.clone())
        }
    }
}

/// Failures that stop a replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// A store failed (a failed fsync poisons the WAL: fail-stop).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The peer port could not be bound.
    #[error("peer port {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the replica's loop takes, in order.
enum Event {
    Input(Input),
    Stop,
}

/// Inputs queued beyond this make [`ReplicaHandle::ready`] wait.
const INPUTS_MAX: usize = 4096;

/// What a replica reports about itself (for logs, `srvr`, `mntr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The role.
    pub role: Role,
    /// Entries durable in the WAL since start.
    pub wal_entries_durable: u64,
    /// WAL flushes since start.
    pub wal_batches: u64,
}

/// The replica's counters and each learner's (id, observer, entries behind), as its loop
/// last copied them.
type Counted = (ReplicaStats, Vec<(ServerId, bool, u64)>);

/// A handle to a running replica, on its executor.
#[derive(Clone)]
pub struct ReplicaHandle {
    events: Rc<LocalQueue<Event>>,
    status: Rc<Cell<Status>>,
    /// The replica's counters and its learners' lags, updated by its loop a few times a second.
    counted: Rc<RefCell<Counted>>,
    transport: Option<Rc<Transport>>,
    wal: Rc<Wal>,
    room: LogRoom,
    /// The only voter: a full disk makes it read-only rather than take it out of service.
    alone: bool,
}

impl ReplicaHandle {
    /// Proposes entries. Dropped unless this replica is an established leader when the
    /// driver gets to them and, if `first` is given, the first would get that zxid (entries
    /// that carry their zxid inside must not be logged under another).
    pub fn propose(&self, first: Option<Zxid>, payloads: Vec<Payload>) {
        self.events.push(Event::Input(Input::Propose { first, payloads }));
    }

    /// A client's sync: [`StateMachine::synced`] follows.
    pub fn sync(&self, id: u64) {
        self.events.push(Event::Input(Input::Sync(id)));
    }

    /// Reports client sessions alive here (to the leader, which owns expiry).
    pub fn touch(&self, sessions: Vec<SessionId>) {
        self.events.push(Event::Input(Input::Touch(sessions)));
    }

    /// Sends `data` to peer `to`'s [`StateMachine::message`], on the FIFO link that carries
    /// the protocol (so it is ordered with the syncs and touches sent after it).
    pub fn send(&self, to: ServerId, data: Payload) {
        if let Some(t) = &self.transport {
            t.send(to, &Message::Forward { data });
        }
    }

    /// Whether this server takes reads only because the disk had no room for the WAL's next
    /// segment (see `Wal::out_of_space`). Only a lone voter does: in an ensemble the server
    /// leaves until there is room (`Zab::set_withdrawn`), and the writes it took meanwhile
    /// fail with the leadership like any others in flight — a client retries them elsewhere,
    /// where it could not retry a NotReadOnly.
    pub fn read_only_for_space(&self) -> bool {
        self.alone && self.wal.out_of_space()
    }

    /// Waits until the replica can take more proposals (its input queue and the WAL's).
    pub async fn ready(&self) {
        self.events.until_below(INPUTS_MAX).await;
        self.room.wait().await;
        self.wal.ready().await;
    }

    /// The replica's role.
    pub fn role(&self) -> Role {
        self.status.get().role
    }

    /// What the replica reports about itself.
    pub fn status(&self) -> Status {
        self.status.get()
    }

    /// What it counted, for metrics.
    pub fn metrics(&self) -> ReplicaMetrics {
        let counted = self.counted.borrow();
        let learners = counted
            .1
            .iter()
            .map(|&(id, observer, entries_behind)| LearnerLag {
                id,
                observer,
                entries_behind,
                bytes_queued: self.transport.as_ref().map_or(0, |t| t.queued_bytes(id)),
            })
            .collect();
        ReplicaMetrics { wal: self.wal.stats(), replica: counted.0, learners }
    }

    /// Stops the replica's loop (the links close with it).
    pub fn stop(&self) {
        self.events.push(Event::Stop);
    }
}

/// The peer links as the driver's [`Peers`].
struct Links(Option<Rc<Transport>>);

impl Peers for Links {
    fn send(&mut self, to: ServerId, msg: Message) {
        if let Some(t) = &self.0 {
            t.send(to, &msg);
        }
    }

    fn send_snapshot(&mut self, to: ServerId, epoch: u32, zxid: Zxid, image: Box<dyn SnapshotImage>) {
        if let Some(t) = &self.0 {
            t.send_snapshot(to, epoch, zxid, image);
        }
    }
}

type Running<M> = Replica<WalLog, EpochFile, SnapshotDir, Links, M>;

/// Opens the stores, recovers `state` from them, starts the links and runs the replica until
/// stopped. `ready` receives a handle once it runs (a server alone in its ensemble already
/// leads by then).
pub async fn run<M: StateMachine>(
    config: ReplicaConfig,
    state: M,
    ready: impl FnOnce(ReplicaHandle),
) -> Result<(), ReplicaError> {
    let started = Instant::now();
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| ReplicaError::DataDir { path: config.data_dir.clone(), source })?;
    if config.resync && !super::resync::pending(&config.data_dir) {
        resync_if_damaged(&config).await?;
    }
    let mut config = config;
    config.driver.zab.resynchronising = super::resync::pending(&config.data_dir);
    if config.driver.zab.resynchronising && !config.resync {
        tracing::warn!("still waiting to be synchronised after --resync: voting for no one until then");
    }
    let snapshots = SnapshotStore::open(config.data_dir.join("snapshots")).map_err(StorageError::from)?;
    let (wal, reader) = Wal::open(config.wal.clone()).await.map_err(StorageError::from)?;
    let wal = Rc::new(wal);
    let events: Rc<LocalQueue<Event>> = Rc::new(LocalQueue::default());
    let log = {
        let events = events.clone();
        // Entries the WAL's queue cannot take yet wait beside it, up to as much again.
        let backlog_max = config.wal.queued_bytes_max;
        WalLog::new(wal.clone(), backlog_max, move |zxid| events.push(Event::Input(Input::Durable(zxid))))
    };
    let room = log.room();
    let transport = match config.listen {
        Some(listen) => {
            let listener = crate::runtime::net::bind_listener_with_handle(listen)
                .map_err(|source| ReplicaError::Listen { addr: listen, source })?;
            Some(Rc::new(Transport::start(
                config.driver.zab.id,
                config.ensemble,
                listener,
                &config.peers,
                config.frame_bytes_max,
                config.queue_bytes_max,
                config.peer_tls.clone(),
            )))
        }
        None => None,
    };
    let parts = Parts {
        log,
        epochs: EpochFile::new(&config.data_dir),
        snapshots: SnapshotDir::new(snapshots, config.snapshots_to_keep),
        peers: Links(transport.clone()),
        state,
    };
    let logged = |after: Zxid| reader.records_after(after).map(|r| LogEntry::new(r.zxid, Payload::from(r.payload)));
    let recovery = Replica::recover(config.driver.clone(), parts, logged);
    drop(reader);
    let (mut replica, recovered) = match recovery {
        Ok(r) => r,
        Err(e) => {
            stop(&transport);
            return Err(e.into());
        }
    };
    tracing::info!(
        applied = %recovered.applied,
        replayed = recovered.replayed,
        logged = recovered.logged,
        accepted_epoch = recovered.epochs.0,
        current_epoch = recovered.epochs.1,
        ms = started.elapsed().as_millis() as u64,
        "recovered"
    );
    let status = Rc::new(Cell::new(status_of(&replica)));
    let counted = Rc::new(RefCell::new((replica.stats(), Vec::new())));
    let handle = ReplicaHandle {
        events: events.clone(),
        status: status.clone(),
        counted: counted.clone(),
        transport: transport.clone(),
        wal,
        room: room.clone(),
        alone: config.driver.zab.voters == [config.driver.zab.id],
    };
    let pump = transport.clone().map(|transport| {
        let events = events.clone();
        glommio::spawn_local(async move {
            loop {
                // A log that cannot keep up holds back what peers send (TCP pushes back on
                // the leader, whose queue bound then drops this server) — never the loop.
                room.wait().await;
                let input = match transport.next_event().await {
                    PeerEvent::Message(from, msg) => Input::Message(from, msg),
                    PeerEvent::Disconnected(peer) => Input::Disconnected(peer),
                };
                events.push(Event::Input(input));
            }
        })
    });
    let ticker = {
        let (events, tick) = (events.clone(), config.tick);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(tick).await;
                events.push(Event::Input(Input::Tick));
            }
        })
    };
    let resyncing = config.driver.zab.resynchronising.then(|| config.data_dir.clone());
    let result = serve(&mut replica, &events, (&status, &counted), ready, handle, resyncing).await;
    stop(&transport);
    drop(pump);
    drop(ticker);
    let wal = replica.log().wal().clone();
    drop(replica);
    if let Ok(wal) = Rc::try_unwrap(wal) {
        let _ = wal.close().await;
    }
    result
}

/// `--resync`: discards the log only if it is damaged (the flag left in a service's
/// settings must not throw away a healthy log at every start), with the WAL's directory
/// lock taken first (never under a server still running on it).
async fn resync_if_damaged(config: &ReplicaConfig) -> Result<(), ReplicaError> {
    let data_dir_error = |source| ReplicaError::DataDir { path: config.data_dir.clone(), source };
    match Wal::open(config.wal.clone()).await {
        Ok((wal, reader)) => {
            drop(reader);
            let _ = wal.close().await;
            tracing::warn!("--resync given, but this server's log verifies: nothing is discarded");
            Ok(())
        }
        Err(WalError::Corrupt { path, offset, reason }) => {
            tracing::warn!(path = %path.display(), offset, %reason, "--resync: the log is damaged");
            let lock = baton_engine::wal::DirLock::acquire(&config.wal.dir).map_err(StorageError::from)?;
            let aside = super::resync::discard(&config.data_dir).map_err(data_dir_error)?;
            drop(lock);
            tracing::warn!(moved_to = %aside.display(), "--resync: this server's log and snapshots are set aside; it votes for no one until the leader has synchronised it");
            Ok(())
        }
        Err(e) => Err(StorageError::from(e).into()),
    }
}

/// How often the loop refreshes what [`ReplicaHandle::metrics`] reads.
const COUNTED_EVERY: Duration = Duration::from_millis(200);

async fn serve<M: StateMachine>(
    replica: &mut Running<M>,
    events: &LocalQueue<Event>,
    (status, counted): (&Cell<Status>, &RefCell<Counted>),
    ready: impl FnOnce(ReplicaHandle),
    handle: ReplicaHandle,
    mut resyncing: Option<PathBuf>,
) -> Result<(), ReplicaError> {
    replica.start().await?;
    status.set(status_of(replica));
    ready(handle);
    let mut counted_at = Instant::now();
    loop {
        match events.pop().await {
            Event::Stop => return Ok(()),
            Event::Input(input) => replica.step(input).await?,
        }
        status.set(status_of(replica));
        if counted_at.elapsed() >= COUNTED_EVERY {
            counted_at = Instant::now();
            let mut counted = counted.borrow_mut();
            counted.0 = replica.stats();
            counted.1.clear();
            replica.zab().learner_lags(|id, observer, behind| counted.1.push((id, observer, behind)));
        }
        if resyncing.is_some() && !replica.zab().abstaining() {
            if let Some(dir) = resyncing.take() {
                super::resync::finished(&dir).map_err(|source| ReplicaError::DataDir { path: dir.clone(), source })?;
                tracing::warn!("resynchronised from the leader: this server votes again");
            }
        }
    }
}

fn status_of<M: StateMachine>(replica: &Running<M>) -> Status {
    let zab = replica.zab();
    let wal = replica.log().wal().stats();
    Status { role: zab.role(), wal_entries_durable: wal.entries_durable, wal_batches: wal.batches }
}

fn stop(transport: &Option<Rc<Transport>>) {
    if let Some(t) = transport {
        t.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_keeps_its_log_for_its_followers_and_observers_only() {
        let mut c = ServerConfig::for_test("127.0.0.1:2181".parse().expect("addr"), "d".into());
        let alone = ReplicaConfig::for_server(&c);
        assert!(alone.driver.compact_on_commit, "a lone server has no one to send its log to");
        assert_eq!((alone.driver.zab.voters.clone(), alone.listen), (vec![1], None));
        c.peers = vec!["1=127.0.0.1:1".parse().expect("peer"), "2=127.0.0.1:2:observer".parse().expect("peer")];
        let ensemble = ReplicaConfig::for_server(&c);
        assert!(!ensemble.driver.compact_on_commit, "a server with an observer keeps its log for it");
        assert_eq!(ensemble.driver.zab.observers, vec![2]);
        assert_eq!(ensemble.listen, Some("127.0.0.1:1".parse().expect("addr")));
    }
}
