//! Fast leader election (ZooKeeper's `FastLeaderElection.lookForLeader`).
//!
//! A looking server votes for itself, broadcasts its vote with its round (logical clock), and
//! adopts any greater vote it hears in its round; a higher round from a peer restarts its own
//! round there. When a quorum of the round's votes agree with its own, it waits
//! `finalize_ticks` for a better one and then decides. Servers already following or leading
//! answer with their leadership (leader and epoch), so a late server joins an established
//! leader when a quorum of them report it and the leader itself says it leads.

use std::collections::BTreeMap;

use super::config::ZabConfig;
use super::message::{ServerId, Vote};
use super::role::Role;

/// What a step of the election asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Broadcast this server's (changed) vote.
    pub broadcast: bool,
    /// The election ended: follow or lead the vote's leader.
    pub decided: Option<Vote>,
}

/// A notification as received.
#[derive(Debug, Clone, Copy)]
pub struct Notice {
    /// The sender.
    pub from: ServerId,
    /// Its round.
    pub round: u64,
    /// Its vote or leadership.
    pub vote: Vote,
    /// Its state.
    pub state: Role,
}

/// Election state. It outlives one election: the round only grows, and once decided `vote`
/// is the vote this server reports to looking servers.
#[derive(Debug, Clone)]
pub struct Election {
    /// The logical clock.
    pub round: u64,
    /// The current (or decided) vote.
    pub vote: Vote,
    /// Votes of this round from looking servers (and from established ones in this round).
    received: BTreeMap<ServerId, Vote>,
    /// Votes of servers that follow or lead, with their state and round.
    out_of_election: BTreeMap<ServerId, (Vote, Role, u64)>,
    /// When a quorum agreed with `vote`: the tick at which to decide.
    decide_at: Option<u64>,
    last_sent: u64,
}

impl Election {
    /// The state before the first election.
    pub fn new(own: Vote) -> Election {
        Election {
            round: 0,
            vote: own,
            received: BTreeMap::new(),
            out_of_election: BTreeMap::new(),
            decide_at: None,
            last_sent: 0,
        }
    }

    /// Starts a new round voting for `own`. The caller broadcasts.
    pub fn start(&mut self, cfg: &ZabConfig, own: Vote, now: u64) {
        self.round += 1;
        self.vote = own;
        self.received.clear();
        self.received.insert(cfg.id, own);
        self.out_of_election.clear();
        self.decide_at = None;
        self.last_sent = now;
    }

    fn agree(&self, cfg: &ZabConfig, votes: impl Iterator<Item = (ServerId, Vote)>, vote: Vote) -> bool {
        votes.filter(|(id, v)| *v == vote && cfg.is_voter(*id)).count() >= cfg.quorum()
    }

    /// ZooKeeper's `checkLeader`: the leader must itself say it leads that epoch. A looking
    /// server never joins a leadership of its own from before (it restarted or gave up; the
    /// others notice and elect again).
    fn leader_confirmed(&self, cfg: &ZabConfig, vote: Vote) -> bool {
        vote.leader != cfg.id
            && self
                .out_of_election
                .get(&vote.leader)
                .is_some_and(|(v, state, _)| state.is_leading() && v.epoch == vote.epoch)
    }

    /// A notification while this server is looking; `own` is its own vote now.
    pub fn on_notification(&mut self, cfg: &ZabConfig, own: Vote, notice: Notice, now: u64) -> Step {
        let Notice { from, round, vote, state } = notice;
        let mut step = Step::default();
        match state {
            Role::Looking => {
                if round > self.round {
                    self.round = round;
                    self.received.clear();
                    self.vote = own.max(vote);
                    self.received.insert(cfg.id, self.vote);
                    self.decide_at = None;
                    step.broadcast = true;
                } else if round < self.round {
                    // Its round is behind: it learns ours when we answer (the caller does).
                    return step;
                } else if vote > self.vote {
                    self.vote = vote;
                    self.received.insert(cfg.id, vote);
                    self.decide_at = None;
                    step.broadcast = true;
                }
                self.received.insert(from, vote);
                let all = cfg.voters.iter().all(|v| self.received.get(v) == Some(&self.vote));
                if all {
                    step.decided = Some(self.vote);
                } else if self.agree(cfg, self.received.iter().map(|(k, v)| (*k, *v)), self.vote) {
                    if self.decide_at.is_none() {
                        self.decide_at = Some(now + cfg.finalize_ticks);
                    }
                } else {
                    self.decide_at = None;
                }
            }
            Role::Following { .. } | Role::Leading { .. } => {
                // An established (or establishing) ensemble: join it when a quorum reports
                // the same leadership (leader and epoch; ZooKeeper's Vote.equals ignores the
                // zxid outside LOOKING) and the leader itself says it leads.
                self.out_of_election.insert(from, (vote, state, round));
                // In this round, its members and the looking servers that voted for the same
                // leader (this one included) may make the quorum together (ZooKeeper checks
                // its round's recvset before its out-of-election set).
                if round == self.round {
                    self.received.insert(from, vote);
                    let for_leader =
                        self.received.iter().filter(|(id, v)| cfg.is_voter(**id) && v.leader == vote.leader).count();
                    if for_leader >= cfg.quorum() && self.leader_confirmed(cfg, vote) {
                        self.vote = vote;
                        step.decided = Some(vote);
                        return step;
                    }
                }
                let same = |v: &Vote| v.leader == vote.leader && v.epoch == vote.epoch;
                let agreed =
                    self.out_of_election.iter().filter(|(id, (v, _, _))| cfg.is_voter(**id) && same(v)).count()
                        >= cfg.quorum();
                if agreed && self.leader_confirmed(cfg, vote) {
                    self.round = self.round.max(round);
                    self.vote = vote;
                    step.decided = Some(vote);
                }
            }
        }
        if step.broadcast {
            self.last_sent = now;
        }
        step
    }

    /// A tick while looking: decide when the finalize wait is over, resend periodically.
    pub fn on_tick(&mut self, cfg: &ZabConfig, now: u64) -> Step {
        let mut step = Step::default();
        if let Some(at) = self.decide_at {
            if now >= at {
                self.decide_at = None;
                if self.agree(cfg, self.received.iter().map(|(k, v)| (*k, *v)), self.vote) {
                    step.decided = Some(self.vote);
                    return step;
                }
            }
        }
        if now >= self.last_sent + cfg.resend_ticks {
            self.last_sent = now;
            step.broadcast = true;
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Zxid;

    fn vote(epoch: u32, counter: u32, leader: ServerId) -> Vote {
        Vote { epoch, zxid: Zxid::new(epoch, counter), leader }
    }

    #[test]
    fn votes_order_by_epoch_then_zxid_then_id() {
        assert!(vote(2, 1, 1) > vote(1, 9, 3));
        assert!(vote(1, 5, 1) > vote(1, 4, 3));
        assert!(vote(1, 4, 3) > vote(1, 4, 2));
    }

    #[test]
    fn a_looking_server_adopts_a_better_vote_and_decides_after_the_finalize_wait() {
        let cfg = ZabConfig::new(1, vec![1, 2, 3]);
        let own = vote(1, 3, 1);
        let mut e = Election::new(own);
        e.start(&cfg, own, 0);
        let better = vote(1, 5, 2);
        let notice = Notice { from: 2, round: 1, vote: better, state: Role::Looking };
        let step = e.on_notification(&cfg, own, notice, 0);
        assert_eq!(step, Step { broadcast: true, decided: None }, "adopts and rebroadcasts; 2 of 3 agree");
        assert_eq!(e.on_tick(&cfg, 0).decided, None, "waits for a better vote first");
        assert_eq!(e.on_tick(&cfg, 1).decided, Some(better));
    }

    #[test]
    fn a_late_server_joins_an_established_leader() {
        let cfg = ZabConfig::new(3, vec![1, 2, 3]);
        let own = vote(0, 0, 3);
        let mut e = Election::new(own);
        e.start(&cfg, own, 0);
        let elected = vote(1, 7, 1);
        let notice = Notice {
            from: 2,
            round: 4,
            vote: elected,
            state: Role::Following { leader: 1, epoch: elected.epoch, serving: true },
        };
        let step = e.on_notification(&cfg, own, notice, 0);
        assert_eq!(step.decided, None, "one follower is not a quorum, and the leader has not spoken");
        let notice = Notice {
            from: 1,
            round: 4,
            vote: elected,
            state: Role::Leading { epoch: elected.epoch, established: true },
        };
        let step = e.on_notification(&cfg, own, notice, 0);
        assert_eq!(step.decided, Some(elected));
        assert_eq!(e.round, 4);
    }
}
