//! An observer feeding other observers (ZooKeeper's observer master): a serving observer
//! takes FOLLOWERINFO from downstream observers, synchronises them from its own log (which
//! holds committed entries only) and relays every committed entry, commit and ping it receives,
//! so a change can fan out as a tree without the leader sending to every observer.

use std::collections::BTreeMap;

use super::action::Action;
use super::context::Context;
use super::message::{Message, ServerId};
use crate::log::Zxid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Info,
    AwaitingSnapshot,
    /// History and NEWLEADER sent up to this zxid.
    Synced(Zxid),
    UpToDate,
}

/// The downstream observers of one observer.
#[derive(Debug, Default)]
pub struct Relay {
    downstream: BTreeMap<ServerId, Phase>,
    /// Syncs forwarded upstream under our own ids: ours → (downstream, its id).
    syncs: BTreeMap<u64, (ServerId, u64)>,
    next_sync: u64,
}

impl Relay {
    fn streaming(phase: Phase) -> bool {
        matches!(phase, Phase::Synced(_) | Phase::UpToDate)
    }

    fn ids(&self) -> Vec<ServerId> {
        self.downstream.iter().filter(|(_, p)| Relay::streaming(**p)).map(|(id, _)| *id).collect()
    }

    /// A message from a downstream observer; `epoch` is this observer's leader's epoch.
    /// Returns what to forward upstream (a sync under our own id, or its sessions' touches).
    pub fn on_message(&mut self, ctx: &mut Context, epoch: u32, from: ServerId, msg: Message) -> Option<Message> {
        match msg {
            Message::FollowerInfo { .. } => {
                self.downstream.insert(from, Phase::Info);
                ctx.send(from, Message::LeaderInfo { epoch });
            }
            Message::AckEpoch { epoch: e, last_zxid, .. }
                if e == epoch && self.downstream.get(&from) == Some(&Phase::Info) =>
            {
                self.synchronise(ctx, epoch, from, last_zxid);
            }
            Message::Ack { epoch: e, zxid } if e == epoch => {
                if let Some(Phase::Synced(newleader)) = self.downstream.get(&from).copied() {
                    if zxid >= newleader {
                        self.downstream.insert(from, Phase::UpToDate);
                        ctx.send(from, Message::UpToDate { epoch, commit: ctx.log.committed() });
                    }
                }
            }
            Message::Touch { epoch: e, sessions }
                if e == epoch && self.downstream.get(&from).is_some_and(|p| Relay::streaming(*p)) =>
            {
                return Some(Message::Touch { epoch, sessions });
            }
            Message::Sync { epoch: e, id }
                if e == epoch && self.downstream.get(&from).is_some_and(|p| Relay::streaming(*p)) =>
            {
                self.next_sync += 1;
                self.syncs.insert(self.next_sync, (from, id));
                return Some(Message::Sync { epoch, id: self.next_sync });
            }
            _ => {}
        }
        None
    }

    /// Brings a downstream observer to this log: DIFF (after a TRUNC if it diverged) or SNAP.
    fn synchronise(&mut self, ctx: &mut Context, epoch: u32, id: ServerId, last: Zxid) {
        match ctx.sync_start(epoch, id, last) {
            Some(from) => self.send_history(ctx, epoch, id, from),
            None => {
                self.downstream.insert(id, Phase::AwaitingSnapshot);
            }
        }
    }

    fn send_history(&mut self, ctx: &mut Context, epoch: u32, id: ServerId, from: Zxid) {
        // An observer's log holds only entries that were committed when it received them
        // (its commit point may lag until the COMMIT that follows them arrives).
        let upto = ctx.log.last();
        ctx.send_history(epoch, id, from, upto);
        self.downstream.insert(id, Phase::Synced(upto));
    }

    /// The driver froze its state at `zxid` for a downstream observer that needed a snapshot.
    pub fn on_snapshot(&mut self, ctx: &mut Context, epoch: u32, id: ServerId, zxid: Zxid) {
        if self.downstream.get(&id) != Some(&Phase::AwaitingSnapshot) {
            return;
        }
        if zxid < ctx.log.base() || zxid > ctx.log.committed() {
            ctx.out.push(Action::TakeSnapshot { peer: id });
            return;
        }
        ctx.out.push(Action::SendSnapshot { to: id, epoch, zxid });
        self.send_history(ctx, epoch, id, zxid);
    }

    /// Passes on what came from upstream: committed entries, commits and pings.
    pub fn relay(&mut self, ctx: &mut Context, msg: &Message) {
        for id in self.ids() {
            ctx.send(id, msg.clone());
        }
    }

    /// An answer to a sync forwarded upstream: pass it to the downstream observer.
    pub fn sync_done(&mut self, ctx: &mut Context, epoch: u32, id: u64, zxid: Zxid) {
        if let Some((to, theirs)) = self.syncs.remove(&id) {
            ctx.send(to, Message::SyncDone { epoch, id: theirs, zxid });
        }
    }

    /// Whether any downstream observer is attached.
    pub fn is_empty(&self) -> bool {
        self.downstream.is_empty()
    }

    /// A downstream observer's connection broke: it rejoins.
    pub fn forget(&mut self, id: ServerId) {
        self.downstream.remove(&id);
    }
}
