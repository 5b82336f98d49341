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
use baton_engine::zab::{epochs, Action, Payload, Persisted, Role, ServerId, Zab, ZabConfig};
use baton_engine::Zxid;

use super::transport::{PeerEvent, Transport};

/// What a replica applies committed entries to.
pub trait StateMachine {
    /// Applies one committed entry (zxids strictly increase).
    fn apply(&mut self, zxid: Zxid, payload: &[u8]);
    /// The whole state, as bytes [`StateMachine::install`] takes back.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot covering everything up to `zxid`.
    fn install(&mut self, zxid: Zxid, data: &[u8]);
}

/// Settings of a replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Protocol settings (id, voters, observers, limits in ticks).
    pub zab: ZabConfig,
    /// Where peers connect.
    pub listen: SocketAddr,
    /// Every member's peer address (this one's included or not).
    pub peers: BTreeMap<ServerId, SocketAddr>,
    /// The WAL and epochs file live here.
    pub data_dir: PathBuf,
    /// Real time per tick.
    pub tick: Duration,
    /// Largest peer frame accepted.
    pub frame_bytes_max: usize,
    /// Snapshot the state and compact the log after this many applied entries (0: never).
    pub snapshot_every_entries: u64,
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
    Propose(Vec<Payload>),
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

/// A handle to a running replica, on its executor.
#[derive(Clone)]
pub struct ReplicaHandle {
    inputs: Rc<RefCell<Inputs>>,
    role: Rc<std::cell::Cell<Role>>,
}

impl ReplicaHandle {
    /// Proposes entries (dropped unless this replica is an established leader when the
    /// driver gets to them).
    pub fn propose(&self, payloads: Vec<Payload>) {
        self.inputs.borrow_mut().push(Input::Propose(payloads));
    }

    /// The replica's role.
    pub fn role(&self) -> Role {
        self.role.get()
    }

    /// Stops the replica's loop (the links close with it).
    pub fn stop(&self) {
        self.inputs.borrow_mut().push(Input::Stop);
    }
}

/// Opens the WAL and epochs, starts the links and runs the replica until stopped. `ready`
/// receives a handle once it runs.
pub async fn run<S: StateMachine>(
    config: ReplicaConfig,
    state: Rc<RefCell<S>>,
    ready: impl FnOnce(ReplicaHandle),
) -> Result<(), ReplicaError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| ReplicaError::Epochs(epochs::EpochError::Io { path: config.data_dir.clone(), source: e }))?;
    let (accepted_epoch, current_epoch) = epochs::load(&config.data_dir)?;
    // Recovery: the newest valid snapshot, then the log after it.
    let snapshots = SnapshotStore::open(config.data_dir.join("snapshots"))?;
    let mut snapshot_zxid = Zxid::ZERO;
    if let Some(snapshot) = snapshots.load_newest()?.snapshot {
        snapshot_zxid = snapshot.info.zxid;
        state.borrow_mut().install(snapshot_zxid, snapshot.payload());
    }
    let (wal, reader) = Wal::open(WalConfig::new(config.data_dir.join("wal"))).await?;
    let entries = reader.records_after(snapshot_zxid).map(|r| (r.zxid, Payload::from(r.payload))).collect();
    drop(reader);
    let persisted = Persisted { accepted_epoch, current_epoch, snapshot_zxid, entries };
    let listener = crate::runtime::bind_listener(config.listen, false)
        .map_err(|source| ReplicaError::Listen { addr: config.listen, source })?;
    let transport = Rc::new(Transport::start(config.zab.id, listener, &config.peers, config.frame_bytes_max, 64 << 20));
    let inputs = Rc::new(RefCell::new(Inputs::default()));
    let handle = ReplicaHandle { inputs: inputs.clone(), role: Rc::new(std::cell::Cell::new(Role::Looking)) };

    let pump = {
        let (transport, inputs) = (transport.clone(), inputs.clone());
        glommio::spawn_local(async move {
            loop {
                let event = transport.next_event().await;
                inputs.borrow_mut().push(Input::Peer(event));
            }
        })
    };
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
        wal: Rc::new(wal),
        transport: transport.clone(),
        inputs: inputs.clone(),
        state,
        applied: snapshot_zxid,
        snapshot_every: config.snapshot_every_entries,
        since_snapshot: 0,
        snapshots,
        data_dir: config.data_dir.clone(),
        role: handle.role.clone(),
    };
    ready(handle);
    let result = driver.run().await;
    transport.stop();
    drop(pump);
    drop(ticker);
    let wal = driver.wal.clone();
    drop(driver);
    if let Ok(wal) = Rc::try_unwrap(wal) {
        let _ = wal.close().await;
    }
    result
}

struct Driver<S> {
    zab: Zab,
    wal: Rc<Wal>,
    transport: Rc<Transport>,
    inputs: Rc<RefCell<Inputs>>,
    state: Rc<RefCell<S>>,
    applied: Zxid,
    /// Entries applied since the last snapshot decide when to take the next.
    snapshot_every: u64,
    since_snapshot: u64,
    snapshots: SnapshotStore,
    data_dir: PathBuf,
    role: Rc<std::cell::Cell<Role>>,
}

impl<S: StateMachine> Driver<S> {
    /// Waits until the appends in flight are durable: the WAL truncates only when idle.
    async fn wal_idle(&self) {
        while self.wal.durable_zxid() < self.wal.last_zxid() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Writes a snapshot of the applied state, lets the core forget the log it covers and
    /// purges the WAL segments it covers (keeping the two newest snapshots).
    fn take_snapshot(&mut self) -> Result<(), ReplicaError> {
        let data = self.state.borrow().snapshot();
        self.snapshots.write(self.applied, &data)?;
        self.zab.compact(self.applied);
        self.since_snapshot = 0;
        if let Some(oldest) = self.snapshots.purge(2)? {
            self.wal.purge_through(oldest)?;
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
                Input::Peer(PeerEvent::Message(from, msg)) => self.zab.on_message(from, msg),
                Input::Peer(PeerEvent::Disconnected(peer)) => self.zab.on_disconnected(peer),
                Input::Tick => self.zab.on_tick(),
                Input::Durable(zxid) => self.zab.on_durable(zxid),
                Input::Propose(payloads) => {
                    let _ = self.zab.propose(payloads);
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
                return Ok(());
            }
            for action in actions {
                self.act(action).await?;
            }
        }
    }

    async fn act(&mut self, action: Action) -> Result<(), ReplicaError> {
        match action {
            Action::Send { to, msg } => self.transport.send(to, &msg),
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
                let history = self.zab.history();
                let mut state = self.state.borrow_mut();
                let mut count = 0u64;
                for (zxid, payload) in history.after(self.applied).into_iter().take_while(|(z, _)| *z <= through) {
                    state.apply(zxid, &payload);
                    self.applied = zxid;
                    count += 1;
                }
                drop(state);
                self.since_snapshot += count;
                if self.snapshot_every > 0 && self.since_snapshot >= self.snapshot_every {
                    self.take_snapshot()?;
                }
            }
            Action::RoleChanged(role) => {
                tracing::info!(id = self.transport.id(), ?role, "role");
                self.role.set(role);
            }
            // No sessions in this driver (the client-serving runtime's session tracker will
            // take these).
            Action::Synced { .. } | Action::Touched { .. } => {}
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
