//! The state every shard reaches: settings, the tree, counters, the queues and the stop
//! events.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use baton_engine::mvcc::KeySpace;
use baton_engine::replica::ReplicaStats;
use baton_engine::stats::{Histogram, DURATION_BOUNDS_US};
use baton_engine::tree::DataTree;
use baton_engine::wal::WalStats;
use baton_engine::zab::{Role, ServerId};
use crossbeam::utils::CachePadded;

use super::inbox::Outbox;
use super::messages::{ConnId, ShardId, ToShard, ToWritePath};
use super::stop::Event;
use crate::config::ServerConfig;

/// Counters of one shard, written by it alone.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Requests received.
    pub received: AtomicU64,
    /// How long its requests took, received to answered (every reply, pings included, as
    /// ZooKeeper's `srvr` counts them).
    pub latency: Latency,
    /// Open connections.
    pub connections: AtomicUsize,
    /// Watches held.
    pub watches: AtomicUsize,
    /// Paths watched.
    pub watched_paths: AtomicUsize,
    /// Connections holding a watch.
    pub watching_conns: AtomicUsize,
    /// ZooKeeper requests received, by operation ([`ZK_OPERATIONS`]).
    pub requests_by_op: [AtomicU64; ZK_OPERATIONS.len()],
    /// Replies to ZooKeeper requests, by result ([`ZK_RESULTS`]).
    pub replies_by_result: [AtomicU64; ZK_RESULTS.len()],
}

/// The results ZooKeeper replies carry (`KeeperException.Code`: 0, then the error codes);
/// any other counts as the last, `i32::MIN`.
pub const ZK_RESULTS: [i32; 30] = [
    0,
    -1,
    -2,
    -3,
    -4,
    -5,
    -6,
    -7,
    -8,
    -12,
    -100,
    -101,
    -102,
    -103,
    -108,
    -110,
    -111,
    -112,
    -113,
    -114,
    -115,
    -118,
    -119,
    -120,
    -121,
    -122,
    -123,
    -125,
    -127,
    i32::MIN,
];

/// etcd's RPCs as etcd's `grpc_server_handled_total` names them: (service, method, type);
/// others (Auth's, until it is served) count as the last.
pub const ETCD_RPCS: [(&str, &str, &str); 31] = [
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
    ("other", "other", "unary"),
];

/// gRPC's status codes by number, as etcd's metrics spell them.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Counters of [`GrpcHandled`] per thread slot: a shard counts into its own, so that shards
/// answering at once do not contend for one cache line.
const GRPC_SLOTS: usize = 8;

/// etcd requests answered, by RPC ([`ETCD_RPCS`]) and status code ([`GRPC_CODES`]): a
/// stream counts when it starts.
#[derive(Debug, Default)]
pub struct GrpcHandled([CachePadded<[[AtomicU64; GRPC_CODES.len()]; ETCD_RPCS.len()]>; GRPC_SLOTS]);

thread_local! {
    /// This thread's slot of every [`GrpcHandled`], given out in turn.
    static GRPC_SLOT: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % GRPC_SLOTS
    };
}

impl GrpcHandled {
    /// Counts a request for `path` (`/service/method`) answered with `code`.
    pub fn count(&self, path: &str, code: i32) {
        let rpc = path.strip_prefix('/').and_then(|p| p.split_once('/'));
        let i = ETCD_RPCS
            .iter()
            .position(|(service, method, _)| rpc == Some((service, method)))
            .unwrap_or(ETCD_RPCS.len() - 1);
        let code = usize::try_from(code).ok().filter(|&c| c < GRPC_CODES.len()).unwrap_or(2);
        let slot = GRPC_SLOT.with(|s| *s);
        if let Some(counter) = self.0.get(slot).and_then(|s| s.get(i)).and_then(|codes| codes.get(code)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (index into [`ETCD_RPCS`], index into [`GRPC_CODES`], count) for every count above 0.
    pub fn counted(&self) -> impl Iterator<Item = (usize, usize, u64)> + '_ {
        (0..ETCD_RPCS.len()).flat_map(move |rpc| {
            (0..GRPC_CODES.len()).filter_map(move |code| {
                let n: u64 = self.0.iter().map(|s| s[rpc][code].load(Ordering::Relaxed)).sum();
                (n > 0).then_some((rpc, code, n))
            })
        })
    }
}

/// A result's name as ZooKeeper's `KeeperException.Code` spells it (`OK`, `NONODE`, ...).
pub fn zk_result_name(code: i32) -> String {
    match code {
        0 => "OK".into(),
        i32::MIN => "OTHER".into(),
        c => baton_engine::tree::ErrorCode::from_code(c)
            .map_or_else(|| format!("CODE{c}"), |e| format!("{e:?}").to_uppercase()),
    }
}

/// ZooKeeper's operations (`ZooDefs.OpCode`) as metrics name them: (op code, name). Codes not
/// listed count as `unknown`, the last.
pub const ZK_OPERATIONS: [(i32, &str); 31] = [
    (1, "create"),
    (2, "delete"),
    (3, "exists"),
    (4, "getData"),
    (5, "setData"),
    (6, "getACL"),
    (7, "setACL"),
    (8, "getChildren"),
    (9, "sync"),
    (11, "ping"),
    (12, "getChildren2"),
    (13, "check"),
    (14, "multi"),
    (15, "create2"),
    (16, "reconfig"),
    (17, "checkWatches"),
    (18, "removeWatches"),
    (19, "createContainer"),
    (20, "deleteContainer"),
    (21, "createTTL"),
    (22, "multiRead"),
    (100, "auth"),
    (101, "setWatches"),
    (102, "sasl"),
    (103, "getEphemerals"),
    (104, "getAllChildrenNumber"),
    (105, "setWatches2"),
    (106, "addWatch"),
    (107, "whoAmI"),
    (-11, "closeSession"),
    (i32::MIN, "unknown"),
];

impl ShardStats {
    /// Counts a reply to a ZooKeeper request that carries `err`.
    pub fn count_result(&self, err: i32) {
        let i = ZK_RESULTS.iter().position(|&code| code == err).unwrap_or(ZK_RESULTS.len() - 1);
        if let Some(counter) = self.replies_by_result.get(i) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request of ZooKeeper operation `op_code`.
    pub fn count_op(&self, op_code: i32) {
        let i = ZK_OPERATIONS.iter().position(|&(code, _)| code == op_code).unwrap_or(ZK_OPERATIONS.len() - 1);
        if let Some(counter) = self.requests_by_op.get(i) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Request latencies: min, max, sum and count, in microseconds, and how many fell in each
/// bucket of the engine's duration bounds (`baton_engine::stats::DURATION_BOUNDS_US`).
#[derive(Debug)]
pub struct Latency {
    min_us: AtomicU64,
    max_us: AtomicU64,
    total_us: AtomicU64,
    count: AtomicU64,
    buckets: [AtomicU64; DURATION_BOUNDS_US.len() + 1],
    /// `total_us` and `count` at the last `stat_reset` (the average `srvr` shows starts from
    /// there; the histogram, a Prometheus one, never resets).
    reset_at: (AtomicU64, AtomicU64),
}

impl Default for Latency {
    fn default() -> Latency {
        Latency {
            min_us: AtomicU64::new(u64::MAX),
            max_us: AtomicU64::new(0),
            total_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
            buckets: Default::default(),
            reset_at: (AtomicU64::new(0), AtomicU64::new(0)),
        }
    }
}

impl Latency {
    /// Notes one request's latency.
    pub fn record(&self, took: std::time::Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.min_us.fetch_min(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let bucket = DURATION_BOUNDS_US.iter().position(|&bound| us <= bound).unwrap_or(DURATION_BOUNDS_US.len());
        if let Some(b) = self.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Several's requests per bucket, with their sum, as the engine's histograms are kept.
    pub fn histogram<'a>(all: impl Iterator<Item = &'a Latency>) -> Histogram {
        let mut out = Histogram::default();
        for l in all {
            for (o, b) in out.counts.iter_mut().zip(&l.buckets) {
                *o += b.load(Ordering::Relaxed);
            }
            out.sum += l.total_us.load(Ordering::Relaxed);
        }
        out
    }

    /// (min µs, max µs, total µs, count) of several since their last [`Latency::reset`]; min
    /// is 0 when nothing was recorded.
    pub fn sum<'a>(all: impl Iterator<Item = &'a Latency>) -> (u64, u64, u64, u64) {
        let (mut min, mut max, mut total, mut count) = (u64::MAX, 0, 0, 0);
        for l in all {
            min = min.min(l.min_us.load(Ordering::Relaxed));
            max = max.max(l.max_us.load(Ordering::Relaxed));
            total += l.total_us.load(Ordering::Relaxed).saturating_sub(l.reset_at.0.load(Ordering::Relaxed));
            count += l.count.load(Ordering::Relaxed).saturating_sub(l.reset_at.1.load(Ordering::Relaxed));
        }
        (if count == 0 { 0 } else { min }, max, total, count)
    }

    /// Starts min, max and the average over (ZooKeeper's `stat_reset`).
    pub fn reset(&self) {
        self.min_us.store(u64::MAX, Ordering::Relaxed);
        self.max_us.store(0, Ordering::Relaxed);
        self.reset_at.0.store(self.total_us.load(Ordering::Relaxed), Ordering::Relaxed);
        self.reset_at.1.store(self.count.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address already has this many (`max_client_cnxns`).
    PerIp(usize),
    /// The server already has this many (`max_connections`).
    Total(usize),
}

/// Counters of the write path, published by its driver.
#[derive(Debug, Default)]
pub struct WriteStats {
    /// Entries committed.
    pub committed: AtomicU64,
    /// Writes refused before the log.
    pub rejected: AtomicU64,
    /// Writes waiting to commit.
    pub outstanding: AtomicUsize,
    /// Live sessions.
    pub sessions: AtomicUsize,
    /// Entries durable in the WAL.
    pub wal_entries_durable: AtomicU64,
    /// WAL flushes.
    pub wal_batches: AtomicU64,
    /// Times this server began looking for a leader (ZooKeeper's `looking_count`).
    pub looking_count: AtomicU64,
    /// The replica's log, snapshots and learners, as last published (a few times a second).
    pub replica: Mutex<ReplicaMetrics>,
    /// Client writes' commit latency, in microseconds (see `WritePathStats::commit_us`), as
    /// last published.
    pub commit_us: Mutex<baton_engine::stats::Histogram>,
}

/// What the replica reports for metrics.
#[derive(Debug, Clone, Default)]
pub struct ReplicaMetrics {
    /// The WAL's counters: fdatasync latency, entries per batch, bytes written.
    pub wal: WalStats,
    /// Snapshot and purge durations.
    pub replica: ReplicaStats,
    /// While leading: each learner's lag.
    pub learners: Vec<LearnerLag>,
}

/// How far one learner is behind its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnerLag {
    /// Its server id.
    pub id: ServerId,
    /// An observer (else a follower).
    pub observer: bool,
    /// Entries of this epoch it lacks: not acknowledged by a follower, not sent to an
    /// observer.
    pub entries_behind: u64,
    /// Bytes queued for it and not yet written to its connection.
    pub bytes_queued: usize,
}

/// The server's role, for its operators (who see a server that does not serve — electing,
/// or not yet synchronised with or established as the leader — as looking).
#[derive(Debug)]
pub struct RoleStatus(Mutex<Role>);

impl Default for RoleStatus {
    fn default() -> Self {
        RoleStatus(Mutex::new(Role::Looking))
    }
}

impl RoleStatus {
    /// The role.
    pub fn get(&self) -> Role {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the role.
    pub fn set(&self, role: Role) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = role;
    }
}

/// ZooKeeper's name for what a server in `role` does (`srvr`'s `Mode:`, `mntr`'s
/// `zk_server_state`): looking, standalone, leader, follower or observer.
pub fn mode_name(role: Role, standalone: bool, observer: bool) -> &'static str {
    match role {
        _ if !role.serving() => "looking",
        Role::Leading { .. } if standalone => "standalone",
        Role::Leading { .. } => "leader",
        Role::Following { .. } if observer => "observer",
        Role::Following { .. } => "follower",
        Role::Looking => "looking",
    }
}

/// A connection as the four-letter words list it.
#[derive(Debug)]
pub struct ConnInfo {
    /// Client address.
    pub peer: SocketAddr,
    /// Bound session (0 until connected).
    pub session_id: AtomicI64,
    /// Negotiated timeout.
    pub timeout_ms: AtomicI32,
    /// Requests received.
    pub received: AtomicU64,
    /// Frames sent.
    pub sent: AtomicU64,
    /// `received` and `sent` at the last `connection_stat_reset`.
    pub reset_at: (AtomicU64, AtomicU64),
    /// On the secure client port (ZooKeeper lists these as `secure_connections`).
    pub secure: AtomicBool,
}

impl ConnInfo {
    /// A connection from `peer`, before its session.
    pub fn new(peer: SocketAddr) -> ConnInfo {
        ConnInfo {
            peer,
            session_id: 0.into(),
            timeout_ms: 0.into(),
            received: 0.into(),
            sent: 0.into(),
            reset_at: (0.into(), 0.into()),
            secure: AtomicBool::new(false),
        }
    }

    /// (requests received, frames sent) since the last [`ConnInfo::reset`], as `cons` shows.
    pub fn packets(&self) -> (u64, u64) {
        let since =
            |n: &AtomicU64, at: &AtomicU64| n.load(Ordering::Relaxed).saturating_sub(at.load(Ordering::Relaxed));
        (since(&self.received, &self.reset_at.0), since(&self.sent, &self.reset_at.1))
    }

    /// ZooKeeper's `connection_stat_reset` for this connection (the server's totals stay).
    pub fn reset(&self) {
        self.reset_at.0.store(self.received.load(Ordering::Relaxed), Ordering::Relaxed);
        self.reset_at.1.store(self.sent.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// State every shard reaches.
pub struct Shared {
    /// Settings.
    pub config: ServerConfig,
    tree: RwLock<DataTree>,
    /// etcd's keyspace, the second state machine on the same log. Locked after `tree` when
    /// both are (the write path applying a batch).
    etcd: RwLock<KeySpace>,
    /// When the server started.
    pub started: Instant,
    /// Per-shard counters.
    pub shard_stats: Vec<CachePadded<ShardStats>>,
    /// Write path counters.
    pub write_stats: WriteStats,
    /// The role operators see.
    pub role: RoleStatus,
    /// In read-only mode (no quorum; read-only sessions served).
    pub read_only: AtomicBool,
    /// etcd requests answered, by RPC and status.
    pub etcd_handled: GrpcHandled,
    /// ZooKeeper's trace mask (`get_trace_mask`, `set_trace_mask`): while bit 2 (ZooTrace's
    /// CLIENT_REQUEST_TRACE_MASK) is set, requests are logged at trace level.
    pub trace_mask: std::sync::atomic::AtomicI64,
    /// Requests received and frames sent, server-wide, at the last `stat_reset`.
    stats_reset_at: (AtomicU64, AtomicU64),
    /// Open connections, for `cons` and `stat`.
    pub conns: Mutex<BTreeMap<(ShardId, ConnId), Arc<ConnInfo>>>,
    /// Connections open across all shards (for `max_connections`).
    pub open_connections: AtomicUsize,
    /// Connections open per client address (for `max_client_cnxns`).
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Queue into the write path.
    pub to_write_path: Outbox<ToWritePath>,
    /// Queue into each shard.
    pub to_shard: Vec<Outbox<ToShard>>,
    /// Queue into the etcd front, when it runs: it takes answers and committed batches as a
    /// shard does, as the one after the last shard ([`Shared::etcd_slot`]).
    pub etcd_front: Option<Outbox<ToShard>>,
    /// Set when the server stops (a signal or a fatal error): every shard winds down.
    pub stopping: Event,
    /// Set once the write path has let its in-flight writes commit (or given up on them).
    pub write_path_done: Event,
}

impl Shared {
    /// State for `shards` shards with an empty tree.
    pub fn new(config: ServerConfig, to_write_path: Outbox<ToWritePath>, to_shard: Vec<Outbox<ToShard>>) -> Shared {
        Shared {
            config,
            tree: RwLock::new(DataTree::new()),
            etcd: RwLock::new(KeySpace::new()),
            started: Instant::now(),
            shard_stats: to_shard.iter().map(|_| CachePadded::new(ShardStats::default())).collect(),
            write_stats: WriteStats::default(),
            role: RoleStatus::default(),
            read_only: AtomicBool::new(false),
            etcd_handled: GrpcHandled::default(),
            // ZooTrace's default: client requests, server packets, sessions, warnings.
            trace_mask: std::sync::atomic::AtomicI64::new(306),
            stats_reset_at: (AtomicU64::new(0), AtomicU64::new(0)),
            conns: Mutex::new(BTreeMap::new()),
            open_connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            to_write_path,
            to_shard,
            etcd_front: None,
            stopping: Event::default(),
            write_path_done: Event::default(),
        }
    }

    /// Read access to the tree. Hold it only briefly and never across an await: the write
    /// path waits for it to apply commits.
    pub fn tree(&self) -> RwLockReadGuard<'_, DataTree> {
        // A poisoned lock means a thread panicked while holding it; the tree itself is only
        // mutated by `apply`, which does not leave it half-changed on a panic it could catch
        // (and a panic stops the whole process anyway).
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Write access (the write path only).
    pub fn tree_mut(&self) -> RwLockWriteGuard<'_, DataTree> {
        self.tree.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of the etcd front among the places answers go (after the shards).
    pub fn etcd_slot(&self) -> ShardId {
        self.to_shard.len()
    }

    /// Where answers for `slot` go: a shard, or the etcd front ([`Shared::etcd_slot`]).
    pub fn answers_to(&self, slot: ShardId) -> Option<&Outbox<ToShard>> {
        self.to_shard.get(slot).or(if slot == self.etcd_slot() { self.etcd_front.as_ref() } else { None })
    }

    /// Read access to etcd's keyspace (as [`Shared::tree`]).
    pub fn etcd(&self) -> RwLockReadGuard<'_, KeySpace> {
        self.etcd.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Write access (the write path only; after `tree_mut` when both are held).
    pub fn etcd_mut(&self) -> RwLockWriteGuard<'_, KeySpace> {
        self.etcd.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more connection from `ip` unless a limit is reached: the address's own
    /// (`max_client_cnxns`, ZooKeeper's maxClientCnxns; 0 is none) or the server's
    /// (`max_connections`).
    pub fn admit_connection(&self, ip: IpAddr) -> Result<(), Refusal> {
        let per_ip_limit = self.config.max_client_cnxns;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = per_ip.get(&ip).copied().unwrap_or(0);
        if per_ip_limit != 0 && from_ip >= per_ip_limit {
            return Err(Refusal::PerIp(per_ip_limit));
        }
        let limit = self.config.max_connections;
        let admitted = self
            .open_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .is_ok();
        if !admitted {
            return Err(Refusal::Total(limit));
        }
        per_ip.insert(ip, from_ip + 1);
        Ok(())
    }

    /// A connection from `ip` counted by [`Shared::admit_connection`] closed.
    pub fn release_connection(&self, ip: IpAddr) {
        self.open_connections.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    /// Total requests received by every shard.
    pub fn received(&self) -> u64 {
        let all: u64 = self.shard_stats.iter().map(|s| s.received.load(Ordering::Relaxed)).sum();
        all.saturating_sub(self.stats_reset_at.0.load(Ordering::Relaxed))
    }

    /// Frames sent to the clients connected now, since the last `stat_reset`.
    pub fn sent(&self) -> u64 {
        self.sent_ever().saturating_sub(self.stats_reset_at.1.load(Ordering::Relaxed))
    }

    fn sent_ever(&self) -> u64 {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).values().map(|c| c.sent.load(Ordering::Relaxed)).sum()
    }

    /// ZooKeeper's `stat_reset`: latency and packet counts start over (Prometheus's
    /// histograms and counters do not).
    pub fn reset_server_stats(&self) {
        for s in &self.shard_stats {
            s.latency.reset();
        }
        let received: u64 = self.shard_stats.iter().map(|s| s.received.load(Ordering::Relaxed)).sum();
        self.stats_reset_at.0.store(received, Ordering::Relaxed);
        self.stats_reset_at.1.store(self.sent_ever(), Ordering::Relaxed);
    }

    /// Whether this server is alone in its ensemble.
    pub fn standalone(&self) -> bool {
        self.config.peers.is_empty()
    }

    /// ZooKeeper's name for what this server does now.
    pub fn mode(&self) -> &'static str {
        if self.read_only.load(Ordering::Relaxed) {
            return "read-only";
        }
        mode_name(self.role.get(), self.standalone(), self.config.is_observer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_zookeepers_names_and_looking_until_serving() {
        let leading = Role::Leading { epoch: 2, established: true };
        assert_eq!(mode_name(leading, true, false), "standalone");
        assert_eq!(mode_name(leading, false, false), "leader");
        assert_eq!(mode_name(Role::Leading { epoch: 2, established: false }, false, false), "looking");
        let following = Role::Following { leader: 1, epoch: 2, serving: true };
        assert_eq!(mode_name(following, false, false), "follower");
        assert_eq!(mode_name(following, false, true), "observer");
        assert_eq!(mode_name(Role::Following { leader: 1, epoch: 2, serving: false }, false, false), "looking");
        assert_eq!(mode_name(Role::Looking, true, false), "looking");
    }
}
