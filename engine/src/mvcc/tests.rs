//! The keyspace against etcd's behaviour (`engine/ETCD-MVCC.md`: its appendix's vectors and
//! the cases of each section), and against a naive model that keeps every revision whole.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest { key: k.into(), value: v.into(), ..PutRequest::default() }
}

fn get(k: &str) -> RangeRequest {
    RangeRequest { key: k.into(), ..RangeRequest::default() }
}

fn all() -> RangeRequest {
    RangeRequest { key: vec![0], range_end: vec![0], ..RangeRequest::default() }
}

fn del(k: &str, end: &str) -> DeleteRangeRequest {
    DeleteRangeRequest { key: k.into(), range_end: end.into(), prev_kv: false }
}

fn cmp(k: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare { result, target, key: k.into(), range_end: Vec::new() }
}

fn b(s: &str) -> Key {
    Key::new(s.as_bytes())
}

/// A value.
fn v(s: &str) -> Value {
    Value::copy_from_slice(s.as_bytes())
}

fn one(ks: &KeySpace, k: &str) -> Option<KeyValue> {
    ks.range(&get(k)).expect("a current read").kvs.into_iter().next()
}

fn kv(k: &str, v: &str, create: i64, m: i64, version: i64, lease: i64) -> KeyValue {
    KeyValue {
        key: b(k),
        create_revision: create,
        mod_revision: m,
        version,
        value: Value::copy_from_slice(v.as_bytes()),
        lease,
    }
}

#[test]
fn the_appendix_vectors_give_etcds_revisions_and_fields() {
    let mut ks = KeySpace::new();
    assert_eq!(ks.revision(), 1, "a fresh store is at revision 1");
    // 1, 2.
    let (r, ev) = ks.put(&put("a", "1")).expect("put");
    assert_eq!((r.revision, ev.len()), (2, 1));
    assert_eq!(one(&ks, "a"), Some(kv("a", "1", 2, 2, 1, 0)));
    let (r, _) = ks.put(&PutRequest { prev_kv: true, ..put("a", "2") }).expect("put");
    assert_eq!(r.revision, 3);
    assert_eq!(r.prev_kv, Some(kv("a", "1", 2, 2, 1, 0)));
    assert_eq!(one(&ks, "a"), Some(kv("a", "2", 2, 3, 2, 0)));
    // 3: deleting nothing keeps the revision.
    let (r, ev) = ks.delete_range(&del("b", ""));
    assert_eq!((r.revision, r.deleted, ev.len(), ks.revision()), (3, 0, 0, 3));
    // 4.
    let t = TxnRequest {
        compare: vec![cmp("a", CompareResult::Equal, CompareTarget::Version(2))],
        success: vec![RequestOp::Put(put("b", "x")), RequestOp::Put(put("c", "y")), RequestOp::Range(get("a"))],
        failure: vec![],
    };
    let (r, ev) = ks.txn(&t).expect("txn");
    assert!(r.succeeded);
    assert_eq!((r.revision, ev.len()), (4, 2));
    assert_eq!(one(&ks, "b"), Some(kv("b", "x", 4, 4, 1, 0)));
    let ResponseOp::Range(inner) = &r.responses[2] else { panic!("a range answer") };
    assert_eq!(inner.revision, 4);
    assert_eq!(inner.kvs[0].mod_revision, 3);
    // 5: VALUE on a missing key is false, even NOT_EQUAL.
    let t = TxnRequest {
        compare: vec![cmp("zz", CompareResult::NotEqual, CompareTarget::Value(b"x".to_vec()))],
        ..TxnRequest::default()
    };
    let (r, _) = ks.txn(&t).expect("txn");
    assert_eq!((r.succeeded, r.revision), (false, 4));
    // 6: tombstones in key order, one revision.
    let (r, ev) = ks.delete_range(&del("a", "d"));
    assert_eq!((r.deleted, r.revision), (3, 5));
    let order: Vec<_> = ev.iter().map(|e| (e.kind, e.kv.key.clone(), e.kv.mod_revision)).collect();
    assert_eq!(
        order,
        vec![(EventKind::Delete, b("a"), 5), (EventKind::Delete, b("b"), 5), (EventKind::Delete, b("c"), 5)]
    );
    // 7: a new generation; reads in the past.
    ks.put(&put("a", "3")).expect("put");
    assert_eq!(one(&ks, "a"), Some(kv("a", "3", 6, 6, 1, 0)));
    let at = |ks: &KeySpace, rev| ks.range(&RangeRequest { revision: rev, ..get("a") });
    assert_eq!(at(&ks, 3).expect("rev 3").kvs, vec![kv("a", "2", 2, 3, 2, 0)]);
    assert!(at(&ks, 5).expect("rev 5").kvs.is_empty());
    assert_eq!(at(&ks, 5).expect("rev 5").revision, 6, "the header has the current revision");
    // 8: compaction.
    ks.compact(5).expect("compact");
    assert_eq!(at(&ks, 4), Err(MvccError::Compacted));
    assert!(at(&ks, 5).expect("rev 5").kvs.is_empty());
    assert_eq!(ks.compact(5), Err(MvccError::Compacted));
    assert_eq!(ks.compact(7), Err(MvccError::FutureRev));
    assert_eq!(at(&ks, 7), Err(MvccError::FutureRev));
    while !ks.prune_step(1) {}
    assert_eq!(at(&ks, 3), Err(MvccError::Compacted));
    assert!(at(&ks, 5).expect("rev 5").kvs.is_empty());
    assert_eq!(at(&ks, 6).expect("rev 6").kvs, vec![kv("a", "3", 6, 6, 1, 0)]);
}

#[test]
fn a_range_counts_every_live_key_and_more_is_about_what_passed_the_filters() {
    let mut ks = KeySpace::new();
    for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
        ks.put(&put(k, &i.to_string())).expect("put");
    }
    // Vector 9: count ignores the filters; more only if more than `limit` passed them.
    let r = ks.range(&RangeRequest { limit: 1, max_mod_revision: 3, ..all() }).expect("range");
    assert_eq!((r.count, r.kvs.len(), r.more), (4, 1, true));
    let r = ks.range(&RangeRequest { limit: 1, max_mod_revision: 2, ..all() }).expect("range");
    assert_eq!((r.count, r.kvs.len(), r.more), (4, 1, false));
    let r = ks.range(&RangeRequest { limit: 2, ..all() }).expect("range");
    assert_eq!((r.count, r.kvs.len(), r.more), (4, 2, true));
    // Vector 10: a sort target alone sorts ascending.
    ks.put(&put("a", "9")).expect("put");
    let r = ks.range(&RangeRequest { sort_target: SortTarget::Mod, ..all() }).expect("range");
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b("b"), b("c"), b("d"), b("a")]);
    // DESCEND by KEY with limit 1 is the largest key.
    let r = ks.range(&RangeRequest { sort_order: SortOrder::Descend, limit: 1, ..all() }).expect("range");
    assert_eq!((r.kvs[0].key.clone(), r.more), (b("d"), true));
    // Ties stay in key order, descending too.
    let r = ks
        .range(&RangeRequest { sort_order: SortOrder::Descend, sort_target: SortTarget::Version, ..all() })
        .expect("range");
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b("a"), b("b"), b("c"), b("d")]);
    // keys_only, count_only, from-key, an empty range.
    let r = ks.range(&RangeRequest { keys_only: true, ..get("a") }).expect("range");
    assert!(r.kvs[0].value.is_empty());
    let r = ks.range(&RangeRequest { count_only: true, ..all() }).expect("range");
    assert_eq!((r.count, r.kvs.len(), r.more), (4, 0, false));
    let r = ks.range(&RangeRequest { key: b"b".to_vec(), range_end: vec![0], ..RangeRequest::default() });
    assert_eq!(r.expect("range").count, 3);
    let r = ks.range(&RangeRequest { key: b"c".to_vec(), range_end: b"b".to_vec(), ..RangeRequest::default() });
    assert_eq!(r.expect("range").count, 0, "range_end before key: empty, not an error");
}

#[test]
fn puts_check_their_lease_before_their_key_and_a_txn_the_other_way_round() {
    let mut ks = KeySpace::new();
    let p = PutRequest { ignore_value: true, lease: 7, ..put("k", "") };
    assert_eq!(ks.put(&p), Err(MvccError::LeaseNotFound));
    let t = TxnRequest { success: vec![RequestOp::Put(p.clone())], ..TxnRequest::default() };
    assert_eq!(ks.txn(&t), Err(MvccError::KeyNotFound));
    assert_eq!(ks.revision(), 1, "a failed request changes nothing");
    ks.lease_grant(7, 10, 2).expect("grant");
    assert_eq!(ks.put(&p), Err(MvccError::KeyNotFound));
    ks.put(&put("k", "v")).expect("put");
    let (r, _) = ks.put(&PutRequest { prev_kv: true, ..p }).expect("ignore_value on an existing key");
    assert_eq!(r.prev_kv.map(|kv| kv.value), Some(v("v")));
    assert_eq!(one(&ks, "k").map(|kv| (kv.value, kv.lease, kv.version)), Some((v("v"), 7, 2)));
    // ignore_lease keeps the lease.
    ks.put(&PutRequest { ignore_lease: true, ..put("k", "w") }).expect("put");
    assert_eq!(one(&ks, "k").map(|kv| (kv.value, kv.lease)), Some((v("w"), 7)));
}

#[test]
fn a_txn_decides_every_branch_before_it_writes_and_a_failed_check_applies_nothing() {
    let mut ks = KeySpace::new();
    ks.put(&put("a", "1")).expect("put");
    // The nested compare sees "b" missing although the outer branch put it first.
    let t = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Put(put("b", "1")),
            RequestOp::Txn(TxnRequest {
                compare: vec![cmp("b", CompareResult::Equal, CompareTarget::Version(0))],
                success: vec![RequestOp::Put(put("c", "then")), RequestOp::Range(get("b"))],
                failure: vec![RequestOp::Put(put("c", "else"))],
            }),
            RequestOp::DeleteRange(del("zz", "")),
        ],
        failure: vec![],
    };
    let (r, ev) = ks.txn(&t).expect("txn");
    assert_eq!((r.revision, ev.len()), (3, 2));
    assert_eq!(one(&ks, "c").map(|kv| kv.value), Some(v("then")));
    let ResponseOp::Txn(inner) = &r.responses[1] else { panic!("a txn answer") };
    assert_eq!((inner.revision, inner.succeeded), (0, true), "a nested txn's header is all zeros");
    let ResponseOp::Range(rr) = &inner.responses[1] else { panic!("a range answer") };
    assert_eq!((rr.revision, rr.kvs.len()), (3, 1), "reads inside see the txn's own writes");
    let ResponseOp::DeleteRange(d) = &r.responses[2] else { panic!("a delete answer") };
    assert_eq!((d.deleted, d.revision), (0, 3), "after a change, even an empty delete reports the new revision");
    // A range at a future revision on the chosen path fails the whole txn.
    let t = TxnRequest {
        success: vec![RequestOp::Put(put("d", "1")), RequestOp::Range(RangeRequest { revision: 9, ..get("a") })],
        ..TxnRequest::default()
    };
    assert_eq!(ks.txn(&t), Err(MvccError::FutureRev));
    assert_eq!((ks.revision(), one(&ks, "d")), (3, None));
    // ... but not on the branch not taken.
    let t = TxnRequest {
        compare: vec![cmp("a", CompareResult::Greater, CompareTarget::Version(5))],
        success: vec![RequestOp::Range(RangeRequest { revision: 9, ..get("a") })],
        failure: vec![RequestOp::Put(put("d", "1"))],
    };
    let (r, _) = ks.txn(&t).expect("txn");
    assert_eq!((r.succeeded, r.revision), (false, 4));
    // A read-only txn reports the current revision.
    let t = TxnRequest { success: vec![RequestOp::Range(get("a"))], ..TxnRequest::default() };
    assert_eq!(ks.txn(&t).expect("txn").0.revision, 4);
}

#[test]
fn compares_over_ranges_need_every_key_and_missing_keys_compare_as_zeros() {
    let mut ks = KeySpace::new();
    ks.put(&put("a1", "x")).expect("put");
    ks.put(&put("a2", "x")).expect("put");
    ks.put(&put("a2", "y")).expect("put");
    let range = |result, target| Compare { result, target, key: b"a".to_vec(), range_end: b"b".to_vec() };
    assert!(ks.compare_for_test(&range(CompareResult::Greater, CompareTarget::Version(0))));
    assert!(!ks.compare_for_test(&range(CompareResult::Equal, CompareTarget::Value(b"x".to_vec()))));
    assert!(ks.compare_for_test(&cmp("zz", CompareResult::Equal, CompareTarget::Create(0))));
    assert!(ks.compare_for_test(&cmp("zz", CompareResult::Equal, CompareTarget::Lease(0))));
    assert!(!ks.compare_for_test(&cmp("zz", CompareResult::Greater, CompareTarget::Version(0))));
    assert!(ks.compare_for_test(&cmp("a2", CompareResult::Less, CompareTarget::Value(b"z".to_vec()))));
}

impl KeySpace {
    fn compare_for_test(&self, c: &Compare) -> bool {
        let t = TxnRequest { compare: vec![c.clone()], ..TxnRequest::default() };
        self.clone().txn(&t).expect("a compare-only txn").0.succeeded
    }
}

#[test]
fn leases_follow_each_keys_latest_put_and_a_revoke_deletes_them_in_one_revision() {
    let mut ks = KeySpace::new();
    // Vector 11.
    assert_eq!(ks.lease_grant(7, 1, 2), Ok(2), "raised to the minimum TTL");
    assert_eq!(ks.lease_grant(7, 5, 2), Err(MvccError::LeaseExists));
    assert_eq!(ks.lease_grant(9, MAX_LEASE_TTL + 1, 2), Err(MvccError::LeaseTtlTooLarge));
    ks.put(&PutRequest { lease: 7, ..put("k", "v") }).expect("put");
    ks.put(&put("k", "v")).expect("put without a lease detaches");
    let rev = ks.revision();
    assert_eq!(ks.lease_revoke(7).map(|(r, ev)| (r, ev.len())), Ok((rev, 0)));
    assert_eq!(ks.lease_revoke(7), Err(MvccError::LeaseNotFound));
    ks.lease_grant(8, 10, 2).expect("grant");
    ks.put(&PutRequest { lease: 8, ..put("j", "1") }).expect("put");
    ks.put(&PutRequest { lease: 8, ..put("i", "1") }).expect("put");
    ks.lease_grant(10, 10, 2).expect("grant");
    ks.put(&PutRequest { lease: 10, ..put("m", "1") }).expect("put");
    ks.put(&PutRequest { lease: 8, ..put("m", "2") }).expect("moved to lease 8");
    ks.put(&PutRequest { lease: 10, ..put("n", "1") }).expect("put");
    assert_eq!(ks.lease(8).map(|l| l.keys), Some(vec![b("i"), b("j"), b("m")]));
    assert_eq!(ks.lease(10).map(|l| l.keys), Some(vec![b("n")]));
    let before = ks.revision();
    let (rev, ev) = ks.lease_revoke(8).expect("revoke");
    assert_eq!(rev, before + 1);
    let keys: Vec<_> = ev.iter().map(|e| (e.kind, e.kv.key.clone(), e.kv.mod_revision)).collect();
    assert_eq!(
        keys,
        vec![(EventKind::Delete, b("i"), rev), (EventKind::Delete, b("j"), rev), (EventKind::Delete, b("m"), rev)]
    );
    assert_eq!(one(&ks, "n").map(|kv| kv.lease), Some(10));
    assert!(ks.lease(8).is_none());
    let leases: Vec<_> = ks.leases().collect();
    assert_eq!(leases, vec![(10, 10)]);
}

#[test]
fn etcds_grpc_layer_checks_are_made_before_the_log() {
    assert_eq!(check_put(&put("", "v")), Err(MvccError::EmptyKey));
    assert_eq!(check_put(&PutRequest { ignore_value: true, ..put("k", "v") }), Err(MvccError::ValueProvided));
    assert_eq!(check_put(&PutRequest { ignore_lease: true, lease: 3, ..put("k", "") }), Err(MvccError::LeaseProvided));
    let puts = |n: usize| (0..n).map(|i| RequestOp::Put(put(&format!("k{i}"), ""))).collect::<Vec<_>>();
    let t = TxnRequest { success: puts(128), failure: puts(128), ..TxnRequest::default() };
    assert_eq!(check_txn(&t, DEFAULT_MAX_TXN_OPS), Ok(()), "the limit is on the longest list");
    let t = TxnRequest { success: puts(129), ..TxnRequest::default() };
    assert_eq!(check_txn(&t, DEFAULT_MAX_TXN_OPS), Err(MvccError::TooManyOps));
    // A nested txn's budget is its parent's less the parent's own count.
    let nested = TxnRequest { success: puts(3), ..TxnRequest::default() };
    let t = TxnRequest {
        success: vec![RequestOp::Txn(nested.clone()), RequestOp::Range(get("z"))],
        ..TxnRequest::default()
    };
    assert_eq!(check_txn(&t, 4), Err(MvccError::TooManyOps));
    assert_eq!(check_txn(&t, 5), Ok(()));
    assert_eq!(MvccError::TooManyOps.code(), GrpcCode::InvalidArgument);
    assert_eq!(MvccError::Compacted.to_string(), "etcdserver: mvcc: required revision has been compacted");
}

#[test]
fn the_duplicate_key_rule_rejects_and_lets_through_what_etcd_does() {
    let p = |k: &str| RequestOp::Put(put(k, ""));
    let d = |k: &str, e: &str| RequestOp::DeleteRange(del(k, e));
    let t = |then: Vec<RequestOp>, otherwise: Vec<RequestOp>| {
        RequestOp::Txn(TxnRequest { compare: vec![], success: then, failure: otherwise })
    };
    let check = |ops: Vec<RequestOp>| check_txn(&TxnRequest { success: ops, ..TxnRequest::default() }, 128);
    let dup = Err(MvccError::DuplicateKey);
    assert_eq!(check(vec![p("a"), p("a")]), dup);
    assert_eq!(check(vec![p("b"), d("a", "c")]), dup);
    assert_eq!(check(vec![p("a"), d("a", "")]), dup);
    assert_eq!(check(vec![d("a", "c"), t(vec![p("b")], vec![])]), dup);
    assert_eq!(check(vec![t(vec![d("a", "c")], vec![]), p("b")]), dup);
    assert_eq!(check(vec![t(vec![p("a")], vec![p("a")])]), Ok(()), "then and else exclude each other");
    assert_eq!(check(vec![t(vec![p("a")], vec![]), t(vec![p("a")], vec![])]), dup);
    assert_eq!(check(vec![t(vec![p("a")], vec![d("a", "")])]), Ok(()));
    assert_eq!(check(vec![t(vec![p("a")], vec![]), t(vec![d("a", "")], vec![])]), Ok(()), "etcd #16380");
    assert_eq!(check(vec![t(vec![d("a", "")], vec![]), t(vec![p("a")], vec![])]), dup);
    assert_eq!(check(vec![d("a", "c"), d("b", "")]), Ok(()));
    assert_eq!(check(vec![d("a", "\0"), p("b")]), Ok(()), "etcd #22445 (vector 12)");
    assert_eq!(check(vec![d("a", "c"), p("b")]), dup);
    // The top-level branches are checked apart.
    let both = TxnRequest { success: vec![p("a")], failure: vec![p("a")], ..TxnRequest::default() };
    assert_eq!(check_txn(&both, 128), Ok(()));
}

#[test]
fn a_key_deleted_and_put_again_in_one_revision_survives_compaction_at_that_revision() {
    let mut ks = KeySpace::new();
    ks.put(&put("b", "old")).expect("put");
    let t = TxnRequest {
        success: vec![RequestOp::DeleteRange(del("a", "\0")), RequestOp::Put(put("b", "new"))],
        ..TxnRequest::default()
    };
    let (r, ev) = ks.txn(&t).expect("txn");
    assert_eq!((r.revision, ev.len()), (3, 2));
    assert_eq!(one(&ks, "b"), Some(kv("b", "new", 3, 3, 1, 0)));
    ks.compact(3).expect("compact");
    while !ks.prune_step(7) {}
    assert_eq!(one(&ks, "b"), Some(kv("b", "new", 3, 3, 1, 0)), "etcd loses this put (#22376); Baton keeps it");
    let events = ks.events(3, 3, b"b", b"").expect("events from the compaction");
    assert_eq!(events.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![EventKind::Delete, EventKind::Put]);
}

#[test]
fn an_etcd_write_goes_through_the_log_and_applies_from_its_archive_as_it_would_owned() {
    use crate::log::{ArchivedTxn, Transaction, Txn};
    use crate::log::{SessionId, Zxid};
    let nested = TxnRequest {
        compare: vec![cmp("a", CompareResult::Equal, CompareTarget::Value(b"1".to_vec()))],
        success: vec![
            RequestOp::Put(PutRequest { prev_kv: true, ..put("b", "2") }),
            RequestOp::Txn(TxnRequest {
                compare: vec![],
                success: vec![RequestOp::DeleteRange(del("a", "")), RequestOp::Range(all())],
                failure: vec![],
            }),
        ],
        failure: vec![RequestOp::Put(put("c", "3"))],
    };
    let writes = vec![
        EtcdTxn::LeaseGrant { id: 5, ttl: 1, min_ttl: 2 },
        EtcdTxn::Put(PutRequest { lease: 5, ..put("a", "1") }),
        EtcdTxn::Txn(nested),
        EtcdTxn::Compact { revision: 3 },
        EtcdTxn::Compact { revision: 2 },
        EtcdTxn::LeaseRevoke { id: 5 },
        EtcdTxn::LeaseRevoke { id: 5 },
    ];
    let (mut owned, mut archived) = (KeySpace::new(), KeySpace::new());
    for (i, w) in writes.into_iter().enumerate() {
        let t = Transaction {
            zxid: Zxid::new(1, i as u32 + 1),
            session_id: SessionId(0),
            cxid: 0,
            time_ms: 0,
            txn: Txn::Etcd(w.clone()),
        };
        let bytes = t.encode();
        let entry = Transaction::access(&bytes).expect("a valid archive");
        let ArchivedTxn::Etcd(a) = &entry.txn else { panic!("an etcd entry") };
        let from_log = archived.apply_archived(a).expect("copied out of a valid archive");
        assert_eq!(from_log, owned.apply(&w), "entry {i}");
        assert_eq!(Transaction::decode(&bytes).expect("decodes").txn, Txn::Etcd(w));
    }
    assert_eq!(owned.revision(), 3, "the revoke found no key left: a was deleted in the txn");
    assert_eq!(archived.range(&all()), owned.range(&all()));
    assert_eq!(archived.compact_revision(), 3);
}

#[test]
fn a_damaged_or_cut_keyspace_image_is_an_error_never_a_panic() {
    let mut ks = KeySpace::new();
    ks.lease_grant(3, 10, 2).expect("grant");
    ks.put(&PutRequest { lease: 3, ..put("a", "1") }).expect("put");
    ks.put(&put("b", "2")).expect("put");
    ks.delete_range(&del("b", ""));
    ks.put(&put("b", "3")).expect("put");
    let image = ks.to_image();
    for len in 0..image.len() {
        assert!(KeySpace::from_image(&image[..len]).is_err(), "cut at {len}");
    }
    let mut long = image.clone();
    long.push(0);
    assert!(KeySpace::from_image(&long).is_err(), "a byte after the image");
    for i in 0..image.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = image.clone();
            bad[i] ^= flip;
            // Either refused or a keyspace (a flipped value byte is still a value): no panic.
            if let Ok(k) = KeySpace::from_image(&bad) {
                let _ = k.range(&all());
            }
        }
    }
    let back = KeySpace::from_image(&image).expect("the image loads");
    assert_eq!(back.lease(3).map(|l| l.keys), Some(vec![b("a")]));
    assert_eq!(back.range(&all()), ks.range(&all()));
}

#[test]
fn a_loaded_keyspace_holds_every_key_in_order_whatever_the_count_around_node_sizes() {
    // The loader builds the key map every other key first (full leaves): no key may be
    // lost, repeated or misplaced at any count, around one leaf (64), two, and a branch's.
    for n in [1usize, 2, 3, 63, 64, 65, 127, 128, 129, 130, 4095, 4096, 4097, 9001] {
        let mut ks = KeySpace::new();
        for i in 0..n {
            ks.put(&put(&format!("k{i:05}"), &format!("{i}"))).expect("put");
        }
        let back = KeySpace::from_image(&ks.to_image()).expect("the image loads");
        assert_eq!(back.keys.len(), n);
        assert!(back.keys.keys().eq(ks.keys.keys()), "{n} keys: the same keys in the same order");
        assert_eq!(back.range(&all()), ks.range(&all()), "{n} keys");
        for i in (0..n).step_by(7).chain([n - 1]) {
            let k = format!("k{i:05}");
            assert_eq!(one(&back, &k), one(&ks, &k), "{n} keys: {k}");
        }
        // And it takes changes as a map built by inserts does.
        let mut a = back.clone();
        let mut b2 = ks.clone();
        for ks in [&mut a, &mut b2] {
            ks.put(&put("k00000x", "between")).expect("put");
            ks.delete_range(&del("k00001", "k00003"));
        }
        assert_eq!(a.range(&all()), b2.range(&all()), "{n} keys, changed");
    }
}

/// The same write applied to both.
fn both(a: &mut KeySpace, b: &mut KeySpace, w: &EtcdTxn) {
    assert_eq!(a.apply(w), b.apply(w));
}

fn same(live: &KeySpace, reference: &KeySpace, what: &str) {
    assert_eq!(live.range(&all()), reference.range(&all()), "{what}");
    assert!(live.keys.keys().eq(reference.keys.keys()), "{what}: the same keys");
    assert_eq!(live.events(1, live.revision(), &[0], &[0]), reference.events(1, reference.revision(), &[0], &[0]));
    assert_eq!(live.recount_bytes(), reference.recount_bytes(), "{what}");
    assert_eq!(live.lease(7), reference.lease(7), "{what}");
}

#[test]
fn a_repacked_key_map_catches_up_with_every_change_since_its_clone_and_is_taken() {
    let mut live = KeySpace::new();
    let mut reference = KeySpace::new();
    both(&mut live, &mut reference, &EtcdTxn::LeaseGrant { id: 7, ttl: 60, min_ttl: 1 });
    for i in 0..6000 {
        both(&mut live, &mut reference, &EtcdTxn::Put(put(&format!("k{:05}", i * 2), &format!("v{i}"))));
    }
    // A snapshot's clone, repacked on its thread; the live keyspace moves on meanwhile.
    let frozen = live.clone();
    let mut changes = (0..3000).map(|i| match i % 6 {
        // New keys after the others, and between them.
        0 => EtcdTxn::Put(put(&format!("k{:05}", 20_000 + i), "new")),
        1 => EtcdTxn::Put(put(&format!("k{:05}", i * 2 + 1), "between")),
        // Existing keys written again, some on the lease.
        2 => EtcdTxn::Put(PutRequest { lease: 7, ..put(&format!("k{:05}", (i * 7) % 12000 / 2 * 2), "again") }),
        3 => EtcdTxn::DeleteRange(del(&format!("k{:05}", (i * 11) % 12000), &format!("k{:05}", (i * 11) % 12000 + 5))),
        4 => EtcdTxn::Txn(TxnRequest {
            success: vec![RequestOp::Put(put(&format!("k{:05}", (i * 13) % 12000), "txn"))],
            ..TxnRequest::default()
        }),
        _ => EtcdTxn::Put(put(&format!("k{:05}", (i * 3) % 12000), "put")),
    });
    for w in changes.by_ref().take(1000) {
        both(&mut live, &mut reference, &w);
    }
    assert!(!live.repack_pending());
    frozen.repack();
    assert!(live.repack_pending(), "handed to the live keyspace");
    let mut steps = 0;
    for (i, w) in changes.by_ref().enumerate() {
        both(&mut live, &mut reference, &w);
        let was = live.repack_pending();
        let pending = live.repack_step(7);
        if pending {
            steps += 1;
        }
        if i % 41 == 0 || was != pending {
            same(&live, &reference, &format!("after {steps} steps"));
        }
    }
    while live.repack_step(7) {
        steps += 1;
    }
    assert!(steps > 10, "caught up in steps ({steps})");
    assert!(!live.repack_pending());
    assert!(live.packed_keys >= frozen.keys.len(), "the repacked map was taken ({})", live.packed_keys);
    same(&live, &reference, "taken");
    both(&mut live, &mut reference, &EtcdTxn::LeaseRevoke { id: 7 });
    both(&mut live, &mut reference, &EtcdTxn::Put(put("k00003", "after")));
    same(&live, &reference, "written after");
    // A clone has nothing to take, and a small keyspace is not repacked.
    assert!(!live.clone().repack_pending());
    let small = KeySpace::new();
    small.clone().repack();
    assert!(!small.repack_pending());
}

#[test]
fn a_compaction_pruned_since_the_clone_drops_the_repack_and_nothing_read_changes() {
    let mut live = KeySpace::new();
    let mut reference = KeySpace::new();
    for i in 0..5000 {
        both(&mut live, &mut reference, &EtcdTxn::Put(put(&format!("k{:05}", i % 4500), &format!("v{i}"))));
    }
    let frozen = live.clone();
    frozen.repack();
    let rev = live.revision();
    both(&mut live, &mut reference, &EtcdTxn::Compact { revision: rev });
    live.prune_step(100);
    reference.prune_step(100);
    assert!(!live.repack_step(1 << 20), "dropped");
    assert_eq!(live.packed_keys, 0, "not taken");
    same(&live, &reference, "dropped");
}

#[test]
fn values_move_into_the_written_image_in_steps_in_every_keyspace_sharing_them() {
    let mut live = KeySpace::new();
    for i in 0..40 {
        live.put(&put(&format!("k{:02}", i % 13), &format!("value {i}"))).expect("put");
    }
    live.delete_range(&del("k05", ""));
    live.put(&put("k07", "")).expect("an empty value");
    let frozen = live.clone();
    let mut offsets = Vec::new();
    let mut image = Vec::new();
    frozen.write_image_noting(&mut image, Some(&mut offsets)).expect("write into a Vec");
    assert_eq!(image, live.to_image(), "noting changes nothing written");
    let image = Value::from(image);
    let inside = |v: &Value| image::within(&image, v);
    // The live keyspace moves on meanwhile: k01 gets a record (its history is copied).
    live.put(&put("k01", "after the snapshot")).expect("put");
    let history = |ks: &KeySpace| {
        (1..=ks.revision())
            .map(|rev| {
                ks.range(&RangeRequest {
                    revision: rev,
                    ..RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }
                })
            })
            .collect::<Vec<_>>()
    };
    let before = history(&live);

    let mut at = Adopting::default();
    let mut steps = 0;
    let mut replaced = 0;
    loop {
        let (gone, done) = frozen.adopt_step(&image, &offsets, &mut at, 5);
        replaced += gone.len();
        steps += 1;
        if done {
            break;
        }
    }
    assert!(steps > 5, "{steps} steps of at most 5 records");
    assert_eq!(replaced, offsets.len(), "every value noted moved");
    assert_eq!(history(&live), before, "every read at every revision answers the same");
    assert_eq!(history(&frozen), history(&KeySpace::from_image(&image).expect("loads")));
    let moved = |ks: &KeySpace, rev: i64| {
        ks.range(&RangeRequest { revision: rev, ..all() })
            .expect("read")
            .kvs
            .into_iter()
            .filter(|kv| !kv.value.is_empty())
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), inside(&kv.value)))
            .collect::<Vec<_>>()
    };
    for (key, inside) in moved(&frozen, frozen.revision()) {
        assert!(inside, "{key}: the frozen keyspace's values are views of the image");
    }
    for (key, inside) in moved(&live, frozen.revision()) {
        // k01's history was copied when it was written after the snapshot: its copies are
        // slots of their own, moved by the next snapshot.
        assert_eq!(inside, key != "k01", "{key}: so are the live keyspace's, which shares their records");
    }
    assert_eq!(
        moved(&live, live.revision()).into_iter().filter(|(_, inside)| !inside).collect::<Vec<_>>(),
        vec![("k01".to_string(), false)],
        "only what was written after the snapshot is still on the heap"
    );
}

#[test]
fn a_value_the_image_does_not_hold_stops_the_move_and_nothing_read_changes() {
    let mut ks = KeySpace::new();
    for k in ["a", "b", "c", "d"] {
        ks.put(&put(k, &format!("value of {k}"))).expect("put");
    }
    let mut offsets = Vec::new();
    let mut image = Vec::new();
    ks.write_image_noting(&mut image, Some(&mut offsets)).expect("write into a Vec");
    // c's value damaged in the file.
    let c = usize::try_from(offsets[2]).expect("an offset");
    image[c] ^= 0x20;
    let image = Value::from(image);
    let before = ks.range(&all()).expect("read");
    let mut at = Adopting::default();
    let (replaced, done) = ks.adopt_step(&image, &offsets, &mut at, 100);
    assert!(done);
    assert_eq!((replaced.len(), at.differs()), (2, Some(2)), "a and b moved, c differs, d not tried");
    assert_eq!(ks.range(&all()).expect("read"), before, "every value reads as written");
}

#[test]
fn an_image_giving_one_revision_to_two_records_is_refused() {
    let mut ks = KeySpace::new();
    ks.put(&put("a", "1")).expect("put");
    ks.put(&put("b", "2")).expect("put");
    let mut image = ks.to_image();
    assert!(KeySpace::from_image(&image).is_ok());
    // b's record: key length, key, record count, then its main revision (3): make it 2, a's.
    let at = image.windows(5).position(|w| w == b"\x01\x00\x00\x00b").expect("b's entry") + 5 + 4;
    assert_eq!(image[at..at + 8], 3i64.to_le_bytes());
    image[at..at + 8].copy_from_slice(&2i64.to_le_bytes());
    let err = KeySpace::from_image(&image).expect_err("refused");
    assert!(err.to_string().contains("revision (2, 0) given to two records"), "{err}");
    // A large image's revision queue is built on a thread of its own: the same, and the
    // same refusal.
    let mut ks = KeySpace::new();
    for i in 0..70_000 {
        ks.put(&put(&format!("k{i:05}"), "v")).expect("put");
    }
    let mut image = ks.to_image();
    let back = KeySpace::from_image(&image).expect("loads");
    assert!(back.by_rev.iter().eq(ks.by_rev.iter()), "the same revision queue");
    assert_eq!(back.range(&all()), ks.range(&all()));
    let at = image.windows(10).position(|w| w == b"\x06\x00\x00\x00k00001").expect("k00001's entry") + 10 + 4;
    assert_eq!(image[at..at + 8], 3i64.to_le_bytes());
    image[at..at + 8].copy_from_slice(&2i64.to_le_bytes());
    let err = KeySpace::from_image(&image).expect_err("refused");
    assert!(err.to_string().contains("revision (2, 0) given to two records"), "{err}");
}

#[test]
fn a_keyspace_loaded_from_a_kept_image_holds_views_of_its_values_and_a_piecewise_load_copies() {
    let mut ks = KeySpace::new();
    ks.put(&put("a", "first value")).expect("put");
    ks.put(&put("a", "second value")).expect("put");
    ks.put(&put("b", "other")).expect("put");
    ks.delete_range(&del("b", ""));
    let image = Value::from(ks.to_image());
    let inside = |v: &Value| image::within(&image, v);

    let mut loader = KeySpaceLoader::backed_by(image.clone());
    assert_eq!(loader.push(&image).expect("a valid image"), image.len());
    let back = loader.finish().expect("complete");
    assert_eq!(back.range(&all()), ks.range(&all()));
    let at_1 = RangeRequest { revision: 1, ..get("a") };
    assert_eq!(back.range(&at_1), ks.range(&at_1), "history too");
    for kv in back.range(&at_1).expect("read").kvs.iter().chain(&back.range(&all()).expect("read").kvs) {
        assert!(inside(&kv.value), "{kv:?} is a view of the image");
    }
    // Written after the load: on the heap.
    let mut back = back;
    back.put(&put("c", "new")).expect("put");
    assert!(!inside(&one(&back, "c").expect("c").value));

    // Pieces that are not the backing image (a SNAP's chunks): copied.
    let mut loader = KeySpaceLoader::backed_by(image.clone());
    let copy = image.to_vec();
    for piece in copy.chunks(7) {
        loader.push(piece).expect("valid pieces");
    }
    let back = loader.finish().expect("complete");
    assert_eq!(back.range(&all()), ks.range(&all()));
    assert!(back.range(&all()).expect("read").kvs.iter().all(|kv| !inside(&kv.value)));
}

#[test]
fn corrupt_refuses_every_kv_write_compaction_and_lease_change_until_cleared_and_outranks_nospace() {
    let mut ks = KeySpace::new();
    ks.apply(&EtcdTxn::Put(put("a", "1")));
    ks.apply(&EtcdTxn::LeaseGrant { id: 7, ttl: 10, min_ttl: 2 });
    let raise = |alarm| EtcdTxn::Alarm { activate: true, member: 3, alarm };
    ks.apply(&raise(ALARM_NOSPACE));
    assert_eq!(
        ks.apply(&raise(ALARM_CORRUPT)).result,
        Ok(EtcdResponse::Alarm { alarms: vec![(3, ALARM_CORRUPT)], revision: 2 })
    );
    assert!(ks.corrupt());
    let refused = [
        EtcdTxn::Put(put("b", "2")),
        EtcdTxn::DeleteRange(del("a", "")),
        EtcdTxn::Txn(TxnRequest { success: vec![RequestOp::Range(get("a"))], ..TxnRequest::default() }),
        EtcdTxn::Compact { revision: 2 },
        EtcdTxn::LeaseGrant { id: 8, ttl: 10, min_ttl: 2 },
        EtcdTxn::LeaseRevoke { id: 7 },
    ];
    for txn in &refused {
        assert_eq!(ks.apply(txn).result, Err(MvccError::Corrupt), "{txn:?}");
    }
    assert_eq!(MvccError::Corrupt.code(), GrpcCode::DataLoss);
    assert_eq!(MvccError::Corrupt.to_string(), "etcdserver: corrupt cluster");
    assert_eq!(ks.revision(), 2, "nothing refused changed anything");
    assert!(ks.lease(7).is_some());
    // It rides in the image; cleared, the other alarm (NOSPACE) decides again.
    assert!(KeySpace::from_image(&ks.to_image()).expect("loads").corrupt());
    ks.apply(&EtcdTxn::Alarm { activate: false, member: 3, alarm: ALARM_CORRUPT });
    assert!(!ks.corrupt());
    assert_eq!(ks.apply(&EtcdTxn::Put(put("b", "2"))).result, Err(MvccError::NoSpace));
    assert!(ks.apply(&EtcdTxn::DeleteRange(del("a", ""))).result.is_ok());
}

#[test]
fn nospace_refuses_what_adds_data_on_every_server_alike_until_it_is_cleared_and_rides_in_the_image() {
    let mut ks = KeySpace::new();
    ks.apply(&EtcdTxn::Put(put("a", "1")));
    ks.apply(&EtcdTxn::LeaseGrant { id: 7, ttl: 10, min_ttl: 2 });
    let raise = EtcdTxn::Alarm { activate: true, member: 2, alarm: ALARM_NOSPACE };
    assert_eq!(ks.apply(&raise).result, Ok(EtcdResponse::Alarm { alarms: vec![(2, ALARM_NOSPACE)], revision: 2 }));
    assert!(ks.out_of_space());
    let refused = [
        EtcdTxn::Put(put("b", "2")),
        EtcdTxn::LeaseGrant { id: 8, ttl: 10, min_ttl: 2 },
        EtcdTxn::Txn(TxnRequest { failure: vec![RequestOp::Put(put("b", "2"))], ..TxnRequest::default() }),
    ];
    for txn in &refused {
        assert_eq!(ks.apply(txn).result, Err(MvccError::NoSpace), "{txn:?}");
    }
    assert_eq!(ks.revision(), 2, "nothing refused changed anything");
    // What frees space or only reads goes through.
    let read_only = TxnRequest { success: vec![RequestOp::Range(get("a"))], ..TxnRequest::default() };
    assert!(ks.apply(&EtcdTxn::Txn(read_only)).result.is_ok());
    assert!(ks.apply(&EtcdTxn::DeleteRange(del("a", ""))).result.is_ok());
    assert!(ks.apply(&EtcdTxn::Compact { revision: 3 }).result.is_ok());
    assert!(ks.apply(&EtcdTxn::LeaseRevoke { id: 7 }).result.is_ok());
    // The alarm is in the image (version 2); without alarms the image is version 1.
    let back = KeySpace::from_image(&ks.to_image()).expect("loads");
    assert_eq!(back.alarms().collect::<Vec<_>>(), vec![(2, ALARM_NOSPACE)]);
    assert_eq!(&ks.to_image()[8..12], &2u32.to_le_bytes());
    // Cleared: writes go again; clearing it twice changes nothing.
    let clear = EtcdTxn::Alarm { activate: false, member: 2, alarm: ALARM_NOSPACE };
    assert_eq!(ks.apply(&clear).result, Ok(EtcdResponse::Alarm { alarms: vec![(2, ALARM_NOSPACE)], revision: 3 }));
    assert_eq!(ks.apply(&clear).result, Ok(EtcdResponse::Alarm { alarms: vec![], revision: 3 }));
    assert!(ks.apply(&EtcdTxn::Put(put("b", "2"))).result.is_ok());
    assert_eq!(&ks.to_image()[8..12], &1u32.to_le_bytes());
}

#[test]
fn the_size_counts_records_and_leases_and_falls_when_compacted_history_is_pruned() {
    let mut ks = KeySpace::new();
    for i in 0..100 {
        ks.put(&put("key", &format!("{i:0100}"))).expect("put");
    }
    let full = ks.size_bytes();
    assert_eq!(full, 100 * (3 + RECORD_OVERHEAD + 100));
    ks.lease_grant(1, 10, 2).expect("grant");
    assert_eq!(ks.size_bytes(), full + LEASE_OVERHEAD);
    ks.compact(ks.revision()).expect("compact");
    while !ks.prune_step(7) {}
    assert_eq!(ks.size_bytes(), 3 + RECORD_OVERHEAD + 100 + LEASE_OVERHEAD);
    assert_eq!(ks.size_bytes(), ks.recount_bytes());
}

#[test]
fn a_history_is_a_plain_vector_while_short_and_a_persistent_one_once_long_and_reads_the_same() {
    use super::keyspace::Records;
    let mut ks = KeySpace::new();
    for i in 0..100 {
        ks.put(&put("k", &i.to_string())).expect("put");
        let records = &ks.keys.get(&b("k")).expect("the key").records;
        assert_eq!(matches!(records, Records::Large(_)), i >= 32, "after {} puts", i + 1);
    }
    // Every revision reads back, across the switch.
    for rev in 2..=101 {
        let got = ks.range(&RangeRequest { revision: rev, ..get("k") }).expect("a read");
        assert_eq!(&*got.kvs[0].value, (rev - 2).to_string().as_bytes());
    }
    // Compacted down to a few records: a plain vector again, reads unchanged.
    ks.compact(95).expect("compact");
    while !ks.prune_step(10) {}
    let records = &ks.keys.get(&b("k")).expect("the key").records;
    assert!(matches!(records, Records::Small(v) if v.len() == 7), "{records:?}");
    for rev in 95..=101 {
        let got = ks.range(&RangeRequest { revision: rev, ..get("k") }).expect("a read");
        assert_eq!(&*got.kvs[0].value, (rev - 2).to_string().as_bytes());
    }
    assert_eq!(ks.size_bytes(), ks.recount_bytes());
    let back = KeySpace::from_image(&ks.to_image()).expect("loads");
    assert_eq!(back.range(&get("k")), ks.range(&get("k")));
}

/// What the model and the keyspace are driven with.
#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8, u8),
    Delete(u8, u8),
    Txn(u8, i64, u8, u8),
    Grant(u8),
    Revoke(u8),
    Compact(u8),
    Prune(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..6u8, any::<u8>(), 0..3u8).prop_map(|(k, v, l)| Op::Put(k, v, l)),
        2 => (0..6u8, 0..7u8).prop_map(|(k, e)| Op::Delete(k, e)),
        2 => (0..6u8, 0..3i64, 0..6u8, any::<u8>()).prop_map(|(k, ver, k2, v)| Op::Txn(k, ver, k2, v)),
        1 => (1..3u8).prop_map(Op::Grant),
        1 => (1..3u8).prop_map(Op::Revoke),
        1 => any::<u8>().prop_map(Op::Compact),
        1 => any::<u8>().prop_map(Op::Prune),
    ]
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', b'0' + k]
}

/// A key and its new value and lease, or None for a delete.
type Change = (Vec<u8>, Option<(Vec<u8>, i64)>);

/// Every revision's whole state, and each revision's events: nothing shared, nothing pruned.
struct Model {
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    events: Vec<Vec<(EventKind, Vec<u8>)>>,
    leases: BTreeMap<i64, ()>,
}

impl Model {
    fn write(&mut self, changes: Vec<Change>) {
        let rev = self.states.len() as i64;
        let mut next = self.states.last().cloned().unwrap_or_default();
        let mut events = Vec::new();
        for (k, change) in changes {
            match change {
                Some((v, lease)) => {
                    let prev = next.get(&k).cloned();
                    let kv = KeyValue {
                        key: Key::new(&k),
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        value: Value::copy_from_slice(v.as_slice()),
                        lease,
                    };
                    next.insert(k.clone(), kv);
                    events.push((EventKind::Put, k));
                }
                None => {
                    if next.remove(&k).is_some() {
                        events.push((EventKind::Delete, k));
                    }
                }
            }
        }
        if !events.is_empty() {
            self.states.push(next);
            self.events.push(events);
        }
    }

    fn current(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        self.states.last().expect("revision 1 is there from the start")
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_read_and_event_at_or_after_the_compaction_matches_a_model_that_keeps_everything(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut ks = KeySpace::new();
        // Index 0 stands for revision 0, before the store's first revision 1.
        let mut m = Model { states: vec![BTreeMap::new(), BTreeMap::new()], events: vec![vec![], vec![]], leases: BTreeMap::new() };
        for op in ops {
            match op {
                Op::Put(k, v, l) => {
                    let lease = i64::from(l);
                    let r = ks.put(&PutRequest { lease, ..PutRequest { key: key(k), value: vec![v], ..PutRequest::default() } });
                    if lease != 0 && !m.leases.contains_key(&lease) {
                        prop_assert_eq!(r, Err(MvccError::LeaseNotFound));
                    } else {
                        prop_assert!(r.is_ok());
                        m.write(vec![(key(k), Some((vec![v], lease)))]);
                    }
                }
                Op::Delete(k, e) => {
                    let end = if e > k { key(e) } else { Vec::new() };
                    ks.delete_range(&DeleteRangeRequest { key: key(k), range_end: end.clone(), prev_kv: false });
                    let doomed: Vec<_> = m.current().keys()
                        .filter(|x| if end.is_empty() { **x == key(k) } else { **x >= key(k) && **x < end })
                        .cloned().collect();
                    m.write(doomed.into_iter().map(|x| (x, None)).collect());
                }
                Op::Txn(k, ver, k2, v) => {
                    let t = TxnRequest {
                        compare: vec![Compare { result: CompareResult::Equal, target: CompareTarget::Version(ver), key: key(k), range_end: vec![] }],
                        success: vec![RequestOp::Put(PutRequest { key: key(k2), value: vec![v], ..PutRequest::default() })],
                        failure: vec![RequestOp::DeleteRange(DeleteRangeRequest { key: key(k2), range_end: vec![], prev_kv: false })],
                    };
                    let (r, _) = ks.txn(&t).expect("no check can fail");
                    let version = m.current().get(&key(k)).map_or(0, |kv| kv.version);
                    prop_assert_eq!(r.succeeded, version == ver);
                    if version == ver {
                        m.write(vec![(key(k2), Some((vec![v], 0)))]);
                    } else {
                        m.write(vec![(key(k2), None)]);
                    }
                }
                Op::Grant(id) => {
                    let r = ks.lease_grant(i64::from(id), 10, 2);
                    prop_assert_eq!(r.is_ok(), m.leases.insert(i64::from(id), ()).is_none());
                }
                Op::Revoke(id) => {
                    let id = i64::from(id);
                    let r = ks.lease_revoke(id);
                    prop_assert_eq!(r.is_ok(), m.leases.remove(&id).is_some());
                    let doomed: Vec<_> = m.current().values().filter(|kv| kv.lease == id).map(|kv| kv.key.to_vec()).collect();
                    m.write(doomed.into_iter().map(|x| (x, None)).collect());
                }
                Op::Compact(r) => {
                    let rev = i64::from(r) % (ks.revision() + 1);
                    let expect = if rev <= ks.compact_revision() { Err(MvccError::Compacted) } else { Ok(()) };
                    prop_assert_eq!(ks.compact(rev), expect);
                }
                Op::Prune(n) => {
                    ks.prune_step(usize::from(n % 5));
                }
            }
            let cur = ks.revision();
            prop_assert_eq!(cur, m.states.len() as i64 - 1);
            prop_assert_eq!(ks.size_bytes(), ks.recount_bytes(), "the running size is the recounted one");
            let first = ks.compact_revision().max(1);
            for rev in first..=cur {
                let got = ks.range(&RangeRequest { revision: rev, ..all() }).expect("a read at or after the compaction");
                let want: Vec<KeyValue> = m.states[rev as usize].values().cloned().collect();
                prop_assert_eq!(&got.kvs, &want, "revision {}", rev);
                prop_assert_eq!(got.count, want.len() as i64);
            }
            if first > 1 {
                prop_assert_eq!(ks.range(&RangeRequest { revision: first - 1, ..all() }), Err(MvccError::Compacted));
            }
            let events = ks.events(first, cur, &[0], &[0]).expect("events from the compaction");
            let got: Vec<_> = events.iter().map(|e| (e.kind, e.kv.key.to_vec(), e.kv.mod_revision)).collect();
            let want: Vec<_> = (first..=cur)
                .flat_map(|r| m.events[r as usize].iter().map(move |(kind, k)| (*kind, k.clone(), r)))
                .collect();
            prop_assert_eq!(got, want);
        }
        // The image holds it all: every read and event after the compaction, the leases, and
        // the same bytes again; loaded in pieces cut anywhere, with what follows it left over.
        let image = ks.to_image();
        let back = KeySpace::from_image(&image).expect("its own image loads");
        prop_assert_eq!(&back.to_image(), &image);
        prop_assert_eq!(back.size_bytes(), ks.size_bytes());
        let first = ks.compact_revision().max(1);
        for rev in first..=ks.revision() {
            let r = RangeRequest { revision: rev, ..all() };
            prop_assert_eq!(back.range(&r), ks.range(&r));
        }
        prop_assert_eq!(back.events(first, ks.revision(), &[0], &[0]), ks.events(first, ks.revision(), &[0], &[0]));
        prop_assert_eq!(back.leases().collect::<Vec<_>>(), ks.leases().collect::<Vec<_>>());
        for (id, _) in ks.leases() {
            prop_assert_eq!(back.lease(id), ks.lease(id));
        }
        let mut followed = image.clone();
        followed.extend_from_slice(b"BTREEIMG...");
        let cut = (image.len() * 7 / 13).max(1);
        let mut loader = KeySpaceLoader::new();
        let mut used = 0;
        for piece in followed.chunks(cut) {
            used += loader.push(piece).expect("a valid image in pieces");
        }
        prop_assert_eq!(used, image.len());
        prop_assert_eq!(loader.finish().expect("complete").to_image(), image);
        // Everything the last compaction made unreachable can go, and reads stay the same.
        while !ks.prune_step(3) {}
        prop_assert!(ks.pruned());
        prop_assert_eq!(ks.size_bytes(), ks.recount_bytes());
        let got = ks.range(&all()).expect("a current read");
        prop_assert_eq!(got.kvs, m.current().values().cloned().collect::<Vec<_>>());
    }
}
