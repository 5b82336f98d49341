//! The core: the server's write path, on shard 0. It is the state machine of this server's
//! replica (see [`crate::peer::replica`]): it applies what the ensemble commits to the shared
//! tree and hands every shard the committed batch with the replies for its connections.
//!
//! ```text
//!  leader:   shard ─ToCore::Write─▶ Sequencer::prepare ─Entry─▶ Zab propose ─▶ WAL + followers
//!  follower: shard ─ToCore::Write─▶ forward to the leader ─▶ (the leader's sequencer)
//!                          │ refused (leader's answer, or prepare here)
//!                          ▼
//!               Action::Reply to the shard
//!  every server: Zab commit ─▶ apply under the write lock, match entries to waiting clients
//!                by (session, cxid), push the batch to every shard (still locked)
//! ```
//!
//! The leader's core also owns session expiry (every server reports its clients' liveness
//! to it), the container/TTL reaper, and sequencing; a server alone in its ensemble is its
//! own leader. A server that is not serving (electing, synchronising) refuses clients: it
//! closes their connections and they reconnect, here later or elsewhere, as with ZooKeeper.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_engine::log::{ArchivedTxn, Entry};
use baton_engine::sequencer::{Rejected, Sequencer, SequencerConfig, WriteOp, WriteRequest};
use baton_engine::tree::{Applied, DataTree, ErrorCode, OpResult};
use baton_engine::zab::{LogEntry, Payload, Role, ServerId};
use baton_engine::Zxid;
use rkyv::util::AlignedVec;

use crate::forward::Forwarded;
use crate::peer::replica::{ReplicaHandle, StateMachine};
use crate::runtime::inbox::Inbox;
use crate::runtime::{Action, CommittedEntry, Mode, ShardId, Shared, ToCore, ToShard};
use crate::session::{password, SessionTracker};
use crate::watch::ConnId;
use crate::zk::proto::{encode_reply, op, ConnectRequest, ConnectResponse, OpReply, Response};

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Replication (WAL, epochs, snapshots, peer port) failed.
    #[error(transparent)]
    Replica(#[from] crate::peer::replica::ReplicaError),
    /// A snapshot or committed entry could not be decoded.
    #[error("state: {0}")]
    State(String),
}

/// Who is waiting for an entry to commit, and what reply it wants.
#[derive(Debug)]
enum Origin {
    /// A client request.
    Request { shard: ShardId, conn: ConnId, xid: i32, op_code: i32, multi_ops: Vec<i32> },
    /// A new session being opened for a connection.
    Connect { shard: ShardId, conn: ConnId, timeout_ms: i32 },
}

/// A client's `sync` waiting for the ensemble.
#[derive(Debug)]
struct PendingSync {
    shard: ShardId,
    conn: ConnId,
    xid: i32,
    path: String,
}

/// Wall-clock milliseconds (the leader's time goes into entries as ctime/mtime).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The write path's state.
pub struct Core {
    shared: Arc<Shared>,
    id: ServerId,
    observer: bool,
    seq_config: SequencerConfig,
    /// Present while this server leads an established epoch and has applied its history.
    seq: Option<Sequencer>,
    role: Role,
    /// An established leader's last logged zxid when it was established: its sequencer
    /// starts once the tree has applied up to it.
    leading_from: Option<Zxid>,
    replica: Option<ReplicaHandle>,
    /// Clients waiting for their entry to commit, by (session, cxid).
    pending: HashMap<(i64, i32), Origin>,
    syncs: HashMap<u64, PendingSync>,
    next_sync: u64,
    /// Entries prepared since the last flush, and the zxid of the first.
    proposals: Vec<Payload>,
    first_proposal: Option<Zxid>,
    sessions: SessionTracker,
    /// The connection each live session is bound to.
    owners: HashMap<i64, (ShardId, ConnId)>,
    /// Reused to give payloads the alignment archived entries need.
    scratch: AlignedVec,
    /// The last zxid this leader's sequencer assigned (it may not be applied yet).
    last_prepared: Zxid,
    /// Refusals waiting for this server's tree to reach the zxid they were decided at, in
    /// that (increasing) order. See [`Core::refused`].
    deferred: VecDeque<(i64, Origin, Rejected)>,
}

impl Core {
    /// The core of server `id` over the (empty) tree in `shared`; the replica installs the
    /// recovered state into it.
    pub fn new(shared: Arc<Shared>, id: ServerId, observer: bool) -> Core {
        let seq_config = SequencerConfig { ttl_enabled: !shared.config.disable_ttl };
        Core {
            sessions: SessionTracker::new(id as u8, now_ms().max(0) as u64),
            shared,
            id,
            observer,
            seq_config,
            seq: None,
            role: Role::Looking,
            leading_from: None,
            replica: None,
            pending: HashMap::new(),
            syncs: HashMap::new(),
            next_sync: 1,
            proposals: Vec::new(),
            first_proposal: None,
            owners: HashMap::new(),
            scratch: AlignedVec::new(),
            last_prepared: Zxid(0),
            deferred: VecDeque::new(),
        }
    }

    fn act(&self, shard: ShardId, action: Action) {
        if let Some(outbox) = self.shared.to_shard.get(shard) {
            outbox.send(ToShard::Act(action));
        }
    }

    /// Whether clients are served: an established leader, or a synchronised follower.
    fn serving(&self) -> bool {
        match self.role {
            Role::Leading { established, .. } => established,
            Role::Following { serving, .. } => serving,
            Role::Looking => false,
        }
    }

    /// The server this one's clients' writes go to (its leader, or upstream observer).
    fn upstream(&self) -> Option<ServerId> {
        match self.role {
            Role::Following { leader, serving: true, .. } => Some(leader),
            _ => None,
        }
    }

    /// Handles one message from a shard.
    pub fn handle(&mut self, message: ToCore) {
        match message {
            ToCore::Connect { shard, conn, req } => self.connect(shard, conn, &req),
            ToCore::Write { shard, conn, session, xid, op_code, multi_ops, op, auth } => {
                let req = WriteRequest { session_id: session, cxid: xid, auth, op };
                self.write(req, Origin::Request { shard, conn, xid, op_code, multi_ops })
            }
            ToCore::Sync { shard, conn, xid, path } => self.sync(PendingSync { shard, conn, xid, path }),
            ToCore::Touch(sessions) => {
                let now = Instant::now();
                for &s in &sessions {
                    self.sessions.touch(s, now);
                }
                if !matches!(self.role, Role::Leading { .. }) {
                    if let Some(r) = &self.replica {
                        r.touch(sessions.into_iter().map(|s| s as u64).collect());
                    }
                }
            }
        }
    }

    fn connect(&mut self, shard: ShardId, conn: ConnId, req: &ConnectRequest) {
        if !self.serving() {
            // As ZooKeeper: a server without a leader closes new connections; the client
            // tries the next server.
            self.act(shard, Action::Close { conn, frame: None });
            return;
        }
        let config = &self.shared.config;
        let timeout = req.timeout_ms.clamp(config.min_session_timeout_ms(), config.max_session_timeout_ms());
        let tree = self.shared.tree();
        if req.last_zxid_seen > tree.last_zxid().0 as i64 {
            // The client saw a newer state than ours: it must go to another server.
            tracing::warn!(client_zxid = req.last_zxid_seen, ours = %tree.last_zxid(), "refusing a client that is ahead of this server");
            drop(tree);
            self.act(shard, Action::Close { conn, frame: None });
            return;
        }
        if req.session_id != 0 {
            let alive = tree.sessions().contains_key(&req.session_id) && self.sessions.contains(req.session_id);
            drop(tree);
            if !alive || req.passwd != password(req.session_id) {
                let refusal = ConnectResponse {
                    protocol_version: 0,
                    timeout_ms: 0,
                    session_id: 0,
                    passwd: vec![0; 16],
                    read_only: false,
                }
                .encode();
                self.act(shard, Action::Close { conn, frame: Some(refusal) });
                return;
            }
            self.sessions.track(req.session_id, timeout, Instant::now());
            if let Some((old_shard, old_conn)) = self.owners.insert(req.session_id, (shard, conn)) {
                if (old_shard, old_conn) != (shard, conn) {
                    self.act(old_shard, Action::Close { conn: old_conn, frame: None });
                }
            }
            let frame = connect_response(req.session_id, timeout);
            self.act(shard, Action::Connected { conn, session: req.session_id, timeout_ms: timeout, frame });
            return;
        }
        drop(tree);
        let session_id = self.sessions.next_id();
        let request =
            WriteRequest { session_id, cxid: 0, auth: Vec::new(), op: WriteOp::CreateSession { timeout_ms: timeout } };
        self.write(request, Origin::Connect { shard, conn, timeout_ms: timeout });
    }

    /// A client's write: sequenced here when leading, forwarded to the leader otherwise.
    fn write(&mut self, req: WriteRequest, origin: Origin) {
        let key = (req.session_id, req.cxid);
        if self.seq.is_some() {
            match self.prepare(&req) {
                Ok(()) => {
                    self.pending.insert(key, origin);
                }
                Err(rejected) => {
                    let zxid = self.refusal_point();
                    self.refused(origin, zxid, rejected);
                }
            }
            return;
        }
        match (self.upstream(), &self.replica) {
            (Some(leader), Some(replica)) => {
                self.pending.insert(key, origin);
                replica.send(leader, Forwarded::Write { origin: self.id, req }.encode().into());
            }
            _ => {
                // Not serving (or a leader still applying its history): the client
                // reconnects and retries.
                let (Origin::Request { shard, conn, .. } | Origin::Connect { shard, conn, .. }) = origin;
                self.act(shard, Action::Close { conn, frame: None });
            }
        }
    }

    /// Prepares `req` against the tree and the writes in flight and queues its entry for
    /// the next proposal. Leader only.
    fn prepare(&mut self, req: &WriteRequest) -> Result<(), Rejected> {
        let Some(seq) = self.seq.as_mut() else { return Err(Rejected::Op(ErrorCode::ConnectionLoss)) };
        let tree = self.shared.tree();
        let entry = seq.prepare(&tree, req, now_ms())?;
        drop(tree);
        if self.first_proposal.is_none() {
            self.first_proposal = Some(entry.zxid);
        }
        self.last_prepared = entry.zxid;
        self.proposals.push(Payload::from(entry.encode().as_slice()));
        self.shared.core_stats.outstanding.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The zxid a refusal decided now is decided at: the last write sequenced, applied or not
    /// (the sequencer checks a write against the writes in flight too). Leader only.
    fn refusal_point(&self) -> i64 {
        self.shared.tree().last_zxid().max(self.last_prepared).0 as i64
    }

    /// Answers a write refused before the log, decided at `zxid` (by this server's sequencer
    /// or the leader's) — once this server's tree has applied up to `zxid`. A refusal may rest
    /// on writes still in flight (NodeExists against another session's uncommitted create);
    /// answered at once, its client could then read the tree and not find what it was told
    /// exists. ZooKeeper orders refusals the same way, as error transactions in its log.
    fn refused(&mut self, origin: Origin, zxid: i64, rejected: Rejected) {
        if zxid > self.shared.tree().last_zxid().0 as i64 || !self.deferred.is_empty() {
            self.deferred.push_back((zxid, origin, rejected));
            return;
        }
        self.answer_refusal(origin, zxid, rejected);
    }

    /// Answers the deferred refusals the tree has now reached.
    fn release_refusals(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let applied = self.shared.tree().last_zxid().0 as i64;
        while self.deferred.front().is_some_and(|(zxid, ..)| *zxid <= applied) {
            if let Some((zxid, origin, rejected)) = self.deferred.pop_front() {
                self.answer_refusal(origin, zxid, rejected);
            }
        }
    }

    fn answer_refusal(&mut self, origin: Origin, zxid: i64, rejected: Rejected) {
        self.shared.core_stats.rejected.fetch_add(1, Ordering::Relaxed);
        match origin {
            Origin::Request { shard, conn, xid, .. } => {
                let frame = match rejected {
                    Rejected::Op(code) => encode_reply(xid, zxid, code.code(), None),
                    Rejected::Multi(codes) => {
                        let results = codes.into_iter().map(OpReply::Error).collect();
                        encode_reply(xid, zxid, 0, Some(&Response::Multi(results)))
                    }
                };
                self.act(shard, Action::Reply { conn, xid, frame });
            }
            Origin::Connect { shard, conn, .. } => self.act(shard, Action::Close { conn, frame: None }),
        }
    }

    /// Hands the entries prepared since the last call to the replica, as one proposal.
    pub fn flush(&mut self) {
        if self.proposals.is_empty() {
            return;
        }
        let payloads = std::mem::take(&mut self.proposals);
        let first = self.first_proposal.take();
        if let Some(r) = &self.replica {
            r.propose(first, payloads);
        }
    }

    fn sync(&mut self, sync: PendingSync) {
        let Some(replica) = &self.replica else { return };
        let id = self.next_sync;
        self.next_sync += 1;
        self.syncs.insert(id, sync);
        replica.sync(id);
    }

    /// Submits closes for sessions past their deadline (leader only).
    pub fn expire_sessions(&mut self) {
        if self.seq.is_none() {
            return;
        }
        for session in self.sessions.expired(Instant::now()) {
            self.sessions.remove(session);
            tracing::info!(session = format_args!("0x{session:x}"), "session expired");
            let req = WriteRequest { session_id: session, cxid: 0, auth: Vec::new(), op: WriteOp::CloseSession };
            let _ = self.prepare(&req);
        }
    }

    /// Deletes containers that lost their last child and TTL nodes past their TTL (ZooKeeper's
    /// ContainerManager), as server-issued deletes through the sequencer: a container that
    /// gained a child in the meantime fails the delete with NotEmpty and stays. Leader only.
    pub fn reap(&mut self) {
        if self.seq.is_none() {
            return;
        }
        let reapable = self.shared.tree().reapable(now_ms());
        for path in reapable {
            // The reaper is the server itself: the super identity, not bound by the node's ACL.
            let auth = vec![baton_engine::sequencer::AuthId::new("super", "")];
            let req = WriteRequest { session_id: 0, cxid: 0, auth, op: WriteOp::Delete { path, version: -1 } };
            let _ = self.prepare(&req);
        }
    }

    /// Starts sequencing once this established leader's tree holds its whole history.
    fn maybe_start_sequencer(&mut self) {
        let (Some(from), Role::Leading { epoch, established: true }) = (self.leading_from, self.role) else { return };
        if self.seq.is_some() || self.shared.tree().last_zxid() < from {
            return;
        }
        self.seq = Some(Sequencer::new(self.seq_config, epoch, from));
        // As ZooKeeper's new leader: every session gets a full timeout to be heard from.
        let now = Instant::now();
        for (&id, info) in self.shared.tree().sessions() {
            self.sessions.track(id, info.timeout_ms, now);
        }
        tracing::info!(epoch, last = %from, "leading: accepting writes");
    }

    /// Drops everything waiting on the ensemble and closes every client connection (their
    /// clients reconnect and retry), as ZooKeeper does when a server stops serving.
    fn stop_serving(&mut self) {
        self.pending.clear();
        self.deferred.clear();
        self.last_prepared = Zxid(0);
        self.syncs.clear();
        self.proposals.clear();
        self.first_proposal = None;
        self.seq = None;
        self.leading_from = None;
        self.owners.clear();
        self.shared.core_stats.outstanding.store(0, Ordering::Relaxed);
        for outbox in &self.shared.to_shard {
            outbox.send(ToShard::Disconnect);
        }
    }

    fn publish_role(&self) {
        let stats = &self.shared.core_stats;
        let standalone = self.shared.config.peers.is_empty();
        let (mode, leader) = match self.role {
            // Electing, or not yet synchronised with (or established as) the leader.
            _ if !self.serving() => (Mode::Looking, 0),
            Role::Looking => (Mode::Looking, 0),
            Role::Leading { .. } if standalone => (Mode::Standalone, self.id),
            Role::Leading { .. } => (Mode::Leader, self.id),
            Role::Following { leader, .. } if self.observer => (Mode::Observer, leader),
            Role::Following { leader, .. } => (Mode::Follower, leader),
        };
        let epoch = match self.role {
            Role::Leading { epoch, .. } | Role::Following { epoch, .. } => epoch,
            Role::Looking => 0,
        };
        let before = (Mode::from_u8(stats.mode.load(Ordering::Relaxed)), stats.epoch.load(Ordering::Relaxed));
        stats.mode.store(mode as u8, Ordering::Relaxed);
        stats.epoch.store(epoch, Ordering::Relaxed);
        stats.leader.store(leader, Ordering::Relaxed);
        stats.serving.store(self.serving(), Ordering::Relaxed);
        if before != (mode, epoch) && !standalone {
            // For the operator watching the terminal (and `baton dev`): the role, the epoch
            // and the leader, each time they change.
            match mode {
                Mode::Looking => println!("baton: server {} is looking for a leader", self.id),
                _ => println!("baton: server {} is {} in epoch {epoch}, leader {leader}", self.id, mode.name()),
            }
        }
    }

    /// Applies one committed entry; returns what it changed.
    fn apply_one(
        &mut self,
        tree: &mut DataTree,
        zxid: Zxid,
        payload: &[u8],
        index: usize,
        actions: &mut [Vec<(usize, Action)>],
    ) -> Result<Applied, CoreError> {
        self.scratch.clear();
        self.scratch.extend_from_slice(payload);
        let entry = Entry::access(&self.scratch).map_err(|e| CoreError::State(format!("entry {zxid}: {e}")))?;
        let closes_session = matches!(entry.txn, ArchivedTxn::CloseSession);
        let opens_session = match &entry.txn {
            ArchivedTxn::CreateSession { timeout_ms } => Some(timeout_ms.to_native()),
            _ => None,
        };
        let key = (entry.session_id.to_native(), entry.cxid.to_native());
        let applied = tree.apply(entry);
        let stats = &self.shared.core_stats;
        stats.committed.fetch_add(1, Ordering::Relaxed);
        let reply_zxid = applied.zxid.0 as i64;
        let mut push = |shard: ShardId, action: Action| {
            if let Some(list) = actions.get_mut(shard) {
                list.push((index, action));
            }
        };
        if let Some(timeout_ms) = opens_session {
            // Every server tracks every session (a client may resume it anywhere); only the
            // leader expires them.
            self.sessions.track(applied.session_id, timeout_ms, Instant::now());
        }
        match self.pending.remove(&key) {
            None => {}
            Some(Origin::Request { shard, conn, xid, op_code, multi_ops }) => {
                let frame = reply_for(xid, reply_zxid, op_code, &multi_ops, &applied);
                push(shard, Action::Reply { conn, xid, frame });
                if op_code == op::CLOSE_SESSION {
                    push(shard, Action::Close { conn, frame: None });
                }
            }
            Some(Origin::Connect { shard, conn, timeout_ms }) => {
                let session = applied.session_id;
                self.owners.insert(session, (shard, conn));
                let frame = connect_response(session, timeout_ms);
                push(shard, Action::Connected { conn, session, timeout_ms, frame });
            }
        }
        if closes_session {
            self.sessions.remove(applied.session_id);
            if let Some((shard, conn)) = self.owners.remove(&applied.session_id) {
                push(shard, Action::Close { conn, frame: None });
            }
        }
        Ok(applied)
    }

    /// A forwarded write reached this server: sequence it (leader) or pass it on.
    fn forwarded_write(&mut self, origin: ServerId, req: WriteRequest) {
        if self.seq.is_some() {
            let (session, cxid) = (req.session_id, req.cxid);
            if let Err(rejected) = self.prepare(&req) {
                let zxid = self.refusal_point();
                self.shared.core_stats.rejected.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = &self.replica {
                    r.send(origin, Forwarded::refusal(session, cxid, zxid, rejected).encode().into());
                }
            }
            return;
        }
        // An observer relays its downstream observers' writes towards the leader; without
        // one the write is dropped and its origin, which loses its leader too, closes the
        // client's connection.
        if let (Some(up), Some(r)) = (self.upstream(), &self.replica) {
            r.send(up, Forwarded::Write { origin, req }.encode().into());
        }
    }
}

impl StateMachine for Core {
    fn apply(&mut self, entries: &[LogEntry]) {
        let shards = self.shared.to_shard.len();
        let mut committed = Vec::with_capacity(entries.len());
        let mut actions: Vec<Vec<(usize, Action)>> = (0..shards).map(|_| Vec::new()).collect();
        let shared = self.shared.clone();
        let mut tree = shared.tree_mut();
        for (zxid, payload) in entries {
            match self.apply_one(&mut tree, *zxid, payload, committed.len(), &mut actions) {
                Ok(applied) => committed.push(CommittedEntry { zxid: applied.zxid, changes: applied.changes }),
                Err(e) => {
                    // Entries are checksummed on the wire and on disk and were encoded by
                    // a leader: one that does not decode means a bug or a bad build. Stop
                    // (fail-stop keeps every replica's tree a prefix of one history).
                    tracing::error!(error = %e, "a committed entry does not decode; stopping");
                    shared.stopping.store(true, Ordering::Release);
                    break;
                }
            }
        }
        // Once per batch, not per entry: forgetting the applied in-flight records walks
        // them all, and nothing is prepared while a batch applies.
        if let Some(seq) = self.seq.as_mut() {
            seq.committed(tree.last_zxid());
        }
        let committed = Arc::new(committed);
        for (outbox, actions) in shared.to_shard.iter().zip(actions) {
            outbox.send(ToShard::Committed { entries: committed.clone(), actions });
        }
        drop(tree);
        // After the batch reached the shards: a refusal's reply follows the writes it rests on.
        self.release_refusals();
        let stats = &self.shared.core_stats;
        stats.outstanding.store(self.pending.len(), Ordering::Relaxed);
        stats.sessions.store(self.sessions.len(), Ordering::Relaxed);
        if let Some(r) = &self.replica {
            let status = r.status();
            stats.wal_entries_durable.store(status.wal_entries_durable, Ordering::Relaxed);
            stats.wal_batches.store(status.wal_batches, Ordering::Relaxed);
        }
        self.maybe_start_sequencer();
    }

    fn replay(&mut self, entries: &[LogEntry]) {
        // Before any client: nothing to answer and no watch to fire, so no batch for the
        // shards (a million-entry log would otherwise queue in their inboxes).
        let shared = self.shared.clone();
        let mut tree = shared.tree_mut();
        let mut no_actions: Vec<Vec<(usize, Action)>> = Vec::new();
        for (zxid, payload) in entries {
            if let Err(e) = self.apply_one(&mut tree, *zxid, payload, 0, &mut no_actions) {
                tracing::error!(error = %e, "a logged entry does not decode; stopping");
                shared.stopping.store(true, Ordering::Release);
                return;
            }
        }
        if let Some(seq) = self.seq.as_mut() {
            seq.committed(tree.last_zxid());
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.shared.tree().to_image()
    }

    fn install(&mut self, zxid: Zxid, data: &[u8]) {
        let started = Instant::now();
        match DataTree::from_image(data) {
            Ok(tree) => {
                tracing::info!(%zxid, nodes = tree.node_count(), ms = started.elapsed().as_millis() as u64, "installed snapshot");
                let now = Instant::now();
                self.sessions = SessionTracker::new(self.id as u8, now_ms().max(0) as u64);
                for (&id, info) in tree.sessions() {
                    self.sessions.track(id, info.timeout_ms, now);
                }
                *self.shared.tree_mut() = tree;
                self.release_refusals();
            }
            Err(e) => {
                tracing::error!(%zxid, error = %e, "a snapshot does not decode; stopping");
                self.shared.stopping.store(true, Ordering::Release);
            }
        }
    }

    fn synced(&mut self, id: u64, zxid: Option<Zxid>) {
        let Some(s) = self.syncs.remove(&id) else { return };
        let last = self.shared.tree().last_zxid().0 as i64;
        let frame = match zxid {
            Some(_) => encode_reply(s.xid, last, 0, Some(&Response::Path(s.path))),
            None => encode_reply(s.xid, last, ErrorCode::ConnectionLoss.code(), None),
        };
        self.act(s.shard, Action::Reply { conn: s.conn, xid: s.xid, frame });
    }

    fn touched(&mut self, sessions: Vec<u64>) {
        let now = Instant::now();
        for s in sessions {
            self.sessions.touch(s as i64, now);
        }
    }

    fn role_changed(&mut self, role: Role, last_logged: Zxid) {
        let was_serving = self.serving();
        let before = self.role;
        self.role = role;
        let same_leadership = match (before, role) {
            (Role::Following { leader: a, epoch: e, .. }, Role::Following { leader: b, epoch: f, .. }) => {
                a == b && (e == f || e == 0)
            }
            (Role::Leading { epoch: e, .. }, Role::Leading { epoch: f, .. }) => e == f || e == 0,
            _ => false,
        };
        if was_serving && !(self.serving() && same_leadership) {
            tracing::warn!(?role, "no longer serving: closing client connections");
            self.stop_serving();
        }
        if let Role::Leading { established: true, .. } = role {
            if self.leading_from.is_none() {
                self.leading_from = Some(last_logged);
            }
            self.maybe_start_sequencer();
        } else {
            self.seq = None;
            self.leading_from = None;
        }
        self.publish_role();
    }

    fn message(&mut self, from: ServerId, data: &[u8]) {
        match Forwarded::decode(data) {
            Ok(Forwarded::Write { origin, req }) => {
                self.forwarded_write(origin, req);
                // Proposed at once: the driver takes it on its next step. (A burst of
                // forwarded writes arriving together still forms one batch in the WAL.)
                self.flush();
            }
            Ok(Forwarded::Refused { session, cxid, zxid, code, multi }) => {
                if let Some(origin) = self.pending.remove(&(session, cxid)) {
                    self.refused(origin, zxid, Forwarded::rejected(code, multi));
                }
            }
            Err(e) => tracing::warn!(peer = from, error = %e, "dropping a malformed forwarded message"),
        }
    }
}

fn connect_response(session_id: i64, timeout: i32) -> Vec<u8> {
    ConnectResponse {
        protocol_version: 0,
        timeout_ms: timeout,
        session_id,
        passwd: password(session_id),
        read_only: false,
    }
    .encode()
}

/// Runs the core and its replica on the current executor until `stop` is set (then lets
/// in-flight writes commit, at most 10 s) or replication fails. `started` is called once
/// recovery is done (with its failure, if any) and, for a server alone in its ensemble,
/// once it serves.
pub async fn run(
    core: Core,
    replica_config: crate::peer::replica::ReplicaConfig,
    inbox: Inbox<ToCore>,
    stop: Arc<AtomicBool>,
    started: impl FnOnce(Result<(), CoreError>),
) -> Result<(), crate::runtime::ServeError> {
    let shared = core.shared.clone();
    let tick = Duration::from_millis(shared.config.tick_ms.max(2));
    let core = Rc::new(RefCell::new(core));
    let outcome: Rc<RefCell<Option<Result<(), CoreError>>>> = Rc::new(RefCell::new(None));
    let replica = {
        let (core, outcome) = (core.clone(), outcome.clone());
        let attach = core.clone();
        glommio::spawn_local(async move {
            let result = crate::peer::replica::run(replica_config, core, move |handle| {
                attach.borrow_mut().replica = Some(handle);
            })
            .await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "replication stopped");
            }
            *outcome.borrow_mut() = Some(result.map_err(CoreError::from));
        })
    };
    // Started: recovered (a handle exists) and, alone, serving; or failed.
    let alone = shared.config.peers.is_empty();
    loop {
        if let Some(result) = outcome.borrow_mut().take() {
            let failed = result.is_err();
            started(result);
            if failed {
                return Ok(());
            }
            shared.stopping.store(true, Ordering::Release);
            shared.core_done.store(true, Ordering::Release);
            return Ok(());
        }
        let ready = {
            let c = core.borrow();
            c.replica.is_some() && (!alone || c.serving())
        };
        if ready {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    started(Ok(()));
    let requests = {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(message) = inbox.recv().await {
                let replica = core.borrow().replica.clone();
                if let Some(r) = replica {
                    // Backpressure: each message prepares at most one entry.
                    r.ready().await;
                }
                let mut c = core.borrow_mut();
                c.handle(message);
                for _ in 0..1024 {
                    let Some(message) = inbox.try_recv() else { break };
                    c.handle(message);
                }
                c.flush();
            }
        })
    };
    let expiry = {
        let core = core.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(tick / 2).await;
                let mut c = core.borrow_mut();
                c.expire_sessions();
                c.reap();
                c.flush();
            }
        })
    };
    let failed = {
        let outcome = outcome.clone();
        async move {
            loop {
                if let Some(result) = outcome.borrow_mut().take() {
                    return result;
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let stopping = async {
        crate::runtime::until_set(&stop, &shared.stopping).await;
        tracing::info!("shutting down: no new connections; letting in-flight writes commit");
        let start = Instant::now();
        while !core.borrow().pending.is_empty() && start.elapsed() < Duration::from_secs(10) {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    };
    let result = futures_lite::future::or(stopping, failed).await;
    drop(requests);
    drop(expiry);
    let replica_handle = core.borrow().replica.clone();
    if let Some(r) = replica_handle {
        r.stop();
    }
    replica.await;
    shared.stopping.store(true, Ordering::Release);
    shared.core_done.store(true, Ordering::Release);
    result.map_err(crate::runtime::ServeError::from)
}

/// The reply frame for a committed write, shaped by the opcode the client used.
fn reply_for(xid: i32, zxid: i64, op_code: i32, multi_ops: &[i32], applied: &Applied) -> Vec<u8> {
    let first = applied.results.first();
    if op_code == op::MULTI {
        let results = applied
            .results
            .iter()
            .zip(multi_ops.iter().copied().chain(std::iter::repeat(op::ERROR)))
            .map(|(r, code)| op_reply(r, code))
            .collect();
        return encode_reply(xid, zxid, 0, Some(&Response::Multi(results)));
    }
    match first {
        Some(OpResult::Error(e)) => encode_reply(xid, zxid, e.code(), None),
        Some(OpResult::Created { path, stat }) => {
            let body = if op_code == op::CREATE {
                Response::Create { path: path.clone() }
            } else {
                Response::Create2 { path: path.clone(), stat: *stat }
            };
            encode_reply(xid, zxid, 0, Some(&body))
        }
        Some(OpResult::DataSet(stat)) | Some(OpResult::AclSet(stat)) => {
            encode_reply(xid, zxid, 0, Some(&Response::Stat(*stat)))
        }
        _ => encode_reply(xid, zxid, 0, Some(&Response::Empty)),
    }
}

fn op_reply(result: &OpResult, op_code: i32) -> OpReply {
    match result {
        OpResult::Created { path, stat } => {
            if op_code == op::CREATE {
                OpReply::Create { path: path.clone() }
            } else {
                OpReply::Create2 { path: path.clone(), stat: *stat }
            }
        }
        OpResult::Deleted => OpReply::Delete,
        OpResult::DataSet(stat) => OpReply::SetData(*stat),
        OpResult::Checked => OpReply::Check,
        OpResult::Aborted => OpReply::Error(0),
        OpResult::Error(e) => OpReply::Error(e.code()),
        OpResult::AclSet(_) | OpResult::SessionCreated | OpResult::SessionClosed => {
            OpReply::Error(ErrorCode::RuntimeInconsistency.code())
        }
    }
}
