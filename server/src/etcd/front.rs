//! The etcd front's link to the write path: it is one more place answers go (the slot after
//! the last shard, [`Shared::etcd_slot`]), and each request it sends is a connection of its
//! own there, so that every answer — or the write path dropping a request, as it drops a
//! ZooKeeper connection's when this server loses its leader — names the request it is for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use baton_engine::mvcc::{EtcdResponse, EtcdTxn, MvccError};
use baton_engine::sequencer::{Rejected, WriteOp, WriteRequest};
use baton_engine::tree::ErrorCode;
use baton_engine::SessionId;
use tokio::sync::oneshot;
use tonic::{Code, Status};

use super::pb::etcdserverpb as pb;
use super::watch::Hub;
use crate::runtime::inbox::Inbox;
use crate::runtime::{ClientRef, ConnId, Shared, ToClient, ToShard, ToWritePath, WriteOutcome};

/// The session id the etcd front's writes carry on server `id`: unique in the ensemble (so
/// that the (session, cxid) a write is matched by at apply is this server's alone) and never
/// a ZooKeeper session's, whose first byte is its server's id, at least 1.
pub fn etcd_session(id: u64) -> SessionId {
    SessionId((1 << 40) | (id & 0xffff_ffff) as i64)
}

/// How the write path ended a request.
#[derive(Debug)]
enum Answer {
    Written(WriteOutcome),
    Synced(bool),
    /// Dropped unanswered: no leader, or this server stopped serving.
    Dropped,
}

/// The etcd front's side of the write path: requests out, answers back.
pub struct Front {
    pub(super) shared: Arc<Shared>,
    session: SessionId,
    cluster_id: u64,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    reads: Mutex<ReadBatch>,
    /// The keyspace's revision each time a batch changed it here, for those waiting for a
    /// key to change (the Lock and Election services).
    changed: tokio::sync::watch::Sender<i64>,
}

/// Linearizable reads waiting for a sync, batched as etcd's ReadIndex batches them: one sync
/// at a time, for every read that arrived before it was sent.
#[derive(Default)]
struct ReadBatch {
    in_flight: bool,
    waiting: Vec<oneshot::Sender<bool>>,
}

/// etcd's error for a keyspace error: its gRPC code and message.
pub fn status(e: MvccError) -> Status {
    Status::new(Code::from(e.code() as i32), e.to_string())
}

/// What a client sees when this server has no leader to take its request.
fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

impl Front {
    /// The front of this server.
    pub fn new(shared: Arc<Shared>) -> Front {
        let c = &shared.config;
        let mut members: Vec<String> = c.peers.iter().map(|p| format!("{}={}", p.id, p.addr)).collect();
        members.sort();
        let cluster_id = xxhash_rust::xxh3::xxh3_64(format!("{}|{}", c.ensemble_name, members.join(",")).as_bytes());
        Front {
            session: etcd_session(c.server_id),
            cluster_id,
            shared,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            reads: Mutex::new(ReadBatch::default()),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Wakes on each change of the keyspace applied here after this call.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<i64> {
        self.changed.subscribe()
    }

    fn register(&self) -> (u64, i32, oneshot::Receiver<Answer>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        (id, (id & 0x7fff_ffff) as i32, rx)
    }

    fn client(&self, id: u64) -> ClientRef {
        ClientRef { shard: self.shared.etcd_slot(), conn: ConnId(id) }
    }

    /// Proposes `txn` and waits until it is applied here: etcd's answer, or its error.
    pub async fn write(&self, txn: EtcdTxn) -> Result<EtcdResponse, Status> {
        let (id, xid, rx) = self.register();
        let req = WriteRequest { session_id: self.session, cxid: xid, auth: Vec::new(), op: WriteOp::Etcd(txn) };
        if !self.shared.to_write_path.send(ToWritePath::Write { client: self.client(id), xid, req }) {
            self.forget(id);
            return Err(Status::unavailable("etcdserver: server stopped"));
        }
        match rx.await {
            Ok(Answer::Written(WriteOutcome::Etcd { result, .. })) => result.map_err(status),
            Ok(Answer::Written(WriteOutcome::Refused { rejected: Rejected::Op(ErrorCode::NotReadOnly), .. })) => {
                // The disk is full: what etcd answers once its space quota is exceeded.
                Err(Status::resource_exhausted("etcdserver: mvcc: database space exceeded"))
            }
            Ok(Answer::Written(other)) => {
                tracing::warn!(?other, "an etcd write answered as no etcd write is");
                Err(no_leader())
            }
            Ok(Answer::Synced(_)) | Ok(Answer::Dropped) | Err(_) => Err(no_leader()),
        }
    }

    /// etcd's quota check before a write that adds `cost` bytes (etcd's `quotaAlarmer`): past
    /// `--etcd-quota-bytes`, this server raises NOSPACE through the log (not waiting for it)
    /// and the write is refused.
    pub fn quota(self: &Arc<Self>, cost: u64) -> Result<(), Status> {
        let quota = self.shared.config.etcd_quota_bytes;
        if quota == 0 {
            return Ok(());
        }
        let (size, raised) = {
            let ks = self.shared.etcd();
            (ks.size_bytes(), ks.out_of_space())
        };
        if size.saturating_add(cost) <= quota {
            return Ok(());
        }
        if raised {
            // Already raised (by this server or another): nothing more to propose.
            return Err(status(MvccError::NoSpace));
        }
        let front = self.clone();
        let member = self.shared.config.server_id;
        super::rt::spawn(async move {
            let raise = EtcdTxn::Alarm { activate: true, member, alarm: baton_engine::mvcc::ALARM_NOSPACE };
            match front.write(raise).await {
                Ok(_) => tracing::warn!(size, quota, "etcd keyspace over its space quota: NOSPACE alarm raised"),
                Err(e) => tracing::warn!(size, quota, error = %e.message(), "raising the NOSPACE alarm failed"),
            }
        });
        Err(status(MvccError::NoSpace))
    }

    /// Waits until this server has applied every write the ensemble took before now (the
    /// ensemble confirms its leader with a quorum first: etcd's ReadIndex), for a
    /// linearizable read. Reads share syncs: each waits for the first sync sent after it
    /// arrived, and one sync is in flight at a time (under a read load, one per round trip
    /// instead of one per read).
    pub async fn sync(self: &Arc<Self>) -> Result<(), Status> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
            reads.waiting.push(tx);
            !std::mem::replace(&mut reads.in_flight, true)
        };
        if start {
            super::rt::spawn(self.clone().sync_rounds());
        }
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(no_leader()),
        }
    }

    /// Syncs for the waiting reads, a round at a time, until none is left.
    async fn sync_rounds(self: Arc<Self>) {
        loop {
            let group = {
                let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
                if reads.waiting.is_empty() {
                    reads.in_flight = false;
                    return;
                }
                std::mem::take(&mut reads.waiting)
            };
            // Every read in `group` arrived before this sync is sent.
            let synced = self.sync_once().await.is_ok();
            for read in group {
                let _ = read.send(synced);
            }
        }
    }

    /// One sync through the write path.
    async fn sync_once(&self) -> Result<(), Status> {
        let (id, xid, rx) = self.register();
        if !self.shared.to_write_path.send(ToWritePath::Sync { client: self.client(id), xid }) {
            self.forget(id);
            return Err(Status::unavailable("etcdserver: server stopped"));
        }
        match rx.await {
            Ok(Answer::Synced(true)) => Ok(()),
            _ => Err(no_leader()),
        }
    }

    fn forget(&self, id: u64) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    fn deliver(&self, id: u64, answer: Answer) {
        let waiter = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if let Some(tx) = waiter {
            // The client may have gone (its request cancelled): nothing to tell then.
            let _ = tx.send(answer);
        }
    }

    fn answer(&self, msg: ToClient) {
        match msg {
            ToClient::Written { conn, outcome, .. } => self.deliver(conn.0, Answer::Written(outcome)),
            ToClient::Synced { conn, zxid, .. } => self.deliver(conn.0, Answer::Synced(zxid.is_some())),
            ToClient::Close { conn } | ToClient::SessionExpired { conn } | ToClient::Connected { conn, .. } => {
                self.deliver(conn.0, Answer::Dropped)
            }
        }
    }

    /// Tells every request still waiting that no answer will come.
    pub(super) fn drop_all(&self) {
        let all = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, tx) in all {
            let _ = tx.send(Answer::Dropped);
        }
    }

    /// A response header: this cluster and member, `revision`, and the Zab epoch as etcd's
    /// raft term.
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.shared.config.server_id,
            revision,
            raft_term: u64::from(self.shared.role.get().epoch()),
        }
    }
}

/// Takes what the write path sends the etcd front (answers, and the committed batches whose
/// events etcd's watchers follow) until the server stops.
pub async fn pump(front: Arc<Front>, hub: Arc<Mutex<Hub>>, inbox: Inbox<ToShard>) {
    while let Some(msg) = inbox.recv().await {
        match msg {
            ToShard::Committed { batch, answers } => {
                let events: Vec<_> = batch.iter().flat_map(|c| c.etcd_events.iter().cloned()).collect();
                if let Some(current) = events.last().map(|e| e.kv.mod_revision) {
                    hub.lock().unwrap_or_else(|p| p.into_inner()).publish(&front, &events, current);
                    front.changed.send_replace(current);
                }
                for (_, a) in answers {
                    front.answer(a);
                }
            }
            ToShard::Client(a) => front.answer(a),
            ToShard::Disconnect => front.drop_all(),
            // ZooKeeper's watches are on the ZooKeeper shards.
            ToShard::Watches(reply) => {
                let _ = reply.send(Vec::new());
            }
        }
    }
    front.drop_all();
}
