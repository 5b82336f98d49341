//! Plumbing only, no decisions: the queues between threads and tasks, the messages they
//! carry between the shards and the write path, the state every shard reaches, the stop
//! events and socket helpers. Everything above it (`zk`, `admin`, `write`, `peer`,
//! `startup`) depends on it; it depends on nothing of the server but `config`.
//!
//! ```text
//!   shard i: accept ─▶ connection tasks ─reads─▶ shared tree (read lock)
//!                          │ ToWritePath: connects, writes, syncs, liveness
//!                          ▼
//!   shard 0: write path ─▶ replica (Zab, WAL) ─commit─▶ apply under the write lock
//!                                                      └─▶ ToShard::Committed to every shard, in zxid order
//! ```
//!
//! The ordering rule that keeps watches exact: the write path pushes a committed batch into
//! every shard's inbox *while it still holds the tree's write lock*, and a shard drains its
//! inbox *while it holds the read lock*, before it serves a read. So whatever state a read
//! sees, the shard has already sent the notifications of every change in it (event before
//! data), and a watch registered by that read misses no later change.

pub mod inbox;
pub mod local_queue;
pub mod messages;
pub mod net;
pub mod rate_limit;
pub mod shared;
pub mod stop;
pub mod tls;

pub use messages::{
    ClientRef, CommittedChanges, ConnId, SessionRequest, ShardId, ToClient, ToShard, ToWritePath, WriteOutcome,
};
pub use shared::{
    mode_name, zk_result_name, ConnInfo, GrpcHandled, Latency, LearnerLag, Refusal, ReplicaMetrics, RoleStatus,
    ShardStats, Shared, WriteStats, ETCD_RPCS, GRPC_CODES, ZK_OPERATIONS, ZK_RESULTS,
};
pub use stop::Event;

/// Microseconds since the first call: the clock the engine times fdatasyncs and snapshots
/// with (it reads none itself).
pub fn clock_us() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_micros() as u64
}
