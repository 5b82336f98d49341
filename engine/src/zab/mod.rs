//! Zab: leader election, discovery, synchronisation and pipelined broadcast, as a sans-IO
//! state machine (see `../shared/DESIGN.md`, "Replication").
//!
//! ```text
//!            on_message(from, msg)   on_tick()   on_durable(zxid)   propose(payloads)
//!                      │                 │              │                  │
//!                      ▼                 ▼              ▼                  ▼
//!              ┌───────────────────────────────────────────────────────────────┐
//!              │ Zab: LOOKING (election) │ FOLLOWING (follower) │ LEADING (leader) │
//!              └───────────────────────────────────────────────────────────────┘
//!                                        │ take_actions()
//!                                        ▼
//!    Send{to,msg}  SaveEpochs  Append{entries}  Truncate  InstallSnapshot  Commit{through}
//!    TakeSnapshot{peer}  RoleChanged
//! ```
//!
//! The core owns no socket, clock or disk: the server's runtime drives it in production and
//! the simulator in `tests/` drives the very same code with a seeded network, disk and clock.
//! Ticks are its only time. The driver carries out actions in order and reports durability
//! back; the core acknowledges only what the driver reported durable.

mod action;
mod config;
mod context;
mod core;
mod election;
pub mod epochs;
mod follower;
mod history;
mod leader;
mod message;
mod relay;
#[cfg(test)]
mod tests;
pub mod wire;

pub use action::{Action, Role};
pub use config::ZabConfig;
pub use core::{Persisted, Zab};
pub use history::History;
pub use message::{LogEntry, Message, Payload, ServerId, ServerState, Vote};

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
