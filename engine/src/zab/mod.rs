//! Zab: leader election, discovery, synchronisation and pipelined broadcast, as a sans-IO
//! state machine (see `../shared/DESIGN.md`, "Replication").
//!
//! ```text
//!   inputs (one at a time)                        outputs, in order (take_actions)
//!   ──────────────────────                        ─────────────────────────────────
//!   on_message(from, msg)   ─┐                ┌─▶ Send { to, msg }       the FIFO link to `to`
//!   on_disconnected(peer)   ─┤                ├─▶ SaveEpochs             durable before the next
//!   on_tick()               ─┤  ┌──────────┐  ├─▶ Append { entries }     group commit; durability
//!   on_durable(zxid)        ─┼─▶│   Zab    │──┤                          comes back as on_durable
//!   propose(payloads)       ─┤  │ LOOKING  │  ├─▶ Truncate { after }     before the next action
//!   sync(id)                ─┤  │ FOLLOWING│  ├─▶ SnapshotBegin/Chunk    a SNAP arriving, in pieces
//!                            │  │          │  ├─▶ InstallSnapshot        state + log replaced
//!   touch(sessions)         ─┤  │ LEADING  │  ├─▶ Commit { through }     apply up to it
//!   on_snapshot(peer, zxid) ─┤  └──────────┘  ├─▶ TakeSnapshot { peer }  freeze; answer on_snapshot
//!                            │                ├─▶ SendSnapshot { to }    stream the frozen state
//!   compact(through)        ─┘                ├─▶ Synced { id, zxid }    a client's sync is done
//!                                             ├─▶ Touched { sessions }   (leader) renew sessions
//!                                             └─▶ RoleChanged(role)
//!   queries: role(), epochs(), history(), next_zxid(), check_invariants()
//! ```
//!
//! The core owns no socket, clock or disk: the replica driver (`crate::replica`) carries
//! out its actions over traits, with the WAL and TCP in production and seeded faulty stores
//! in the simulator in `tests/` — the very same driver and core. Ticks are its only time.
//! The driver carries out actions in order and reports durability back; the core
//! acknowledges only what the driver reported durable. Each [`Action`] variant documents
//! what must hold before the next one runs.

mod action;
mod config;
mod context;
mod election;
mod follower;
mod history;
mod leader;
mod message;
mod protocol;
mod relay;
mod role;
#[cfg(test)]
mod tests;
pub mod wire;

pub use action::Action;
pub use config::ZabConfig;
pub use history::History;
pub use message::{LogEntry, Message, Payload, ServerId, Vote};
pub use protocol::{Persisted, Zab};
pub use role::Role;

/// Errors a caller of [`Zab::propose`] handles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZabError {
    /// This server does not lead; `leader` is the one it follows, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this server follows.
        leader: Option<ServerId>,
    },
    /// This server leads but no quorum has accepted its epoch yet.
    #[error("the leader's epoch is not established yet")]
    NotEstablished,
    /// The epoch's zxid counter is exhausted; an election starts.
    #[error("the epoch's zxid counter is exhausted")]
    EpochExhausted,
}
