//! One shard's state: its connections, their watches, and what it does with the core's
//! messages. Lives on its own executor behind an `Rc<RefCell<_>>`.
//!
//! Every read and every batch of core messages is handled with the tree read-locked and the
//! inbox drained first (see [`crate::runtime`] for why that makes watches exact).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton_engine::sequencer::{CreateMode, CreateOp, WriteOp};
use baton_engine::tree::{DataTree, ErrorCode};

use crate::conn::{Conn, Slot};
use crate::runtime::inbox::Inbox;
use crate::runtime::{Action, CommittedEntry, ShardId, Shared, ToCore, ToShard};
use crate::watch::{ConnId, WatchManager};
use crate::zk::proto::{self, encode_reply, op, ConnectRequest, Request};

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
    /// Sessions heard from since the last report to the core.
    touched: HashSet<i64>,
    inbox: Rc<Inbox<ToShard>>,
}

impl Shard {
    /// A shard with no connections.
    pub fn new(id: ShardId, shared: Arc<Shared>, inbox: Inbox<ToShard>) -> Shard {
        Shard {
            id,
            shared,
            conns: HashMap::new(),
            watches: WatchManager::default(),
            next_conn: 1,
            touched: HashSet::new(),
            inbox: Rc::new(inbox),
        }
    }

    /// Registers a new connection (the caller has admitted it against the limit).
    pub fn add_conn(&mut self, peer: std::net::SocketAddr) -> Rc<Conn> {
        let id = self.next_conn;
        self.next_conn += 1;
        let conn = Rc::new(Conn::new(id, peer));
        self.conns.insert(id, conn.clone());
        self.shared.conns.lock().unwrap_or_else(|p| p.into_inner()).insert((self.id, id), conn.info.clone());
        self.stats().connections.store(self.conns.len(), Ordering::Relaxed);
        conn
    }

    /// Forgets a connection that closed (its session lives on until it expires or closes).
    pub fn remove_conn(&mut self, id: ConnId) {
        if self.conns.remove(&id).is_some() {
            self.watches.remove_conn(id);
            self.publish_watches();
            self.shared.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&(self.id, id));
            self.shared.open_connections.fetch_sub(1, Ordering::AcqRel);
            self.stats().connections.store(self.conns.len(), Ordering::Relaxed);
        }
    }

    fn stats(&self) -> &crate::runtime::ShardStats {
        &self.shared.shard_stats[self.id]
    }

    /// Publishes watch counts for the four-letter words.
    pub fn publish_watches(&self) {
        let stats = self.stats();
        stats.watches.store(self.watches.count(), Ordering::Relaxed);
        stats.watched_paths.store(self.watches.paths(), Ordering::Relaxed);
        stats.watching_conns.store(self.watches.watching_conns(), Ordering::Relaxed);
    }

    /// Asks the core to open or resume the connection's session.
    pub fn connect(&mut self, conn: &Rc<Conn>, req: ConnectRequest) {
        self.shared.to_core.send(ToCore::Connect { shard: self.id, conn: conn.id, req });
    }

    /// The sessions heard from since the last call.
    pub fn take_touched(&mut self) -> Vec<i64> {
        self.touched.drain().collect()
    }

    /// A request arrived on a connected session.
    pub fn request(&mut self, conn: &Rc<Conn>, xid: i32, op_code: i32, request: Request) {
        self.stats().received.fetch_add(1, Ordering::Relaxed);
        conn.count_received();
        self.touched.insert(conn.session());
        if let Request::Sync { path } = request {
            // Through the ensemble: answered once this server has applied every write the
            // leader had accepted before it; ordered after this session's earlier writes by
            // its slot.
            conn.slots.borrow_mut().push_back(Slot::Write(xid));
            self.shared.to_core.send(ToCore::Sync { shard: self.id, conn: conn.id, xid, path });
            return;
        }
        if request.is_write() {
            match write_op(request) {
                Ok((op, multi_ops)) => {
                    conn.slots.borrow_mut().push_back(Slot::Write(xid));
                    let auth = conn.auth.borrow().clone();
                    let write = ToCore::Write {
                        shard: self.id,
                        conn: conn.id,
                        session: conn.session(),
                        xid,
                        op_code,
                        multi_ops,
                        op,
                        auth,
                    };
                    self.shared.to_core.send(write);
                }
                Err(code) => {
                    let zxid = self.shared.tree().last_zxid().0 as i64;
                    let frame = encode_reply(xid, zxid, code.code(), None);
                    if conn.has_pending() {
                        conn.slots.borrow_mut().push_back(Slot::Ready(frame));
                    } else {
                        conn.send(frame);
                    }
                }
            }
            return;
        }
        let shared = self.shared.clone();
        let tree = shared.tree();
        self.drain(&tree);
        if conn.has_pending() {
            conn.slots.borrow_mut().push_back(Slot::Read { xid, request });
        } else {
            let frame = crate::reads::answer(self, &tree, conn, xid, request);
            conn.send(frame);
        }
    }

    /// Handles what the core sent as it arrives, with the tree read-locked; returns when the
    /// core is gone.
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

    /// Handles every queued message from the core.
    pub fn drain(&mut self, tree: &DataTree) {
        while let Some(message) = self.inbox.try_recv() {
            self.handle(message, tree);
        }
    }

    fn handle(&mut self, message: ToShard, tree: &DataTree) {
        match message {
            ToShard::Committed { entries, actions } => {
                let mut actions = actions.into_iter().peekable();
                for (i, entry) in entries.iter().enumerate() {
                    self.notify(entry);
                    while let Some((_, action)) = actions.next_if(|(at, _)| *at == i) {
                        self.act(action, tree);
                    }
                }
            }
            ToShard::Act(action) => self.act(action, tree),
            ToShard::Disconnect => {
                for c in self.conns.values() {
                    c.close();
                }
            }
        }
    }

    fn act(&mut self, action: Action, tree: &DataTree) {
        match action {
            Action::Reply { conn, xid, frame } => self.complete(conn, xid, frame, tree),
            Action::Connected { conn, session, timeout_ms, frame } => {
                if let Some(c) = self.conns.get(&conn) {
                    c.bind(session, timeout_ms);
                    c.send(frame);
                }
            }
            Action::Close { conn, frame } => {
                if let Some(c) = self.conns.get(&conn) {
                    if let Some(frame) = frame {
                        c.send(frame);
                    }
                    c.close();
                }
            }
        }
    }

    /// Sends watch notifications for what `entry` changed (before any later reply).
    fn notify(&mut self, entry: &CommittedEntry) {
        if self.watches.count() == 0 {
            return;
        }
        let mut fired = Vec::new();
        for change in &entry.changes {
            self.watches.trigger(change, &mut fired);
        }
        if fired.is_empty() {
            return;
        }
        for (conn, event_type, path) in fired {
            if let Some(c) = self.conns.get(&conn) {
                c.send(proto::encode_notification(event_type, &path, entry.zxid.0 as i64));
            }
        }
        self.publish_watches();
    }

    /// Fills the slot of write `xid`, then releases the replies and runs the reads that were
    /// waiting behind it.
    fn complete(&mut self, conn_id: ConnId, xid: i32, frame: Vec<u8>, tree: &DataTree) {
        let Some(conn) = self.conns.get(&conn_id).cloned() else { return };
        {
            let mut slots = conn.slots.borrow_mut();
            match slots.iter_mut().find(|s| matches!(s, Slot::Write(x) if *x == xid)) {
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
                    let frame = crate::reads::answer(self, tree, &conn, xid, request);
                    conn.send(frame);
                }
                Some(write @ Slot::Write(_)) => {
                    conn.slots.borrow_mut().push_front(write);
                    break;
                }
            }
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
    // A TTL mode needs the createTTL opcode and createTTL needs a TTL mode; the sequencer
    // checks that createContainer and the container mode go together.
    if (c.op == op::CREATE_TTL) != mode.is_ttl() {
        return Err(ErrorCode::BadArguments);
    }
    Ok(CreateOp { path: c.path, data: c.data, acl: c.acl, mode, ttl_ms: c.ttl_ms, container })
}
