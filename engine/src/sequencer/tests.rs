use super::*;
use crate::tree::{open_acl, OpResult};

const S: i64 = 0x10;

struct Node {
    tree: DataTree,
    seq: Sequencer,
    time: i64,
}

impl Node {
    fn new() -> Node {
        let mut n =
            Node { tree: DataTree::new(), seq: Sequencer::new(SequencerConfig::default(), 1, Zxid::ZERO), time: 100 };
        n.write(WriteOp::CreateSession { timeout_ms: 5000 }).expect("session");
        n
    }

    fn req(&self, op: WriteOp) -> WriteRequest {
        WriteRequest { session_id: SessionId(S), cxid: 1, auth: vec![AuthId::new("ip", "127.0.0.1")], op }
    }

    /// Prepares without applying (in flight).
    fn prepare(&mut self, op: WriteOp) -> Result<Transaction, Rejected> {
        self.time += 1;
        let req = self.req(op);
        self.seq.prepare(&self.tree, &req, self.time)
    }

    fn apply(&mut self, entry: &Transaction) -> Vec<OpResult> {
        let bytes = entry.encode();
        let applied = self.tree.apply(Transaction::access(&bytes).expect("valid"));
        self.seq.committed(entry.zxid);
        applied.results
    }

    /// Prepares and applies at once.
    fn write(&mut self, op: WriteOp) -> Result<Vec<OpResult>, Rejected> {
        let entry = self.prepare(op)?;
        Ok(self.apply(&entry))
    }
}

fn create(path: &str, mode: CreateMode) -> WriteOp {
    WriteOp::Create(CreateOp {
        path: path.into(),
        data: Some(b"x".to_vec()),
        acl: open_acl(),
        mode,
        ttl_ms: 0,
        container: mode == CreateMode::Container,
    })
}

fn created_path(results: &[OpResult]) -> String {
    match &results[0] {
        OpResult::Created { path, .. } => path.clone(),
        other => panic!("expected a create, got {other:?}"),
    }
}

#[test]
fn zxids_are_consecutive_and_start_a_new_epoch_at_one() {
    let mut n = Node::new();
    let a = n.prepare(create("/a", CreateMode::Persistent)).expect("a");
    let b = n.prepare(create("/b", CreateMode::Persistent)).expect("b");
    assert_eq!((a.zxid, b.zxid), (Zxid::new(1, 2), Zxid::new(1, 3)));
    let s = Sequencer::new(SequencerConfig::default(), 2, Zxid::new(1, 9));
    assert_eq!(s.next_zxid(), Zxid::new(2, 1));
    let s = Sequencer::new(SequencerConfig::default(), 2, Zxid::new(2, 9));
    assert_eq!(s.next_zxid(), Zxid::new(2, 10));
}

#[test]
fn in_flight_changes_are_seen_by_later_writes() {
    let mut n = Node::new();
    let first = n.prepare(create("/a", CreateMode::Persistent)).expect("first");
    // Not applied yet, but a second create of the same path is refused...
    assert_eq!(n.prepare(create("/a", CreateMode::Persistent)), Err(Rejected::Op(ErrorCode::NodeExists)));
    // ...a child can be created under it, and its version is known.
    let child = n.prepare(create("/a/b", CreateMode::Persistent)).expect("child");
    let set = n.prepare(WriteOp::SetData { path: "/a".into(), data: Some(vec![]), version: 0 }).expect("set");
    assert_eq!(
        n.prepare(WriteOp::SetData { path: "/a".into(), data: Some(vec![]), version: 0 }),
        Err(Rejected::Op(ErrorCode::BadVersion))
    );
    assert_eq!(n.prepare(WriteOp::Delete { path: "/a".into(), version: -1 }), Err(Rejected::Op(ErrorCode::NotEmpty)));
    for e in [&first, &child, &set] {
        let results = n.apply(e);
        assert!(!matches!(results[0], OpResult::Error(_)), "{results:?}");
    }
    assert_eq!(n.seq.in_flight_paths(), 0, "everything applied is forgotten");
    assert_eq!(n.tree.stat("/a").expect("a").version, 1);
}

#[test]
fn sequential_names_use_the_parent_cversion_and_never_repeat_in_flight() {
    let mut n = Node::new();
    n.write(create("/q", CreateMode::Persistent)).expect("q");
    let e1 = n.prepare(create("/q/item-", CreateMode::PersistentSequential)).expect("1");
    let e2 = n.prepare(create("/q/item-", CreateMode::PersistentSequential)).expect("2");
    let p1 = created_path(&n.apply(&e1));
    let p2 = created_path(&n.apply(&e2));
    assert_eq!((p1.as_str(), p2.as_str()), ("/q/item-0000000000", "/q/item-0000000001"));
    // Deleting does not rewind the counter (cversion counts creates).
    n.write(WriteOp::Delete { path: p2.clone(), version: -1 }).expect("delete");
    let p3 = created_path(&n.write(create("/q/item-", CreateMode::PersistentSequential)).expect("3"));
    assert_eq!(p3, "/q/item-0000000002");
    let p4 = created_path(&n.write(create("/q/", CreateMode::PersistentSequential)).expect("4"));
    assert_eq!(p4, "/q/0000000003");
}

#[test]
fn errors_come_in_zookeepers_order() {
    let mut n = Node::new();
    assert_eq!(n.prepare(create("bad", CreateMode::Persistent)), Err(Rejected::Op(ErrorCode::BadArguments)));
    assert_eq!(n.prepare(create("/x/y", CreateMode::Persistent)), Err(Rejected::Op(ErrorCode::NoNode)));
    n.write(create("/locked", CreateMode::Persistent)).expect("locked");
    let read_only = vec![Acl { perms: perms::READ, scheme: "world".into(), id: "anyone".into() }];
    n.write(WriteOp::SetAcl { path: "/locked".into(), acl: read_only, version: -1 }).expect("acl");
    // CREATE permission on the parent is checked before existence.
    assert_eq!(n.prepare(create("/locked/c", CreateMode::Persistent)), Err(Rejected::Op(ErrorCode::NoAuth)));
    assert_eq!(
        n.prepare(WriteOp::SetData { path: "/locked".into(), data: Some(vec![]), version: -1 }),
        Err(Rejected::Op(ErrorCode::NoAuth))
    );
    assert_eq!(
        n.prepare(WriteOp::SetAcl { path: "/locked".into(), acl: open_acl(), version: -1 }),
        Err(Rejected::Op(ErrorCode::NoAuth))
    );
    assert_eq!(n.prepare(WriteOp::Delete { path: "/nope".into(), version: -1 }), Err(Rejected::Op(ErrorCode::NoNode)));
    assert_eq!(
        n.prepare(WriteOp::Delete { path: "/".into(), version: -1 }),
        Err(Rejected::Op(ErrorCode::BadArguments))
    );
    assert_eq!(
        n.prepare(WriteOp::Check { path: "/locked".into(), version: 3 }),
        Err(Rejected::Op(ErrorCode::BadVersion))
    );
    let bad_acl = WriteOp::Create(CreateOp {
        path: "/z".into(),
        data: Some(vec![]),
        acl: vec![],
        mode: CreateMode::Persistent,
        ttl_ms: 0,
        container: false,
    });
    assert_eq!(n.prepare(bad_acl), Err(Rejected::Op(ErrorCode::InvalidAcl)));
    let before = n.seq.next_zxid();
    assert_eq!(before, Zxid::new(1, 4), "refusals use no zxid");
}

#[test]
fn delete_refuses_the_trees_own_nodes_and_finds_no_malformed_path() {
    let mut n = Node::new();
    n.write(create("/p", CreateMode::Persistent)).expect("p");
    let delete = |path: &str| WriteOp::Delete { path: path.into(), version: -1 };
    // ZooKeeper's getParentPathAndValidate: no slash, a NUL or a special path.
    for path in ["/", "/zookeeper", "/zookeeper/quota", "/zookeeper/config", "noslash", "/p\0"] {
        assert_eq!(n.prepare(delete(path)), Err(Rejected::Op(ErrorCode::BadArguments)), "{path}");
    }
    // Anything else malformed names no znode.
    for path in ["/p/", "//p", "/p/.", "/p/..", "/p//x"] {
        assert_eq!(n.prepare(delete(path)), Err(Rejected::Op(ErrorCode::NoNode)), "{path}");
    }
    n.write(delete("/p")).expect("a well-formed delete");
}

#[test]
fn set_acl_checks_the_acl_before_the_znode() {
    let mut n = Node::new();
    let bad = vec![Acl { perms: perms::ALL, scheme: "ip".into(), id: "999.1.2.3".into() }];
    let op = WriteOp::SetAcl { path: "/missing".into(), acl: bad, version: -1 };
    assert_eq!(n.prepare(op), Err(Rejected::Op(ErrorCode::InvalidAcl)));
}

#[test]
fn ephemerals_need_a_live_session_and_cannot_have_children() {
    let mut n = Node::new();
    n.write(create("/e", CreateMode::Ephemeral)).expect("e");
    assert_eq!(
        n.prepare(create("/e/c", CreateMode::Persistent)),
        Err(Rejected::Op(ErrorCode::NoChildrenForEphemerals))
    );
    let close = n.prepare(WriteOp::CloseSession).expect("close");
    // In flight: the session is closing, its ephemeral is already gone for later writes.
    assert_eq!(n.prepare(create("/e2", CreateMode::Ephemeral)), Err(Rejected::Op(ErrorCode::SessionExpired)));
    n.prepare(create("/e", CreateMode::Persistent)).expect("the ephemeral's path is free again");
    n.apply(&close);
    assert!(n.tree.get("/e").is_none());
}

#[test]
fn a_failed_multi_reports_each_op_and_leaves_no_trace() {
    let mut n = Node::new();
    let ops = vec![
        create("/m", CreateMode::Persistent),
        WriteOp::SetData { path: "/m".into(), data: Some(vec![1]), version: 0 },
        WriteOp::Delete { path: "/absent".into(), version: -1 },
        create("/m2", CreateMode::Persistent),
    ];
    let before = n.seq.next_zxid();
    assert_eq!(n.prepare(WriteOp::Multi(ops)), Err(Rejected::Multi(vec![0, 0, -101, -2])));
    assert_eq!(n.seq.next_zxid(), before);
    assert_eq!(n.seq.in_flight_paths(), 0, "the multi's in-flight records were rolled back");
    n.prepare(create("/m", CreateMode::Persistent)).expect("/m was never created");
}

#[test]
fn a_multi_sees_its_own_earlier_ops() {
    let mut n = Node::new();
    let ops = vec![
        create("/m", CreateMode::Persistent),
        create("/m/c", CreateMode::Persistent),
        WriteOp::SetData { path: "/m".into(), data: Some(vec![1]), version: 0 },
        WriteOp::Check { path: "/m".into(), version: 1 },
        WriteOp::Delete { path: "/m/c".into(), version: 0 },
    ];
    let results = n.write(WriteOp::Multi(ops)).expect("multi");
    assert_eq!(results.len(), 5);
    assert!(results.iter().all(|r| !matches!(r, OpResult::Error(_) | OpResult::Aborted)), "{results:?}");
    assert_eq!(n.tree.stat("/m").expect("m").num_children, 0);
}

#[test]
fn ttl_and_container_modes_are_validated() {
    let mut n = Node::new();
    let ttl = |ms| {
        WriteOp::Create(CreateOp {
            path: "/t".into(),
            data: Some(vec![]),
            acl: open_acl(),
            mode: CreateMode::PersistentWithTtl,
            ttl_ms: ms,
            container: false,
        })
    };
    assert_eq!(n.prepare(ttl(0)), Err(Rejected::Op(ErrorCode::BadArguments)));
    assert_eq!(n.prepare(ttl(TTL_MAX_MS + 1)), Err(Rejected::Op(ErrorCode::BadArguments)));
    n.write(ttl(1000)).expect("ttl");
    let mut off = Node::new();
    off.seq =
        Sequencer::new(SequencerConfig { ttl_enabled: false, ..SequencerConfig::default() }, 1, off.tree.last_zxid());
    assert_eq!(off.prepare(ttl(1000)), Err(Rejected::Op(ErrorCode::Unimplemented)));
    n.write(create("/c", CreateMode::Container)).expect("container");
    assert_eq!(n.tree.get("/c").expect("c").stat().ephemeral_owner, CONTAINER_OWNER);
}

#[test]
fn a_refusal_changes_nothing() {
    let mut n = Node::new();
    n.write(create("/a", CreateMode::Persistent)).expect("a");
    let _in_flight = n.prepare(create("/b", CreateMode::Persistent)).expect("b");
    let snapshot = (n.seq.next_zxid(), n.seq.in_flight_paths(), n.tree.digest());
    for op in [
        create("/a", CreateMode::Persistent),
        WriteOp::Delete { path: "/a".into(), version: 7 },
        WriteOp::SetData { path: "/zz".into(), data: Some(vec![]), version: -1 },
        WriteOp::Multi(vec![create("/c", CreateMode::Persistent), create("/c", CreateMode::Persistent)]),
    ] {
        assert!(n.prepare(op).is_err());
        assert_eq!((n.seq.next_zxid(), n.seq.in_flight_paths(), n.tree.digest()), snapshot);
    }
}

/// ZooKeeper 3.8's answers to edge-case creates (`PrepRequestProcessor.pRequest2TxnCreate`,
/// `PathUtils.validatePath`), checked against its order of checks.
#[test]
fn edge_case_creates_get_zookeepers_answers() {
    use ErrorCode::*;
    let mut n = Node::new();
    let code = |n: &mut Node, path: &str, mode: CreateMode| match n.write(create(path, mode)) {
        Ok(results) => Ok(created_path(&results)),
        Err(Rejected::Op(code)) => Err(code),
        Err(other) => panic!("{other:?}"),
    };
    // The root exists: NodeExists for every mode that does not add a suffix...
    for mode in [CreateMode::Persistent, CreateMode::Ephemeral, CreateMode::Container] {
        assert_eq!(code(&mut n, "/", mode), Err(NodeExists), "{mode:?}");
    }
    // ...and a sequential create of `/` makes a child of the root.
    assert_eq!(code(&mut n, "/", CreateMode::PersistentSequential), Ok("/0000000000".into()));
    // Nothing to find a parent in, or a NUL: BadArguments before anything else.
    assert_eq!(code(&mut n, "", CreateMode::Persistent), Err(BadArguments));
    assert_eq!(code(&mut n, "a", CreateMode::Persistent), Err(BadArguments));
    assert_eq!(code(&mut n, "/nope/x\0", CreateMode::Persistent), Err(BadArguments));
    // The parent is looked up before the path's syntax is checked.
    assert_eq!(code(&mut n, "a/b", CreateMode::Persistent), Err(NoNode));
    assert_eq!(code(&mut n, "/a/", CreateMode::Persistent), Err(NoNode));
    assert_eq!(code(&mut n, "/a//b", CreateMode::Persistent), Err(NoNode));
    assert_eq!(code(&mut n, "/a/.", CreateMode::Persistent), Err(NoNode));
    assert_eq!(code(&mut n, "//", CreateMode::Persistent), Err(BadArguments));
    assert_eq!(code(&mut n, "/.", CreateMode::Persistent), Err(BadArguments));
    assert_eq!(code(&mut n, "/..", CreateMode::Persistent), Err(BadArguments));
    assert_eq!(code(&mut n, "/\u{1}", CreateMode::Persistent), Err(BadArguments));
    assert_eq!(code(&mut n, "/a", CreateMode::Persistent), Ok("/a".into()));
    assert_eq!(code(&mut n, "/a/", CreateMode::Persistent), Err(BadArguments));
    assert_eq!(code(&mut n, "/a//b", CreateMode::Persistent), Err(NoNode), "its parent is `/a/`");
    assert_eq!(code(&mut n, "/a/..", CreateMode::Persistent), Err(BadArguments));
    assert_eq!(code(&mut n, "/a/\u{1F600}", CreateMode::Persistent), Err(BadArguments), "Java sees surrogates");
    // A sequential create of `/a/` names the child by the counter alone.
    assert_eq!(code(&mut n, "/a/", CreateMode::PersistentSequential), Ok("/a/0000000000".into()));
    assert_eq!(code(&mut n, "/a/s-", CreateMode::PersistentSequential), Ok("/a/s-0000000001".into()));
    // Children of an ephemeral: NodeExists comes first, then NoChildrenForEphemerals.
    assert_eq!(code(&mut n, "/e", CreateMode::Ephemeral), Ok("/e".into()));
    assert_eq!(code(&mut n, "/e", CreateMode::Persistent), Err(NodeExists));
    assert_eq!(code(&mut n, "/e/c", CreateMode::Persistent), Err(NoChildrenForEphemerals));
    // TTL modes: Unimplemented while TTLs are off (the default here is on: see below).
    let ttl = |path: &str, ttl_ms: i64| {
        WriteOp::Create(CreateOp {
            path: path.into(),
            data: Some(Vec::new()),
            acl: open_acl(),
            mode: CreateMode::PersistentWithTtl,
            ttl_ms,
            container: false,
        })
    };
    // Through create/create2 a TTL mode comes with a TTL of -1: BadArguments.
    assert_eq!(n.write(ttl("/t", -1)).err(), Some(Rejected::Op(BadArguments)));
    assert!(n.write(ttl("/t", 1000)).is_ok());
    let mut off = Node::new();
    off.seq.config.ttl_enabled = false;
    assert_eq!(off.write(ttl("/t", 1000)).err(), Some(Rejected::Op(Unimplemented)));
    // createContainer makes a container whatever the flags; the container flag on create
    // makes a plain node.
    let container_op = |path: &str, mode: CreateMode| {
        WriteOp::Create(CreateOp {
            path: path.into(),
            data: Some(Vec::new()),
            acl: open_acl(),
            mode,
            ttl_ms: -1,
            container: true,
        })
    };
    let made = n.write(container_op("/c-", CreateMode::PersistentSequential)).expect("a sequential container");
    let path = created_path(&made);
    assert_eq!(n.tree.get(&path).map(|z| z.stat().ephemeral_owner), Some(crate::tree::CONTAINER_OWNER));
    let plain = WriteOp::Create(CreateOp {
        path: "/p".into(),
        data: Some(Vec::new()),
        acl: open_acl(),
        mode: CreateMode::Container,
        ttl_ms: -1,
        container: false,
    });
    n.write(plain).expect("created");
    assert_eq!(n.tree.get("/p").map(|z| z.stat().ephemeral_owner), Some(0), "a plain persistent node");
}

/// A node whose `/p` has a quota with `limits` (as zkCli's setquota writes it).
fn quota_node(enforce: bool, limits: &str) -> Node {
    let mut n = Node::new();
    n.seq =
        Sequencer::new(SequencerConfig { enforce_quota: enforce, ..SequencerConfig::default() }, 1, n.tree.last_zxid());
    for (path, data) in [
        ("/p", "x"),
        ("/zookeeper/quota/p", ""),
        ("/zookeeper/quota/p/zookeeper_limits", limits),
        ("/zookeeper/quota/p/zookeeper_stats", "count=0,bytes=0"),
    ] {
        let op = WriteOp::Create(CreateOp {
            path: path.into(),
            data: Some(data.as_bytes().to_vec()),
            acl: open_acl(),
            mode: CreateMode::Persistent,
            ttl_ms: 0,
            container: false,
        });
        n.write(op).expect("setquota");
    }
    n
}

fn set(path: &str, data: &[u8], version: i32) -> WriteOp {
    WriteOp::SetData { path: path.into(), data: Some(data.to_vec()), version }
}

#[test]
fn a_hard_count_limit_refuses_creates_past_it_counting_writes_in_flight() {
    // countHardLimit=3: /p and two more.
    let mut n = quota_node(true, "count=-1,bytes=-1=;byteHardLimit=-1;countHardLimit=3");
    let a = n.prepare(create("/p/a", CreateMode::Persistent)).expect("2 of 3");
    let b = n.prepare(create("/p/b", CreateMode::Persistent)).expect("3 of 3, a still in flight");
    assert_eq!(
        n.prepare(create("/p/c", CreateMode::Persistent)),
        Err(Rejected::Op(ErrorCode::QuotaExceeded)),
        "the in-flight creates count"
    );
    n.apply(&a);
    n.apply(&b);
    assert_eq!(n.prepare(create("/p/c", CreateMode::Persistent)), Err(Rejected::Op(ErrorCode::QuotaExceeded)));
    // Outside the root, and in a root-less sibling, nothing is checked.
    n.write(create("/q", CreateMode::Persistent)).expect("outside");
    // A delete in flight makes room.
    let d = n.prepare(WriteOp::Delete { path: "/p/a".into(), version: -1 }).expect("delete");
    n.prepare(create("/p/c", CreateMode::Persistent)).expect("room made by the delete in flight");
    n.apply(&d);
    // Inside a multi the refused op carries the code.
    assert_eq!(
        n.prepare(WriteOp::Multi(vec![set("/p", b"y", -1), create("/p/d", CreateMode::Persistent)])),
        Err(Rejected::Multi(vec![0, ErrorCode::QuotaExceeded.code()]))
    );
}

#[test]
fn a_hard_byte_limit_checks_set_data_before_the_version() {
    // /p holds 1 byte; byteHardLimit=4.
    let mut n = quota_node(true, "count=-1,bytes=-1=;byteHardLimit=4;countHardLimit=-1");
    n.write(set("/p", b"abcd", -1)).expect("4 bytes fit");
    // Quota comes before the version check (ZooKeeper's order).
    assert_eq!(n.prepare(set("/p", b"abcde", 7)), Err(Rejected::Op(ErrorCode::QuotaExceeded)));
    assert_eq!(n.prepare(set("/p", b"ab", 7)), Err(Rejected::Op(ErrorCode::BadVersion)));
    n.write(set("/p", b"", -1)).expect("shrinks");
    let mut empty = create("/p/e", CreateMode::Persistent);
    if let WriteOp::Create(c) = &mut empty {
        c.data = None;
    }
    n.write(empty).expect("null data adds no bytes");
    assert_eq!(n.prepare(create("/p/f", CreateMode::Persistent)).map(|_| ()), Ok(()), "1 byte of 4");
}

#[test]
fn soft_limits_and_enforcement_off_never_refuse() {
    let mut soft = quota_node(true, "count=1,bytes=1=;byteHardLimit=-1;countHardLimit=-1");
    soft.write(create("/p/a", CreateMode::Persistent)).expect("a soft limit only logs");
    soft.write(set("/p/a", b"much longer", -1)).expect("a soft limit only logs");
    let mut off = quota_node(false, "count=-1,bytes=-1=;byteHardLimit=1;countHardLimit=1");
    off.write(create("/p/a", CreateMode::Persistent)).expect("not enforced");
    assert!(off.seq.quota_in_flight.is_empty(), "nothing is tracked when off");
    assert_eq!(off.tree.quota_usage("/p"), Some(QuotaUsage { count: 2, bytes: 2 }), "but usage is counted");
}
