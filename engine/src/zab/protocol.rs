//! [`Zab`]: one server's protocol state machine, dispatching inputs to its current role.

use super::action::Action;
use super::config::ZabConfig;
use super::context::Context;
use super::election::{Election, Notice, Step};
use super::follower::Follower;
use super::history::History;
use super::leader::Leader;
use super::message::{LogEntry, Message, Payload, ServerId, Vote};
use super::role::Role;
use super::ZabError;
use crate::log::{SessionId, Zxid};

/// What a server recovered from its disk at start.
#[derive(Debug, Clone, Default)]
pub struct Persisted {
    /// The accepted epoch file.
    pub accepted_epoch: u32,
    /// The current epoch file.
    pub current_epoch: u32,
    /// The zxid the newest snapshot covers (its state is the starting point).
    pub snapshot_zxid: Zxid,
    /// Every durable log entry after the snapshot, in order.
    pub entries: Vec<LogEntry>,
}

#[derive(Debug)]
enum RoleState {
    Looking,
    Following(Follower),
    Leading(Leader),
}

/// One server's Zab core. Feed it inputs; after each, run [`Zab::take_actions`] in order.
#[derive(Debug)]
pub struct Zab {
    ctx: Context,
    election: Election,
    role: RoleState,
}

impl Zab {
    /// A server starting from what it persisted: it is LOOKING and has queued its first
    /// notifications. The log it recovered is durable; nothing in it is known committed
    /// beyond the snapshot until a leader says so.
    pub fn new(cfg: ZabConfig, persisted: Persisted) -> Zab {
        let log = History::recovered(persisted.snapshot_zxid, persisted.entries);
        let cfg_resynchronising = cfg.resynchronising;
        let ctx = Context {
            cfg,
            now: 0,
            accepted_epoch: persisted.accepted_epoch.max(persisted.current_epoch),
            current_epoch: persisted.current_epoch,
            log,
            out: Vec::new(),
            abstaining: cfg_resynchronising,
            withdrawn: false,
        };
        let election = Election::new(ctx.own_vote());
        let mut zab = Zab { ctx, election, role: RoleState::Looking };
        zab.look();
        zab
    }

    /// The actions queued so far, in the order the driver must carry them out.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.ctx.out)
    }

    /// The current role.
    pub fn role(&self) -> Role {
        match &self.role {
            RoleState::Looking => Role::Looking,
            RoleState::Following(f) => f.role(),
            RoleState::Leading(l) => l.role(),
        }
    }

    /// While leading, each learner's id, whether it observes, and how many of this epoch's
    /// entries it lacks (see `Leader::learner_lags`); nothing otherwise.
    pub fn learner_lags(&self, mut each: impl FnMut(ServerId, bool, u64)) {
        if let RoleState::Leading(l) = &self.role {
            for (id, observer, lacks) in l.learner_lags(self.ctx.log.last()) {
                each(id, observer, lacks);
            }
        }
    }

    /// The log as the protocol sees it.
    pub fn history(&self) -> &History {
        &self.ctx.log
    }

    /// (accepted epoch, current epoch).
    pub fn epochs(&self) -> (u32, u32) {
        (self.ctx.accepted_epoch, self.ctx.current_epoch)
    }

    /// This server's id.
    pub fn id(&self) -> ServerId {
        self.ctx.cfg.id
    }

    fn look(&mut self) {
        self.role = RoleState::Looking;
        let own = self.ctx.own_vote();
        self.election.start(&self.ctx.cfg, own, self.ctx.now);
        self.ctx.out.push(Action::RoleChanged(Role::Looking));
        self.broadcast_vote();
        // A lone voter is its own quorum (its observers, if any, join it once it leads).
        if self.lone_voter() && !self.ctx.abstaining {
            self.decide(own);
        }
    }

    fn lone_voter(&self) -> bool {
        self.ctx.cfg.voters == [self.ctx.cfg.id]
    }

    /// Takes this server out of its ensemble (`true`) or back in (`false`). Its driver does
    /// so while its disk has no room for the log: a leader or follower that could not log
    /// what it is sent would hold back a quorum or lag without end. Withdrawn, it is looking,
    /// votes for no one and joins no leadership; back in, it looks for a leader afresh (and
    /// is synchronised like any server that rejoins). A lone voter never withdraws: it is
    /// the whole ensemble, and still serves reads.
    pub fn set_withdrawn(&mut self, withdrawn: bool) {
        if withdrawn == self.ctx.withdrawn || (withdrawn && self.lone_voter()) {
            return;
        }
        self.ctx.withdrawn = withdrawn;
        if withdrawn {
            tracing::warn!(id = self.ctx.cfg.id, role = ?self.role(), "leaving the ensemble until the disk has room for the log");
        } else {
            tracing::warn!(id = self.ctx.cfg.id, "the disk has room again: looking for the ensemble's leader");
        }
        self.look();
    }

    /// Whether this server is out of its ensemble (see [`Zab::set_withdrawn`]).
    pub fn withdrawn(&self) -> bool {
        self.ctx.withdrawn
    }

    /// This server's notification: its vote while looking; otherwise the leadership it is
    /// part of (leader and epoch), which every member reports alike.
    fn notification(&self) -> Message {
        let id = self.ctx.cfg.id;
        let vote = match &self.role {
            RoleState::Looking => self.election.vote,
            RoleState::Following(f) => Vote { epoch: f.epoch, zxid: Zxid::ZERO, leader: f.leader },
            RoleState::Leading(l) => Vote { epoch: l.epoch, zxid: Zxid::ZERO, leader: id },
        };
        Message::Notification { round: self.election.round, vote, state: self.role() }
    }

    fn broadcast_vote(&mut self) {
        let msg = self.notification();
        let peers: Vec<ServerId> = self.ctx.cfg.other_voters().collect();
        for id in peers {
            self.ctx.send(id, msg.clone());
        }
    }

    fn decide(&mut self, vote: Vote) {
        self.election.vote = vote;
        if vote.leader == self.ctx.cfg.id {
            let leader = Leader::start(&mut self.ctx);
            self.ctx.out.push(Action::RoleChanged(leader.role()));
            self.role = RoleState::Leading(leader);
        } else {
            // An observer with an upstream observer follows it instead of the leader.
            let observer = !self.ctx.cfg.is_voter(self.ctx.cfg.id);
            let target = self.ctx.cfg.upstream.filter(|_| observer).unwrap_or(vote.leader);
            let follower = Follower::start(&mut self.ctx, target);
            self.ctx.out.push(Action::RoleChanged(follower.role()));
            self.role = RoleState::Following(follower);
        }
    }

    fn apply_step(&mut self, step: Step) {
        if let Some(vote) = step.decided {
            self.decide(vote);
        } else if step.broadcast {
            self.broadcast_vote();
        }
    }

    /// A message from peer `from`.
    pub fn on_message(&mut self, from: ServerId, msg: Message) {
        if from == self.ctx.cfg.id || !self.ctx.cfg.is_member(from) {
            return;
        }
        if let Message::Notification { round, vote, state } = msg {
            self.on_notification(from, round, vote, state);
            return;
        }
        if let Message::Forward { .. } = msg {
            // The drivers' own traffic; they keep it from the core.
            return;
        }
        let result = match &mut self.role {
            RoleState::Looking => Ok(()),
            RoleState::Following(f) if f.leader == from => f.on_message(&mut self.ctx, msg).map_err(|e| e.0),
            RoleState::Following(f) => {
                f.on_learner_message(&mut self.ctx, from, msg);
                Ok(())
            }
            RoleState::Leading(l) => l.on_message(&mut self.ctx, from, msg).map_err(|e| e.0),
        };
        self.after(result);
    }

    fn on_notification(&mut self, from: ServerId, round: u64, vote: Vote, state: Role) {
        if !matches!(self.role, RoleState::Looking) {
            if state.is_looking() {
                let reply = self.notification();
                self.ctx.send(from, reply);
            }
            return;
        }
        if self.ctx.withdrawn {
            return;
        }
        // An observer's vote never counts, and an observer only joins leaderships; so does
        // a server resynchronising.
        let observer_involved =
            !self.ctx.cfg.is_voter(from) || !self.ctx.cfg.is_voter(self.ctx.cfg.id) || self.ctx.abstaining;
        if observer_involved && state.is_looking() {
            return;
        }
        let own = self.ctx.own_vote();
        let notice = Notice { from, round, vote, state };
        let step = self.election.on_notification(&self.ctx.cfg, own, notice, self.ctx.now);
        if state.is_looking() && round < self.election.round {
            let reply = self.notification();
            self.ctx.send(from, reply);
        }
        self.apply_step(step);
    }

    fn after(&mut self, result: Result<(), &'static str>) {
        if let Err(why) = result {
            tracing::info!(id = self.ctx.cfg.id, why, "back to looking");
            self.look();
        }
        if self.ctx.abstaining && matches!(self.role(), Role::Following { serving: true, .. }) {
            // Synchronised by a leader a quorum elected: its log holds what they committed.
            self.ctx.abstaining = false;
            tracing::info!(id = self.ctx.cfg.id, "resynchronised from the leader; voting again");
        }
    }

    /// Whether this server still votes for no one (see [`ZabConfig::resynchronising`]).
    pub fn abstaining(&self) -> bool {
        self.ctx.abstaining
    }

    /// The connection to `peer` broke (its FIFO stream lost messages): a follower whose
    /// leader it was looks for a leader again; a leader forgets the follower, which must
    /// rejoin and be synchronised (ZooKeeper ends the `LearnerHandler` the same way).
    pub fn on_disconnected(&mut self, peer: ServerId) {
        let result = match &mut self.role {
            RoleState::Following(f) if f.leader == peer => Err("lost the connection to the leader"),
            RoleState::Following(f) => {
                f.forget(peer);
                Ok(())
            }
            RoleState::Leading(l) => {
                l.forget(peer);
                Ok(())
            }
            _ => Ok(()),
        };
        self.after(result);
    }

    /// A tick of the clock.
    pub fn on_tick(&mut self) {
        self.ctx.now += 1;
        let result = match &mut self.role {
            RoleState::Looking => {
                let step = self.election.on_tick(&self.ctx.cfg, self.ctx.now);
                self.apply_step(step);
                Ok(())
            }
            RoleState::Following(f) => f.on_tick(&mut self.ctx).map_err(|e| e.0),
            RoleState::Leading(l) => l.on_tick(&mut self.ctx).map_err(|e| e.0),
        };
        self.after(result);
    }

    /// The log is durable up to `zxid` (every `Append` before it has reached the disk).
    pub fn on_durable(&mut self, zxid: Zxid) {
        self.ctx.log.mark_durable(zxid);
        match &mut self.role {
            RoleState::Looking => {}
            RoleState::Following(f) => f.on_durable(&mut self.ctx),
            RoleState::Leading(l) => l.on_durable(&mut self.ctx),
        }
    }

    /// The zxid the next proposal will get (leader only, once established). A sequencer that
    /// stamps zxids into the entries it prepares takes them from here: proposals receive
    /// consecutive zxids from it, in the order they are proposed.
    pub fn next_zxid(&self) -> Result<Zxid, ZabError> {
        match &self.role {
            RoleState::Leading(l) => l.next_zxid(&self.ctx),
            RoleState::Following(f) => Err(ZabError::NotLeader { leader: Some(f.leader) }),
            RoleState::Looking => Err(ZabError::NotLeader { leader: None }),
        }
    }

    /// Proposes entries (leader only, once established). Returns their zxids in order.
    pub fn propose(&mut self, payloads: Vec<Payload>) -> Result<Vec<Zxid>, ZabError> {
        match &mut self.role {
            RoleState::Leading(l) => {
                let result = l.propose(&mut self.ctx, payloads);
                if matches!(result, Err(ZabError::EpochExhausted)) {
                    // ZooKeeper forces an election when the counter would roll over.
                    self.look();
                }
                result
            }
            RoleState::Following(f) => Err(ZabError::NotLeader { leader: Some(f.leader) }),
            RoleState::Looking => Err(ZabError::NotLeader { leader: None }),
        }
    }

    /// A client's `sync` with request id `id`: [`Action::Synced`] follows once every write
    /// proposed before it is committed on this server. Returns false (nothing queued) when
    /// this server is not synchronised with an established leader; the caller retries.
    pub fn sync(&mut self, id: u64) -> bool {
        match &mut self.role {
            RoleState::Leading(l) => l.client_sync(&mut self.ctx, id),
            RoleState::Following(f) => f.client_sync(&mut self.ctx, id),
            RoleState::Looking => false,
        }
    }

    /// Reports client sessions seen alive on this server. On the leader they are renewed at
    /// once ([`Action::Touched`]); elsewhere they travel to the leader. Returns false when
    /// this server has no synchronised leader to tell (the caller reports them again at its
    /// next liveness round).
    pub fn touch(&mut self, sessions: Vec<SessionId>) -> bool {
        match &mut self.role {
            RoleState::Leading(_) if !sessions.is_empty() => {
                self.ctx.out.push(Action::Touched { sessions });
                true
            }
            RoleState::Following(f) => f.touch(&mut self.ctx, sessions),
            _ => false,
        }
    }

    /// The answer to [`Action::TakeSnapshot`]: the driver froze its state at `zxid` (to
    /// stream when [`Action::SendSnapshot`] asks for it).
    pub fn on_snapshot(&mut self, peer: ServerId, zxid: Zxid) {
        match &mut self.role {
            RoleState::Leading(l) => l.on_snapshot(&mut self.ctx, peer, zxid),
            RoleState::Following(f) => f.on_snapshot(&mut self.ctx, peer, zxid),
            RoleState::Looking => {}
        }
    }

    /// Forgets log entries up to `through` (at most the commit point): a local snapshot
    /// covers them. Followers behind that point are then synchronised with a SNAP.
    pub fn compact(&mut self, through: Zxid) {
        self.ctx.log.compact(through);
    }

    /// Checks the invariants of the whole core.
    pub fn check_invariants(&self) {
        self.ctx.check_invariants();
        if let RoleState::Leading(l) = &self.role {
            assert!(l.epoch == 0 || l.epoch == self.ctx.accepted_epoch, "a leader's epoch is its accepted epoch");
            l.check_invariants(&self.ctx);
        }
    }
}
