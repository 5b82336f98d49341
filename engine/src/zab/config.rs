//! Ensemble membership and the protocol's time limits, in ticks.

use super::message::ServerId;

/// The settings of one server's protocol core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZabConfig {
    /// This server.
    pub id: ServerId,
    /// Every voting server (static membership, as `zoo.cfg`).
    pub voters: Vec<ServerId>,
    /// Non-voting members: they follow the leader, receive committed entries only, and
    /// serve reads; they never vote, never count for a quorum and never lead.
    pub observers: Vec<ServerId>,
    /// For an observer: the observer it follows instead of the leader (a tree of observers).
    pub upstream: Option<ServerId>,
    /// Ticks a follower may take to connect and synchronise, and a new leader to establish
    /// its epoch (ZooKeeper's `initLimit`).
    pub init_limit_ticks: u64,
    /// Ticks without hearing from the leader (follower) or from a quorum (leader) before
    /// giving up on it (ZooKeeper's `syncLimit`).
    pub sync_limit_ticks: u64,
    /// Ticks a server that sees a quorum agree waits for a better vote before deciding
    /// (ZooKeeper's `finalizeWait`).
    pub finalize_ticks: u64,
    /// Ticks between re-sent notifications while looking.
    pub resend_ticks: u64,
    /// Entries in one DIFF message; a longer DIFF is sent as several.
    pub diff_entries_max: usize,
    /// This server discarded its log (it was damaged) and must be synchronised by a leader
    /// before it votes again: until then it votes for no one and only joins a leadership a
    /// quorum of the others reports, as an observer does. Its empty log must not help elect
    /// a leader that lacks entries only it had acknowledged.
    pub resynchronising: bool,
}

impl ZabConfig {
    /// Defaults for `id` in an ensemble of `voters`: init limit 10 ticks, sync limit 5.
    pub fn new(id: ServerId, voters: Vec<ServerId>) -> ZabConfig {
        ZabConfig {
            id,
            voters,
            observers: Vec::new(),
            upstream: None,
            init_limit_ticks: 10,
            sync_limit_ticks: 5,
            finalize_ticks: 1,
            resend_ticks: 2,
            diff_entries_max: 1024,
            resynchronising: false,
        }
    }

    /// Votes that make a quorum: a strict majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: ServerId) -> bool {
        self.voters.contains(&id)
    }

    /// Whether `id` is in the ensemble (voter or observer).
    pub fn is_member(&self, id: ServerId) -> bool {
        self.is_voter(id) || self.observers.contains(&id)
    }

    /// The voters other than this server: where election notifications go.
    pub fn other_voters(&self) -> impl Iterator<Item = ServerId> + '_ {
        self.voters.iter().copied().filter(move |&v| v != self.id)
    }
}
