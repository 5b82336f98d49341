//! What every role of a server shares: settings, clock, epochs, the log, and the queue of
//! actions for the driver.

use super::action::Action;
use super::config::ZabConfig;
use super::history::History;
use super::message::{LogEntry, Message, ServerId, Vote};
use crate::log::Zxid;

/// The state a server keeps whatever its role.
#[derive(Debug)]
pub struct Context {
    /// Settings.
    pub cfg: ZabConfig,
    /// Ticks since start.
    pub now: u64,
    /// The last epoch accepted from a LEADERINFO (persisted). Invariant: current <= accepted.
    pub accepted_epoch: u32,
    /// The epoch of the last NEWLEADER accepted (persisted).
    pub current_epoch: u32,
    /// The log.
    pub log: History,
    /// Actions for the driver, in order.
    pub out: Vec<Action>,
    /// Voting for no one until a leader has synchronised this server (see
    /// [`ZabConfig::resynchronising`]).
    pub abstaining: bool,
    /// Out of the ensemble until its disk has room again: looking, voting for no one and
    /// joining no one (see [`super::Zab::set_withdrawn`]).
    pub withdrawn: bool,
}

impl Context {
    /// Queues a message.
    pub fn send(&mut self, to: ServerId, msg: Message) {
        self.out.push(Action::Send { to, msg });
    }

    /// Queues making both epochs durable.
    pub fn save_epochs(&mut self) {
        self.out.push(Action::SaveEpochs { accepted: self.accepted_epoch, current: self.current_epoch });
    }

    /// This server's own vote: its current epoch and last zxid.
    pub fn own_vote(&self) -> Vote {
        if self.abstaining || self.withdrawn {
            return Vote::NONE;
        }
        Vote { epoch: self.current_epoch, zxid: self.log.last(), leader: self.cfg.id }
    }

    /// Starts synchronising a learner whose log ends at `last` (as the leader does for a
    /// follower and an observer for a downstream observer): returns the zxid to send the
    /// history from — after sending a TRUNC when its log diverged — or `None` when it is
    /// behind the log held here and needs a snapshot (asked of the driver).
    pub fn sync_start(&mut self, epoch: u32, id: ServerId, last: Zxid) -> Option<Zxid> {
        if self.log.contains(last) {
            Some(last)
        } else if last > self.log.base() {
            let keep = self.log.floor(last);
            self.send(id, Message::Trunc { epoch, zxid: keep });
            Some(keep)
        } else {
            self.out.push(Action::TakeSnapshot { peer: id });
            None
        }
    }

    /// Sends the entries in `(from, upto]` in DIFF-sized chunks, then NEWLEADER for `upto`.
    pub fn send_history(&mut self, epoch: u32, id: ServerId, from: Zxid, upto: Zxid) {
        let entries: Vec<LogEntry> = self.log.after(from).into_iter().take_while(|e| e.zxid <= upto).collect();
        for chunk in entries.chunks(self.cfg.diff_entries_max.max(1)) {
            self.send(id, Message::Append { epoch, entries: chunk.to_vec() });
        }
        self.send(id, Message::NewLeader { epoch, zxid: upto });
    }

    /// Invariants of the shared state.
    pub fn check_invariants(&self) {
        assert!(self.current_epoch <= self.accepted_epoch, "current epoch above accepted");
        self.log.check_invariants();
    }
}
