//! The simulated network: one connection per pair of servers carrying a FIFO stream each way,
//! with seeded delay, connection resets (a message lost with everything still in flight on
//! the connection, and both ends told, as TCP eventually tells them), adjacent duplicates (a
//! retransmission after a reconnect) and partitions of any shape (the connections across the
//! cut reset, and every attempt to send across it fails the same way until it heals).

use std::collections::{BTreeMap, BTreeSet};

use baton_engine::zab::{Message, ServerId};
use rand::rngs::StdRng;
use rand::Rng;

/// Fault rates of the network.
#[derive(Debug, Clone, Copy)]
pub struct NetFaults {
    /// Chance that a send resets its link's connection (it and everything in flight is lost).
    pub reset: f64,
    /// Chance that a message is delivered twice in a row.
    pub duplicate: f64,
    /// Delay range in ms.
    pub delay_ms: (u64, u64),
}

impl NetFaults {
    /// A network that only delays.
    pub const CALM: NetFaults = NetFaults { reset: 0.0, duplicate: 0.0, delay_ms: (1, 5) };
}

#[derive(Debug, Default, Clone, Copy)]
struct Link {
    conn: u64,
    last_at: u64,
}

/// A message on its way.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// Sender.
    pub from: ServerId,
    /// Receiver.
    pub to: ServerId,
    /// The connection it was sent on; delivered only if the link still has it.
    pub conn: u64,
    /// The message.
    pub msg: Message,
}

/// What became of a send.
#[derive(Debug)]
pub enum Sent {
    /// Deliveries to schedule (one, or two for a duplicate).
    Delivered(Vec<(u64, InFlight)>),
    /// The connection reset: the message and everything in flight on it are lost, and both
    /// ends must be told.
    Reset,
}

/// Links, partitions and fault rates.
#[derive(Debug, Default)]
pub struct Network {
    links: BTreeMap<(ServerId, ServerId), Link>,
    /// Links that lose everything (one direction each).
    blocked: BTreeSet<(ServerId, ServerId)>,
    /// Messages sent, lost, duplicated (for the run's report).
    pub sent: u64,
    /// Messages lost to resets and partitions.
    pub lost: u64,
}

impl Network {
    /// Sends: returns the deliveries to schedule (time, message), none if it is lost.
    pub fn send(
        &mut self,
        rng: &mut StdRng,
        faults: &NetFaults,
        now: u64,
        from: ServerId,
        to: ServerId,
        msg: Message,
    ) -> Sent {
        self.sent += 1;
        if self.blocked.contains(&(from, to)) || rng.random_bool(faults.reset) {
            self.lost += 1;
            self.reset(now, from, to);
            return Sent::Reset;
        }
        let link = self.links.entry((from, to)).or_default();
        let delay = rng.random_range(faults.delay_ms.0..=faults.delay_ms.1);
        let at = (now + delay).max(link.last_at);
        link.last_at = at;
        let flight = InFlight { from, to, conn: link.conn, msg };
        let mut out = vec![(at, flight.clone())];
        if rng.random_bool(faults.duplicate) {
            out.push((at, flight));
        }
        Sent::Delivered(out)
    }

    /// Resets the connection between `a` and `b` (both directions). Messages sent on the next
    /// connection arrive after the ends have been told (at `now + 1`).
    pub fn reset(&mut self, now: u64, a: ServerId, b: ServerId) {
        for pair in [(a, b), (b, a)] {
            let link = self.links.entry(pair).or_default();
            link.conn += 1;
            link.last_at = link.last_at.max(now + 2);
        }
    }

    /// Whether a message still travels on its connection.
    pub fn alive(&self, flight: &InFlight) -> bool {
        self.links.get(&(flight.from, flight.to)).is_some_and(|l| l.conn == flight.conn)
            && !self.blocked.contains(&(flight.from, flight.to))
    }

    /// Cuts every link between the two groups, both ways; returns the connections reset.
    pub fn partition(&mut self, now: u64, a: &[ServerId], b: &[ServerId]) -> Vec<(ServerId, ServerId)> {
        let mut cut = Vec::new();
        for &x in a {
            for &y in b {
                self.blocked.insert((x, y));
                self.blocked.insert((y, x));
                self.reset(now, x, y);
                cut.push((x, y));
            }
        }
        cut
    }

    /// Cuts the links between these pairs only (both ways): a partition that need not split
    /// the servers into groups (A and B cut off from each other, both still reaching C).
    pub fn cut_links(&mut self, now: u64, pairs: &[(ServerId, ServerId)]) {
        for &(x, y) in pairs {
            self.blocked.insert((x, y));
            self.blocked.insert((y, x));
            self.reset(now, x, y);
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Whether any link is cut.
    pub fn partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }
}
