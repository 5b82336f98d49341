//! Quota enforcement in prep (ZooKeeper 3.7+'s `ZooKeeperServer.checkQuota`, on when
//! `zookeeper.enforceQuota` is): a create (one more znode, its data's bytes) or a setData
//! (the change in bytes) under a quota root is checked against the limits of the **longest**
//! root holding the path. Past a hard limit (`countHardLimit`, `byteHardLimit`: zkCli's
//! `-N`, `-B`) it fails with QuotaExceeded; past a soft one (`count`, `bytes`: `-n`, `-b`)
//! it only logs `Quota exceeded: /p [current count=11, softCountLimit=10]` (a hard one logs
//! too), paced as ZooKeeper's `RateLogger`. When a root has both kinds, only the hard limit
//! is compared (as ZooKeeper).
//!
//! The usage compared is the tree's committed usage **plus the writes still in flight**,
//! where ZooKeeper reads only the committed stats znode: pipelined creates would otherwise
//! all pass against the same committed count and overshoot a hard limit by up to a batch.
//! In-flight deletes count too, so usage is never overstated. The roots and limits used are
//! the committed ones (ZooKeeper's too).

use std::collections::{HashMap, VecDeque};

use crate::log::Zxid;
use crate::tree::{ErrorCode, QuotaLimits, QuotaUsage};

/// Usage changes of quota roots by entries prepared but not yet applied.
#[derive(Debug, Clone, Default)]
pub(super) struct InFlightUsage {
    /// Oldest first. Invariant: zxids never decrease.
    changes: VecDeque<(Zxid, String, QuotaUsage)>,
    /// Per root, the sum of `changes`.
    sums: HashMap<String, QuotaUsage>,
}

impl InFlightUsage {
    pub(super) fn add(&mut self, zxid: Zxid, root: &str, count: i64, bytes: i64) {
        if count == 0 && bytes == 0 {
            return;
        }
        self.changes.push_back((zxid, root.to_string(), QuotaUsage { count, bytes }));
        let sum = self.sums.entry(root.to_string()).or_default();
        sum.count += count;
        sum.bytes += bytes;
    }

    /// The in-flight change of `root`'s usage.
    pub(super) fn of(&self, root: &str) -> QuotaUsage {
        self.sums.get(root).copied().unwrap_or_default()
    }

    /// Forgets the changes the tree reflects once `zxid` is applied.
    pub(super) fn committed(&mut self, zxid: Zxid) {
        while self.changes.front().is_some_and(|(z, _, _)| *z <= zxid) {
            let Some((_, root, change)) = self.changes.pop_front() else { break };
            if let Some(sum) = self.sums.get_mut(&root) {
                sum.count -= change.count;
                sum.bytes -= change.bytes;
                if *sum == QuotaUsage::default() {
                    self.sums.remove(&root);
                }
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// A limit passed: the log line, and whether it refuses the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Exceeded {
    pub message: String,
    pub hard: bool,
}

/// ZooKeeper's `checkQuota(lastPrefix, bytesDiff, countDiff)`: the count first, then the
/// bytes; each only if it changes and a limit of its kind is set. Stops at the first hard
/// limit passed (ZooKeeper throws there). Pure: the caller logs and refuses.
pub(super) fn check(root: &str, limits: QuotaLimits, usage: QuotaUsage, count: i64, bytes: i64) -> Vec<Exceeded> {
    let mut out = Vec::new();
    let checks = [
        (count, usage.count, limits.count, limits.count_hard, "count", "Count"),
        (bytes, usage.bytes, limits.bytes, limits.bytes_hard, "bytes", "Byte"),
    ];
    for (diff, current, soft, hard, what, kind) in checks {
        if diff == 0 || (soft < 0 && hard < 0) {
            continue;
        }
        let new = current + diff;
        let (limit, is_hard) = if hard > -1 { (hard, true) } else { (soft, false) };
        if new > limit {
            let level = if is_hard { "hard" } else { "soft" };
            out.push(Exceeded {
                message: format!("Quota exceeded: {root} [current {what}={new}, {level}{kind}Limit={limit}]"),
                hard: is_hard,
            });
            if is_hard {
                break;
            }
        }
    }
    out
}

/// ZooKeeper's `RateLogger`, by the requests' wall-clock time (the engine reads no clock): a
/// line unlike the last goes out at once; the same line again goes out at most once a
/// second, and the repeats held back are counted into the next line.
#[derive(Debug, Default)]
pub(super) struct LogPace {
    last: Option<(i64, String)>,
    suppressed: u64,
}

impl LogPace {
    /// `Some(lines held back since the last)` when `line` may go out at `now_ms`.
    pub(super) fn allow(&mut self, now_ms: i64, line: &str) -> Option<u64> {
        if self.last.as_ref().is_some_and(|(at, last)| last == line && now_ms.abs_diff(*at) < 1000) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some((now_ms, line.to_string()));
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Checks a write's usage change against `root`'s limits and logs what passed a limit.
pub(super) fn enforce(
    pace: &mut LogPace,
    root: &str,
    limits: QuotaLimits,
    usage: QuotaUsage,
    change: (i64, i64),
    now_ms: i64,
) -> Result<(), ErrorCode> {
    let exceeded = check(root, limits, usage, change.0, change.1);
    let mut refused = Ok(());
    for e in exceeded {
        if let Some(suppressed) = pace.allow(now_ms, &e.message) {
            tracing::warn!(suppressed, "{}", e.message);
        }
        if e.hard {
            refused = Err(ErrorCode::QuotaExceeded);
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(count: i64, bytes: i64, count_hard: i64, bytes_hard: i64) -> QuotaLimits {
        QuotaLimits { count, bytes, count_hard, bytes_hard }
    }

    #[test]
    fn soft_limits_log_hard_limits_refuse_as_zookeeper_words_them() {
        let used = QuotaUsage { count: 10, bytes: 100 };
        let soft = check("/p", limits(10, -1, -1, -1), used, 1, 5);
        assert_eq!(
            soft,
            vec![Exceeded { message: "Quota exceeded: /p [current count=11, softCountLimit=10]".into(), hard: false }]
        );
        let hard = check("/p", limits(10, 50, 10, 50), used, 1, 5);
        assert_eq!(
            hard,
            vec![Exceeded { message: "Quota exceeded: /p [current count=11, hardCountLimit=10]".into(), hard: true }]
        );
        let bytes = check("/p", limits(-1, -1, -1, 104), used, 0, 5);
        assert_eq!(
            bytes,
            vec![Exceeded { message: "Quota exceeded: /p [current bytes=105, hardByteLimit=104]".into(), hard: true }]
        );
        assert!(check("/p", limits(-1, -1, 11, 105), used, 1, 5).is_empty(), "reaching a limit is allowed");
        assert!(check("/p", limits(-1, -1, 5, -1), used, 0, 5).is_empty(), "a setData adds no znode");
        assert_eq!(check("/p", limits(-1, 1, -1, -1), used, 0, -5).len(), 1, "a shrink past the limit still logs");
    }

    #[test]
    fn in_flight_changes_are_forgotten_once_applied() {
        let mut f = InFlightUsage::default();
        f.add(Zxid(5), "/p", 1, 3);
        f.add(Zxid(6), "/p", 1, 2);
        f.add(Zxid(6), "/q", -1, 0);
        assert_eq!(f.of("/p"), QuotaUsage { count: 2, bytes: 5 });
        f.committed(Zxid(5));
        assert_eq!(f.of("/p"), QuotaUsage { count: 1, bytes: 2 });
        f.committed(Zxid(6));
        assert!(f.is_empty() && f.sums.is_empty());
    }

    #[test]
    fn the_same_line_goes_out_once_a_second_a_new_one_at_once() {
        let mut pace = LogPace::default();
        assert_eq!(pace.allow(1000, "a"), Some(0));
        assert_eq!(pace.allow(1500, "a"), None);
        assert_eq!(pace.allow(1999, "a"), None);
        assert_eq!(pace.allow(2000, "a"), Some(2));
        assert_eq!(pace.allow(2001, "b"), Some(0));
        assert_eq!(pace.allow(2002, "a"), Some(0));
    }
}
