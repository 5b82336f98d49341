//! A linearizability checker for histories of read/write registers (Wing & Gong's search with
//! Lowe's memoisation, as in Porcupine and Knossos), used on client histories from the
//! simulator and from real clusters.
//!
//! A history is a list of operations, each with the times its client invoked it and saw it
//! complete. An operation whose outcome the client never learned (a timeout, a crashed
//! server) has no completion: it may have taken effect at any time after its invocation, or
//! never. The history is linearizable if every operation can be given one instant between its
//! invocation and completion such that, in that order, every read returns the value of the
//! latest write before it. Registers are independent, so each key is checked on its own.

use std::collections::{BTreeMap, HashSet};

/// One register operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOp {
    /// Set the register.
    Write(u64),
    /// Read it; `None` is the initial, never-written register.
    Read(Option<u64>),
    /// Compare-and-set: becomes `new` if it holds `expected`, else stays. `ok` is what the
    /// client learned (`None`: nothing; then it may have taken effect, either way, or not).
    /// With every written value unique, ZooKeeper's setData at the version a read returned
    /// is this operation on the value that read returned.
    Cas {
        /// The value it must hold.
        expected: Option<u64>,
        /// The value it gets.
        new: u64,
        /// Whether the client saw it succeed.
        ok: Option<bool>,
    },
}

/// One client operation on `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The register.
    pub key: u64,
    /// What it did or saw.
    pub op: RegisterOp,
    /// When the client invoked it.
    pub invoked: u64,
    /// When the client saw it complete; `None` if it never learned the outcome (a read
    /// without a result tells nothing and is dropped).
    pub completed: Option<u64>,
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The register.
    pub key: u64,
    /// Operations on it.
    pub operations: usize,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} operations on register {} are not linearizable", self.operations, self.key)
    }
}

/// Checks a whole history, register by register.
pub fn check(history: &[Operation]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<u64, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if op.completed.is_none() && matches!(op.op, RegisterOp::Read(_)) {
            continue;
        }
        by_key.entry(op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        let ops = without_unseen_writes(ops);
        if !check_register(&ops) {
            return Err(Violation { key, operations: ops.len() });
        }
    }
    Ok(())
}

/// Drops the writes of unknown outcome whose value no read returned, on a register of
/// reads and writes only (values unique). Sound and complete there: a linearization with
/// such a write has no read between it and the next write (that read would return its
/// value), so the same order without it is one too; and an unknown write may never have
/// happened. Each dropped write would otherwise stay concurrent with everything after it,
/// and a few dozen of them (a leader cut off with writes in flight) make the search
/// exponential. Not with compare-and-set: a failed one observes that the register held
/// something else, which such a write may explain.
fn without_unseen_writes(ops: Vec<&Operation>) -> Vec<&Operation> {
    if ops.iter().any(|o| matches!(o.op, RegisterOp::Cas { .. })) {
        return ops;
    }
    let read: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match o.op {
            RegisterOp::Read(v) => v,
            _ => None,
        })
        .collect();
    ops.into_iter()
        .filter(|o| !(o.completed.is_none() && matches!(o.op, RegisterOp::Write(v) if !read.contains(&v))))
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    call: bool,
    prev: usize,
    next: usize,
    /// For a call: the index of its return event.
    partner: usize,
}

/// Wing & Gong / Lowe on one register. Events live in a doubly linked list (index 0 is the
/// head sentinel); linearising an operation lifts its call and return out of the list.
fn check_register(ops: &[&Operation]) -> bool {
    let n = ops.len();
    // Calls sort before returns at equal times (operations touching at an instant overlap).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.invoked, false, i));
        order.push((op.completed.unwrap_or(u64::MAX), true, i));
    }
    order.sort();
    let mut events: Vec<Event> = Vec::with_capacity(2 * n + 1);
    events.push(Event { op: usize::MAX, call: false, prev: 0, next: 1, partner: 0 });
    let mut call_at = vec![0usize; n];
    for (k, &(_, is_return, i)) in order.iter().enumerate() {
        let at = k + 1;
        events.push(Event { op: i, call: !is_return, prev: at - 1, next: at + 1, partner: 0 });
        if is_return {
            events[call_at[i]].partner = at;
        } else {
            call_at[i] = at;
        }
    }
    let end = events.len();
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<u64> = None;
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut entry = events[0].next;
    let lift = |events: &mut Vec<Event>, e: usize| {
        for x in [e, events[e].partner] {
            let (p, nx) = (events[x].prev, events[x].next);
            events[p].next = nx;
            if nx < end {
                events[nx].prev = p;
            }
        }
    };
    let unlift = |events: &mut Vec<Event>, e: usize| {
        for x in [events[e].partner, e] {
            let (p, nx) = (events[x].prev, events[x].next);
            events[p].next = x;
            if nx < end {
                events[nx].prev = x;
            }
        }
    };
    while events[0].next < end {
        // A return whose call is not linearised yet (or only refused calls left ahead):
        // undo the last choice and try the next call after it.
        let backtrack = entry >= end || !events[entry].call;
        if backtrack {
            let Some((e, previous)) = stack.pop() else { return false };
            let op = events[e].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = previous;
            unlift(&mut events, e);
            entry = events[e].next;
            continue;
        }
        let event = events[entry];
        {
            let op = event.op;
            let next_state = match ops[op].op {
                RegisterOp::Write(v) => Some(Some(v)),
                RegisterOp::Read(r) if r == state => Some(state),
                RegisterOp::Read(_) => None,
                RegisterOp::Cas { expected, new, ok } => match (expected == state, ok) {
                    (true, Some(true) | None) => Some(Some(new)),
                    (false, Some(false) | None) => Some(state),
                    _ => None,
                },
            };
            if let Some(next_state) = next_state {
                let mut with = linearized.clone();
                with[op / 64] |= 1 << (op % 64);
                if seen.insert((with.clone(), next_state)) {
                    stack.push((entry, state));
                    linearized = with;
                    state = next_state;
                    lift(&mut events, entry);
                    entry = events[0].next;
                    continue;
                }
            }
            entry = event.next;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: u64, op: RegisterOp, invoked: u64, completed: Option<u64>) -> Operation {
        Operation { key, op, invoked, completed }
    }
    use RegisterOp::{Cas, Read, Write};

    #[test]
    fn a_compare_and_set_succeeds_only_on_the_value_it_expects() {
        let cas = |expected, new, ok| Cas { expected, new, ok };
        let good = [
            op(4, Write(1), 0, Some(1)),
            op(4, cas(Some(1), 2, Some(true)), 2, Some(3)),
            op(4, cas(Some(1), 3, Some(false)), 4, Some(5)),
            op(4, Read(Some(2)), 6, Some(7)),
        ];
        assert!(check(&good).is_ok());
        // Two successful sets from one value, one after the other: the second cannot be.
        let twice = [
            op(4, Write(1), 0, Some(1)),
            op(4, cas(Some(1), 2, Some(true)), 2, Some(3)),
            op(4, cas(Some(1), 3, Some(true)), 4, Some(5)),
        ];
        assert!(check(&twice).is_err());
        // A failed set on the value the register holds, with nothing else going on.
        let refused = [op(4, Write(1), 0, Some(1)), op(4, cas(Some(1), 2, Some(false)), 2, Some(3))];
        assert!(check(&refused).is_err());
        // An unknown one may have taken effect.
        let unknown =
            [op(4, Write(1), 0, Some(1)), op(4, cas(Some(1), 2, None), 2, None), op(4, Read(Some(2)), 5, Some(6))];
        assert!(check(&unknown).is_ok());
    }

    #[test]
    fn sequential_histories_follow_the_last_write() {
        let good = [op(1, Read(None), 0, Some(1)), op(1, Write(5), 2, Some(3)), op(1, Read(Some(5)), 4, Some(5))];
        assert!(check(&good).is_ok());
        let stale = [op(1, Write(5), 0, Some(1)), op(1, Write(6), 2, Some(3)), op(1, Read(Some(5)), 4, Some(5))];
        assert_eq!(check(&stale), Err(Violation { key: 1, operations: 3 }));
    }

    #[test]
    fn overlapping_operations_may_take_either_order() {
        // The read overlaps the write: old or new value are both fine.
        for seen in [None, Some(7)] {
            let h = [op(2, Write(7), 0, Some(10)), op(2, Read(seen), 5, Some(6))];
            assert!(check(&h).is_ok(), "{seen:?}");
        }
        // Two reads in real-time order cannot see new then old.
        let h = [op(2, Write(7), 0, Some(10)), op(2, Read(Some(7)), 1, Some(2)), op(2, Read(None), 3, Some(4))];
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_unknown_write_may_have_happened_or_not() {
        let happened = [op(3, Write(1), 0, None), op(3, Read(Some(1)), 50, Some(51))];
        let did_not = [op(3, Write(1), 0, None), op(3, Read(None), 50, Some(51))];
        assert!(check(&happened).is_ok() && check(&did_not).is_ok());
        // But not before it was invoked.
        let early = [op(3, Read(Some(1)), 0, Some(1)), op(3, Write(1), 5, None)];
        assert!(check(&early).is_err());
        // And not undone: once read, a later read cannot miss it.
        let flicker = [op(3, Write(1), 0, None), op(3, Read(Some(1)), 10, Some(11)), op(3, Read(None), 20, Some(21))];
        assert!(check(&flicker).is_err());
    }

    #[test]
    fn registers_are_independent() {
        let h = [op(1, Write(1), 0, Some(1)), op(2, Read(None), 2, Some(3)), op(1, Read(Some(1)), 4, Some(5))];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn a_long_concurrent_history_is_checked_quickly() {
        // 3 writers and 3 readers over 2,000 steps, each op overlapping its neighbours.
        let mut h = Vec::new();
        let mut value = None;
        for t in 0..2000u64 {
            let v = t + 1;
            h.push(op(9, Write(v), t * 10, Some(t * 10 + 15)));
            // A read that starts after the previous write completed and before this one does.
            h.push(op(9, Read(value), t * 10 + 1, Some(t * 10 + 3)));
            value = Some(v);
        }
        assert!(check(&h).is_ok());
    }
}

#[cfg(test)]
mod unknown_writes {
    use super::*;
    use RegisterOp::{Read, Write};

    fn op(op: RegisterOp, invoked: u64, completed: Option<u64>) -> Operation {
        Operation { key: 1, op, invoked, completed }
    }

    #[test]
    fn many_writes_of_unknown_outcome_are_checked_quickly_and_still_caught_when_read_wrongly() {
        // A leader cut off with 200 writes in flight: none completes, none is read, while
        // the history goes on with known writes and reads.
        let mut h = Vec::new();
        for t in 0..200u64 {
            h.push(op(Write(1_000 + t), t, None));
        }
        for t in 0..200u64 {
            h.push(op(Write(t), 1_000 + 10 * t, Some(1_000 + 10 * t + 1)));
            h.push(op(Read(Some(t)), 1_000 + 10 * t + 2, Some(1_000 + 10 * t + 3)));
        }
        assert!(check(&h).is_ok());
        // One of them read after it took effect, then a known write, then a read that goes
        // back to the unknown one: not linearizable.
        h.push(op(Read(Some(1_005)), 5_000, Some(5_001)));
        assert!(check(&h).is_ok(), "an unknown write may take effect late");
        h.push(op(Write(7_777), 5_002, Some(5_003)));
        h.push(op(Read(Some(1_005)), 5_004, Some(5_005)));
        assert!(check(&h).is_err());
    }
}
