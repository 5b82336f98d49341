//! The checks etcd makes at its gRPC layer, before a request reaches the log
//! (`v3rpc/key.go`: `checkPutRequest`, `checkTxnRequest`, `checkIntervals`): a request that
//! fails one is answered at once and never replicated.

use std::collections::BTreeSet;

use super::types::{MvccError, PutRequest, RequestOp, TxnRequest};

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// A Put's own checks (`checkPutRequest`).
pub fn check_put(p: &PutRequest) -> Result<(), MvccError> {
    if p.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

/// A Range's or DeleteRange's own check: a key.
pub fn check_key(key: &[u8]) -> Result<(), MvccError> {
    if key.is_empty() {
        Err(MvccError::EmptyKey)
    } else {
        Ok(())
    }
}

/// Everything etcd checks of a Txn before proposing it: sizes (`max_ops` on the longest of
/// compare, success and failure, less the parent's at each nesting level), keys, puts, and
/// that no branch writes a key twice.
pub fn check_txn(t: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
    check_txn_shape(t, max_ops)?;
    check_intervals(&t.success)?;
    check_intervals(&t.failure)?;
    Ok(())
}

fn check_txn_shape(t: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
    let opc = t.compare.len().max(t.success.len()).max(t.failure.len());
    if opc > max_ops {
        return Err(MvccError::TooManyOps);
    }
    for c in &t.compare {
        check_key(&c.key)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            RequestOp::Range(r) => check_key(&r.key)?,
            RequestOp::DeleteRange(d) => check_key(&d.key)?,
            RequestOp::Put(p) => check_put(p)?,
            RequestOp::Txn(n) => check_txn_shape(n, max_ops - opc)?,
        }
    }
    Ok(())
}

/// Deleted key ranges `[start, end)`; a point delete is `[key, key + "\0")`. A `range_end` of
/// "\0" makes the empty interval `[key, "\0")`, as etcd's interval tree does (so a from-key
/// delete never conflicts: etcd's bug #22445, kept for compatibility).
#[derive(Default)]
struct Dels(Vec<(Vec<u8>, Vec<u8>)>);

impl Dels {
    fn covers(&self, k: &[u8]) -> bool {
        self.0.iter().any(|(s, e)| s.as_slice() <= k && k < e.as_slice())
    }
}

/// etcd's `checkIntervals`, step for step (see `engine/ETCD-MVCC.md` §6.5, including which
/// combinations it lets through).
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Dels), MvccError> {
    let mut dels = Dels::default();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            let end = if d.range_end.is_empty() {
                let mut e = d.key.clone();
                e.push(0);
                e
            } else {
                d.range_end.clone()
            };
            dels.0.push((d.key.clone(), end));
        }
    }
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        if let RequestOp::Txn(t) = op {
            let (p_then, d_then) = check_intervals(&t.success)?;
            let (p_else, d_else) = check_intervals(&t.failure)?;
            for k in &p_then {
                if puts.contains(k) || dels.covers(k) {
                    return Err(MvccError::DuplicateKey);
                }
            }
            puts.extend(p_then.iter().cloned());
            for k in p_else {
                if (puts.contains(&k) && !p_then.contains(&k)) || dels.covers(&k) {
                    return Err(MvccError::DuplicateKey);
                }
                puts.insert(k);
            }
            dels.0.extend(d_then.0);
            dels.0.extend(d_else.0);
        }
    }
    for op in ops {
        if let RequestOp::Put(p) = op {
            if puts.contains(&p.key) || dels.covers(&p.key) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, dels))
}
