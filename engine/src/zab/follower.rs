//! The follower's side of discovery, synchronisation and broadcast (ZooKeeper's
//! `Learner.registerWithLeader`, `syncWithLeader` and `Follower.processPacket`).
//!
//! ```text
//!  FOLLOWERINFO ─▶            ◀─ LEADERINFO(e)     accept e (> accepted epoch), persist
//!  ACKEPOCH ─▶                ◀─ TRUNC / SNAP / DIFF entries
//!                             ◀─ NEWLEADER(e, z)   once durable up to z: current epoch = e
//!  ACK(z) ─▶                  ◀─ UPTODATE           serve clients
//!                             ◀─ PROPOSAL … COMMIT  append, ack what is durable, apply
//! ```

use super::action::Action;
use super::context::Context;
use super::message::{LogEntry, Message, ServerId};
use super::relay::Relay;
use super::role::Role;
use crate::log::{SessionId, Zxid};

/// Where a follower is with its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// FOLLOWERINFO sent, waiting for LEADERINFO.
    Discovery,
    /// Epoch acknowledged; receiving the history.
    Sync,
    /// NEWLEADER accepted: the log is the leader's prefix; acks count.
    Synced,
}

/// A follower of one leader.
#[derive(Debug)]
pub struct Follower {
    /// The leader.
    pub leader: ServerId,
    /// The leader's epoch (0 until LEADERINFO).
    pub epoch: u32,
    phase: Phase,
    /// NEWLEADER received for this zxid; accepted once the log is durable up to it.
    pending_newleader: Option<Zxid>,
    serving: bool,
    last_heard: u64,
    /// Syncs sent to the leader and not yet answered.
    requested: std::collections::BTreeSet<u64>,
    /// Syncs answered by the leader, waiting for the commit point to reach theirs.
    /// Invariant: sorted by zxid (the leader answers in commit order on a FIFO link).
    syncs: Vec<(u64, Zxid)>,
    /// Downstream observers (when this server is an observer).
    relay: Relay,
    /// A SNAP being received: nothing else comes from the leader until its end.
    incoming: Option<Incoming>,
}

/// A SNAP being received: the zxid it covers, and the length and hash of the bytes so far.
struct Incoming {
    zxid: Zxid,
    bytes: u64,
    hash: Box<xxhash_rust::xxh3::Xxh3>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").field("zxid", &self.zxid).field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

/// The follower gives up on its leader.
#[derive(Debug, PartialEq, Eq)]
pub struct LostLeader(pub &'static str);

impl Follower {
    /// Starts following `leader`: sends FOLLOWERINFO.
    pub fn start(ctx: &mut Context, leader: ServerId) -> Follower {
        let f = Follower {
            leader,
            epoch: 0,
            phase: Phase::Discovery,
            pending_newleader: None,
            serving: false,
            last_heard: ctx.now,
            requested: std::collections::BTreeSet::new(),
            syncs: Vec::new(),
            relay: Relay::default(),
            incoming: None,
        };
        f.send_info(ctx);
        f
    }

    fn send_info(&self, ctx: &mut Context) {
        let msg = Message::FollowerInfo { accepted_epoch: ctx.accepted_epoch, last_zxid: ctx.log.last() };
        ctx.send(self.leader, msg);
    }

    /// The role to report.
    pub fn role(&self) -> Role {
        Role::Following { leader: self.leader, epoch: self.epoch, serving: self.serving }
    }

    /// A message from the leader (or upstream observer).
    pub fn on_message(&mut self, ctx: &mut Context, msg: Message) -> Result<(), LostLeader> {
        // Only an observer with downstream observers keeps a copy to relay.
        let relayed = match &msg {
            Message::Append { .. } | Message::Commit { .. } | Message::Ping { .. } if !self.relay.is_empty() => {
                Some(msg.clone())
            }
            _ => None,
        };
        self.on_message_inner(ctx, msg)?;
        if let Some(msg) = relayed.filter(|_| self.phase == Phase::Synced) {
            self.relay.relay(ctx, &msg);
        }
        Ok(())
    }

    /// A message from a downstream observer.
    pub fn on_learner_message(&mut self, ctx: &mut Context, from: ServerId, msg: Message) {
        let observer = !ctx.cfg.is_voter(ctx.cfg.id);
        if !observer || !self.serving || ctx.cfg.is_voter(from) {
            return;
        }
        if let Some(upstream) = self.relay.on_message(ctx, self.epoch, from, msg) {
            ctx.send(self.leader, upstream);
        }
    }

    /// Reports sessions seen alive here to the leader (once synchronised with it).
    pub fn touch(&mut self, ctx: &mut Context, sessions: Vec<SessionId>) -> bool {
        if self.phase != Phase::Synced || sessions.is_empty() {
            return false;
        }
        ctx.send(self.leader, Message::Touch { epoch: self.epoch, sessions });
        true
    }

    /// A downstream observer's connection broke.
    pub fn forget(&mut self, id: ServerId) {
        self.relay.forget(id);
    }

    /// The driver's snapshot for a downstream observer.
    pub fn on_snapshot(&mut self, ctx: &mut Context, id: ServerId, zxid: Zxid) {
        self.relay.on_snapshot(ctx, self.epoch, id, zxid);
    }

    fn on_message_inner(&mut self, ctx: &mut Context, msg: Message) -> Result<(), LostLeader> {
        if let Message::FollowerInfo { .. } = msg {
            // The server this one follows is following this one: two servers that each
            // decided the other leads. Hearing from it is no sign of a leader (kept as one,
            // they would keep each other from ever timing out — simulator seed 1820).
            return Err(LostLeader("the leader it follows follows it"));
        }
        self.last_heard = ctx.now;
        if let Message::LeaderInfo { epoch } = msg {
            return self.on_leader_info(ctx, epoch);
        }
        if self.epoch == 0 || msg.epoch() != Some(self.epoch) {
            return Ok(()); // another epoch's message (a previous leadership): not ours
        }
        // A SNAP's pieces come together on the FIFO link: nothing else between them.
        if self.incoming.is_some() && !matches!(msg, Message::SnapChunk { .. } | Message::SnapEnd { .. }) {
            return Err(LostLeader("a SNAP interleaved with other messages"));
        }
        match msg {
            Message::Trunc { zxid, .. } if self.phase == Phase::Sync => {
                if !ctx.log.truncate_after(zxid) {
                    return Err(LostLeader("TRUNC would cut a committed entry"));
                }
                ctx.out.push(Action::Truncate { after: zxid });
            }
            Message::Snap { zxid, .. } if self.phase == Phase::Sync => {
                self.incoming = Some(Incoming { zxid, bytes: 0, hash: Box::default() });
                ctx.out.push(Action::SnapshotBegin { zxid });
            }
            Message::SnapChunk { data, .. } => {
                let Some(incoming) = self.incoming.as_mut() else {
                    return Err(LostLeader("a SNAP chunk outside a SNAP"));
                };
                incoming.bytes += data.len() as u64;
                incoming.hash.update(&data);
                ctx.out.push(Action::SnapshotChunk { data });
            }
            Message::SnapEnd { bytes, checksum, .. } => {
                let Some(incoming) = self.incoming.take() else {
                    return Err(LostLeader("a SNAP end outside a SNAP"));
                };
                if incoming.bytes != bytes || incoming.hash.digest() != checksum {
                    return Err(LostLeader("a SNAP whose bytes do not match its length and checksum"));
                }
                ctx.log.reset(incoming.zxid);
                ctx.out.push(Action::InstallSnapshot { zxid: incoming.zxid });
            }
            Message::Append { entries, .. } => self.append(ctx, entries)?,
            Message::NewLeader { zxid, .. } if self.phase == Phase::Sync => {
                if ctx.log.last() != zxid {
                    return Err(LostLeader("NEWLEADER does not match the synchronised log"));
                }
                self.pending_newleader = Some(zxid);
                self.try_accept_newleader(ctx);
            }
            Message::UpToDate { commit, .. } if self.phase == Phase::Synced => {
                self.commit(ctx, commit)?;
                if !self.serving {
                    self.serving = true;
                    ctx.out.push(Action::RoleChanged(self.role()));
                }
            }
            Message::Commit { zxid, .. } => self.commit(ctx, zxid)?,
            // Only syncs of this following (a duplicate or an answer to an earlier one is not
            // ours to complete).
            Message::SyncDone { id, zxid, .. } if self.requested.remove(&id) => {
                self.syncs.push((id, zxid));
                self.release_syncs(ctx);
            }
            Message::SyncDone { id, zxid, epoch } => {
                self.relay.sync_done(ctx, epoch, id, zxid);
            }
            Message::Ping { commit, round, .. } if self.phase == Phase::Synced => {
                self.commit(ctx, commit)?;
                ctx.send(self.leader, Message::Ack { epoch: self.epoch, zxid: ctx.log.durable() });
                // Only a voter's word confirms a leadership (an observer relays the ping on).
                if round > 0 && ctx.cfg.is_voter(ctx.cfg.id) {
                    ctx.send(self.leader, Message::Heard { epoch: self.epoch, round });
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_leader_info(&mut self, ctx: &mut Context, epoch: u32) -> Result<(), LostLeader> {
        if self.phase != Phase::Discovery {
            return Ok(()); // a duplicate from a re-sent FOLLOWERINFO
        }
        // An observer promises nothing with its epochs (it never votes or counts): it
        // follows whatever established leadership it is given.
        let observer = !ctx.cfg.is_voter(ctx.cfg.id);
        if epoch < ctx.accepted_epoch && !observer {
            return Err(LostLeader("the leader's epoch is below the accepted one"));
        }
        let fresh = epoch > ctx.accepted_epoch;
        if fresh {
            ctx.accepted_epoch = epoch;
            ctx.save_epochs();
        }
        self.epoch = epoch;
        self.phase = Phase::Sync;
        ctx.out.push(Action::RoleChanged(self.role()));
        let ack = Message::AckEpoch { epoch, current_epoch: ctx.current_epoch, last_zxid: ctx.log.last(), fresh };
        ctx.send(self.leader, ack);
        Ok(())
    }

    fn append(&mut self, ctx: &mut Context, entries: Vec<LogEntry>) -> Result<(), LostLeader> {
        if self.phase == Phase::Discovery {
            return Ok(());
        }
        let mut fresh = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(have) = ctx.log.get(entry.zxid) {
                if have.payload != entry.payload {
                    return Err(LostLeader("an entry differs from the logged one with its zxid"));
                }
                continue; // sent again after a reconnect
            }
            if !ctx.log.follows(entry.zxid) {
                return Err(LostLeader("a gap in the leader's stream"));
            }
            ctx.log.push(entry.clone());
            fresh.push(entry);
        }
        if !fresh.is_empty() {
            ctx.out.push(Action::Append { entries: fresh });
        }
        Ok(())
    }

    fn try_accept_newleader(&mut self, ctx: &mut Context) {
        let Some(zxid) = self.pending_newleader else { return };
        if ctx.log.durable() < zxid {
            return;
        }
        self.pending_newleader = None;
        self.phase = Phase::Synced;
        ctx.current_epoch = self.epoch;
        ctx.save_epochs();
        ctx.send(self.leader, Message::Ack { epoch: self.epoch, zxid: ctx.log.durable() });
    }

    fn commit(&mut self, ctx: &mut Context, zxid: Zxid) -> Result<(), LostLeader> {
        if zxid > ctx.log.last() {
            return Err(LostLeader("commit beyond the log: entries were lost on the way"));
        }
        if ctx.log.commit(zxid) {
            ctx.out.push(Action::Commit { through: zxid });
        }
        self.release_syncs(ctx);
        Ok(())
    }

    fn release_syncs(&mut self, ctx: &mut Context) {
        let committed = ctx.log.committed();
        let done = self.syncs.iter().take_while(|(_, z)| *z <= committed).count();
        for (id, zxid) in self.syncs.drain(..done) {
            ctx.out.push(Action::Synced { id, zxid });
        }
    }

    /// A client's sync: forwarded to the leader once synchronised with it.
    pub fn client_sync(&mut self, ctx: &mut Context, id: u64) -> bool {
        if !self.serving {
            return false;
        }
        self.requested.insert(id);
        ctx.send(self.leader, Message::Sync { epoch: self.epoch, id });
        true
    }

    /// Entries up to `zxid` are durable here.
    pub fn on_durable(&mut self, ctx: &mut Context) {
        if self.phase == Phase::Synced {
            ctx.send(self.leader, Message::Ack { epoch: self.epoch, zxid: ctx.log.durable() });
        } else {
            self.try_accept_newleader(ctx);
        }
    }

    /// A tick: gives up on a silent leader; re-sends FOLLOWERINFO while unanswered.
    pub fn on_tick(&mut self, ctx: &mut Context) -> Result<(), LostLeader> {
        let limit = if self.serving { ctx.cfg.sync_limit_ticks } else { ctx.cfg.init_limit_ticks };
        if ctx.now > self.last_heard + limit {
            return Err(LostLeader("the leader went silent"));
        }
        if self.phase == Phase::Discovery {
            self.send_info(ctx);
        }
        Ok(())
    }
}
