//! [`WritePath`]: the server's write path as a state machine without IO. Its inputs are
//! what shards ask ([`ToWritePath`]: connects, writes, syncs, liveness), what the replica
//! reports (committed entries, role changes, syncs done, renewed sessions, peers' forwarded
//! writes) and ticks; time comes in as a value ([`Now`]). Its outputs are [`Effect`]s, which
//! the driver ([`super::driver`]) carries out in order.
//!
//! ```text
//!  leader:   Write ─▶ Sequencer::prepare ─▶ Effect::Propose ─▶ replica (WAL + followers)
//!  follower: Write ─▶ Effect::Forward to the leader ─▶ (the leader's sequencer)
//!                       │ refused (the leader's answer, or prepare here)
//!                       ▼
//!            ToClient::Written { Refused } once the tree reached the zxid it was decided at
//!  everyone: commit ─▶ apply ─▶ Effect::Publish (batch + answers matched by (session, cxid))
//! ```
//!
//! The leader also owns session expiry (every server reports its clients' liveness to it)
//! and the container/TTL reaper; a server alone in its ensemble is its own leader. A server
//! that does not serve (electing, synchronising) refuses clients: it closes their
//! connections and they reconnect, here later or elsewhere, as with ZooKeeper.
//!
//! It speaks no client protocol: a front turns its requests into [`ToWritePath`] and the
//! [`ToClient`] answers into its own replies.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use baton_engine::log::{ArchivedTxn, Transaction};
use baton_engine::mvcc::{ArchivedEtcdTxn, EtcdResponse, EtcdTxn, KeySpace};
use baton_engine::sequencer::{AuthId, Rejected, Sequencer, SequencerConfig, WriteOp, WriteRequest};
use baton_engine::tree::{DataTree, ErrorCode};
use baton_engine::zab::{LogEntry, Payload, Role, ServerId};
use baton_engine::{SessionId, Zxid};
use rkyv::util::AlignedVec;

use super::forward::Forwarded;

/// An etcd lease's TTL (seconds) as a deadline's distance.
fn lease_ttl(ttl_s: i64) -> std::time::Duration {
    std::time::Duration::from_secs(ttl_s.max(0) as u64)
}

/// Revisions of etcd history made unreachable by a compaction that are dropped per applied
/// batch: a compaction of any size costs no batch more than this.
const PRUNE_PER_BATCH: usize = 1024;

/// Changes carried into a repacked etcd key map per batch applied (`KeySpace::repack_step`),
/// about a microsecond each: more than a batch makes, so that it catches up.
const REPACK_PER_BATCH: usize = 2048;
use super::session::{password, SessionTracker};
use crate::runtime::{ClientRef, CommittedChanges, SessionRequest, ShardId, ToClient, ToWritePath, WriteOutcome};

/// The time, as a value: a monotonic instant (session deadlines) and the wall clock in
/// milliseconds (the leader stamps it into entries as ctime/mtime; the reaper compares TTLs
/// with it).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time.
    pub instant: Instant,
    /// Milliseconds since the Unix epoch.
    pub wall_ms: i64,
}

/// Settings of the write path.
#[derive(Debug, Clone)]
pub struct WritePathConfig {
    /// This server.
    pub id: ServerId,
    /// Shards that receive committed batches.
    pub shards: usize,
    /// Session timeouts granted, (min, max) in ms.
    pub session_timeout_ms: (i32, i32),
    /// What the sequencer accepts (TTL nodes or not).
    pub sequencer: SequencerConfig,
    /// Read-only mode (a member of an ensemble with `--read-only-mode`): how long without
    /// serving before read-only sessions are granted.
    pub read_only_after: Option<std::time::Duration>,
}

/// What the write path asks its driver to do, in order. Each says what must hold when it
/// is carried out.
#[derive(Debug)]
pub enum Effect {
    /// Deliver `msg` to `shard`. Not tied to a commit.
    Client {
        /// The shard of the connection.
        shard: ShardId,
        /// What to tell it.
        msg: ToClient,
    },
    /// A committed batch for every shard, each with its answers (after the entry at their
    /// index). Carried out while the tree's write lock that applied it is still held, so no
    /// shard serves a read of the new state before it has the batch's notifications.
    Publish {
        /// What each entry changed, in zxid order.
        batch: Arc<Vec<CommittedChanges>>,
        /// One list per shard: (index into `batch`, answer).
        answers: Vec<Vec<(usize, ToClient)>>,
    },
    /// Propose these entries (leader). `first` is the zxid the first was prepared for: the
    /// replica drops them if this leadership does not continue there.
    Propose {
        /// The zxid of the first entry.
        first: Zxid,
        /// The entries' bytes, with consecutive zxids inside.
        payloads: Vec<Payload>,
    },
    /// Send bytes to `to`'s write path (a forwarded write or a refusal), on the peer link.
    Forward {
        /// The peer.
        to: ServerId,
        /// An encoded [`Forwarded`].
        data: Payload,
    },
    /// Ask the ensemble for sync `id` ([`WritePath::synced`] follows).
    Sync {
        /// The sync's id.
        id: u64,
    },
    /// Tell the leader these sessions are alive here.
    ReportLiveness {
        /// The sessions.
        sessions: Vec<SessionId>,
    },
    /// Stop serving: every shard closes every connection.
    DisconnectAll,
    /// Read-only mode began (true) or ended (false): for the four-letter words.
    ReadOnly(bool),
    /// The role changed: publish it for the four-letter words (which show a server that does
    /// not serve as looking), and print it for the operator when what they see of it — the
    /// mode or the epoch — changed.
    RoleReported {
        /// The role.
        role: Role,
        /// Whether the operator's line changes.
        announce: bool,
    },
    /// A committed entry does not decode: stop the server (fail-stop keeps every replica's
    /// tree a prefix of one history).
    Fatal {
        /// What went wrong.
        why: String,
    },
}

/// Who is waiting for an entry to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// A client request.
    Request { client: ClientRef, xid: i32 },
    /// A new session being opened for a connection.
    Connect { client: ClientRef, timeout_ms: i32 },
}

impl Origin {
    fn client(&self) -> ClientRef {
        match self {
            Origin::Request { client, .. } | Origin::Connect { client, .. } => *client,
        }
    }
}

/// What waits for a sync with the ensemble.
#[derive(Debug)]
enum PendingSync {
    /// A client's `sync`.
    Client { client: ClientRef, xid: i32 },
    /// A session to resume on this connection, checked once this server has applied
    /// everything the ensemble committed before the request.
    Resume { client: ClientRef, session: SessionId, timeout_ms: i32 },
}

/// A refusal waiting for this server's tree to reach the zxid it was decided at.
#[derive(Debug)]
struct Deferred {
    zxid: Zxid,
    origin: Origin,
    rejected: Rejected,
}

/// Counters the driver publishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WritePathStats {
    /// Entries applied.
    pub committed: u64,
    /// Writes refused before the log.
    pub rejected: u64,
    /// Writes waiting to commit.
    pub outstanding: usize,
    /// Sessions tracked.
    pub sessions: usize,
    /// Client writes committed, from reaching this write path (sequenced here, or forwarded
    /// to the leader) to applied here, in microseconds.
    pub commit_us: baton_engine::stats::Histogram,
}

/// The write path's state.
pub struct WritePath {
    config: WritePathConfig,
    /// Present while this server leads an established epoch and has applied its history.
    seq: Option<Sequencer>,
    role: Role,
    /// An established leader's last logged zxid when it was established: its sequencer
    /// starts once the tree has applied up to it.
    leading_from: Option<Zxid>,
    /// Clients waiting for their entry to commit, by (session, cxid), and since when.
    pending: HashMap<(SessionId, i32), (Origin, Instant)>,
    syncs: HashMap<u64, PendingSync>,
    next_sync: u64,
    /// Entries prepared since the last flush. Invariant: empty or `first_proposal` is the
    /// zxid of the first.
    proposals: Vec<Payload>,
    first_proposal: Option<Zxid>,
    sessions: SessionTracker,
    /// etcd's leases, by ID, and when each expires unless kept alive; tracked on every
    /// server (from the log), expired by the leader alone, as sessions are.
    leases: SessionTracker,
    /// Leases kept alive here since the last report to the leader (a follower's).
    kept_alive: Vec<i64>,
    /// The connection each live session is bound to.
    owners: HashMap<SessionId, ClientRef>,
    /// Reused to give payloads the alignment archived entries need.
    scratch: AlignedVec,
    /// The last zxid this leader's sequencer assigned (it may not be applied yet).
    last_prepared: Zxid,
    /// Refusals waiting for the tree to reach the zxid they were decided at. Invariant:
    /// their zxids do not decrease (see [`WritePath::refused`]).
    deferred: VecDeque<Deferred>,
    /// What operators last saw of the role: looking or not, leading or not, and the epoch.
    shown: (bool, bool, u32),
    /// The log has no room for its next segment (a full disk): client writes are refused,
    /// and what is left of the current segment serves session bookkeeping.
    out_of_space: bool,
    /// Since when this server has been looking for a leader (None while it has one, even
    /// one it is still synchronising with).
    not_serving_since: Option<Instant>,
    /// In read-only mode: read-only sessions are granted (see `WritePathConfig::read_only_after`).
    read_only: bool,
    stats: WritePathStats,
    out: Vec<Effect>,
}

impl WritePath {
    /// The write path of a server that has not joined a leadership yet; session ids it
    /// creates are seeded from its id and the wall clock, as ZooKeeper's.
    pub fn new(config: WritePathConfig, now: Now) -> WritePath {
        WritePath {
            sessions: SessionTracker::new(config.id as u8, now.wall_ms.max(0) as u64),
            leases: SessionTracker::default(),
            kept_alive: Vec::new(),
            config,
            seq: None,
            role: Role::Looking,
            leading_from: None,
            pending: HashMap::new(),
            syncs: HashMap::new(),
            next_sync: 1,
            proposals: Vec::new(),
            first_proposal: None,
            owners: HashMap::new(),
            scratch: AlignedVec::new(),
            last_prepared: Zxid::ZERO,
            deferred: VecDeque::new(),
            shown: (true, false, 0),
            out_of_space: false,
            not_serving_since: Some(now.instant),
            read_only: false,
            stats: WritePathStats::default(),
            out: Vec::new(),
        }
    }

    /// The effects queued so far, in the order the driver must carry them out.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// Whether clients are served: an established leader, or a synchronised follower.
    pub fn serving(&self) -> bool {
        self.role.serving()
    }

    /// Whether writes are still waiting to commit.
    pub fn has_pending_writes(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> WritePathStats {
        WritePathStats { outstanding: self.pending.len(), sessions: self.sessions.len(), ..self.stats }
    }

    /// The server this one's clients' writes go to (its leader, or upstream observer).
    fn upstream(&self) -> Option<ServerId> {
        match self.role {
            Role::Following { leader, serving: true, .. } => Some(leader),
            _ => None,
        }
    }

    fn answer_client(&mut self, client: ClientRef, msg: ToClient) {
        self.out.push(Effect::Client { shard: client.shard, msg });
    }

    /// One message from a shard.
    pub fn handle(&mut self, tree: &DataTree, now: Now, message: ToWritePath) {
        match message {
            ToWritePath::Connect { client, req } => self.connect(tree, now, client, req),
            ToWritePath::Write { client, xid, req } => self.submit(tree, now, req, Origin::Request { client, xid }),
            ToWritePath::Sync { client, xid } => self.sync(client, xid),
            ToWritePath::Touch(sessions) => self.touch(now, sessions),
            ToWritePath::KeepAlive(leases) => self.keep_alive(now, leases),
        }
    }

    /// etcd leases kept alive by clients here: renewed here, and (a follower's) reported to
    /// the leader with the next tick.
    fn keep_alive(&mut self, now: Now, leases: Vec<i64>) {
        for &id in &leases {
            self.leases.touch(SessionId(id), now.instant);
        }
        if !self.role.is_leading() {
            self.kept_alive.extend(leases);
        }
    }

    /// (Leader.) etcd leases the ensemble reports kept alive.
    fn leases_kept_alive(&mut self, now: Now, leases: Vec<i64>) {
        for id in leases {
            self.leases.touch(SessionId(id), now.instant);
        }
    }

    /// The keyspace was replaced by a snapshot: every lease in it gets its whole TTL.
    pub fn installed_etcd(&mut self, etcd: &KeySpace, now: Now) {
        self.leases = SessionTracker::default();
        for (id, ttl) in etcd.leases() {
            self.leases.track_for(SessionId(id), lease_ttl(ttl), now.instant);
        }
    }

    /// A connection asks for a session: refused while not serving or when the client has
    /// seen a newer state than this server's; a resumed session is answered at once, a new
    /// one once its creation commits.
    fn connect(&mut self, tree: &DataTree, now: Now, client: ClientRef, req: SessionRequest) {
        if self.read_only {
            self.connect_read_only(tree, client, req);
            return;
        }
        if !self.serving() {
            // As ZooKeeper: a server without a leader closes new connections; the client
            // tries the next server.
            self.answer_client(client, ToClient::Close { conn: client.conn });
            return;
        }
        let (min, max) = self.config.session_timeout_ms;
        let timeout_ms = req.timeout_ms.clamp(min, max);
        if req.last_zxid_seen > tree.last_zxid() {
            // The client saw a newer state than ours: it must go to another server.
            tracing::warn!(client_zxid = %req.last_zxid_seen, ours = %tree.last_zxid(), "refusing a client that is ahead of this server");
            self.answer_client(client, ToClient::Close { conn: client.conn });
            return;
        }
        let session = req.session_id;
        if session == SessionId::NONE {
            let session_id = self.sessions.next_id();
            let req = WriteRequest { session_id, cxid: 0, auth: Vec::new(), op: WriteOp::CreateSession { timeout_ms } };
            self.submit(tree, now, req, Origin::Connect { client, timeout_ms });
            return;
        }
        if req.password != password(session) {
            self.answer_client(client, ToClient::SessionExpired { conn: client.conn });
            return;
        }
        // Whether the session lives is the ensemble's answer, not this server's: a server
        // cut off with a deposed leader (until its sync limit passes) or behind the
        // session's creation would answer from stale state — resume a session the others
        // already expired (its ephemerals gone, a lock lost without its holder knowing), or
        // expire one that lives. ZooKeeper revalidates at the leader; here the sync does it
        // (a quorum confirms the leader; this server then has applied every close and
        // create committed before).
        let id = self.next_sync;
        self.next_sync += 1;
        self.syncs.insert(id, PendingSync::Resume { client, session, timeout_ms });
        self.out.push(Effect::Sync { id });
    }

    /// Read-only mode (ZooKeeper's `ReadOnlyZooKeeperServer`): a client that asked for a
    /// read-only session gets one, local to this server (nothing is logged: there is no quorum
    /// to log it) — a new one, or the session it resumes if this server's tree has it and the
    /// password matches (as ZooKeeper's read-only server revalidates against its database).
    /// One that did not ask, resumes a session this server does not know, or has seen a newer
    /// state than this server's, is closed and tries another server.
    fn connect_read_only(&mut self, tree: &DataTree, client: ClientRef, req: SessionRequest) {
        let resume = req.session_id != SessionId::NONE;
        let known =
            !resume || (tree.sessions().contains_key(&req.session_id) && req.password == password(req.session_id));
        if !req.read_only || !known || req.last_zxid_seen > tree.last_zxid() {
            tracing::info!(
                read_only = req.read_only,
                resume,
                client_zxid = %req.last_zxid_seen,
                ours = %tree.last_zxid(),
                "read-only mode: refusing a client (it did not ask for read-only, resumes a session unknown here, or saw a newer state)"
            );
            self.answer_client(client, ToClient::Close { conn: client.conn });
            return;
        }
        let (min, max) = self.config.session_timeout_ms;
        let timeout_ms = req.timeout_ms.clamp(min, max);
        let session = if resume { req.session_id } else { self.sessions.next_id() };
        let password = password(session);
        self.answer_client(
            client,
            ToClient::Connected { conn: client.conn, session, timeout_ms, password, read_only: true },
        );
    }

    /// Enters read-only mode once this server has gone without serving for long enough.
    fn maybe_enter_read_only(&mut self, now: Now) {
        let (Some(after), Some(since)) = (self.config.read_only_after, self.not_serving_since) else { return };
        if !self.read_only && now.instant.duration_since(since) >= after {
            tracing::warn!("read-only mode: no quorum for {after:?}; serving read-only clients");
            self.read_only = true;
            self.out.push(Effect::ReadOnly(true));
        }
    }

    /// The sync for a resume is done: the session lives if this server's tree, now up to
    /// date with the ensemble, still has it.
    fn resume(&mut self, tree: &DataTree, now: Now, client: ClientRef, session: SessionId, timeout_ms: i32) {
        if !self.serving() {
            self.answer_client(client, ToClient::Close { conn: client.conn });
            return;
        }
        // The tracker drops a session the leader is expiring before its close commits.
        if !tree.sessions().contains_key(&session) || !self.sessions.contains(session) {
            self.answer_client(client, ToClient::SessionExpired { conn: client.conn });
            return;
        }
        self.sessions.track(session, timeout_ms, now.instant);
        if let Some(old) = self.owners.insert(session, client) {
            if old != client {
                self.answer_client(old, ToClient::Close { conn: old.conn });
            }
        }
        let password = password(session);
        self.answer_client(
            client,
            ToClient::Connected { conn: client.conn, session, timeout_ms, password, read_only: false },
        );
    }

    /// Tells whether this server takes reads only for lack of disk (a lone voter whose log
    /// has no room for its next segment; see `ReplicaHandle::read_only_for_space`).
    pub fn set_out_of_space(&mut self, full: bool) {
        if self.out_of_space != full {
            tracing::warn!(
                full,
                "{}",
                if full { "refusing client writes: the disk is full" } else { "taking client writes again" }
            );
        }
        self.out_of_space = full;
    }

    /// The client waiting for the entry of `key`, which has committed: its commit latency is
    /// noted.
    fn committed_for(&mut self, key: &(SessionId, i32), now: Now) -> Option<Origin> {
        let (origin, since) = self.pending.remove(key)?;
        let us = now.instant.saturating_duration_since(since).as_micros();
        self.stats.commit_us.record(&baton_engine::stats::DURATION_BOUNDS_US, u64::try_from(us).unwrap_or(u64::MAX));
        Some(origin)
    }

    /// A client's write: sequenced here when leading, forwarded to the leader otherwise.
    fn submit(&mut self, tree: &DataTree, now: Now, req: WriteRequest, origin: Origin) {
        let key = (req.session_id, req.cxid);
        if self.seq.is_some() {
            match self.prepare(tree, now, &req) {
                Ok(()) => {
                    self.pending.insert(key, (origin, now.instant));
                }
                Err(rejected) => {
                    let zxid = self.refusal_point(tree);
                    self.refused(tree, origin, zxid, rejected);
                }
            }
            return;
        }
        match self.upstream() {
            Some(leader) => {
                self.pending.insert(key, (origin, now.instant));
                let data = Forwarded::Write { origin: self.config.id, req }.encode().into();
                self.out.push(Effect::Forward { to: leader, data });
            }
            None => {
                // Not serving (or a leader still applying its history): the client
                // reconnects and retries.
                let client = origin.client();
                self.answer_client(client, ToClient::Close { conn: client.conn });
            }
        }
    }

    /// Prepares `req` against the tree and the writes in flight and queues its entry for
    /// the next proposal. Leader only.
    fn prepare(&mut self, tree: &DataTree, now: Now, req: &WriteRequest) -> Result<(), Rejected> {
        let Some(seq) = self.seq.as_mut() else { return Err(Rejected::Op(ErrorCode::ConnectionLoss)) };
        let data_change = !matches!(req.op, WriteOp::CreateSession { .. } | WriteOp::CloseSession);
        if self.out_of_space && data_change {
            // What a read-only ZooKeeper answers a write: this server takes reads only until
            // the disk has room again (its own clients' writes and forwarded ones alike).
            return Err(Rejected::Op(ErrorCode::NotReadOnly));
        }
        let entry = seq.prepare(tree, req, now.wall_ms)?;
        if self.first_proposal.is_none() {
            self.first_proposal = Some(entry.zxid);
        }
        self.last_prepared = entry.zxid;
        self.proposals.push(Payload::from(entry.encode().as_slice()));
        Ok(())
    }

    /// The zxid a refusal decided now is decided at: the last write sequenced, applied or not
    /// (the sequencer checks a write against the writes in flight too). Leader only.
    fn refusal_point(&self, tree: &DataTree) -> Zxid {
        tree.last_zxid().max(self.last_prepared)
    }

    /// Answers a write refused before the log, decided at `zxid` (by this server's sequencer
    /// or the leader's) — once this server's tree has applied up to `zxid`. A refusal may rest
    /// on writes still in flight (NodeExists against another session's uncommitted create);
    /// answered at once, its client could then read the tree and not find what it was told
    /// exists. ZooKeeper orders refusals the same way, as error transactions in its log.
    /// Refusals are answered in the order they were decided (a later one waits behind an
    /// earlier one even when it could go at once), so a session's answers keep its order.
    fn refused(&mut self, tree: &DataTree, origin: Origin, zxid: Zxid, rejected: Rejected) {
        if zxid > tree.last_zxid() || !self.deferred.is_empty() {
            self.deferred.push_back(Deferred { zxid, origin, rejected });
            return;
        }
        self.answer_refusal(origin, zxid, rejected);
    }

    /// Answers the deferred refusals the tree has now reached.
    fn release_refusals(&mut self, applied: Zxid) {
        while self.deferred.front().is_some_and(|d| d.zxid <= applied) {
            if let Some(d) = self.deferred.pop_front() {
                self.answer_refusal(d.origin, d.zxid, d.rejected);
            }
        }
    }

    fn answer_refusal(&mut self, origin: Origin, zxid: Zxid, rejected: Rejected) {
        self.stats.rejected += 1;
        match origin {
            Origin::Request { client, xid } => {
                let outcome = WriteOutcome::Refused { zxid, rejected };
                self.answer_client(client, ToClient::Written { conn: client.conn, xid, outcome });
            }
            Origin::Connect { client, .. } => self.answer_client(client, ToClient::Close { conn: client.conn }),
        }
    }

    /// Hands the entries prepared since the last call to the replica, as one proposal.
    pub fn flush(&mut self) {
        if self.proposals.is_empty() {
            return;
        }
        let payloads = std::mem::take(&mut self.proposals);
        if let Some(first) = self.first_proposal.take() {
            self.out.push(Effect::Propose { first, payloads });
        }
    }

    fn sync(&mut self, client: ClientRef, xid: i32) {
        let id = self.next_sync;
        self.next_sync += 1;
        self.syncs.insert(id, PendingSync::Client { client, xid });
        self.out.push(Effect::Sync { id });
    }

    /// Sync `id` is done, at `zxid` (this server's tree has applied up to it), or failed
    /// (`None`: this server lost its leader).
    pub fn synced(&mut self, tree: &DataTree, now: Now, id: u64, zxid: Option<Zxid>) {
        match self.syncs.remove(&id) {
            Some(PendingSync::Client { client, xid }) => {
                self.answer_client(client, ToClient::Synced { conn: client.conn, xid, zxid })
            }
            Some(PendingSync::Resume { client, session, timeout_ms }) => match zxid {
                Some(_) => self.resume(tree, now, client, session, timeout_ms),
                None => self.answer_client(client, ToClient::Close { conn: client.conn }),
            },
            None => {}
        }
    }

    /// Sync `id` failed before reaching the ensemble (no replica to ask).
    pub fn sync_failed(&mut self, id: u64) {
        match self.syncs.remove(&id) {
            Some(PendingSync::Client { client, xid }) => {
                self.answer_client(client, ToClient::Synced { conn: client.conn, xid, zxid: None })
            }
            Some(PendingSync::Resume { client, .. }) => {
                self.answer_client(client, ToClient::Close { conn: client.conn })
            }
            None => {}
        }
    }

    /// Sessions heard from on this server's shards: renewed here, and reported to the
    /// leader unless this server leads.
    fn touch(&mut self, now: Now, sessions: Vec<SessionId>) {
        for &s in &sessions {
            self.sessions.touch(s, now.instant);
        }
        if !self.role.is_leading() {
            self.out.push(Effect::ReportLiveness { sessions });
        }
    }

    /// (Leader.) Sessions the ensemble reports alive.
    pub fn touched(&mut self, now: Now, sessions: Vec<SessionId>) {
        for s in sessions {
            self.sessions.touch(s, now.instant);
        }
    }

    /// Half a tick passed: the leader closes sessions past their deadline and deletes
    /// containers that lost their last child and TTL nodes past their TTL, then proposes.
    pub fn tick(&mut self, tree: &DataTree, now: Now) {
        self.maybe_enter_read_only(now);
        self.expire_sessions(tree, now);
        self.expire_leases(tree, now);
        self.reap(tree, now);
        self.report_kept_alive();
        self.flush();
    }

    /// Revokes etcd leases past their deadline (leader only), through the log, as etcd's
    /// primary lessor does: their keys go on every server in one revision.
    fn expire_leases(&mut self, tree: &DataTree, now: Now) {
        if self.seq.is_none() {
            return;
        }
        for lease in self.leases.expired(now.instant) {
            self.leases.remove(lease);
            tracing::info!(lease = lease.as_i64(), "etcd lease expired");
            let op = WriteOp::Etcd(EtcdTxn::LeaseRevoke { id: lease.as_i64() });
            let req = WriteRequest { session_id: SessionId::NONE, cxid: 0, auth: Vec::new(), op };
            let _ = self.prepare(tree, now, &req);
        }
    }

    /// A follower's leases kept alive since the last tick, to its leader.
    fn report_kept_alive(&mut self) {
        if self.kept_alive.is_empty() {
            return;
        }
        let mut leases = std::mem::take(&mut self.kept_alive);
        leases.sort_unstable();
        leases.dedup();
        if let Some(to) = self.upstream() {
            self.out.push(Effect::Forward { to, data: Forwarded::KeepAlive { leases }.encode().into() });
        }
    }

    /// Submits closes for sessions past their deadline (leader only), through the log, so
    /// their ephemerals vanish on every server at once.
    fn expire_sessions(&mut self, tree: &DataTree, now: Now) {
        if self.seq.is_none() {
            return;
        }
        for session in self.sessions.expired(now.instant) {
            self.sessions.remove(session);
            tracing::info!(%session, "session expired");
            let req = WriteRequest { session_id: session, cxid: 0, auth: Vec::new(), op: WriteOp::CloseSession };
            let _ = self.prepare(tree, now, &req);
        }
    }

    /// Deletes containers that lost their last child and TTL nodes past their TTL (ZooKeeper's
    /// ContainerManager), as server-issued deletes through the sequencer: a container that
    /// gained a child in the meantime fails the delete with NotEmpty and stays. Leader only.
    fn reap(&mut self, tree: &DataTree, now: Now) {
        if self.seq.is_none() {
            return;
        }
        for path in tree.reapable(now.wall_ms) {
            // The reaper is the server itself: the super identity, not bound by the node's ACL.
            let auth = vec![AuthId::new("super", "")];
            let op = WriteOp::Delete { path, version: -1 };
            let _ = self.prepare(tree, now, &WriteRequest { session_id: SessionId::NONE, cxid: 0, auth, op });
        }
    }

    /// Applies committed entries to the tree; answers the clients waiting for them (in the
    /// batch every shard gets), then the refusals the tree has now reached.
    pub fn apply(&mut self, tree: &mut DataTree, etcd: &mut KeySpace, now: Now, entries: &[LogEntry]) {
        let mut batch = Vec::with_capacity(entries.len());
        let mut answers: Vec<Vec<(usize, ToClient)>> = (0..self.config.shards).map(|_| Vec::new()).collect();
        for entry in entries {
            match self.apply_one(tree, etcd, now, entry, batch.len(), &mut answers) {
                Ok(changes) => batch.push(changes),
                Err(why) => {
                    // Entries are checksummed on the wire and on disk and were encoded by a
                    // leader: one that does not decode means a bug or a bad build.
                    self.out.push(Effect::Fatal { why });
                    break;
                }
            }
        }
        // Once per batch, not per entry: forgetting the applied in-flight records walks
        // them all, and nothing is prepared while a batch applies.
        if let Some(seq) = self.seq.as_mut() {
            seq.committed(tree.last_zxid());
        }
        // A compaction's unreachable history goes a bounded part per batch.
        etcd.prune_step(PRUNE_PER_BATCH);
        // A repacked key map is caught up a bounded part per batch too.
        etcd.repack_step(REPACK_PER_BATCH);
        self.out.push(Effect::Publish { batch: Arc::new(batch), answers });
        // After the batch: a refusal's answer follows the writes it rests on.
        self.release_refusals(tree.last_zxid());
        self.maybe_start_sequencer(tree, now);
    }

    /// Replays entries of a lone server's own log at start: nothing waits for them and no
    /// watch exists, so nothing is published.
    pub fn replay(&mut self, tree: &mut DataTree, etcd: &mut KeySpace, now: Now, entries: &[LogEntry]) {
        let mut no_answers = Vec::new();
        for entry in entries {
            if let Err(why) = self.apply_one(tree, etcd, now, entry, 0, &mut no_answers) {
                self.out.push(Effect::Fatal { why });
                return;
            }
        }
        if let Some(seq) = self.seq.as_mut() {
            seq.committed(tree.last_zxid());
        }
    }

    /// Applies one committed entry; returns what it changed.
    fn apply_one(
        &mut self,
        tree: &mut DataTree,
        etcd: &mut KeySpace,
        now: Now,
        entry: &LogEntry,
        index: usize,
        answers: &mut [Vec<(usize, ToClient)>],
    ) -> Result<CommittedChanges, String> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&entry.payload);
        let txn = Transaction::access(&self.scratch).map_err(|e| format!("entry {}: {e}", entry.zxid))?;
        let closes_session = matches!(txn.txn, ArchivedTxn::CloseSession);
        let opens_session = match &txn.txn {
            ArchivedTxn::CreateSession { timeout_ms } => Some(timeout_ms.to_native()),
            _ => None,
        };
        let key = (txn.session_id.to_native(), txn.cxid.to_native());
        let applied = tree.apply(txn);
        self.stats.committed += 1;
        if let ArchivedTxn::Etcd(write) = &txn.txn {
            let done = etcd.apply_archived(write).map_err(|e| format!("etcd entry {}: {e}", entry.zxid))?;
            match &done.result {
                Ok(EtcdResponse::LeaseGrant { id, ttl, .. }) => {
                    self.leases.track_for(SessionId(*id), lease_ttl(*ttl), now.instant)
                }
                Ok(EtcdResponse::LeaseRevoke { .. }) => {
                    if let ArchivedEtcdTxn::LeaseRevoke { id } = write {
                        self.leases.remove(SessionId(id.to_native()));
                    }
                }
                _ => {}
            }
            if let Some(Origin::Request { client, xid }) = self.committed_for(&key, now) {
                let outcome = WriteOutcome::Etcd { zxid: applied.zxid, result: done.result };
                if let Some(list) = answers.get_mut(client.shard) {
                    list.push((index, ToClient::Written { conn: client.conn, xid, outcome }));
                }
            }
            return Ok(CommittedChanges { zxid: applied.zxid, changes: applied.changes, etcd_events: done.events });
        }
        let mut answer = |client: ClientRef, msg: ToClient| {
            if let Some(list) = answers.get_mut(client.shard) {
                list.push((index, msg));
            }
        };
        let session = applied.session_id;
        if let Some(timeout_ms) = opens_session {
            // Every server tracks every session (a client may resume it anywhere); only the
            // leader expires them.
            self.sessions.track(session, timeout_ms, now.instant);
        }
        match self.committed_for(&key, now) {
            None => {}
            Some(Origin::Request { client, xid }) => {
                let outcome = WriteOutcome::Applied { zxid: applied.zxid, results: applied.results };
                answer(client, ToClient::Written { conn: client.conn, xid, outcome });
            }
            Some(Origin::Connect { client, timeout_ms }) => {
                self.owners.insert(session, client);
                answer(
                    client,
                    ToClient::Connected {
                        conn: client.conn,
                        session,
                        timeout_ms,
                        password: password(session),
                        read_only: false,
                    },
                );
            }
        }
        if closes_session {
            self.sessions.remove(session);
            if let Some(owner) = self.owners.remove(&session) {
                answer(owner, ToClient::Close { conn: owner.conn });
            }
        }
        Ok(CommittedChanges { zxid: applied.zxid, changes: applied.changes, etcd_events: Vec::new() })
    }

    /// The tree was replaced by a snapshot: every session in it gets a full timeout, and the
    /// refusals it has reached are answered.
    pub fn installed(&mut self, tree: &DataTree, now: Now) {
        self.sessions = SessionTracker::new(self.config.id as u8, now.wall_ms.max(0) as u64);
        for (&id, info) in tree.sessions() {
            self.sessions.track(id, info.timeout_ms, now.instant);
        }
        self.release_refusals(tree.last_zxid());
    }

    /// The replica's role changed. A server that stops serving — or moves to another
    /// leadership — drops everything waiting on the ensemble and closes every client
    /// connection (they reconnect and retry), as ZooKeeper does. An established leader
    /// starts sequencing once its tree holds its whole history (`last_logged`).
    pub fn role_changed(&mut self, tree: &DataTree, now: Now, role: Role, last_logged: Zxid) {
        let was_serving = self.serving();
        let before = self.role;
        self.role = role;
        if was_serving && !(self.serving() && same_leadership(before, role)) {
            tracing::warn!(?role, "no longer serving: closing client connections");
            self.stop_serving();
        }
        // Read-only mode is for a server looking for a quorum, as ZooKeeper runs its
        // read-only server while LOOKING only: a follower synchronising with a leader (however
        // long a large SNAP takes) is not cut off.
        if role == Role::Looking {
            if self.not_serving_since.is_none() {
                self.not_serving_since = Some(now.instant);
            }
        } else {
            self.not_serving_since = None;
            if self.read_only {
                // ZooKeeper shuts its read-only server down as soon as it leaves LOOKING:
                // read-only clients reconnect, and get read-write sessions once it serves.
                tracing::info!(?role, "leaving read-only mode: closing read-only clients");
                self.read_only = false;
                self.out.push(Effect::ReadOnly(false));
                self.out.push(Effect::DisconnectAll);
            }
        }
        if let Role::Leading { established: true, .. } = role {
            if self.leading_from.is_none() {
                self.leading_from = Some(last_logged);
                // A new leader gives every lease its whole TTL (etcd's Promote): it has not
                // heard the keep-alives that went to the old one.
                self.leases.touch_all(now.instant);
            }
            self.maybe_start_sequencer(tree, now);
        } else {
            self.seq = None;
            self.leading_from = None;
        }
        let shown = (!self.serving(), self.serving() && role.is_leading(), role.epoch());
        let announce = shown != self.shown;
        self.shown = shown;
        self.out.push(Effect::RoleReported { role, announce });
    }

    /// Starts sequencing once this established leader's tree holds its whole history.
    fn maybe_start_sequencer(&mut self, tree: &DataTree, now: Now) {
        let (Some(from), Role::Leading { epoch, established: true }) = (self.leading_from, self.role) else { return };
        if self.seq.is_some() || tree.last_zxid() < from {
            return;
        }
        self.seq = Some(Sequencer::new(self.config.sequencer, epoch, from));
        // As ZooKeeper's new leader: every session gets a full timeout to be heard from.
        for (&id, info) in tree.sessions() {
            self.sessions.track(id, info.timeout_ms, now.instant);
        }
        tracing::info!(epoch, last = %from, "leading: accepting writes");
    }

    /// Drops everything waiting on the ensemble and closes every client connection.
    fn stop_serving(&mut self) {
        self.pending.clear();
        self.deferred.clear();
        self.last_prepared = Zxid::ZERO;
        self.syncs.clear();
        self.proposals.clear();
        self.first_proposal = None;
        self.seq = None;
        self.leading_from = None;
        self.owners.clear();
        self.out.push(Effect::DisconnectAll);
    }

    /// A peer's write path sent `data`: a write to sequence (leader) or pass on, or the
    /// leader's refusal of a write this server forwarded.
    pub fn message(&mut self, tree: &DataTree, now: Now, from: ServerId, data: &[u8]) {
        match Forwarded::decode(data) {
            Ok(Forwarded::Write { origin, req }) => {
                self.forwarded_write(tree, now, origin, req);
                // Proposed at once: the replica takes it on its next step. (A burst of
                // forwarded writes arriving together still forms one batch in the WAL.)
                self.flush();
            }
            Ok(Forwarded::Refused { session, cxid, zxid, code, multi }) => {
                if let Some((origin, _)) = self.pending.remove(&(session, cxid)) {
                    self.refused(tree, origin, zxid, Forwarded::rejected(code, multi));
                }
            }
            Ok(Forwarded::KeepAlive { leases }) => {
                if self.role.is_leading() {
                    self.leases_kept_alive(now, leases);
                } else if let Some(up) = self.upstream() {
                    // An observer passes its downstream's keep-alives on towards the leader.
                    self.out.push(Effect::Forward { to: up, data: Forwarded::KeepAlive { leases }.encode().into() });
                }
            }
            Err(e) => tracing::warn!(peer = from, error = %e, "dropping a malformed forwarded message"),
        }
    }

    /// A forwarded write reached this server: sequence it (leader) or pass it on.
    fn forwarded_write(&mut self, tree: &DataTree, now: Now, origin: ServerId, req: WriteRequest) {
        if self.seq.is_some() {
            let (session, cxid) = (req.session_id, req.cxid);
            if let Err(rejected) = self.prepare(tree, now, &req) {
                let zxid = self.refusal_point(tree);
                self.stats.rejected += 1;
                let data = Forwarded::refusal(session, cxid, zxid, rejected).encode().into();
                self.out.push(Effect::Forward { to: origin, data });
            }
            return;
        }
        // An observer relays its downstream observers' writes towards the leader; without
        // one the write is dropped and its origin, which loses its leader too, closes the
        // client's connection.
        if let Some(up) = self.upstream() {
            self.out.push(Effect::Forward { to: up, data: Forwarded::Write { origin, req }.encode().into() });
        }
    }
}

/// Whether `after` continues the leadership of `before` (the same leader and epoch, or the
/// epoch just learnt): then a role change keeps serving.
fn same_leadership(before: Role, after: Role) -> bool {
    match (before, after) {
        (Role::Following { leader: a, epoch: e, .. }, Role::Following { leader: b, epoch: f, .. }) => {
            a == b && (e == f || e == 0)
        }
        (Role::Leading { epoch: e, .. }, Role::Leading { epoch: f, .. }) => e == f || e == 0,
        _ => false,
    }
}
