//! One shard's ZooKeeper clients: its connections, their watches, what it asks of the write
//! path and what it does with the answers. Lives on its own executor behind an
//! `Rc<RefCell<_>>`.
//!
//! Every read and every batch from the write path is handled with the tree read-locked and
//! the inbox drained first (see [`crate::runtime`] for why that makes watches exact).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton_engine::sequencer::{check_acl, perms, CreateMode, CreateOp, WriteOp, WriteRequest};
use baton_engine::tree::{DataTree, ErrorCode};
use baton_engine::{SessionId, Zxid};

use super::conn::{Conn, Slot};
use super::proto::{self, encode_reply, op, ConnectRequest, Request};
use super::reads::Watches;
use super::replies::{self, ReplyShape};
use super::watch::WatchManager;
use crate::runtime::inbox::Inbox;
use crate::runtime::local_queue::LocalNotify;
use crate::runtime::{
    ClientRef, CommittedChanges, ConnId, SessionRequest, ShardId, ShardStats, Shared, ToClient, ToShard, ToWritePath,
};

/// One shard.
pub struct Shard {
    /// Its index.
    pub id: ShardId,
    /// What all shards share.
    pub shared: Arc<Shared>,
    /// Its open connections.
    pub conns: HashMap<ConnId, Rc<Conn>>,
    /// Their watches.
    pub watches: WatchManager,
    next_conn: ConnId,
    /// Sessions heard from since the last report to the write path.
    touched: HashSet<SessionId>,
    inbox: Rc<Inbox<ToShard>>,
    /// Notified when a connection goes away (a stopping shard waits for them to close).
    closed: Rc<LocalNotify>,
}

impl Shard {
    /// A shard with no connections.
    pub fn new(id: ShardId, shared: Arc<Shared>, inbox: Inbox<ToShard>) -> Shard {
        Shard {
            id,
            shared,
            conns: HashMap::new(),
            watches: WatchManager::default(),
            next_conn: ConnId(1),
            touched: HashSet::new(),
            inbox: Rc::new(inbox),
            closed: Rc::new(LocalNotify::default()),
        }
    }

    /// Registers a new connection (the caller has admitted it against the limit).
    pub fn add_conn(&mut self, peer: std::net::SocketAddr) -> Rc<Conn> {
        let id = self.next_conn;
        self.next_conn = ConnId(id.0 + 1);
        let conn = Rc::new(Conn::new(id, peer));
        self.conns.insert(id, conn.clone());
        self.shared.conns.lock().unwrap_or_else(|p| p.into_inner()).insert((self.id, id), conn.info.clone());
        self.stats().connections.store(self.conns.len(), Ordering::Relaxed);
        conn
    }

    /// Forgets a connection that closed (its session lives on until it expires or closes).
    pub fn remove_conn(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.remove(&id) {
            self.watches.remove_conn(id);
            self.publish_watches();
            self.shared.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&(self.id, id));
            self.shared.release_connection(conn.peer.ip());
            self.stats().connections.store(self.conns.len(), Ordering::Relaxed);
            self.closed.notify();
        }
    }

    /// Closes every connection (each flushes what it has queued first).
    pub fn close_all(&self) {
        for c in self.conns.values() {
            c.close();
        }
    }

    /// Notified whenever a connection goes away.
    pub fn closed(&self) -> Rc<LocalNotify> {
        self.closed.clone()
    }

    fn stats(&self) -> &ShardStats {
        &self.shared.shard_stats[self.id]
    }

    fn client(&self, conn: &Conn) -> ClientRef {
        ClientRef { shard: self.id, conn: conn.id }
    }

    /// Publishes watch counts for the four-letter words.
    pub fn publish_watches(&self) {
        let stats = self.stats();
        stats.watches.store(self.watches.count(), Ordering::Relaxed);
        stats.watched_paths.store(self.watches.paths(), Ordering::Relaxed);
        stats.watching_conns.store(self.watches.watching_conns(), Ordering::Relaxed);
    }

    /// Asks the write path to open or resume the connection's session.
    pub fn connect(&mut self, conn: &Rc<Conn>, req: ConnectRequest) {
        let req = SessionRequest {
            session_id: SessionId(req.session_id),
            password: req.passwd,
            timeout_ms: req.timeout_ms,
            last_zxid_seen: Zxid(req.last_zxid_seen.max(0) as u64),
            read_only: req.read_only,
        };
        self.shared.to_write_path.send(ToWritePath::Connect { client: self.client(conn), req });
    }

    /// The sessions heard from since the last call.
    pub fn take_touched(&mut self) -> Vec<SessionId> {
        self.touched.drain().collect()
    }

    /// A request arrived on a connected session.
    pub fn request(&mut self, conn: &Rc<Conn>, xid: i32, op_code: i32, request: Request) {
        let at = std::time::Instant::now();
        self.stats().received.fetch_add(1, Ordering::Relaxed);
        self.stats().count_op(op_code);
        conn.count_received();
        // ZooKeeper's ZooTrace: every request, at trace level, while the trace mask asks.
        if tracing::enabled!(tracing::Level::TRACE) && self.shared.trace_mask.load(Ordering::Relaxed) & 2 != 0 {
            tracing::trace!(session = format_args!("0x{:x}", conn.session().0), xid, op_code, peer = %conn.peer, "request");
        }
        self.touched.insert(conn.session());
        if conn.read_only.get() && (request.is_write() || matches!(request, Request::Sync { .. })) {
            // A read-only session (read-only mode): ZooKeeper's ReadOnlyRequestProcessor
            // answers every write and sync NotReadOnly; closing the session (local to this
            // server) is done here.
            let closes = matches!(request, Request::CloseSession);
            if closes {
                conn.close_after_reply();
            }
            self.answer_at_once(conn, xid, if closes { 0 } else { ErrorCode::NotReadOnly.code() }, at);
            return;
        }
        if let Request::Sync { path } = request {
            // Through the ensemble: answered once this server has applied every write the
            // leader had accepted before it; ordered after this session's earlier writes by
            // its slot.
            conn.slots.borrow_mut().push_back(Slot::Sync { xid, path, at });
            self.shared.to_write_path.send(ToWritePath::Sync { client: self.client(conn), xid });
            return;
        }
        if request.is_write() {
            match write_op(request) {
                Ok((op, multi_ops)) => {
                    let shape = ReplyShape { op_code, multi_ops };
                    conn.slots.borrow_mut().push_back(Slot::Write { xid, shape, at });
                    let auth = conn.auth.borrow().clone();
                    let req = WriteRequest { session_id: conn.session(), cxid: xid, auth, op };
                    self.shared.to_write_path.send(ToWritePath::Write { client: self.client(conn), xid, req });
                }
                Err(code) => self.answer_at_once(conn, xid, code.code(), at),
            }
            return;
        }
        let shared = self.shared.clone();
        let tree = shared.tree();
        self.drain(&tree);
        if conn.has_pending() {
            conn.slots.borrow_mut().push_back(Slot::Read { xid, request, at });
        } else {
            let frame = self.read(&tree, conn, xid, request);
            self.stats().latency.record(at.elapsed());
            self.reply(conn, frame);
        }
    }

    /// Sends a request's reply, counting its result (the header's error code: the frame is
    /// length, xid, zxid, err).
    fn reply(&self, conn: &Conn, frame: Vec<u8>) {
        if let Some(err) = frame.get(16..20).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
            self.stats().count_result(i32::from_be_bytes(err));
        }
        conn.send(frame);
    }

    /// Answers request `xid` with a bodiless reply (`err`) decided here, in its turn: at once,
    /// or after the replies still owed ahead of it.
    fn answer_at_once(&self, conn: &Rc<Conn>, xid: i32, err: i32, at: std::time::Instant) {
        let frame = encode_reply(xid, replies::zxid_field(self.shared.tree().last_zxid()), err, None);
        if conn.has_pending() {
            conn.slots.borrow_mut().push_back(Slot::Ready(frame));
        } else {
            self.stats().latency.record(at.elapsed());
            self.reply(conn, frame);
        }
    }

    /// Answers a read (registering any watch it sets).
    fn read(&mut self, tree: &DataTree, conn: &Rc<Conn>, xid: i32, request: Request) -> Vec<u8> {
        let before = self.watches.count();
        let shared = self.shared.clone();
        let max_per_connection = shared.config.max_watches_per_connection;
        let super_digest = shared.config.super_digest.as_deref();
        let sasl_users = &shared.config.sasl_users;
        let mut watches = Watches { manager: &mut self.watches, max_per_connection, super_digest, sasl_users };
        let frame = super::reads::answer(&mut watches, tree, conn, xid, request);
        if self.watches.count() != before {
            self.publish_watches();
        }
        frame
    }

    /// Handles what the write path sent as it arrives, with the tree read-locked; returns
    /// when the write path is gone.
    pub async fn serve_inbox(shard: &std::cell::RefCell<Shard>) {
        // Wait without holding the shard: connection tasks need it meanwhile.
        let inbox = shard.borrow().inbox.clone();
        while let Some(message) = inbox.recv().await {
            let mut s = shard.borrow_mut();
            let shared = s.shared.clone();
            let tree = shared.tree();
            s.handle(message, &tree);
            s.drain(&tree);
        }
    }

    /// Handles every queued message from the write path.
    pub fn drain(&mut self, tree: &DataTree) {
        while let Some(message) = self.inbox.try_recv() {
            self.handle(message, tree);
        }
    }

    fn handle(&mut self, message: ToShard, tree: &DataTree) {
        match message {
            ToShard::Committed { batch, answers } => {
                let mut answers = answers.into_iter().peekable();
                for (i, entry) in batch.iter().enumerate() {
                    self.notify(entry);
                    while let Some((_, answer)) = answers.next_if(|(at, _)| *at == i) {
                        self.answer(answer, tree);
                    }
                }
            }
            ToShard::Client(answer) => self.answer(answer, tree),
            ToShard::Disconnect => self.close_all(),
            ToShard::Watches(reply) => {
                let list = self
                    .watches
                    .all()
                    .filter_map(|(path, conn)| Some((self.conns.get(&conn)?.session().0, path.to_string())))
                    .collect();
                let _ = reply.send(list);
            }
        }
    }

    fn answer(&mut self, answer: ToClient, tree: &DataTree) {
        match answer {
            ToClient::Written { conn, xid, outcome } => {
                self.complete(conn, xid, tree, |slot| match slot {
                    Slot::Write { shape, .. } => {
                        let closes = shape.op_code == op::CLOSE_SESSION;
                        Some((replies::written(xid, shape, &outcome), closes))
                    }
                    _ => None,
                });
            }
            ToClient::Synced { conn, xid, zxid } => {
                let at = zxid.unwrap_or(tree.last_zxid());
                self.complete(conn, xid, tree, |slot| match slot {
                    Slot::Sync { path, .. } => {
                        Some((replies::synced(xid, at, std::mem::take(path), zxid.is_some()), false))
                    }
                    _ => None,
                });
            }
            ToClient::Connected { conn, session, timeout_ms, password, read_only } => {
                if let Some(c) = self.conns.get(&conn) {
                    c.bind(session, timeout_ms);
                    c.read_only.set(read_only);
                    c.send(replies::connected(session, timeout_ms, password, read_only));
                }
            }
            ToClient::SessionExpired { conn } => {
                if let Some(c) = self.conns.get(&conn) {
                    c.send(replies::session_expired());
                    c.close();
                }
            }
            ToClient::Close { conn } => {
                if let Some(c) = self.conns.get(&conn) {
                    c.close();
                }
            }
        }
    }

    /// Sends watch notifications for what `entry` changed (before any later reply).
    fn notify(&mut self, entry: &CommittedChanges) {
        if self.watches.count() == 0 {
            return;
        }
        let mut fired = Vec::new();
        let mut any = false;
        for change in &entry.changes {
            self.watches.trigger(change, &mut fired);
            any |= !fired.is_empty();
            for (conn, event_type, path) in fired.drain(..) {
                let Some(c) = self.conns.get(&conn) else { continue };
                // A watcher that may not read the znode is not told of it (ZooKeeper checks
                // READ on the znode's ACL at delivery since CVE-2024-23944); the watch is
                // used up all the same.
                if check_acl(&change.acl, perms::READ, &c.auth.borrow()).is_ok() {
                    c.send(proto::encode_notification(event_type, &path, entry.zxid.0 as i64));
                }
            }
        }
        if any {
            self.publish_watches();
        }
    }

    /// Fills the slot of request `xid` with the frame `reply` makes of it (and whether the
    /// connection closes after it: a closeSession), then releases the replies and runs the
    /// reads that were waiting behind it.
    fn complete(
        &mut self,
        conn_id: ConnId,
        xid: i32,
        tree: &DataTree,
        reply: impl FnOnce(&mut Slot) -> Option<(Vec<u8>, bool)>,
    ) {
        let Some(conn) = self.conns.get(&conn_id).cloned() else { return };
        let closes = {
            let mut slots = conn.slots.borrow_mut();
            let waiting = slots
                .iter_mut()
                .find(|s| matches!(s, Slot::Write { xid: x, .. } | Slot::Sync { xid: x, .. } if *x == xid));
            let Some(slot) = waiting else {
                tracing::debug!(conn = conn_id.0, xid, "an answer for no waiting request; dropped");
                return;
            };
            let at = match slot {
                Slot::Write { at, .. } | Slot::Sync { at, .. } => *at,
                _ => std::time::Instant::now(),
            };
            let Some((frame, closes)) = reply(slot) else { return };
            self.stats().latency.record(at.elapsed());
            *slot = Slot::Ready(frame);
            closes
        };
        loop {
            let front = conn.slots.borrow_mut().pop_front();
            match front {
                None => break,
                Some(Slot::Ready(frame)) => self.reply(&conn, frame),
                Some(Slot::Read { xid, request, at }) => {
                    let frame = self.read(tree, &conn, xid, request);
                    self.stats().latency.record(at.elapsed());
                    self.reply(&conn, frame);
                }
                Some(waiting @ (Slot::Write { .. } | Slot::Sync { .. })) => {
                    conn.slots.borrow_mut().push_front(waiting);
                    break;
                }
            }
        }
        if closes {
            // The connection closes once the close has committed and been answered.
            conn.close();
        }
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
    // createTTL needs a TTL mode (ZooKeeper's `validateTTL`). A TTL mode on another opcode
    // comes with a TTL of -1: the sequencer answers Unimplemented when TTLs are off and
    // BadArguments otherwise, as ZooKeeper does.
    if c.op == op::CREATE_TTL && !mode.is_ttl() {
        return Err(ErrorCode::BadArguments);
    }
    Ok(CreateOp { path: c.path, data: c.data, acl: c.acl, mode, ttl_ms: c.ttl_ms, container })
}
