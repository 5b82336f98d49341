//! The driver of one server's Zab core, and the stores it drives.
//!
//! ```text
//!   owner (server task / simulator)          Replica::step(Input)
//!   ─ peer message, disconnect, tick,  ───▶  ┌──────────────────────────────┐
//!     durable(zxid), propose, sync, touch    │ Zab core: on_* → Vec<Action> │
//!                                            └──────────────┬───────────────┘
//!                                                           │ in order
//!      Send ─▶ Peers   SaveEpochs ─▶ Epochs   Append/Truncate ─▶ Log
//!      Commit/RoleChanged/Synced/Touched/TakeSnapshot/InstallSnapshot ─▶ StateMachine,
//!      Snapshots (every N applied entries, then compaction and Log::release_through)
//! ```
//!
//! [`Replica`] is generic over the stores ([`storage`]): production runs it with
//! [`WalLog`], [`EpochFile`], [`SnapshotDir`] and the server's TCP links on a glommio
//! executor; the simulator in `tests/` runs the very same code with seeded faulty stores, so
//! every decision the driver takes (recovery, dropping stale proposals, snapshot cadence and
//! log compaction) is simulated too. The core is checked after every step in debug builds
//! and always in the simulator.

mod driver;
mod epoch_file;
mod snapshot_dir;
pub mod storage;
#[cfg(test)]
mod tests;
mod wal_log;

pub use driver::{Parts, Recovered, Replica, ReplicaConfig, ReplicaStats};
pub use epoch_file::{EpochError, EpochFile};
pub use snapshot_dir::SnapshotDir;
pub use storage::{
    loaded_state, loaded_tree, snapshot_messages, Epochs, ImageSink, Log, Peers, SnapChunker, SnapshotImage, Snapshots,
    StateMachine, SNAP_CHUNK_BYTES,
};
pub use wal_log::{LogRoom, WalLog};

use crate::log::{SessionId, Zxid};
use crate::snapshot::SnapshotError;
use crate::wal::WalError;
use crate::zab::{Message, Payload, ServerId};

/// One input of a replica, in the order its owner received them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A message from a peer (a [`Message::Forward`] goes to the state machine).
    Message(ServerId, Message),
    /// The stream to or from this peer lost messages.
    Disconnected(ServerId),
    /// A tick of the protocol's clock (also when finished background snapshots are noticed).
    Tick,
    /// The log is durable up to this zxid (see [`Log`]).
    Durable(Zxid),
    /// Entries to propose; `first` is the zxid the proposer prepared the first one for, if
    /// the entries carry their zxids inside (see [`Replica::propose`]).
    Propose {
        /// The zxid the first entry was prepared for.
        first: Option<Zxid>,
        /// The entries' bytes.
        payloads: Vec<Payload>,
    },
    /// A client's sync, answered through [`StateMachine::synced`].
    Sync(u64),
    /// Client sessions alive on this server (reported to the leader, which owns expiry).
    Touch(Vec<SessionId>),
}

/// A store failed; the replica stops (fail-stop: a restart recovers what is durable).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The WAL failed (a failed fsync poisons it: it is never retried).
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The epochs could not be read or written.
    #[error(transparent)]
    Epochs(#[from] EpochError),
    /// A snapshot could not be written or read.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A snapshot received from the leader (whole, its checksum right) that the state
    /// machine or the store could not take.
    #[error("the snapshot received at {zxid} could not be installed: {reason}")]
    Received {
        /// The zxid it covers.
        zxid: Zxid,
        /// Why.
        reason: String,
    },
}
