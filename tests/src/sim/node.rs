//! One simulated server: the shared replica driver (absent while crashed) over the
//! simulator's stores, its disk, and its state machine (the committed entries it applied, in
//! order).

use std::cell::RefCell;
use std::rc::Rc;

use baton_engine::replica::{
    snapshot_messages, Parts, Peers, Replica, ReplicaConfig, SnapshotImage, StateMachine, StorageError,
};
use baton_engine::zab::{LogEntry, Message, Payload, Role, ServerId};
use baton_engine::{SessionId, Zxid};

use super::disk::{AppliedBatch, Disk, Job, Observed, Seen, SimEpochs, SimLog, SimSnapshots, SyncedRead};
use super::{parse_write, KEYS};

/// The driver as the simulator runs it.
pub type SimReplica = Replica<SimLog, SimEpochs, SimSnapshots, SimPeers, SimState>;

/// The links to the other servers: sends are collected, the simulator's network carries
/// them after the step.
pub struct SimPeers(pub Seen);

impl Peers for SimPeers {
    fn send(&mut self, to: ServerId, msg: Message) {
        self.0.borrow_mut().sent.push((to, msg));
    }

    fn send_snapshot(&mut self, to: ServerId, epoch: u32, zxid: Zxid, image: Box<dyn SnapshotImage>) {
        // In small chunks, so that a SNAP spans many messages: links break in the middle
        // of one, and chunk boundaries fall inside records.
        for msg in snapshot_messages(epoch, zxid, &*image, SIM_SNAP_CHUNK_BYTES) {
            self.send(to, msg);
        }
    }
}

/// Bytes of one simulated SNAP chunk.
const SIM_SNAP_CHUNK_BYTES: usize = 97;

/// The state machine: the committed entries applied, in order (its snapshot is that list).
pub struct SimState {
    /// Applied entries, shared with the simulator's checks.
    pub applied: Rc<RefCell<Vec<LogEntry>>>,
    /// Observations.
    pub seen: Seen,
    /// The role, as the driver last reported it.
    pub role: Role,
}

impl StateMachine for SimState {
    fn apply(&mut self, entries: &[LogEntry]) {
        let mut applied = self.applied.borrow_mut();
        let from = applied.len();
        applied.extend_from_slice(entries);
        let leading = match self.role {
            Role::Leading { epoch, established: true } => Some(epoch),
            _ => None,
        };
        let batch = AppliedBatch { from, entries: entries.to_vec(), leading };
        self.seen.borrow_mut().events.push(Observed::Applied(batch));
    }

    fn snapshot(&self) -> Vec<u8> {
        encode_state(&self.applied.borrow())
    }

    fn install(&mut self, zxid: Zxid, data: &[u8]) {
        let mut seen = self.seen.borrow_mut();
        let Some(state) = decode_state(data) else {
            seen.violations.push("an undecodable snapshot".into());
            return;
        };
        if state.last().map_or(Zxid::ZERO, |e| e.zxid) != zxid {
            seen.violations.push(format!("a snapshot at {zxid} does not end there"));
        }
        seen.events.push(Observed::Installed(zxid, state.clone()));
        seen.installed = Some(zxid);
        *self.applied.borrow_mut() = state;
    }

    fn synced(&mut self, id: u64, zxid: Option<Zxid>) {
        // The read after the sync, served now from the applied state.
        let applied = self.applied.borrow();
        let read = applied.last().map_or(Zxid::ZERO, |e| e.zxid);
        let mut values = vec![None; KEYS as usize];
        for e in applied.iter().rev() {
            if values.iter().all(Option::is_some) {
                break;
            }
            if let Some((key, value, _)) = parse_write(&e.payload) {
                if let Some(slot) = values.get_mut(key as usize) {
                    slot.get_or_insert(value);
                }
            }
        }
        self.seen.borrow_mut().events.push(Observed::Synced(SyncedRead { id, zxid, read, values }));
    }

    fn touched(&mut self, sessions: Vec<SessionId>) {
        self.seen.borrow_mut().events.push(Observed::Touched(sessions.len(), self.role.is_leading()));
    }

    fn role_changed(&mut self, role: Role, _last_logged: Zxid) {
        self.role = role;
        self.seen.borrow_mut().events.push(Observed::Role(role));
    }
}

/// A server of the simulation.
pub struct Node {
    /// Its id.
    pub id: ServerId,
    /// The replica, `None` while crashed.
    pub replica: Option<SimReplica>,
    /// The disk.
    pub disk: Rc<RefCell<Disk>>,
    /// The state machine's applied entries.
    pub applied: Rc<RefCell<Vec<LogEntry>>>,
    /// What the current step did.
    pub seen: Seen,
    /// The background snapshot of the current life.
    pub job: Job,
    /// Bumped at every restart: events of an earlier life are void.
    pub life: u64,
    /// (As a leader's sequencer.) The zxid the next batch of client writes is prepared
    /// for, while batches are on their way to the replica.
    pub prepared: Option<Zxid>,
    /// When the last batch reaches the replica (batches arrive in the order prepared).
    pub proposing_until: u64,
}

impl Node {
    /// A fresh server (not started: see [`Node::start`]).
    pub fn new(id: ServerId) -> Node {
        Node {
            id,
            replica: None,
            disk: Rc::new(RefCell::new(Disk::default())),
            applied: Rc::new(RefCell::new(Vec::new())),
            seen: Rc::new(RefCell::new(Default::default())),
            job: Rc::new(RefCell::new(None)),
            life: 0,
            prepared: None,
            proposing_until: 0,
        }
    }

    /// Recovers the replica from the disk, as a restarted server does (the snapshot it
    /// installs from its own disk is not a SNAP: its observations are dropped).
    pub fn start(&mut self, config: ReplicaConfig) -> Result<(), StorageError> {
        self.applied.borrow_mut().clear();
        *self.job.borrow_mut() = None;
        *self.seen.borrow_mut() = Default::default();
        self.prepared = None;
        let parts = Parts {
            log: SimLog { disk: self.disk.clone(), applied: self.applied.clone(), seen: self.seen.clone() },
            epochs: SimEpochs(self.disk.clone()),
            snapshots: SimSnapshots {
                disk: self.disk.clone(),
                job: self.job.clone(),
                seen: self.seen.clone(),
                releasing: None,
            },
            peers: SimPeers(self.seen.clone()),
            state: SimState { applied: self.applied.clone(), seen: self.seen.clone(), role: Role::Looking },
        };
        let disk = self.disk.clone();
        let logged = move |after: Zxid| {
            let entries: Vec<LogEntry> = disk.borrow().log.iter().filter(|e| e.zxid > after).cloned().collect();
            entries.into_iter()
        };
        let (replica, _) = Replica::recover(config, parts, logged)?;
        *self.seen.borrow_mut() = Default::default();
        self.replica = Some(replica);
        Ok(())
    }

    /// The role (`None` while crashed).
    pub fn role(&self) -> Option<Role> {
        self.replica.as_ref().map(|r| r.zab().role())
    }
}

/// Encodes a state (list of entries) as snapshot bytes.
pub fn encode_state(entries: &[LogEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&e.zxid.0.to_le_bytes());
        out.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.payload);
    }
    out
}

/// Decodes snapshot bytes made by [`encode_state`].
pub fn decode_state(mut bytes: &[u8]) -> Option<Vec<LogEntry>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let z = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let len = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
        let p: Payload = bytes.get(12..12 + len)?.into();
        out.push(LogEntry::new(Zxid(z), p));
        bytes = bytes.get(12 + len..)?;
    }
    Some(out)
}
