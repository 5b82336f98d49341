//! What the protocol core asks its driver to do. The driver runs the actions in the order
//! they were queued; each variant says what must hold before the next one runs.

use super::message::{LogEntry, Message, Payload, ServerId};
use super::role::Role;
use crate::log::SessionId;
use crate::log::Zxid;

/// One thing for the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` to `to` on the FIFO link to it. Ordering: after every earlier action has
    /// been carried out (in particular after a `SaveEpochs` is durable).
    Send {
        /// The receiver.
        to: ServerId,
        /// The message.
        msg: Message,
    },
    /// Make both epochs durable *before* running the next action (ZooKeeper writes
    /// `acceptedEpoch` and `currentEpoch` files synchronously for the same reason: an ack
    /// that outlives a crash must not be contradicted after it).
    SaveEpochs {
        /// The last epoch accepted (LEADERINFO).
        accepted: u32,
        /// The last epoch whose history was accepted (NEWLEADER).
        current: u32,
    },
    /// Append these entries to the log, after everything appended before, and report
    /// durability with [`super::Zab::on_durable`]. Asynchronous (group commit).
    Append {
        /// Consecutive entries following the log's last one.
        entries: Vec<LogEntry>,
    },
    /// Drop every log entry above `after` before the next action, including appends still in
    /// flight. Never cuts a committed entry (the core checks).
    Truncate {
        /// The last zxid kept.
        after: Zxid,
    },
    /// The leader's committed state at `zxid` starts arriving, in the [`Action::SnapshotChunk`]s
    /// that follow. A snapshot begun and not yet installed is abandoned by the next
    /// `SnapshotBegin` or a [`Action::RoleChanged`] to a role other than following.
    SnapshotBegin {
        /// The last zxid the snapshot covers.
        zxid: Zxid,
    },
    /// The next piece of the snapshot begun, in order.
    SnapshotChunk {
        /// Bytes of the image, opaque to the protocol.
        data: Payload,
    },
    /// The snapshot begun arrived whole and checked out: replace the state and the log with
    /// it, durably, before the next action. Entries above `zxid` follow as appends.
    InstallSnapshot {
        /// The last zxid the snapshot covers; the log continues after it.
        zxid: Zxid,
    },
    /// Everything up to `through` is committed: apply the logged entries up to it, in zxid
    /// order. Commit points only grow.
    Commit {
        /// The new commit point.
        through: Zxid,
    },
    /// Freeze the applied state and report its zxid with [`super::Zab::on_snapshot`] for
    /// `peer` (a learner too far behind for a DIFF).
    TakeSnapshot {
        /// The learner that needs it.
        peer: ServerId,
    },
    /// Stream the state frozen for `to` (at the zxid reported to `on_snapshot`) on the link
    /// to `to`: [`Message::Snap`], its chunks, [`Message::SnapEnd`] — ahead of every message
    /// sent to `to` after this action.
    SendSnapshot {
        /// The learner.
        to: ServerId,
        /// The epoch it is being synchronised to.
        epoch: u32,
        /// The zxid the frozen state covers.
        zxid: Zxid,
    },
    /// The sync `id` (see [`super::Zab::sync`]) is done: every write proposed before it is
    /// committed here up to `zxid`, and the `Commit` actions before this one applied them.
    /// A read served after this sees them (ZooKeeper's `sync` + read).
    Synced {
        /// The caller's request id.
        id: u64,
        /// The commit point the sync waited for.
        zxid: Zxid,
    },
    /// (Leader only.) These sessions were seen alive on some server of the ensemble: renew
    /// them in the session tracker, which expires the others.
    Touched {
        /// Session ids.
        sessions: Vec<SessionId>,
    },
    /// The role changed (for logs, `srvr`/`mntr` and client routing). Syncs in flight are
    /// dropped when a follower leaves its leader or a leader steps down; callers time out.
    RoleChanged(Role),
}
