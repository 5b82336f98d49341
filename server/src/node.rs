//! The single-node server's state and write path.
//!
//! ```text
//!  conn ─write─▶ Sequencer::prepare ─Entry─▶ Wal::submit ─▶ in-flight queue (zxid order)
//!                      │ Rejected                                │ durable
//!                      ▼                                         ▼
//!               error reply (in order)          committer: DataTree::apply ─▶ watches fire,
//!                                               reply to the origin, reads waiting behind it run
//! ```
//!
//! Everything runs on one glommio executor; a write is acknowledged only after its entry is
//! fdatasync'ed (its `Durable` resolved) and applied.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use baton_engine::log::Entry;
use baton_engine::sequencer::{CreateMode, CreateOp, Rejected, Sequencer, SequencerConfig, WriteOp, WriteRequest};
use baton_engine::snapshot::SnapshotStore;
use baton_engine::tree::{Applied, DataTree, ErrorCode, OpResult};
use baton_engine::wal::{Durable, Wal, WalConfig};
use baton_engine::Zxid;
use rkyv::util::AlignedVec;

use crate::config::ServerConfig;
use crate::conn::{Conn, Slot};
use crate::session::{password, SessionTracker};
use crate::watch::{ConnId, WatchManager};
use crate::zk::proto::{self, encode_reply, op, ConnectResponse, OpReply, Request, Response};

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The WAL failed.
    #[error(transparent)]
    Wal(#[from] baton_engine::wal::WalError),
    /// The snapshots failed.
    #[error(transparent)]
    Snapshot(#[from] baton_engine::snapshot::SnapshotError),
    /// A snapshot or logged entry could not be decoded.
    #[error("recovery: {0}")]
    Recovery(String),
}

/// Who is waiting for an entry to commit, and what reply it wants.
#[derive(Debug)]
enum Origin {
    /// Server-issued (session expiry).
    Server,
    /// A client request.
    Request { conn: ConnId, xid: i32, op_code: i32, multi_ops: Vec<i32> },
    /// A new session being opened for a connection.
    Connect { conn: ConnId, timeout_ms: i32, read_only: bool },
}

struct InFlight {
    zxid: Zxid,
    entry: AlignedVec,
    durable: Option<Durable>,
    origin: Origin,
}

/// Counters for four-letter words and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Requests received.
    pub received: u64,
    /// Entries committed.
    pub committed: u64,
    /// Writes refused before the log.
    pub rejected: u64,
}

/// All state of one server.
pub struct Node {
    /// Settings.
    pub config: ServerConfig,
    /// The data tree (applied state).
    pub tree: DataTree,
    seq: Sequencer,
    wal: Rc<Wal>,
    snapshots: SnapshotStore,
    in_flight: VecDeque<InFlight>,
    /// Session deadlines.
    pub sessions: SessionTracker,
    /// Watch registrations.
    pub watches: WatchManager,
    /// Open connections.
    pub conns: HashMap<ConnId, Rc<Conn>>,
    session_conn: HashMap<i64, ConnId>,
    next_conn: ConnId,
    /// When the server started.
    pub started: Instant,
    /// Counters.
    pub stats: Stats,
    entries_since_snapshot: u64,
    snapshot_running: Option<std::thread::JoinHandle<Result<Zxid, String>>>,
    committer: Option<std::task::Waker>,
}

/// Wall-clock milliseconds (the leader's time goes into entries as ctime/mtime).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Node {
    /// Recovers state from `config.data_dir` (newest valid snapshot + WAL replay) and opens
    /// the WAL for appends. Must run on a glommio executor.
    pub async fn open(config: ServerConfig) -> Result<Node, NodeError> {
        let snapshots = SnapshotStore::open(config.data_dir.join("snapshots"))?;
        let outcome = snapshots.load_newest()?;
        for skipped in &outcome.skipped {
            tracing::error!(error = %skipped, "passed over a damaged snapshot");
        }
        let mut tree = match &outcome.snapshot {
            Some(s) => {
                let tree = DataTree::from_image(s.payload()).map_err(|e| NodeError::Recovery(e.to_string()))?;
                tracing::info!(zxid = %s.info.zxid, nodes = tree.node_count(), "loaded snapshot");
                tree
            }
            None => DataTree::new(),
        };
        let (wal, reader) = Wal::open(WalConfig::new(config.data_dir.join("wal"))).await?;
        let mut replayed = 0u64;
        for record in reader.records_after(tree.last_zxid()) {
            let entry = Entry::access(record.payload)
                .map_err(|e| NodeError::Recovery(format!("entry {}: {e}", record.zxid)))?;
            tree.apply(entry);
            replayed += 1;
        }
        drop(reader);
        let last = tree.last_zxid();
        tracing::info!(last_zxid = %last, replayed, nodes = tree.node_count(), sessions = tree.sessions().len(), "recovered");
        let epoch = last.epoch().saturating_add(1);
        let seq = Sequencer::new(SequencerConfig { ttl_enabled: !config.disable_ttl }, epoch, last);
        let now = Instant::now();
        let mut sessions = SessionTracker::new(1, now_ms().max(0) as u64);
        for (&id, info) in tree.sessions() {
            // As ZooKeeper: a recovered session gets a full timeout to reconnect.
            sessions.track(id, info.timeout_ms, now);
        }
        Ok(Node {
            config,
            tree,
            seq,
            wal: Rc::new(wal),
            snapshots,
            in_flight: VecDeque::new(),
            sessions,
            watches: WatchManager::default(),
            conns: HashMap::new(),
            session_conn: HashMap::new(),
            next_conn: 1,
            started: now,
            stats: Stats::default(),
            entries_since_snapshot: replayed,
            snapshot_running: None,
            committer: None,
        })
    }

    /// The WAL (for `ready()` before submitting and for shutdown).
    pub fn wal(&self) -> Rc<Wal> {
        self.wal.clone()
    }

    /// Whether any entry waits to commit.
    pub fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Entries waiting to commit.
    pub fn outstanding(&self) -> usize {
        self.in_flight.len()
    }

    /// Registers a new connection.
    pub fn add_conn(&mut self, peer: std::net::SocketAddr) -> Rc<Conn> {
        let id = self.next_conn;
        self.next_conn += 1;
        let conn = Rc::new(Conn::new(id, peer));
        self.conns.insert(id, conn.clone());
        conn
    }

    /// Forgets a connection that closed (its session lives on until it expires or closes).
    pub fn remove_conn(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.remove(&id) {
            self.watches.remove_conn(id);
            let session = conn.session_id.get();
            if self.session_conn.get(&session) == Some(&id) {
                self.session_conn.remove(&session);
            }
        }
    }

    /// The committer parks here when nothing is in flight.
    pub fn set_committer_waker(&mut self, waker: std::task::Waker) {
        self.committer = Some(waker);
    }

    fn wake_committer(&mut self) {
        if let Some(w) = self.committer.take() {
            w.wake();
        }
    }

    /// Handles a connect request: resumes a session or starts creating one.
    pub fn connect(&mut self, conn: &Rc<Conn>, req: &proto::ConnectRequest) -> Result<(), NodeError> {
        let timeout = req.timeout_ms.clamp(self.config.min_session_timeout_ms(), self.config.max_session_timeout_ms());
        if req.last_zxid_seen > self.tree.last_zxid().0 as i64 {
            // The client saw a newer state than ours: it must go to another server.
            tracing::warn!(client_zxid = req.last_zxid_seen, ours = %self.tree.last_zxid(), "refusing a client that is ahead of this server");
            conn.close();
            return Ok(());
        }
        if req.session_id != 0 {
            let alive = self.tree.sessions().contains_key(&req.session_id) && self.sessions.contains(req.session_id);
            if !alive || req.passwd != password(req.session_id) {
                conn.send(
                    ConnectResponse {
                        protocol_version: 0,
                        timeout_ms: 0,
                        session_id: 0,
                        passwd: vec![0; 16],
                        read_only: false,
                    }
                    .encode(),
                );
                conn.close();
                return Ok(());
            }
            self.sessions.track(req.session_id, timeout, Instant::now());
            if let Some(old) = self.session_conn.insert(req.session_id, conn.id) {
                if let Some(old) = self.conns.get(&old) {
                    old.close();
                }
            }
            conn.session_id.set(req.session_id);
            conn.timeout_ms.set(timeout);
            conn.send(self.connect_response(req.session_id, timeout, req.read_only));
            return Ok(());
        }
        let session_id = self.sessions.next_id();
        conn.session_id.set(session_id);
        conn.timeout_ms.set(timeout);
        // Requests pipelined behind the connect wait for its response.
        conn.slots.borrow_mut().push_back(Slot::Write);
        let request =
            WriteRequest { session_id, cxid: 0, auth: Vec::new(), op: WriteOp::CreateSession { timeout_ms: timeout } };
        let origin = Origin::Connect { conn: conn.id, timeout_ms: timeout, read_only: req.read_only };
        match self.seq.prepare(&self.tree, &request, now_ms()) {
            Ok(entry) => self.submit_entry(entry, origin),
            Err(_) => {
                conn.close();
                Ok(())
            }
        }
    }

    fn connect_response(&self, session_id: i64, timeout: i32, _read_only: bool) -> Vec<u8> {
        ConnectResponse {
            protocol_version: 0,
            timeout_ms: timeout,
            session_id,
            passwd: password(session_id),
            read_only: false,
        }
        .encode()
    }

    /// A request arrived on a connected session.
    pub fn request(&mut self, conn: &Rc<Conn>, xid: i32, op_code: i32, request: Request) -> Result<(), NodeError> {
        self.stats.received += 1;
        conn.received.set(conn.received.get() + 1);
        self.sessions.touch(conn.session_id.get(), Instant::now());
        if request.is_write() {
            return self.write(conn, xid, op_code, request);
        }
        if conn.has_pending() {
            conn.slots.borrow_mut().push_back(Slot::Read { xid, request });
        } else {
            let frame = crate::reads::answer(self, conn, xid, request);
            conn.send(frame);
        }
        Ok(())
    }

    fn write(&mut self, conn: &Rc<Conn>, xid: i32, op_code: i32, request: Request) -> Result<(), NodeError> {
        let (op, multi_ops) = match write_op(request) {
            Ok(op) => op,
            Err(code) => {
                self.reject(conn, encode_reply(xid, self.zxid(), code.code(), None));
                return Ok(());
            }
        };
        let req = WriteRequest { session_id: conn.session_id.get(), cxid: xid, auth: conn.auth.borrow().clone(), op };
        match self.seq.prepare(&self.tree, &req, now_ms()) {
            Ok(entry) => {
                conn.slots.borrow_mut().push_back(Slot::Write);
                self.submit_entry(entry, Origin::Request { conn: conn.id, xid, op_code, multi_ops })
            }
            Err(Rejected::Op(code)) => {
                self.reject(conn, encode_reply(xid, self.zxid(), code.code(), None));
                Ok(())
            }
            Err(Rejected::Multi(codes)) => {
                let results = codes.into_iter().map(OpReply::Error).collect();
                self.reject(conn, encode_reply(xid, self.zxid(), 0, Some(&Response::Multi(results))));
                Ok(())
            }
        }
    }

    fn reject(&mut self, conn: &Rc<Conn>, frame: Vec<u8>) {
        self.stats.rejected += 1;
        if conn.has_pending() {
            conn.slots.borrow_mut().push_back(Slot::Ready(frame));
        } else {
            conn.send(frame);
        }
    }

    fn submit_entry(&mut self, entry: Entry, origin: Origin) -> Result<(), NodeError> {
        let bytes = entry.encode();
        let durable = self.wal.submit(entry.zxid, &bytes)?;
        self.in_flight.push_back(InFlight { zxid: entry.zxid, entry: bytes, durable: Some(durable), origin });
        self.wake_committer();
        Ok(())
    }

    /// The durability future of the oldest in-flight entry, for the committer to await.
    pub fn next_durable(&mut self) -> Option<Durable> {
        self.in_flight.front_mut().and_then(|f| f.durable.take())
    }

    /// Applies every in-flight entry that is durable, in zxid order, answering and notifying.
    pub fn commit_durable(&mut self) {
        let durable = self.wal.durable_zxid();
        while self.in_flight.front().is_some_and(|f| f.zxid <= durable) {
            let Some(item) = self.in_flight.pop_front() else { break };
            self.commit(item);
        }
        self.maybe_snapshot();
    }

    fn zxid(&self) -> i64 {
        self.tree.last_zxid().0 as i64
    }

    fn commit(&mut self, item: InFlight) {
        // Invariant: the bytes were produced by Entry::encode just before submission.
        let Ok(entry) = Entry::access(&item.entry) else {
            tracing::error!(zxid = %item.zxid, "in-flight entry does not decode");
            return;
        };
        let closes_session = matches!(entry.txn, baton_engine::log::ArchivedTxn::CloseSession);
        let applied = self.tree.apply(entry);
        self.seq.committed(item.zxid);
        self.stats.committed += 1;
        self.entries_since_snapshot += 1;
        self.notify(&applied);
        let zxid = applied.zxid.0 as i64;
        match item.origin {
            Origin::Server => {}
            Origin::Request { conn, xid, op_code, multi_ops } => {
                let frame = reply_for(xid, zxid, op_code, &multi_ops, &applied);
                self.complete(conn, frame);
                if op_code == op::CLOSE_SESSION {
                    if let Some(c) = self.conns.get(&conn) {
                        c.close();
                    }
                }
            }
            Origin::Connect { conn, timeout_ms, read_only } => {
                if self.conns.contains_key(&conn) {
                    let session = applied.session_id;
                    self.sessions.track(session, timeout_ms, Instant::now());
                    self.session_conn.insert(session, conn);
                    let frame = self.connect_response(session, timeout_ms, read_only);
                    self.complete(conn, frame);
                } else {
                    // The client left before its session was made; it will expire.
                    self.sessions.track(applied.session_id, timeout_ms, Instant::now());
                }
            }
        }
        if closes_session {
            self.sessions.remove(applied.session_id);
            if let Some(conn) = self.session_conn.remove(&applied.session_id) {
                if let Some(c) = self.conns.get(&conn) {
                    c.close();
                }
            }
        }
    }

    /// Sends watch notifications for what `applied` changed (before any later reply).
    fn notify(&mut self, applied: &Applied) {
        let mut fired = Vec::new();
        for change in &applied.changes {
            self.watches.trigger(change, &mut fired);
        }
        for (conn, event_type, path) in fired {
            if let Some(c) = self.conns.get(&conn) {
                c.send(proto::encode_notification(event_type, &path, applied.zxid.0 as i64));
            }
        }
    }

    /// Fills the connection's oldest write slot, then releases the replies and runs the reads
    /// that were waiting behind it.
    fn complete(&mut self, conn_id: ConnId, frame: Vec<u8>) {
        let Some(conn) = self.conns.get(&conn_id).cloned() else { return };
        {
            let mut slots = conn.slots.borrow_mut();
            match slots.iter_mut().find(|s| matches!(s, Slot::Write)) {
                Some(slot) => *slot = Slot::Ready(frame),
                None => {
                    drop(slots);
                    conn.send(frame);
                    return;
                }
            }
        }
        loop {
            let front = conn.slots.borrow_mut().pop_front();
            match front {
                None => break,
                Some(Slot::Ready(frame)) => conn.send(frame),
                Some(Slot::Read { xid, request }) => {
                    let frame = crate::reads::answer(self, &conn, xid, request);
                    conn.send(frame);
                }
                Some(Slot::Write) => {
                    conn.slots.borrow_mut().push_front(Slot::Write);
                    break;
                }
            }
        }
    }

    /// Submits closes for sessions past their deadline.
    pub fn expire_sessions(&mut self) -> Result<(), NodeError> {
        for session in self.sessions.expired(Instant::now()) {
            self.sessions.remove(session);
            tracing::info!(session = format_args!("0x{session:x}"), "session expired");
            let req = WriteRequest { session_id: session, cxid: 0, auth: Vec::new(), op: WriteOp::CloseSession };
            if let Ok(entry) = self.seq.prepare(&self.tree, &req, now_ms()) {
                self.submit_entry(entry, Origin::Server)?;
            }
        }
        Ok(())
    }

    /// Deletes containers that lost their last child and TTL nodes past their TTL (ZooKeeper's
    /// ContainerManager), as server-issued deletes through the sequencer: a container that
    /// gained a child in the meantime fails the delete with NotEmpty and stays.
    pub fn reap(&mut self) -> Result<(), NodeError> {
        for path in self.tree.reapable(now_ms()) {
            // The reaper is the server itself: the super identity, not bound by the node's ACL.
            let auth = vec![baton_engine::sequencer::AuthId::new("super", "")];
            let req = WriteRequest { session_id: 0, cxid: 0, auth, op: WriteOp::Delete { path, version: -1 } };
            if let Ok(entry) = self.seq.prepare(&self.tree, &req, now_ms()) {
                self.submit_entry(entry, Origin::Server)?;
            }
        }
        Ok(())
    }

    fn maybe_snapshot(&mut self) {
        if let Some(handle) = self.snapshot_running.take() {
            if !handle.is_finished() {
                self.snapshot_running = Some(handle);
                return;
            }
            match handle.join() {
                Ok(Ok(zxid)) => {
                    match baton_engine::snapshot::purge(&self.snapshots, &self.wal, self.config.snapshots_to_keep) {
                        Ok(kept) => tracing::info!(%zxid, oldest_kept = ?kept, "snapshot written; old files purged"),
                        Err(e) => tracing::error!(error = %e, "purging after a snapshot failed"),
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "snapshot failed"),
                Err(_) => tracing::error!("snapshot thread panicked"),
            }
        }
        let every = self.config.snapshot_every_entries;
        if every == 0 || self.entries_since_snapshot < every {
            return;
        }
        self.entries_since_snapshot = 0;
        let zxid = self.tree.last_zxid();
        let image = self.tree.to_image();
        let store = self.snapshots.clone();
        self.snapshot_running = Some(std::thread::spawn(move || {
            store.write(zxid, &image).map(|info| info.zxid).map_err(|e| e.to_string())
        }));
    }

    /// Data directory (for `conf`).
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }
}

/// Converts a decoded write request into the sequencer's terms; the second value lists a
/// multi's opcodes (for shaping the reply).
fn write_op(request: Request) -> Result<(WriteOp, Vec<i32>), ErrorCode> {
    Ok(match request {
        Request::Create(c) => (WriteOp::Create(create_op(c)?), Vec::new()),
        Request::Delete { path, version } => (WriteOp::Delete { path, version }, Vec::new()),
        Request::SetData { path, data, version } => (WriteOp::SetData { path, data, version }, Vec::new()),
        Request::SetAcl { path, acl, version } => (WriteOp::SetAcl { path, acl, version }, Vec::new()),
        Request::Check { path, version } => (WriteOp::Check { path, version }, Vec::new()),
        Request::CloseSession => (WriteOp::CloseSession, Vec::new()),
        Request::Multi(ops) => {
            let mut codes = Vec::with_capacity(ops.len());
            let mut out = Vec::with_capacity(ops.len());
            for o in ops {
                match o {
                    proto::MultiOp::Create(c) => {
                        codes.push(c.op);
                        out.push(WriteOp::Create(create_op(c)?));
                    }
                    proto::MultiOp::Delete { path, version } => {
                        codes.push(op::DELETE);
                        out.push(WriteOp::Delete { path, version });
                    }
                    proto::MultiOp::SetData { path, data, version } => {
                        codes.push(op::SET_DATA);
                        out.push(WriteOp::SetData { path, data, version });
                    }
                    proto::MultiOp::Check { path, version } => {
                        codes.push(op::CHECK);
                        out.push(WriteOp::Check { path, version });
                    }
                }
            }
            (WriteOp::Multi(out), codes)
        }
        _ => return Err(ErrorCode::Unimplemented),
    })
}

fn create_op(c: proto::CreateRequest) -> Result<CreateOp, ErrorCode> {
    let mode = CreateMode::from_flags(c.flags).ok_or(ErrorCode::BadArguments)?;
    let container = c.op == op::CREATE_CONTAINER;
    // A TTL mode needs the createTTL opcode and createTTL needs a TTL mode; the sequencer
    // checks that createContainer and the container mode go together.
    if (c.op == op::CREATE_TTL) != mode.is_ttl() {
        return Err(ErrorCode::BadArguments);
    }
    Ok(CreateOp { path: c.path, data: c.data, acl: c.acl, mode, ttl_ms: c.ttl_ms, container })
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
