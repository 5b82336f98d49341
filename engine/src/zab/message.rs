//! What servers say to each other: election notifications and the Zab phases' messages.
//!
//! The names follow ZooKeeper's quorum packets (FOLLOWERINFO, LEADERINFO, ACKEPOCH, DIFF,
//! TRUNC, SNAP, NEWLEADER, UPTODATE, PROPOSAL, ACK, COMMIT, PING). Every message after
//! election carries the epoch it belongs to; a server ignores messages of another epoch than
//! the one it is in, so a late message from an earlier leader cannot act on a new history.

use std::sync::Arc;

use super::role::Role;
use crate::log::{SessionId, Zxid};

/// A server's id in the ensemble (ZooKeeper's `myid`).
pub type ServerId = u64;

/// The bytes of one log entry: the rkyv `Transaction` exactly as the WAL stores it. The leader's
/// WAL, the wire and every follower's WAL carry the same bytes (no re-encoding).
pub type Payload = Arc<[u8]>;

/// A log entry: a payload at its zxid — the unit the WAL appends and Zab replicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its position in the log.
    pub zxid: Zxid,
    /// The archived transaction.
    pub payload: Payload,
}

impl LogEntry {
    /// The entry `payload` at `zxid`.
    pub fn new(zxid: Zxid, payload: Payload) -> LogEntry {
        LogEntry { zxid, payload }
    }
}

/// A vote in fast leader election. Votes are ordered by the candidate's current epoch, then
/// its last zxid, then its id (ZooKeeper's `totalOrderPredicate`): the greatest vote names the
/// server with the most recent history, ties broken by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vote {
    /// The candidate's current epoch (the last epoch whose NEWLEADER it accepted).
    pub epoch: u32,
    /// The candidate's last logged zxid.
    pub zxid: Zxid,
    /// The candidate.
    pub leader: ServerId,
}

impl Vote {
    /// No candidate (server ids start at 1): below every real vote, equal to none, so it
    /// is never adopted and never counts for anyone. A server resynchronising sends it.
    pub const NONE: Vote = Vote { epoch: 0, zxid: crate::log::Zxid::ZERO, leader: 0 };
}

/// One message between two servers. Links are FIFO (one TCP connection); a message may be
/// lost only together with everything after it on its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Election: the sender's vote in election round `round`, and its state.
    Notification {
        /// The sender's election round (ZooKeeper's logical clock).
        round: u64,
        /// Its vote (when following or leading: the leader it follows or itself).
        vote: Vote,
        /// Its role (when following or leading, `vote` names that leadership).
        state: Role,
    },
    /// Discovery, follower → leader: the follower's accepted epoch and last zxid.
    FollowerInfo {
        /// The last epoch the follower accepted.
        accepted_epoch: u32,
        /// Its last logged zxid.
        last_zxid: Zxid,
    },
    /// Discovery, leader → follower: the new epoch.
    LeaderInfo {
        /// The epoch the leader proposes (above every accepted epoch of a quorum).
        epoch: u32,
    },
    /// Discovery, follower → leader: the follower accepted `epoch`; its history's summary.
    AckEpoch {
        /// The epoch acknowledged.
        epoch: u32,
        /// The follower's current epoch (of its last accepted NEWLEADER).
        current_epoch: u32,
        /// Its last logged zxid.
        last_zxid: Zxid,
        /// The follower accepted the epoch with this LEADERINFO (it was above its accepted
        /// epoch). An ack of an epoch it had already accepted — from this leader before, or
        /// from another that picked the same number — lets it follow but does not count
        /// towards the epoch's quorum (ZooKeeper acks it with epoch -1): each server accepts
        /// each epoch once, so at most one leader gathers a quorum for it.
        fresh: bool,
    },
    /// Synchronisation: drop every entry above `zxid`.
    Trunc {
        /// The epoch being synchronised to.
        epoch: u32,
        /// The last zxid to keep.
        zxid: Zxid,
    },
    /// Synchronisation: replace the whole state with the leader's committed state at `zxid`,
    /// which follows as [`Message::SnapChunk`]s closed by a [`Message::SnapEnd`] (streamed:
    /// neither side holds the whole image as one message).
    Snap {
        /// The epoch being synchronised to.
        epoch: u32,
        /// The last zxid the snapshot covers.
        zxid: Zxid,
    },
    /// The next piece of the snapshot that a [`Message::Snap`] announced, opaque to the
    /// protocol.
    SnapChunk {
        /// The epoch being synchronised to.
        epoch: u32,
        /// The bytes, in order after the previous chunk's.
        data: Payload,
    },
    /// The snapshot's end: how many bytes it had and their xxh3, checked before it replaces
    /// anything.
    SnapEnd {
        /// The epoch being synchronised to.
        epoch: u32,
        /// The image's length.
        bytes: u64,
        /// xxh3-64 of the whole image.
        checksum: u64,
    },
    /// Entries to append in order: the DIFF of synchronisation, then PROPOSALs, batched.
    Append {
        /// The leader's epoch.
        epoch: u32,
        /// Consecutive entries following the receiver's last one.
        entries: Vec<LogEntry>,
    },
    /// Synchronisation is complete up to `zxid`: accept the epoch's history (NEWLEADER).
    NewLeader {
        /// The new epoch.
        epoch: u32,
        /// The last zxid of the history sent before this message.
        zxid: Zxid,
    },
    /// Follower → leader: every entry up to `zxid` is durable here (cumulative). Also the
    /// answer to NEWLEADER and to pings.
    Ack {
        /// The epoch (the follower's current epoch).
        epoch: u32,
        /// The follower's last durable zxid.
        zxid: Zxid,
    },
    /// Leader → follower: the leader is established; `commit` is committed. Start serving.
    UpToDate {
        /// The epoch.
        epoch: u32,
        /// The leader's commit point.
        commit: Zxid,
    },
    /// Leader → follower: everything up to `zxid` is committed.
    Commit {
        /// The epoch.
        epoch: u32,
        /// The new commit point.
        zxid: Zxid,
    },
    /// Follower → leader: a client's `sync` (request `id` of the follower's choosing).
    Sync {
        /// The epoch.
        epoch: u32,
        /// The follower's request id.
        id: u64,
    },
    /// Leader → follower: sync `id` is done once the follower has committed up to `zxid`
    /// (the leader's last proposal when the sync arrived, now committed).
    SyncDone {
        /// The epoch.
        epoch: u32,
        /// The follower's request id.
        id: u64,
        /// Everything proposed before the sync.
        zxid: Zxid,
    },
    /// Follower or observer → leader (through upstream observers): these client sessions
    /// were seen alive here. The leader owns session expiry (ZooKeeper's learners report
    /// their sessions in their ping replies).
    Touch {
        /// The epoch.
        epoch: u32,
        /// Session ids.
        sessions: Vec<SessionId>,
    },
    /// Leader → follower heartbeat, carrying the commit point. A `round` above 0 asks a
    /// voter to confirm that it still follows this leadership ([`Message::Heard`]): a sync
    /// is answered only once a quorum has, after it arrived (etcd's ReadIndex).
    Ping {
        /// The epoch.
        epoch: u32,
        /// The leader's commit point.
        commit: Zxid,
        /// The confirmation round (0: a heartbeat only).
        round: u64,
    },
    /// Follower → leader: it follows this leadership still, after the ping of `round`.
    Heard {
        /// The epoch.
        epoch: u32,
        /// The round it answers.
        round: u64,
    },
    /// Between the drivers of two servers, on the same FIFO link, never seen by the core:
    /// client writes a follower forwards to its leader and the leader's answers (ZooKeeper's
    /// REQUEST packets). Opaque to the protocol.
    Forward {
        /// The driver's bytes.
        data: Payload,
    },
}

impl Message {
    /// The epoch a post-election message belongs to (`None` for election notifications and
    /// FOLLOWERINFO, which precede the epoch).
    pub fn epoch(&self) -> Option<u32> {
        match self {
            Message::Notification { .. } | Message::FollowerInfo { .. } | Message::Forward { .. } => None,
            Message::LeaderInfo { epoch }
            | Message::AckEpoch { epoch, .. }
            | Message::Trunc { epoch, .. }
            | Message::Snap { epoch, .. }
            | Message::SnapChunk { epoch, .. }
            | Message::SnapEnd { epoch, .. }
            | Message::Append { epoch, .. }
            | Message::NewLeader { epoch, .. }
            | Message::Ack { epoch, .. }
            | Message::UpToDate { epoch, .. }
            | Message::Commit { epoch, .. }
            | Message::Sync { epoch, .. }
            | Message::SyncDone { epoch, .. }
            | Message::Touch { epoch, .. }
            | Message::Ping { epoch, .. }
            | Message::Heard { epoch, .. } => Some(*epoch),
        }
    }
}
