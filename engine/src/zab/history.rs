//! The protocol's view of the local log: entries after a base (what a snapshot covers),
//! with the durable and committed points.

use std::collections::VecDeque;

use super::message::LogEntry;
use crate::log::Zxid;

/// The log as the protocol core tracks it. Entries are kept in memory from `base` on so that
/// a leader can send a follower the DIFF it lacks; [`super::Zab::compact`] drops the prefix a
/// snapshot covers (a follower behind it then gets a SNAP).
#[derive(Debug, Clone)]
pub struct History {
    /// Everything up to `base` is in the state (snapshot); entries follow it.
    base: Zxid,
    /// Invariant: zxids strictly increase and are all above `base`.
    entries: VecDeque<LogEntry>,
    /// Invariant: base <= durable <= last().
    durable: Zxid,
    /// Invariant: base <= committed <= last(). (Committed entries may not yet be durable
    /// here: a quorum elsewhere has them.)
    committed: Zxid,
}

impl History {
    /// A history of durable entries after `base` (as recovered from a snapshot and a WAL).
    pub fn recovered(base: Zxid, entries: Vec<LogEntry>) -> History {
        let entries: VecDeque<LogEntry> = entries.into_iter().filter(|e| e.zxid > base).collect();
        let last = entries.back().map_or(base, |e| e.zxid);
        let h = History { base, entries, durable: last, committed: base };
        h.check_invariants();
        h
    }

    /// The snapshot point.
    pub fn base(&self) -> Zxid {
        self.base
    }

    /// The last logged zxid.
    pub fn last(&self) -> Zxid {
        self.entries.back().map_or(self.base, |e| e.zxid)
    }

    /// The last durable zxid.
    pub fn durable(&self) -> Zxid {
        self.durable
    }

    /// The commit point.
    pub fn committed(&self) -> Zxid {
        self.committed
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, zxid: Zxid) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| e.zxid.cmp(&zxid))
    }

    /// Whether `zxid` is the base or a logged entry: a log ending there is a prefix of this.
    pub fn contains(&self, zxid: Zxid) -> bool {
        zxid == self.base || self.position(zxid).is_ok()
    }

    /// The greatest zxid held that is `<= zxid` (the base if none).
    pub fn floor(&self, zxid: Zxid) -> Zxid {
        match self.position(zxid) {
            Ok(_) => zxid,
            Err(0) => self.base,
            Err(i) => self.entries[i - 1].zxid,
        }
    }

    /// Entries above `zxid` (which must be at least the base).
    pub fn after(&self, zxid: Zxid) -> Vec<LogEntry> {
        let start = match self.position(zxid) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        self.entries.range(start..).cloned().collect()
    }

    /// Entries above `after` up to `through`, in order (what a commit point's advance makes
    /// appliable), without touching the rest of the log.
    pub fn range(&self, after: Zxid, through: Zxid) -> impl Iterator<Item = &LogEntry> + '_ {
        let start = match self.position(after) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        self.entries.range(start..).take_while(move |e| e.zxid <= through)
    }

    /// The payload logged at `zxid`.
    pub fn get(&self, zxid: Zxid) -> Option<&LogEntry> {
        self.position(zxid).ok().map(|i| &self.entries[i])
    }

    /// Whether `next` may follow the last entry: zxids within an epoch are consecutive, and
    /// an epoch's history starts at counter 1 (a snapshot base stands for its last entry).
    pub fn follows(&self, next: Zxid) -> bool {
        let last = self.last();
        if next <= last {
            return false;
        }
        if next.epoch() == last.epoch() && last != Zxid::ZERO {
            last.next() == Some(next)
        } else {
            next.counter() == 1
        }
    }

    /// Appends one entry. Precondition: `follows(entry.0)` (checked by the callers, who
    /// treat a gap as a broken stream).
    pub fn push(&mut self, entry: LogEntry) {
        assert!(entry.zxid > self.last(), "log entries must increase");
        self.entries.push_back(entry);
    }

    /// Records that everything up to `zxid` is durable.
    pub fn mark_durable(&mut self, zxid: Zxid) {
        self.durable = self.durable.max(zxid.min(self.last()));
    }

    /// Moves the commit point up to `zxid` (never down, never past the log).
    pub fn commit(&mut self, zxid: Zxid) -> bool {
        let zxid = zxid.min(self.last());
        if zxid > self.committed {
            self.committed = zxid;
            return true;
        }
        false
    }

    /// Drops every entry above `after`. Returns false (changing nothing) if that would cut a
    /// committed entry.
    pub fn truncate_after(&mut self, after: Zxid) -> bool {
        if after < self.committed || after < self.base {
            return false;
        }
        while self.entries.back().is_some_and(|e| e.zxid > after) {
            self.entries.pop_back();
        }
        self.durable = self.durable.min(self.last());
        true
    }

    /// Replaces everything with a snapshot at `zxid` (committed and durable).
    pub fn reset(&mut self, zxid: Zxid) {
        self.entries.clear();
        self.base = zxid;
        self.durable = zxid;
        self.committed = zxid;
    }

    /// Drops the entries up to `through` (at most the commit point): a snapshot covers them.
    pub fn compact(&mut self, through: Zxid) {
        let through = through.min(self.committed);
        if through <= self.base {
            return;
        }
        while self.entries.front().is_some_and(|e| e.zxid <= through) {
            self.entries.pop_front();
        }
        self.base = through;
        // The snapshot holds them durably, even those the log had not synced yet.
        self.durable = self.durable.max(through);
    }

    /// Checks the invariants (always in the simulator, in debug builds otherwise).
    pub fn check_invariants(&self) {
        let last = self.last();
        assert!(self.base <= self.durable && self.durable <= last, "durable out of range: {self:?}");
        assert!(self.base <= self.committed && self.committed <= last, "committed out of range");
        debug_assert!(self.entries.iter().zip(self.entries.iter().skip(1)).all(|(a, b)| a.zxid < b.zxid));
        assert!(self.entries.front().is_none_or(|e| e.zxid > self.base));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: u32, counter: u32) -> LogEntry {
        LogEntry::new(Zxid::new(epoch, counter), vec![counter as u8].into())
    }

    #[test]
    fn floor_after_and_contains_follow_the_log() {
        let h = History::recovered(Zxid::new(1, 2), vec![entry(1, 3), entry(1, 4), entry(3, 1)]);
        assert!(h.contains(Zxid::new(1, 2)) && h.contains(Zxid::new(1, 4)) && !h.contains(Zxid::new(2, 1)));
        assert_eq!(h.floor(Zxid::new(2, 7)), Zxid::new(1, 4));
        assert_eq!(h.floor(Zxid::new(1, 1)), Zxid::new(1, 2));
        assert_eq!(h.after(Zxid::new(1, 3)).len(), 2);
        assert_eq!(h.after(Zxid::new(2, 9)), vec![entry(3, 1)]);
        assert!(h.follows(Zxid::new(3, 2)) && h.follows(Zxid::new(4, 1)));
        assert!(!h.follows(Zxid::new(3, 3)) && !h.follows(Zxid::new(4, 2)) && !h.follows(Zxid::new(3, 1)));
    }

    #[test]
    fn truncation_never_cuts_a_committed_entry() {
        let mut h = History::recovered(Zxid::ZERO, vec![entry(1, 1), entry(1, 2), entry(1, 3)]);
        assert!(h.commit(Zxid::new(1, 2)));
        assert!(!h.truncate_after(Zxid::new(1, 1)));
        assert_eq!(h.last(), Zxid::new(1, 3));
        assert!(h.truncate_after(Zxid::new(1, 2)));
        assert_eq!((h.last(), h.durable()), (Zxid::new(1, 2), Zxid::new(1, 2)));
        h.check_invariants();
    }

    #[test]
    fn compaction_keeps_what_is_not_committed() {
        let mut h = History::recovered(Zxid::ZERO, vec![entry(1, 1), entry(1, 2), entry(1, 3)]);
        h.commit(Zxid::new(1, 2));
        h.compact(Zxid::new(1, 3));
        assert_eq!((h.base(), h.len()), (Zxid::new(1, 2), 1));
        h.check_invariants();
    }
}
