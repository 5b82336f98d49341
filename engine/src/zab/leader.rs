//! The leader's side: discovery, synchronisation of each follower, and pipelined broadcast
//! (ZooKeeper's `Leader.lead` and `LearnerHandler`).
//!
//! ```text
//!  discovery  FOLLOWERINFO from a quorum ─▶ epoch = max(accepted epochs) + 1 ─▶ LEADERINFO
//!  sync       ACKEPOCH from a quorum ─▶ current epoch = e; per follower TRUNC/SNAP/DIFF, NEWLEADER
//!  broadcast  ACKs (cumulative, durable) from a quorum ─▶ established, UPTODATE; then
//!             PROPOSAL batches to every synced follower without waiting; COMMIT the quorum point
//! ```
//!
//! Commit rule: the commit point is the greatest zxid that a quorum of voters, this server
//! included, has durable *after accepting this epoch's NEWLEADER* (acks of earlier epochs never
//! count). A follower's log is then a prefix of this leader's, so every later leader, elected
//! by a quorum that meets this one, holds the entry (Zab, §3.4 of Junqueira et al. 2011).

use std::collections::BTreeMap;

use super::action::Action;
use super::context::Context;
use super::message::{LogEntry, Message, Payload, ServerId};
use super::role::Role;
use super::ZabError;
use crate::log::Zxid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LearnerPhase {
    /// FOLLOWERINFO received.
    Info,
    /// ACKEPOCH received with the follower's last zxid; `fresh` counts for the quorum.
    EpochAcked { last_zxid: Zxid, fresh: bool },
    /// Too far behind for a DIFF; waiting for the driver's snapshot.
    AwaitingSnapshot,
    /// History and NEWLEADER sent; proposals stream to it.
    Synced,
    /// UPTODATE sent: it serves clients.
    UpToDate,
}

#[derive(Debug, Clone)]
struct Learner {
    /// A non-voting member: synchronised once the epoch is established, sent committed
    /// entries only (with each commit), never counted.
    observer: bool,
    /// Observers: the last entry sent to it.
    sent_through: Zxid,
    accepted_epoch: u32,
    phase: LearnerPhase,
    /// Its last durable zxid in this epoch (from ACKs after NEWLEADER).
    acked: Zxid,
    /// The last zxid of the history it was sent before NEWLEADER.
    newleader_zxid: Zxid,
    last_heard: u64,
}

impl Learner {
    fn streaming(&self) -> bool {
        matches!(self.phase, LearnerPhase::Synced | LearnerPhase::UpToDate)
    }
}

/// A leader, from election to stepping down.
#[derive(Debug)]
pub struct Leader {
    /// The epoch (0 until a quorum's FOLLOWERINFO chose it).
    pub epoch: u32,
    started: u64,
    learners: BTreeMap<ServerId, Learner>,
    /// A quorum acknowledged the epoch: this server's current epoch is `epoch`.
    epoch_quorum: bool,
    /// The history this leader started the epoch with.
    initial: Zxid,
    established: bool,
    /// Syncs waiting for the commit point and for a confirmation round. Invariant: sorted
    /// by zxid and by round.
    syncs: Vec<PendingSync>,
    /// The last confirmation round started (see [`Message::Ping`]).
    round: u64,
    /// The last round a quorum answered. Invariant: confirmed <= round.
    confirmed: u64,
    /// The voters that answered `round` so far.
    heard: std::collections::BTreeSet<ServerId>,
}

/// A client's sync at the leader: answered once everything proposed before it arrived is
/// committed and a quorum has confirmed this leadership after it arrived. Without the
/// second condition a leader that a quorum has already left (and replaced) could answer
/// from its own stale state until its sync limit passes — ZooKeeper's sync has that hole
/// (ZOOKEEPER-2136); etcd's ReadIndex closes it the same way.
#[derive(Debug, Clone, Copy)]
struct PendingSync {
    from: ServerId,
    id: u64,
    zxid: Zxid,
    round: u64,
}

/// The leader steps down.
#[derive(Debug, PartialEq, Eq)]
pub struct StepDown(pub &'static str);

impl Leader {
    /// Starts leading: waits for followers (a one-server ensemble proceeds at once).
    pub fn start(ctx: &mut Context) -> Leader {
        let mut l = Leader {
            epoch: 0,
            started: ctx.now,
            learners: BTreeMap::new(),
            epoch_quorum: false,
            initial: Zxid::ZERO,
            established: false,
            syncs: Vec::new(),
            round: 0,
            confirmed: 0,
            heard: std::collections::BTreeSet::new(),
        };
        l.check_discovery(ctx);
        l
    }

    /// The role to report.
    pub fn role(&self) -> Role {
        Role::Leading { epoch: self.epoch, established: self.established }
    }

    /// Learners the stream goes to (observers included or not).
    fn streaming_ids(&self, observers: bool) -> Vec<ServerId> {
        self.learners.iter().filter(|(_, l)| l.streaming() && (observers || !l.observer)).map(|(id, _)| *id).collect()
    }

    fn count(&self, ctx: &Context, pred: impl Fn(&Learner) -> bool) -> usize {
        1 + self.learners.iter().filter(|(id, l)| ctx.cfg.is_voter(**id) && pred(l)).count()
    }

    /// A message from a follower.
    pub fn on_message(&mut self, ctx: &mut Context, from: ServerId, msg: Message) -> Result<(), StepDown> {
        if let Some(l) = self.learners.get_mut(&from) {
            l.last_heard = ctx.now;
        }
        match msg {
            Message::FollowerInfo { accepted_epoch, .. } => {
                if self.established && accepted_epoch > self.epoch && ctx.cfg.is_voter(from) {
                    // It accepted a later epoch from a leadership that failed, so it can never
                    // follow this one (it refuses an epoch below its accepted one); an
                    // election now picks an epoch above it and takes it in.
                    return Err(StepDown("a follower accepted a later epoch"));
                }
                let learner = Learner {
                    observer: !ctx.cfg.is_voter(from),
                    sent_through: Zxid::ZERO,
                    accepted_epoch,
                    phase: LearnerPhase::Info,
                    acked: Zxid::ZERO,
                    newleader_zxid: Zxid::ZERO,
                    last_heard: ctx.now,
                };
                self.learners.insert(from, learner);
                if self.epoch == 0 {
                    self.check_discovery(ctx);
                } else {
                    ctx.send(from, Message::LeaderInfo { epoch: self.epoch });
                }
            }
            Message::AckEpoch { epoch, current_epoch, last_zxid, fresh } if epoch == self.epoch && epoch != 0 => {
                let Some(l) = self.learners.get_mut(&from) else { return Ok(()) };
                if l.phase != LearnerPhase::Info {
                    return Ok(());
                }
                // ZooKeeper's waitForEpochAck: a member of the epoch's quorum must not have a
                // more recent history than the leader (the election should have prevented it).
                let ahead = (current_epoch, last_zxid) > (ctx.current_epoch, ctx.log.last());
                if fresh && ahead && !self.epoch_quorum && !l.observer {
                    return Err(StepDown("a follower has a more recent history"));
                }
                l.phase = LearnerPhase::EpochAcked { last_zxid, fresh };
                let ready = if l.observer { self.established } else { self.epoch_quorum };
                if ready {
                    self.synchronise(ctx, from);
                } else {
                    self.check_epoch_quorum(ctx);
                }
            }
            Message::Ack { epoch, zxid } if epoch == self.epoch && epoch != 0 => {
                let Some(l) = self.learners.get_mut(&from) else { return Ok(()) };
                if !l.streaming() {
                    return Ok(());
                }
                l.acked = l.acked.max(zxid.min(ctx.log.last()));
                self.check_commit(ctx);
                self.maybe_up_to_date(ctx, from);
            }
            Message::Touch { epoch, sessions }
                if epoch == self.epoch
                    && !sessions.is_empty()
                    && self.learners.get(&from).is_some_and(Learner::streaming) =>
            {
                ctx.out.push(Action::Touched { sessions });
            }
            Message::Sync { epoch, id } if epoch == self.epoch && self.established => {
                let streaming = self.learners.get(&from).is_some_and(Learner::streaming);
                if streaming {
                    self.add_sync(ctx, from, id);
                }
            }
            Message::Heard { epoch, round }
                if epoch == self.epoch
                    && round == self.round
                    && round > self.confirmed
                    && ctx.cfg.is_voter(from)
                    && self.learners.get(&from).is_some_and(Learner::streaming) =>
            {
                self.heard.insert(from);
                self.check_round(ctx);
            }
            _ => {}
        }
        Ok(())
    }

    fn check_discovery(&mut self, ctx: &mut Context) {
        if self.epoch != 0 || self.count(ctx, |_| true) < ctx.cfg.quorum() {
            return;
        }
        let highest = self.learners.values().map(|l| l.accepted_epoch).fold(ctx.accepted_epoch, u32::max);
        // Epochs are 32 bits of the zxid; running out would take 2^32 elections.
        self.epoch = highest.saturating_add(1);
        ctx.accepted_epoch = self.epoch;
        ctx.save_epochs();
        ctx.out.push(Action::RoleChanged(self.role()));
        let ids: Vec<ServerId> = self.learners.keys().copied().collect();
        for id in ids {
            ctx.send(id, Message::LeaderInfo { epoch: self.epoch });
        }
        self.check_epoch_quorum(ctx);
    }

    fn check_epoch_quorum(&mut self, ctx: &mut Context) {
        let fresh = |l: &Learner| matches!(l.phase, LearnerPhase::EpochAcked { fresh: true, .. });
        if self.epoch_quorum || self.epoch == 0 || self.count(ctx, fresh) < ctx.cfg.quorum() {
            return;
        }
        let acked = |l: &Learner| matches!(l.phase, LearnerPhase::EpochAcked { .. });
        self.epoch_quorum = true;
        ctx.current_epoch = self.epoch;
        ctx.save_epochs();
        self.initial = ctx.log.last();
        let ready: Vec<ServerId> =
            self.learners.iter().filter(|(_, l)| acked(l) && !l.observer).map(|(id, _)| *id).collect();
        for id in ready {
            self.synchronise(ctx, id);
        }
        self.check_commit(ctx);
    }

    /// Brings a follower to this leader's history: DIFF, TRUNC then DIFF, or SNAP.
    fn synchronise(&mut self, ctx: &mut Context, id: ServerId) {
        let Some(l) = self.learners.get_mut(&id) else { return };
        let LearnerPhase::EpochAcked { last_zxid, .. } = l.phase else { return };
        match ctx.sync_start(self.epoch, id, last_zxid) {
            Some(from) => self.send_history(ctx, id, from),
            None => l.phase = LearnerPhase::AwaitingSnapshot,
        }
    }

    /// Sends the entries above `from` (to an observer: only committed ones), then NEWLEADER.
    fn send_history(&mut self, ctx: &mut Context, id: ServerId, from: Zxid) {
        let observer = self.learners.get(&id).is_some_and(|l| l.observer);
        let last = if observer { ctx.log.committed() } else { ctx.log.last() };
        ctx.send_history(self.epoch, id, from, last);
        if let Some(l) = self.learners.get_mut(&id) {
            l.phase = LearnerPhase::Synced;
            l.newleader_zxid = last;
            l.sent_through = last;
            l.acked = Zxid::ZERO;
        }
    }

    /// Each learner connected to this leader, for metrics: its id, whether it observes, and
    /// how many of this epoch's entries it lacks (a follower: not yet acknowledged as
    /// durable; an observer: not yet sent).
    pub fn learner_lags(&self, last: Zxid) -> impl Iterator<Item = (ServerId, bool, u64)> + '_ {
        self.learners.iter().map(move |(id, l)| {
            let has = if l.observer { l.sent_through } else { l.acked };
            let lacks =
                if has.epoch() == last.epoch() { last.counter().saturating_sub(has.counter()) } else { last.counter() };
            (*id, l.observer, u64::from(lacks))
        })
    }

    /// Drops a follower whose connection broke; it rejoins with FOLLOWERINFO.
    pub fn forget(&mut self, id: ServerId) {
        self.learners.remove(&id);
    }

    /// The driver froze its state at `zxid` for a learner that needed a snapshot.
    pub fn on_snapshot(&mut self, ctx: &mut Context, id: ServerId, zxid: Zxid) {
        let waiting = self.learners.get(&id).is_some_and(|l| l.phase == LearnerPhase::AwaitingSnapshot);
        if !waiting {
            return;
        }
        if zxid < ctx.log.base() || zxid > ctx.log.committed() {
            // Not joinable to the log held: ask again (the driver's state moved on).
            ctx.out.push(Action::TakeSnapshot { peer: id });
            return;
        }
        ctx.out.push(Action::SendSnapshot { to: id, epoch: self.epoch, zxid });
        self.send_history(ctx, id, zxid);
    }

    /// The commit point a quorum supports, if any (see the module docs).
    fn quorum_point(&self, ctx: &Context) -> Option<Zxid> {
        if !self.epoch_quorum {
            return None;
        }
        let mut acks: Vec<Zxid> =
            self.learners.iter().filter(|(_, l)| !l.observer && l.streaming()).map(|(_, l)| l.acked).collect();
        acks.push(ctx.log.durable());
        acks.sort_unstable_by(|a, b| b.cmp(a));
        acks.get(ctx.cfg.quorum() - 1).copied()
    }

    fn check_commit(&mut self, ctx: &mut Context) {
        let Some(point) = self.quorum_point(ctx) else { return };
        if point < self.initial {
            return;
        }
        if ctx.log.commit(point) {
            ctx.out.push(Action::Commit { through: point });
            for id in self.streaming_ids(true) {
                self.inform(ctx, id, point);
                ctx.send(id, Message::Commit { epoch: self.epoch, zxid: point });
            }
            self.release_syncs(ctx);
        }
        if !self.established {
            self.established = true;
            ctx.out.push(Action::RoleChanged(self.role()));
            let ids: Vec<ServerId> = self.learners.keys().copied().collect();
            for id in ids {
                self.maybe_up_to_date(ctx, id);
            }
            // Observers are brought in once the epoch's history is committed: they must
            // never hold (or be truncated of) what is not.
            let observers: Vec<ServerId> = self
                .learners
                .iter()
                .filter(|(_, l)| l.observer && matches!(l.phase, LearnerPhase::EpochAcked { .. }))
                .map(|(id, _)| *id)
                .collect();
            for id in observers {
                self.synchronise(ctx, id);
            }
        }
    }

    /// A sync from a client of this server (`me`) or, forwarded, of a follower: done when
    /// everything proposed so far is committed.
    pub fn client_sync(&mut self, ctx: &mut Context, id: u64) -> bool {
        if !self.established {
            return false;
        }
        self.add_sync(ctx, ctx.cfg.id, id);
        true
    }

    /// Queues a sync for the next confirmation round to start (one in flight started before
    /// it arrived, so its answers may predate it).
    fn add_sync(&mut self, ctx: &mut Context, from: ServerId, id: u64) {
        let in_flight = self.round > self.confirmed;
        let round = self.round + 1;
        self.syncs.push(PendingSync { from, id, zxid: ctx.log.last(), round });
        if !in_flight {
            self.start_round(ctx);
        }
    }

    /// Asks every voter following this leadership to confirm it.
    fn start_round(&mut self, ctx: &mut Context) {
        self.round += 1;
        self.heard.clear();
        let commit = ctx.log.committed();
        let voters: Vec<ServerId> =
            self.learners.iter().filter(|(_, l)| !l.observer && l.streaming()).map(|(id, _)| *id).collect();
        for id in voters {
            ctx.send(id, Message::Ping { epoch: self.epoch, commit, round: self.round });
        }
        self.check_round(ctx);
    }

    /// A quorum (this server included) answered the current round: the syncs waiting for
    /// it may go, and a next round starts if syncs arrived meanwhile.
    fn check_round(&mut self, ctx: &mut Context) {
        if self.round == self.confirmed || 1 + self.heard.len() < ctx.cfg.quorum() {
            return;
        }
        self.confirmed = self.round;
        self.release_syncs(ctx);
        if self.syncs.last().is_some_and(|s| s.round > self.confirmed) {
            self.start_round(ctx);
        }
    }

    fn release_syncs(&mut self, ctx: &mut Context) {
        let committed = ctx.log.committed();
        let done = self.syncs.iter().take_while(|s| s.zxid <= committed && s.round <= self.confirmed).count();
        for PendingSync { from, id, zxid, .. } in self.syncs.drain(..done).collect::<Vec<_>>() {
            if from == ctx.cfg.id {
                ctx.out.push(Action::Synced { id, zxid });
            } else if self.learners.get(&from).is_some_and(Learner::streaming) {
                ctx.send(from, Message::SyncDone { epoch: self.epoch, id, zxid });
            }
        }
    }

    /// Sends an observer the entries committed since the last ones it got (ZooKeeper's
    /// INFORM: observers see committed entries only).
    fn inform(&mut self, ctx: &mut Context, id: ServerId, point: Zxid) {
        let Some(l) = self.learners.get_mut(&id) else { return };
        if !l.observer || l.sent_through >= point {
            return;
        }
        let entries: Vec<LogEntry> =
            ctx.log.after(l.sent_through).into_iter().take_while(|e| e.zxid <= point).collect();
        l.sent_through = point;
        if !entries.is_empty() {
            ctx.send(id, Message::Append { epoch: self.epoch, entries });
        }
    }

    fn maybe_up_to_date(&mut self, ctx: &mut Context, id: ServerId) {
        if !self.established {
            return;
        }
        let Some(l) = self.learners.get_mut(&id) else { return };
        if l.phase == LearnerPhase::Synced && l.acked >= l.newleader_zxid {
            l.phase = LearnerPhase::UpToDate;
            ctx.send(id, Message::UpToDate { epoch: self.epoch, commit: ctx.log.committed() });
        }
    }

    /// Checks the leader's state and each learner's against the log.
    pub fn check_invariants(&self, ctx: &Context) {
        let last = ctx.log.last();
        if self.established {
            assert!(self.epoch_quorum, "established without a quorum for the epoch");
            assert!(self.epoch > 0 && ctx.current_epoch == self.epoch, "established in an epoch not accepted here");
        }
        assert!(self.syncs.windows(2).all(|w| w[0].zxid <= w[1].zxid), "syncs out of zxid order");
        assert!(self.syncs.windows(2).all(|w| w[0].round <= w[1].round), "syncs out of round order");
        assert!(self.confirmed <= self.round, "a round confirmed before it started");
        for (id, l) in &self.learners {
            assert!(*id != ctx.cfg.id && ctx.cfg.is_member(*id), "learner {id} is not another member");
            assert_eq!(l.observer, !ctx.cfg.is_voter(*id), "learner {id}: observer flag against the membership");
            assert!(l.acked <= last, "learner {id} acked {} beyond the log's last {last}", l.acked);
            assert!(l.newleader_zxid <= last && l.sent_through <= last, "learner {id} was sent beyond the log");
            if l.phase == LearnerPhase::UpToDate {
                assert!(self.established, "learner {id} up to date before the epoch is established");
            }
        }
    }

    /// The zxid the next proposal gets.
    pub fn next_zxid(&self, ctx: &Context) -> Result<Zxid, ZabError> {
        if !self.established {
            return Err(ZabError::NotEstablished);
        }
        let last = ctx.log.last();
        let next = if last.epoch() == self.epoch { last.next() } else { Some(Zxid::new(self.epoch, 1)) };
        next.ok_or(ZabError::EpochExhausted)
    }

    /// Proposes entries made from `payloads`, in order; returns their zxids.
    pub fn propose(&mut self, ctx: &mut Context, payloads: Vec<Payload>) -> Result<Vec<Zxid>, ZabError> {
        if !self.established {
            return Err(ZabError::NotEstablished);
        }
        let mut entries: Vec<LogEntry> = Vec::with_capacity(payloads.len());
        let mut last = ctx.log.last();
        for payload in payloads {
            let zxid = if last.epoch() == self.epoch { last.next() } else { Some(Zxid::new(self.epoch, 1)) };
            let Some(zxid) = zxid else { return Err(ZabError::EpochExhausted) };
            entries.push(LogEntry::new(zxid, payload));
            last = zxid;
        }
        let zxids: Vec<Zxid> = entries.iter().map(|e| e.zxid).collect();
        for entry in &entries {
            ctx.log.push(entry.clone());
        }
        for id in self.streaming_ids(false) {
            ctx.send(id, Message::Append { epoch: self.epoch, entries: entries.clone() });
        }
        ctx.out.push(Action::Append { entries });
        Ok(zxids)
    }

    /// Entries are durable here.
    pub fn on_durable(&mut self, ctx: &mut Context) {
        self.check_commit(ctx);
    }

    /// A tick: heartbeats; steps down without a quorum, or when establishing takes too long.
    pub fn on_tick(&mut self, ctx: &mut Context) -> Result<(), StepDown> {
        if !self.established {
            if ctx.now > self.started + ctx.cfg.init_limit_ticks {
                return Err(StepDown("no quorum established the epoch in time"));
            }
            return Ok(());
        }
        let (now, sync, init) = (ctx.now, ctx.cfg.sync_limit_ticks, ctx.cfg.init_limit_ticks);
        let alive = |l: &Learner| {
            let limit = if l.phase == LearnerPhase::UpToDate { sync } else { init };
            now <= l.last_heard + limit
        };
        if self.count(ctx, alive) < ctx.cfg.quorum() {
            return Err(StepDown("lost the quorum"));
        }
        let commit = ctx.log.committed();
        // A round in flight is asked again at every heartbeat: its first ping may have been
        // lost with a connection, or reached a follower not yet synchronised (which ignores
        // it), or a voter may have become streaming since. An answer to the repeat comes
        // after the round started, so it confirms the round's syncs as well.
        let round = if self.round > self.confirmed { self.round } else { 0 };
        for id in self.streaming_ids(true) {
            ctx.send(id, Message::Ping { epoch: self.epoch, commit, round });
        }
        Ok(())
    }
}
