use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

/// A ZooKeeper transaction id: the leader's epoch in the high 32 bits and a counter within
/// that epoch in the low 32 bits, so that zxids order first by epoch (Zab paper, §3).
///
/// `Zxid::ZERO` means "no transaction yet"; every real transaction has counter ≥ 1.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord))]
pub struct Zxid(pub u64);

impl Zxid {
    /// The zxid before any transaction.
    pub const ZERO: Zxid = Zxid(0);

    /// The zxid with this epoch and counter.
    pub const fn new(epoch: u32, counter: u32) -> Zxid {
        Zxid(((epoch as u64) << 32) | counter as u64)
    }

    /// The leader epoch that issued this zxid.
    pub const fn epoch(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The position of this transaction within its epoch.
    pub const fn counter(self) -> u32 {
        self.0 as u32
    }

    /// The next zxid in the same epoch, or `None` when the counter would overflow (ZooKeeper
    /// then forces a new election; the caller must do the same).
    pub const fn next(self) -> Option<Zxid> {
        match self.counter().checked_add(1) {
            Some(counter) => Some(Zxid::new(self.epoch(), counter)),
            None => None,
        }
    }

    /// The raw 64-bit value as ZooKeeper puts it on the wire.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for Zxid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:x}", self.0)
    }
}

impl fmt::Display for Zxid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zxid_orders_by_epoch_then_counter() {
        assert!(Zxid::new(1, u32::MAX) < Zxid::new(2, 1));
        assert_eq!(Zxid::new(3, 7).epoch(), 3);
        assert_eq!(Zxid::new(3, 7).counter(), 7);
        assert_eq!(Zxid::new(3, 7).as_u64(), (3 << 32) | 7);
    }

    #[test]
    fn zxid_next_refuses_counter_overflow() {
        assert_eq!(Zxid::new(1, 1).next(), Some(Zxid::new(1, 2)));
        assert_eq!(Zxid::new(1, u32::MAX).next(), None);
    }
}
