//! # baton-engine
//!
//! Everything in Baton that must be replicated and made durable, with no socket and no
//! clock of its own (see `../shared/DESIGN.md`):
//!
//! - [`log`]: the `Zxid` and the transaction/entry types of the ZooKeeper data model, as
//!   rkyv archives that can be read in place.
//! - [`wal`]: the write-ahead log — preallocated, zero-filled segments on glommio DMA files,
//!   pipelined group commit with one `fdatasync` per batch, xxh3-checked records, and
//!   recovery that maps segments with memmap2 and yields entries without copying.
//! - [`snapshot`]: point-in-time images written atomically (temp file, fsync, rename,
//!   directory fsync), loaded newest-valid-first.
//!
//! - [`mvcc`]: etcd's keyspace (revisions, history, transactions, leases) and its apply.
//!
//! - [`state`]: both state machines in one snapshot image.
//!
//! - [`tree`]: the data tree (znodes, Stat, ACLs, sessions, ephemerals) and its
//!   deterministic `apply` of committed entries.
//!
//! - [`sequencer`]: validation of writes against the tree plus in-flight changes, producing
//!   entries with consecutive zxids (ZooKeeper's PrepRequestProcessor).
//!
//! - [`zab`]: the replication protocol (election, discovery, synchronisation, broadcast) as a
//!   sans-IO state machine.
//!
//! - [`replica`]: the driver of the Zab core over a log, epochs, snapshots, peer links and a
//!   state machine behind small traits — the same code in production (WAL, files) and in the
//!   deterministic simulator (seeded faulty stores).
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod alloc;
pub mod faults;
mod le;
pub mod log;
pub mod mvcc;
pub mod replica;
pub mod sequencer;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod sys;
pub mod tree;
pub mod wal;
pub mod zab;

#[cfg(test)]
mod test_support;

pub use log::{SessionId, Transaction, Txn, Zxid};
