//! What every role of a server shares: settings, clock, epochs, the log, and the queue of
//! actions for the driver.

use super::action::Action;
use super::config::ZabConfig;
use super::history::History;
use super::message::{Message, ServerId, Vote};

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
        Vote { epoch: self.current_epoch, zxid: self.log.last(), leader: self.cfg.id }
    }

    /// Invariants of the shared state.
    pub fn check_invariants(&self) {
        assert!(self.current_epoch <= self.accepted_epoch, "current epoch above accepted");
        self.log.check_invariants();
    }
}
