use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::log::{Acl, CreateTxn, MultiOp, NodeKind, SessionId, Transaction, Txn, Zxid};

/// Applies a txn as the next entry and returns what apply did.
struct Harness {
    tree: DataTree,
    zxid: u32,
}

impl Harness {
    fn new() -> Harness {
        Harness { tree: DataTree::new(), zxid: 0 }
    }

    fn entry(&mut self, session: i64, txn: Txn) -> Transaction {
        self.zxid += 1;
        Transaction {
            zxid: Zxid::new(1, self.zxid),
            session_id: SessionId(session),
            cxid: self.zxid as i32,
            time_ms: 1000 + self.zxid as i64,
            txn,
        }
    }

    fn apply(&mut self, session: i64, txn: Txn) -> Applied {
        let e = self.entry(session, txn);
        let bytes = e.encode();
        self.tree.apply(Transaction::access(&bytes).expect("valid"))
    }

    fn create(&mut self, path: &str, kind: NodeKind, session: i64) -> Applied {
        let parent_cversion = self.tree.get(path::parent(path)).map_or(0, |p| p.stat().cversion) + 1;
        self.apply(session, Txn::Create(create_txn(path, b"d", kind, parent_cversion)))
    }
}

fn create_txn(path: &str, data: &[u8], kind: NodeKind, parent_cversion: i32) -> CreateTxn {
    CreateTxn { path: path.into(), data: data.to_vec(), acl: open_acl(), kind, parent_cversion }
}

#[test]
fn new_tree_has_zookeepers_builtin_nodes() {
    let tree = DataTree::new();
    assert_eq!(tree.sorted_paths(), vec!["/", "/zookeeper", "/zookeeper/config", "/zookeeper/quota"]);
    assert_eq!(tree.stat("/").expect("root").num_children, 1);
    tree.validate();
}

#[test]
fn create_sets_stat_and_parent_cversion_pzxid_as_zookeeper() {
    let mut h = Harness::new();
    let applied = h.create("/a", NodeKind::Persistent, 0);
    let z = Zxid::new(1, 1).0 as i64;
    let OpResult::Created { path, stat } = &applied.results[0] else { panic!("{applied:?}") };
    assert_eq!(path, "/a");
    assert_eq!((stat.czxid, stat.mzxid, stat.pzxid), (z, z, z));
    assert_eq!((stat.ctime, stat.mtime), (1001, 1001));
    assert_eq!((stat.version, stat.cversion, stat.aversion, stat.ephemeral_owner), (0, 0, 0, 0));
    assert_eq!((stat.data_length, stat.num_children), (1, 0));
    // ZooKeeper reports cversion as creates + deletes, `2 × creates − children`: the root
    // got `/zookeeper` at birth without a create (a fresh ZooKeeper's `stat /` says -1).
    let root = h.tree.stat("/").expect("root");
    assert_eq!((root.cversion, root.pzxid, root.num_children), (0, z, 2));
    assert_eq!(h.tree.get("/").expect("root").stat().cversion, 1, "stored: creates only");
    assert_eq!(
        applied.changes,
        vec![
            Change { path: "/a".into(), kind: ChangeKind::Created, acl: open_acl().into() },
            Change { path: "/".into(), kind: ChangeKind::ChildrenChanged, acl: open_acl().into() }
        ]
    );
}

#[test]
fn delete_moves_parent_pzxid_and_reported_cversion_but_not_the_stored_one() {
    let mut h = Harness::new();
    h.create("/a", NodeKind::Persistent, 0);
    h.create("/a/b", NodeKind::Persistent, 0);
    let before = h.tree.stat("/a").expect("a");
    let applied = h.apply(0, Txn::Delete { path: "/a/b".into() });
    assert_eq!(applied.results, vec![OpResult::Deleted]);
    let after = h.tree.stat("/a").expect("a");
    assert_eq!(after.cversion, before.cversion + 1, "reported: creates and deletes, as ZooKeeper's copyStat");
    assert_eq!(h.tree.get("/a").expect("a").stat().cversion, 1, "stored: creates only (sequence numbers)");
    assert_eq!(after.pzxid, Zxid::new(1, 3).0 as i64);
    assert_eq!(after.num_children, 0);
}

#[test]
fn set_data_and_set_acl_bump_their_versions() {
    let mut h = Harness::new();
    h.create("/a", NodeKind::Persistent, 0);
    let r = h.apply(0, Txn::SetData { path: "/a".into(), data: b"hello".to_vec(), version: 1 });
    let OpResult::DataSet(stat) = r.results[0] else { panic!() };
    assert_eq!((stat.version, stat.data_length, stat.mzxid, stat.mtime), (1, 5, Zxid::new(1, 2).0 as i64, 1002));
    assert_eq!(stat.czxid, Zxid::new(1, 1).0 as i64);
    let acl = vec![Acl { perms: 1, scheme: "digest".into(), id: "u:x".into() }];
    let r = h.apply(0, Txn::SetAcl { path: "/a".into(), acl: acl.clone(), version: 1 });
    let OpResult::AclSet(stat) = r.results[0] else { panic!() };
    assert_eq!(stat.aversion, 1);
    assert_eq!(&**h.tree.get("/a").expect("a").acl(), acl.as_slice());
    assert_eq!(h.tree.get("/a").expect("a").data(), b"hello");
    h.tree.validate();
}

#[test]
fn errors_are_results_not_panics() {
    let mut h = Harness::new();
    let r = h.apply(0, Txn::Create(create_txn("/x/y", b"", NodeKind::Persistent, 1)));
    assert_eq!(r.results, vec![OpResult::Error(ErrorCode::NoNode)]);
    h.create("/x", NodeKind::Persistent, 0);
    assert_eq!(h.create("/x", NodeKind::Persistent, 0).results, vec![OpResult::Error(ErrorCode::NodeExists)]);
    h.create("/x/y", NodeKind::Persistent, 0);
    assert_eq!(h.apply(0, Txn::Delete { path: "/x".into() }).results, vec![OpResult::Error(ErrorCode::NotEmpty)]);
    assert_eq!(h.apply(0, Txn::Delete { path: "/nope".into() }).results, vec![OpResult::Error(ErrorCode::NoNode)]);
    assert_eq!(h.apply(0, Txn::Error { code: -101 }).results, vec![OpResult::Error(ErrorCode::NoNode)]);
    h.tree.validate();
}

#[test]
fn ephemerals_vanish_with_their_session_and_cannot_have_children() {
    let mut h = Harness::new();
    let s = 0x77;
    h.apply(s, Txn::CreateSession { timeout_ms: 10_000 });
    assert!(h.tree.sessions().contains_key(&SessionId(s)));
    h.create("/app", NodeKind::Persistent, 0);
    h.create("/app/e1", NodeKind::Ephemeral, s);
    h.create("/app/e2", NodeKind::Ephemeral, s);
    assert_eq!(h.tree.stat("/app/e1").expect("e1").ephemeral_owner, s);
    assert_eq!(
        h.create("/app/e1/c", NodeKind::Persistent, 0).results,
        vec![OpResult::Error(ErrorCode::NoChildrenForEphemerals)]
    );
    assert_eq!(h.tree.ephemerals_of(SessionId(s)), vec!["/app/e1", "/app/e2"]);
    let closed = h.apply(s, Txn::CloseSession);
    assert_eq!(closed.results, vec![OpResult::SessionClosed]);
    assert!(h.tree.get("/app/e1").is_none() && h.tree.get("/app/e2").is_none());
    assert_eq!(closed.changes.iter().filter(|c| c.kind == ChangeKind::Deleted).count(), 2);
    assert!(!h.tree.sessions().contains_key(&SessionId(s)));
    assert_eq!(h.tree.ephemeral_count(), 0);
    h.tree.validate();
}

#[test]
fn a_multi_with_an_error_applies_nothing() {
    let mut h = Harness::new();
    let ops = vec![
        MultiOp::Create(create_txn("/m", b"", NodeKind::Persistent, 1)),
        MultiOp::Error { code: ErrorCode::NoNode.code() },
    ];
    let r = h.apply(0, Txn::Multi(ops));
    assert_eq!(r.results, vec![OpResult::Aborted, OpResult::Error(ErrorCode::NoNode)]);
    assert!(h.tree.get("/m").is_none());
    assert!(r.changes.is_empty());
    let ok = vec![
        MultiOp::Create(create_txn("/m", b"", NodeKind::Persistent, 1)),
        MultiOp::SetData { path: "/m".into(), data: b"v".to_vec(), version: 1 },
        MultiOp::Check { path: "/m".into(), version: 1 },
    ];
    let r = h.apply(0, Txn::Multi(ok));
    assert_eq!(r.results.len(), 3);
    assert_eq!(h.tree.stat("/m").expect("m").version, 1);
}

#[test]
fn containers_and_ttl_nodes_become_reapable() {
    let mut h = Harness::new();
    h.create("/c", NodeKind::Container, 0);
    h.create("/t", NodeKind::Ttl { ttl_ms: 100 }, 0);
    assert_eq!(h.tree.get("/c").expect("c").stat().ephemeral_owner, CONTAINER_OWNER);
    assert_eq!(ttl_of_owner(h.tree.get("/t").expect("t").stat().ephemeral_owner), Some(100));
    // Clients see 0 for both, as ZooKeeper's getClientEphemeralOwner.
    assert_eq!(h.tree.stat("/c").expect("c").ephemeral_owner, 0);
    assert_eq!(h.tree.stat("/t").expect("t").ephemeral_owner, 0);
    // A container that never had a child is not reaped; a TTL node is once its TTL passed.
    assert_eq!(h.tree.reapable(1002 + 50), Vec::<String>::new());
    assert_eq!(h.tree.reapable(1002 + 101), vec!["/t".to_string()]);
    h.create("/c/x", NodeKind::Persistent, 0);
    h.apply(0, Txn::Delete { path: "/c/x".into() });
    assert_eq!(h.tree.reapable(0), vec!["/c".to_string()]);
}

#[test]
fn image_round_trips_to_an_equal_tree() {
    let mut h = Harness::new();
    h.apply(9, Txn::CreateSession { timeout_ms: 4000 });
    h.create("/a", NodeKind::Persistent, 0);
    h.create("/a/b", NodeKind::Ephemeral, 9);
    h.create("/a-b", NodeKind::Container, 0);
    h.create("/t", NodeKind::Ttl { ttl_ms: 5 }, 0);
    h.apply(
        0,
        Txn::SetAcl {
            path: "/a".into(),
            acl: vec![Acl { perms: 1, scheme: "ip".into(), id: "127.0.0.1".into() }],
            version: 1,
        },
    );
    let image = h.tree.to_image();
    let back = DataTree::from_image(&image).expect("valid image");
    back.validate();
    assert_eq!(back.digest(), h.tree.digest());
    assert_eq!(back.last_zxid(), h.tree.last_zxid());
    assert_eq!(back.ephemerals_of(SessionId(9)), vec!["/a/b"]);
    assert_eq!(back.reapable(10_000), vec!["/t".to_string()]);
    assert_eq!(back.sessions(), h.tree.sessions());
}

#[test]
fn a_damaged_image_is_an_error_not_a_panic() {
    let mut h = Harness::new();
    h.create("/a", NodeKind::Persistent, 0);
    let image = h.tree.to_image();
    for i in (0..image.len()).step_by(3) {
        let mut bad = image.clone();
        bad.as_mut_slice()[i] ^= 0xA5;
        let _ = DataTree::from_image(&bad);
    }
    assert!(DataTree::from_image(&[]).is_err());
}

// ---- differential test against a naive model ----

#[derive(Debug, Clone)]
enum Op {
    Create(u8, u8, bool),
    Delete(u8, u8),
    Set(u8, u8, u8),
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0u8..4, any::<bool>()).prop_map(|(a, b, e)| Op::Create(a, b, e)),
        2 => (0u8..4, 0u8..4).prop_map(|(a, b)| Op::Delete(a, b)),
        2 => (0u8..4, 0u8..4, any::<u8>()).prop_map(|(a, b, v)| Op::Set(a, b, v)),
        1 => Just(Op::Close),
    ]
}

/// path (/pa or /pa/cb; b == 0 means the top level) → (data, version, ephemeral).
type Model = BTreeMap<String, (Vec<u8>, i32, bool)>;

fn node_path(a: u8, b: u8) -> String {
    if b == 0 {
        format!("/p{a}")
    } else {
        format!("/p{a}/c{b}")
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn tree_matches_a_naive_model_and_snapshot_plus_replay_matches_full_replay(ops in proptest::collection::vec(op(), 1..60), cut in 0usize..60) {
        let session = 5;
        let mut h = Harness::new();
        let mut model: Model = BTreeMap::new();
        let mut entries = Vec::new();
        entries.push(h.entry(session, Txn::CreateSession { timeout_ms: 1000 }));
        for op in ops {
            let txn = match op {
                Op::Create(a, b, eph) => {
                    let path = node_path(a, b);
                    let parent = path::parent(&path).to_string();
                    let parent_ok = parent == "/" || model.get(&parent).is_some_and(|n| !n.2);
                    if model.contains_key(&path) || !parent_ok {
                        continue;
                    }
                    model.insert(path.clone(), (vec![a, b], 0, eph));
                    let kind = if eph { NodeKind::Ephemeral } else { NodeKind::Persistent };
                    Txn::Create(CreateTxn { path, data: vec![a, b], acl: open_acl(), kind, parent_cversion: i32::MAX })
                }
                Op::Delete(a, b) => {
                    let path = node_path(a, b);
                    let has_children = model.keys().any(|k| k.starts_with(&format!("{path}/")));
                    if !model.contains_key(&path) || has_children {
                        continue;
                    }
                    model.remove(&path);
                    Txn::Delete { path }
                }
                Op::Set(a, b, v) => {
                    let path = node_path(a, b);
                    let Some(node) = model.get_mut(&path) else { continue };
                    node.0 = vec![v];
                    node.1 += 1;
                    Txn::SetData { path, data: vec![v], version: node.1 }
                }
                Op::Close => {
                    model.retain(|_, n| !n.2);
                    Txn::CloseSession
                }
            };
            entries.push(h.entry(session, txn));
        }
        let encoded: Vec<_> = entries.iter().map(Transaction::encode).collect();
        let mut full = DataTree::new();
        for bytes in &encoded {
            let applied = full.apply(Transaction::access(bytes).expect("valid"));
            prop_assert!(!applied.results.iter().any(|r| matches!(r, OpResult::Error(_))), "{applied:?}");
        }
        full.validate();
        // The tree holds exactly the model's znodes, data and versions.
        let user: Vec<String> = full.sorted_paths().into_iter().filter(|p| p.starts_with("/p")).collect();
        prop_assert_eq!(user, model.keys().map(String::as_str).collect::<Vec<_>>());
        for (path, (data, version, eph)) in &model {
            let node = full.get(path).expect("present");
            prop_assert_eq!(node.data(), &data[..]);
            prop_assert_eq!(node.stat().version, *version);
            prop_assert_eq!(node.stat().ephemeral_owner == session, *eph);
        }
        // A snapshot taken after any prefix, plus replay of the rest, gives the same tree.
        let cut = cut.min(encoded.len());
        let mut prefix = DataTree::new();
        for bytes in &encoded[..cut] {
            prefix.apply(Transaction::access(bytes).expect("valid"));
        }
        let mut restored = DataTree::from_image(&prefix.to_image()).expect("image");
        for bytes in &encoded[cut..] {
            restored.apply(Transaction::access(bytes).expect("valid"));
        }
        restored.validate();
        prop_assert_eq!(restored.digest(), full.digest());
    }
}

#[test]
fn many_siblings_keep_their_order_through_deletes_and_a_snapshot() {
    let mut h = Harness::new();
    h.create("/wide", NodeKind::Persistent, 0);
    for i in 0..300 {
        h.create(&format!("/wide/n{i:03}"), NodeKind::Persistent, 0);
    }
    for i in (0..300).step_by(3) {
        let applied = h.apply(0, Txn::Delete { path: format!("/wide/n{i:03}") });
        assert_eq!(applied.results, vec![OpResult::Deleted]);
    }
    // Freed slots are reused by later creates, which go to the end of the list.
    h.create("/wide/zz", NodeKind::Persistent, 0);
    h.tree.validate();
    let expected: Vec<String> =
        (0..300).filter(|i| i % 3 != 0).map(|i| format!("n{i:03}")).chain(["zz".to_string()]).collect();
    let listed: Vec<String> = h.tree.get("/wide").expect("wide").children().map(str::to_string).collect();
    assert_eq!(listed, expected);
    assert_eq!(h.tree.stat("/wide").expect("wide").num_children, 201);
    assert_eq!(h.tree.descendant_count("/"), Some(3 + 1 + 201));
    let back = DataTree::from_image(&h.tree.to_image()).expect("image");
    back.validate();
    let relisted: Vec<String> = back.get("/wide").expect("wide").children().map(str::to_string).collect();
    assert_eq!(relisted, expected, "a snapshot keeps the child order");
    assert_eq!(back.digest(), h.tree.digest());
}

/// getChildren's order is creation order (what a sequential recipe expects to read), the
/// same on every server: entries apply in one order, and an image keeps it.
#[test]
fn children_come_in_creation_order_through_deletes_and_an_image() {
    let mut h = Harness::new();
    h.create("/p", NodeKind::Persistent, 0);
    for name in ["zeta", "alpha", "mid", "beta"] {
        h.create(&format!("/p/{name}"), NodeKind::Persistent, 0);
    }
    h.apply(0, Txn::Delete { path: "/p/mid".into() });
    h.create("/p/mid", NodeKind::Persistent, 0);
    let order = |t: &DataTree| t.get("/p").map(|n| n.children().map(str::to_string).collect::<Vec<_>>());
    let expected: Vec<String> = ["zeta", "alpha", "beta", "mid"].map(String::from).to_vec();
    assert_eq!(order(&h.tree), Some(expected.clone()));
    let back = DataTree::from_image(&h.tree.to_image()).expect("valid image");
    assert_eq!(order(&back), Some(expected));
}

/// Null data (length -1 on the wire) stays apart from empty data through apply, setData,
/// a multi and an image; both report dataLength 0, as ZooKeeper's.
#[test]
fn null_data_stays_null_and_empty_stays_empty() {
    let mut h = Harness::new();
    let null_create = |path: &str| Txn::CreateNull(create_txn(path, b"", NodeKind::Persistent, 1));
    h.apply(0, null_create("/n"));
    h.create("/e", NodeKind::Persistent, 0);
    h.apply(0, Txn::SetData { path: "/e".into(), data: Vec::new(), version: 1 });
    let data = |t: &DataTree, p: &str| t.get(p).map(|n| n.data_opt().map(<[u8]>::to_vec));
    assert_eq!(data(&h.tree, "/n"), Some(None), "null");
    assert_eq!(data(&h.tree, "/e"), Some(Some(Vec::new())), "empty");
    assert_eq!(h.tree.stat("/n").map(|s| s.data_length), Some(0));
    let digest_before = h.tree.digest();
    let back = DataTree::from_image(&h.tree.to_image()).expect("valid image");
    assert_eq!((data(&back, "/n"), data(&back, "/e")), (Some(None), Some(Some(Vec::new()))), "an image keeps both");
    assert_eq!(back.digest(), digest_before);
    // setData to null, then back to data; and inside a multi.
    h.apply(0, Txn::SetNull { path: "/e".into(), version: 2 });
    assert_eq!(data(&h.tree, "/e"), Some(None));
    assert_ne!(h.tree.digest(), digest_before, "null and empty differ in the digest");
    h.apply(0, Txn::SetData { path: "/e".into(), data: b"x".to_vec(), version: 3 });
    assert_eq!(data(&h.tree, "/e"), Some(Some(b"x".to_vec())));
    h.apply(
        0,
        Txn::Multi(vec![
            MultiOp::CreateNull(create_txn("/m", b"", NodeKind::Persistent, 3)),
            MultiOp::SetNull { path: "/e".into(), version: 4 },
        ]),
    );
    assert_eq!((data(&h.tree, "/m"), data(&h.tree, "/e")), (Some(None), Some(None)));
    h.tree.validate();
}

// ---- quotas ----

/// What zkCli's `setquota -n 3 /p` writes: the namespace nodes with null data, then the
/// limits and the stats as the client sends them.
fn setquota_txns(root: &str, limits: &str) -> Vec<Txn> {
    let mut txns = Vec::new();
    let mut at = String::from(QUOTA_PATH);
    for part in root.split('/').filter(|p| !p.is_empty()) {
        at = format!("{at}/{part}");
        txns.push(Txn::CreateNull(create_txn(&at, b"", NodeKind::Persistent, i32::MAX)));
    }
    txns.push(Txn::Create(create_txn(&limit_path(root), limits.as_bytes(), NodeKind::Persistent, i32::MAX)));
    txns.push(Txn::Create(create_txn(
        &format!("{at}/{STAT_NODE}"),
        b"count=0,bytes=0",
        NodeKind::Persistent,
        i32::MAX,
    )));
    txns
}

fn stats(tree: &DataTree, root: &str) -> Option<String> {
    tree.get(&format!("{QUOTA_PATH}{root}/{STAT_NODE}")).map(|z| String::from_utf8_lossy(z.data()).into_owned())
}

#[test]
fn stats_follow_creates_deletes_and_set_data_without_versions_or_watches() {
    let mut h = Harness::new();
    h.apply(0, Txn::Create(create_txn("/p", b"", NodeKind::Persistent, 1)));
    h.apply(0, Txn::Create(create_txn("/p/a", b"hello", NodeKind::Persistent, 1)));
    assert!(!h.tree.has_quotas());
    for txn in setquota_txns("/p", "count=3,bytes=-1=;byteHardLimit=-1;countHardLimit=-1") {
        h.apply(0, txn);
    }
    assert_eq!(stats(&h.tree, "/p").as_deref(), Some("count=2,bytes=5"), "the server rewrites the client's stats");
    let stat_before = h.tree.stat("/zookeeper/quota/p/zookeeper_stats").expect("stats");
    let applied = h.apply(0, Txn::Create(create_txn("/p/b", b"12345", NodeKind::Persistent, 2)));
    assert_eq!(stats(&h.tree, "/p").as_deref(), Some("count=3,bytes=10"));
    assert!(applied.changes.iter().all(|c| !c.path.starts_with("/zookeeper")), "no watch on the stats");
    let stat_after = h.tree.stat("/zookeeper/quota/p/zookeeper_stats").expect("stats");
    assert_eq!((stat_after.version, stat_after.mzxid), (stat_before.version, stat_before.mzxid));
    assert_eq!(stat_after.data_length, 16);
    h.apply(0, Txn::SetNull { path: "/p/a".into(), version: 1 });
    assert_eq!(stats(&h.tree, "/p").as_deref(), Some("count=3,bytes=5"), "null data counts 0");
    h.apply(0, Txn::Delete { path: "/p/b".into() });
    assert_eq!(stats(&h.tree, "/p").as_deref(), Some("count=2,bytes=0"));
    assert_eq!(
        h.tree.quota_roots_of("/p/a/x").map(|(r, u)| (r.to_string(), u)).collect::<Vec<_>>(),
        vec![("/p".to_string(), QuotaUsage { count: 2, bytes: 0 })]
    );
    assert_eq!(h.tree.quota_roots_of("/pp").count(), 0, "roots are whole components");
    let limits = h.tree.quota_limits("/p").expect("limits");
    assert_eq!((limits.count, limits.count_hard), (3, -1));
    // A client's setData on the stats is overridden by the recount.
    h.apply(0, Txn::SetData { path: "/zookeeper/quota/p/zookeeper_stats".into(), data: b"junk".to_vec(), version: 1 });
    assert_eq!(stats(&h.tree, "/p").as_deref(), Some("count=2,bytes=0"));
    // Deleting the limits ends the tracking; the stats keep their last data.
    h.apply(0, Txn::Delete { path: limit_path("/p") });
    assert!(!h.tree.has_quotas());
    h.apply(0, Txn::Create(create_txn("/p/c", b"xyz", NodeKind::Persistent, 3)));
    assert_eq!(stats(&h.tree, "/p").as_deref(), Some("count=2,bytes=0"));
    h.tree.validate();
}

#[test]
fn a_loaded_image_finds_the_quota_roots_again() {
    let mut h = Harness::new();
    h.apply(0, Txn::Create(create_txn("/q", b"abc", NodeKind::Persistent, 1)));
    for txn in setquota_txns("/q", "count=-1,bytes=-1=;byteHardLimit=-1;countHardLimit=2") {
        h.apply(0, txn);
    }
    let back = DataTree::from_image(&h.tree.to_image()).expect("image");
    assert_eq!(back.quota_usage("/q"), Some(QuotaUsage { count: 1, bytes: 3 }));
    assert_eq!(back.digest(), h.tree.digest());
    back.validate();
}

#[derive(Debug, Clone)]
enum QuotaOp {
    /// A znode at `node_path(a, b)` with `len` bytes (or null).
    Create(u8, u8, u8, bool),
    Delete(u8, u8),
    Set(u8, u8, u8, bool),
    /// setquota on root `r` (its namespace, limits and stats).
    SetQuota(u8),
    /// Delete root `r`'s limits (true) or stats (false).
    DelQuotaNode(u8, bool),
    /// Create root `r`'s stats alone.
    CreateStats(u8),
    /// A client's setData on root `r`'s stats.
    SetStats(u8),
}

/// Roots, nested and not: `/p0`, `/p1`, `/p1/c1`, `/p2/c3` (and `/p3`, never a node's parent).
fn quota_root(r: u8) -> &'static str {
    ["/p0", "/p1", "/p1/c1", "/p2/c3", "/p3"][r as usize % 5]
}

fn quota_op() -> impl Strategy<Value = QuotaOp> {
    prop_oneof![
        5 => (0u8..4, 0u8..4, 0u8..6, any::<bool>()).prop_map(|(a, b, l, n)| QuotaOp::Create(a, b, l, n)),
        2 => (0u8..4, 0u8..4).prop_map(|(a, b)| QuotaOp::Delete(a, b)),
        3 => (0u8..4, 0u8..4, 0u8..6, any::<bool>()).prop_map(|(a, b, l, n)| QuotaOp::Set(a, b, l, n)),
        2 => (0u8..5).prop_map(QuotaOp::SetQuota),
        1 => (0u8..5, any::<bool>()).prop_map(|(r, l)| QuotaOp::DelQuotaNode(r, l)),
        1 => (0u8..5).prop_map(QuotaOp::CreateStats),
        1 => (0u8..5).prop_map(QuotaOp::SetStats),
    ]
}

/// The stats a root with limits must show, counted path by path from scratch.
fn naive_usage(tree: &DataTree, root: &str) -> String {
    let inside = |p: &String| p == root || p.starts_with(&format!("{root}/"));
    let paths: Vec<String> = tree.sorted_paths().into_iter().filter(inside).collect();
    let bytes: usize = paths.iter().map(|p| tree.get(p).map_or(0, |z| z.data().len())).sum();
    format!("count={},bytes={bytes}", paths.len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever the writes, every root with limits has stats equal to a naive recount after
    /// every entry; and a snapshot at any point plus the rest of the log gives the same tree.
    #[test]
    fn quota_stats_always_equal_a_naive_recount(ops in proptest::collection::vec(quota_op(), 1..60), cut in 0usize..80) {
        let mut h = Harness::new();
        let mut entries = Vec::new();
        for op in ops {
            let data = |len: u8, null: bool| if null { None } else { Some(vec![b'x'; len as usize]) };
            let txns = match op {
                QuotaOp::Create(a, b, len, null) => {
                    let txn = create_txn(&node_path(a, b), &data(len, null).unwrap_or_default(), NodeKind::Persistent, i32::MAX);
                    vec![if null { Txn::CreateNull(txn) } else { Txn::Create(txn) }]
                }
                QuotaOp::Delete(a, b) => vec![Txn::Delete { path: node_path(a, b) }],
                QuotaOp::Set(a, b, len, null) => vec![match data(len, null) {
                    Some(data) => Txn::SetData { path: node_path(a, b), data, version: 1 },
                    None => Txn::SetNull { path: node_path(a, b), version: 1 },
                }],
                QuotaOp::SetQuota(r) => setquota_txns(quota_root(r), "count=5,bytes=-1=;byteHardLimit=-1;countHardLimit=-1"),
                QuotaOp::DelQuotaNode(r, limits) => {
                    let node = if limits { LIMIT_NODE } else { STAT_NODE };
                    vec![Txn::Delete { path: format!("{QUOTA_PATH}{}/{node}", quota_root(r)) }]
                }
                QuotaOp::CreateStats(r) => {
                    let path = format!("{QUOTA_PATH}{}/{STAT_NODE}", quota_root(r));
                    vec![Txn::Create(create_txn(&path, b"count=0,bytes=0", NodeKind::Persistent, i32::MAX))]
                }
                QuotaOp::SetStats(r) => {
                    let path = format!("{QUOTA_PATH}{}/{STAT_NODE}", quota_root(r));
                    vec![Txn::SetData { path, data: b"count=99".to_vec(), version: 1 }]
                }
            };
            for txn in txns {
                let entry = h.entry(0, txn);
                let bytes = entry.encode();
                h.tree.apply(Transaction::access(&bytes).expect("valid"));
                entries.push(bytes);
                for r in 0..5 {
                    let root = quota_root(r);
                    if h.tree.get(&limit_path(root)).is_some() {
                        if let Some(shown) = stats(&h.tree, root) {
                            prop_assert_eq!(shown, naive_usage(&h.tree, root), "root {}", root);
                        }
                    }
                }
            }
        }
        h.tree.validate();
        let cut = cut.min(entries.len());
        let mut prefix = DataTree::new();
        for bytes in &entries[..cut] {
            prefix.apply(Transaction::access(bytes).expect("valid"));
        }
        let mut restored = DataTree::from_image(&prefix.to_image()).expect("image");
        for bytes in &entries[cut..] {
            restored.apply(Transaction::access(bytes).expect("valid"));
        }
        restored.validate();
        prop_assert_eq!(restored.digest(), h.tree.digest());
    }
}

/// A deterministic pseudo-random stream for the view tests (no dependence on proptest's
/// shrinking: the trees are large).
fn lcg(state: &mut u64) -> u64 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *state >> 33
}

/// Applies `n` random creates, sets, deletes, ACL changes and session opens/closes to `h`,
/// over enough znodes to span many copy-on-write pages.
fn churn(h: &mut Harness, seed: u64, n: usize) {
    let mut rng = seed;
    let acls = [open_acl(), vec![Acl { perms: 1, scheme: "world".into(), id: "anyone".into() }]];
    for _ in 0..n {
        let dir = format!("/v{}", lcg(&mut rng) % 16);
        if h.tree.get(&dir).is_none() {
            h.create(&dir, NodeKind::Persistent, 0);
        }
        let path = format!("{dir}/n{}", lcg(&mut rng) % 500);
        let session = 0x100 + (lcg(&mut rng) % 4) as i64;
        match lcg(&mut rng) % 10 {
            0..=3 if h.tree.get(&path).is_none() => {
                let kind = if lcg(&mut rng) % 4 == 0 { NodeKind::Ephemeral } else { NodeKind::Persistent };
                if kind == NodeKind::Ephemeral && !h.tree.sessions().contains_key(&SessionId(session)) {
                    h.apply(session, Txn::CreateSession { timeout_ms: 4000 });
                }
                h.create(&path, kind, session);
            }
            4..=5 if h.tree.get(&path).is_some() => {
                let data = vec![b'x'; (lcg(&mut rng) % 200) as usize];
                h.apply(0, Txn::SetData { path, data, version: 1 });
            }
            6 if h.tree.get(&path).is_some() => {
                h.apply(0, Txn::Delete { path });
            }
            7 if h.tree.get(&path).is_some() => {
                let acl = acls[(lcg(&mut rng) % 2) as usize].clone();
                h.apply(0, Txn::SetAcl { path, acl, version: 1 });
            }
            8 if h.tree.sessions().contains_key(&SessionId(session)) => {
                h.apply(session, Txn::CloseSession);
            }
            _ => {}
        }
    }
}

#[test]
fn a_view_keeps_the_tree_as_it_was_while_the_tree_goes_on_applying() {
    let mut h = Harness::new();
    churn(&mut h, 7, 12_000);
    assert!(h.tree.node_count() > 2 * PAGE_FOR_TESTS, "spans pages: {}", h.tree.node_count());
    let before = h.tree.to_image();
    let view = h.tree.view();
    assert_eq!((view.last_zxid(), view.node_count()), (h.tree.last_zxid(), h.tree.node_count()));
    churn(&mut h, 8, 6_000);
    h.tree.validate();
    let after = h.tree.to_image();
    assert_ne!(before, after, "the tree moved on");
    // The view still writes the image of the point it was taken at, byte for byte.
    let mut streamed = Vec::new();
    view.write_image(&mut streamed).expect("write to a Vec");
    assert_eq!(streamed, before);
    // And a tree loaded from it is that tree.
    DataTree::from_image(&streamed).expect("loads").validate();
    // A second view of the moved tree is independent of the first.
    let second = h.tree.view();
    drop(view);
    churn(&mut h, 9, 2_000);
    let mut again = Vec::new();
    second.write_image(&mut again).expect("write");
    assert_eq!(again, after);
}

#[test]
fn a_view_crosses_threads_and_a_deep_tree_streams_without_recursion() {
    let mut h = Harness::new();
    let mut path = String::new();
    for i in 0..2_000 {
        path.push_str(&format!("/d{i}"));
        h.create(&path, NodeKind::Persistent, 0);
    }
    let image = h.tree.to_image();
    let view = h.tree.view();
    let written = std::thread::spawn(move || {
        let mut out = Vec::new();
        view.write_image(&mut out).map(|()| out)
    })
    .join()
    .expect("the writer thread");
    assert_eq!(written.expect("written"), image);
    assert_eq!(DataTree::from_image(&image).expect("loads").node_count(), h.tree.node_count());
}

/// Znodes per copy-on-write page, and per directory of pages.
const PAGE_FOR_TESTS: usize = super::data_tree::PAGE;
const DIRECTORY_FOR_TESTS: usize = super::data_tree::PAGE * super::data_tree::DIR;

/// Pushes `image` into a loader in pieces of the sizes `cuts` cycles through.
fn load_in_pieces(image: &[u8], cuts: &[usize]) -> Result<DataTree, String> {
    let mut loader = TreeLoader::new();
    let (mut at, mut i) = (0, 0);
    while at < image.len() {
        let n = cuts[i % cuts.len()].max(1).min(image.len() - at);
        loader.push(&image[at..at + n]).map_err(|e| e.to_string())?;
        at += n;
        i += 1;
    }
    loader.finish().map_err(|e| e.to_string())
}

#[test]
fn a_tree_loaded_piece_by_piece_is_the_tree_whatever_the_pieces() {
    let mut h = Harness::new();
    churn(&mut h, 11, 6_000);
    let image = h.tree.to_image();
    for cuts in [vec![1], vec![7, 1, 300], vec![4096], vec![image.len()], vec![13, 65_536, 2]] {
        let back = load_in_pieces(&image, &cuts).expect("loads");
        back.validate();
        assert_eq!(back.to_image(), image, "pieces {cuts:?}");
        assert_eq!(back.sessions(), h.tree.sessions());
    }
}

#[test]
fn a_damaged_or_cut_image_loaded_piece_by_piece_is_an_error_not_a_panic() {
    let mut h = Harness::new();
    churn(&mut h, 12, 400);
    let image = h.tree.to_image();
    // Cut anywhere: finish says the image ended early.
    for end in (0..image.len()).step_by(7) {
        let mut loader = TreeLoader::new();
        loader.push(&image[..end]).expect("a prefix is no error yet");
        assert!(loader.finish().is_err(), "an image cut at {end} of {} loaded", image.len());
    }
    // Trailing bytes are refused.
    let mut long = image.clone();
    long.extend_from_slice(b"x");
    assert!(load_in_pieces(&long, &[100]).is_err());
    // Damaged anywhere: an error or (where the damage hits data bytes) a tree, never a panic;
    // the same answer as the whole-image loader.
    for i in (0..image.len()).step_by(5) {
        let mut bad = image.clone();
        bad[i] ^= 0xA5;
        let whole = DataTree::from_image(&bad).map(|t| t.to_image()).map_err(|e| e.to_string());
        let pieces = load_in_pieces(&bad, &[33]).map(|t| t.to_image());
        assert_eq!(whole.is_ok(), pieces.is_ok(), "byte {i}");
        if let (Ok(a), Ok(b)) = (whole, pieces) {
            assert_eq!(a, b);
        }
    }
}

#[test]
fn a_view_of_a_tree_over_several_page_directories_keeps_every_one_as_it_was() {
    let mut h = Harness::new();
    // More than two directories of pages, under 70 parents.
    let path = |i: usize| format!("/p{:02}/n{:03}", i / 1000, i % 1000);
    // A parent and its thousand children per multi (a debug build checks the whole tree
    // after every entry).
    for p in 0..71 {
        let root_cversion = h.tree.get("/").map_or(0, |n| n.stat().cversion);
        let mut ops =
            vec![MultiOp::Create(create_txn(&format!("/p{p:02}"), b"", NodeKind::Persistent, root_cversion + 1))];
        let children = if p < 70 { 1000 } else { 0 };
        ops.extend(
            (0..children)
                .map(|c| MultiOp::Create(create_txn(&path(p * 1000 + c), b"d", NodeKind::Persistent, c as i32 + 1))),
        );
        h.apply(0, Txn::Multi(ops));
    }
    assert_eq!(h.tree.get(&path(69_999)).map(|n| n.data().to_vec()), Some(b"d".to_vec()));
    let before = h.tree.to_image();
    let view = h.tree.view();
    // No znode deleted: the view's slab holds this many slots.
    let viewed = h.tree.node_count();
    // Writes in the first, second and last directories, and new znodes up into new ones.
    for i in [5, 40_000, 69_999] {
        h.apply(0, Txn::SetData { path: path(i), data: b"changed".to_vec(), version: -1 });
    }
    let ops = (70_000..100_000)
        .map(|i| MultiOp::Create(create_txn(&path(i), b"d", NodeKind::Persistent, (i % 1000) as i32 + 1)));
    for p in 70..100 {
        let root_cversion = h.tree.get("/").map_or(0, |n| n.stat().cversion);
        let parent = MultiOp::Create(create_txn(&format!("/p{p:02}"), b"", NodeKind::Persistent, root_cversion + 1));
        let children: Vec<MultiOp> = ops.clone().skip((p - 70) * 1000).take(1000).collect();
        if p == 70 {
            h.apply(0, Txn::Multi(children));
        } else {
            h.apply(0, Txn::Multi(std::iter::once(parent).chain(children).collect()));
        }
    }
    let directory = |n: usize| (n - 1) / DIRECTORY_FOR_TESTS;
    assert!(directory(h.tree.node_count()) > directory(viewed), "a new directory: {}", h.tree.node_count());
    h.tree.validate();
    let mut streamed = Vec::new();
    view.write_image(&mut streamed).expect("write to a Vec");
    assert_eq!(streamed, before, "the view still holds the tree it was taken of");
    assert_eq!(h.tree.get(&path(40_000)).map(|n| n.data().to_vec()), Some(b"changed".to_vec()));
    // Freed a directory per step, the view takes nothing the tree still uses.
    let now = h.tree.to_image();
    let mut view = view;
    let mut steps = 1;
    while view.release_step() {
        steps += 1;
    }
    assert!(viewed > 2 * DIRECTORY_FOR_TESTS, "the view spans more than two directories: {viewed}");
    assert_eq!(steps, viewed.div_ceil(DIRECTORY_FOR_TESTS), "one step per page directory of the view");
    drop(view);
    h.tree.validate();
    assert_eq!(h.tree.to_image(), now, "the tree is untouched by the view's release");
}
