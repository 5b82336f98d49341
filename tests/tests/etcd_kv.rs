//! etcd's KV API on a real `baton` process, through an unmodified third-party client (the
//! `etcd-client` crate): revisions and per-key fields as etcd gives them, ranges, txns,
//! compaction, and etcd's errors word for word; across a restart (the keyspace comes back
//! from the WAL and from a snapshot).

use std::time::Duration;

use baton_tests::etcd::{connect, grpc, run};
use baton_tests::server::{free_port, BatonProcess};
use baton_tests::temp_dir;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};

fn start(dir: &std::path::Path, etcd_port: u16, extra: &[&str]) -> BatonProcess {
    let addr = format!("127.0.0.1:{etcd_port}");
    let mut args = vec!["--tick-ms", "500", "--etcd-addr", addr.as_str()];
    args.extend_from_slice(extra);
    BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir, &args)
}

#[test]
fn puts_gets_deletes_and_txns_give_etcds_revisions_fields_and_errors() {
    let dir = temp_dir();
    let port = free_port();
    let _server = start(dir.path(), port, &[]);
    run(async {
        let mut c = connect(port).await;
        // Appendix vectors 1-2 of engine/ETCD-MVCC.md: a fresh store is at revision 1.
        let r = c.put("a", "1", None).await.expect("put");
        assert_eq!(r.header().expect("header").revision(), 2);
        let r = c.put("a", "2", Some(PutOptions::new().with_prev_key())).await.expect("put");
        let prev = r.prev_key().expect("prev_kv");
        assert_eq!((prev.value(), prev.mod_revision(), prev.version()), (&b"1"[..], 2, 1));
        let got = c.get("a", None).await.expect("get");
        let kv = &got.kvs()[0];
        assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version(), kv.value()), (2, 3, 2, &b"2"[..]));
        assert_eq!(got.header().expect("header").member_id(), 1);
        // Deleting nothing keeps the revision.
        let d = c.delete("b", None).await.expect("delete");
        assert_eq!((d.deleted(), d.header().expect("header").revision()), (0, 3));
        // A txn: compares, puts, a range inside; one revision.
        let t = Txn::new().when([Compare::version("a", CompareOp::Equal, 2)]).and_then([
            TxnOp::put("b", "x", None),
            TxnOp::put("c", "y", None),
            TxnOp::get("a", None),
        ]);
        let r = c.txn(t).await.expect("txn");
        assert!(r.succeeded());
        assert_eq!(r.header().expect("header").revision(), 4);
        match &r.op_responses()[2] {
            TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].mod_revision(), 3),
            other => panic!("{other:?}"),
        }
        // VALUE on a missing key is false, even NOT_EQUAL.
        let t = Txn::new().when([Compare::value("zz", CompareOp::NotEqual, "x")]);
        assert!(!c.txn(t).await.expect("txn").succeeded());
        // Prefix, sort, limit, count.
        let got = c
            .get(
                "",
                Some(GetOptions::new().with_from_key().with_sort(SortTarget::Key, SortOrder::Descend).with_limit(2)),
            )
            .await
            .expect("range");
        let keys: Vec<&[u8]> = got.kvs().iter().map(|kv| kv.key()).collect();
        assert_eq!((keys, got.count(), got.more()), (vec![&b"c"[..], &b"b"[..]], 3, true));
        // A range delete: tombstones in one revision; reads in the past.
        let d = c.delete("a", Some(DeleteOptions::new().with_range("d").with_prev_key())).await.expect("delete");
        assert_eq!((d.deleted(), d.header().expect("header").revision(), d.prev_kvs().len()), (3, 5, 3));
        c.put("a", "3", None).await.expect("put");
        let old = c.get("a", Some(GetOptions::new().with_revision(3))).await.expect("read at 3");
        assert_eq!(old.kvs()[0].value(), b"2");
        assert_eq!(old.header().expect("header").revision(), 6, "the header holds the current revision");
        // Compaction, and etcd's errors word for word.
        c.compact(5, None).await.expect("compact");
        assert_eq!(
            grpc(c.get("a", Some(GetOptions::new().with_revision(4))).await),
            (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted".into())
        );
        assert_eq!(
            grpc(c.get("a", Some(GetOptions::new().with_revision(99))).await),
            (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision".into())
        );
        assert_eq!(
            grpc(c.compact(5, None).await),
            (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted".into())
        );
        assert_eq!(
            grpc(c.put("", "v", None).await),
            (tonic::Code::InvalidArgument, "etcdserver: key is not provided".into())
        );
        let dup = Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]);
        assert_eq!(
            grpc(c.txn(dup).await),
            (tonic::Code::InvalidArgument, "etcdserver: duplicate key given in txn request".into())
        );
        let many = Txn::new().and_then((0..129).map(|i| TxnOp::put(format!("k{i}"), "", None)).collect::<Vec<_>>());
        assert_eq!(
            grpc(c.txn(many).await),
            (tonic::Code::InvalidArgument, "etcdserver: too many operations in txn request".into())
        );
        assert_eq!(
            grpc(c.put("k", "v", Some(PutOptions::new().with_lease(77))).await),
            (tonic::Code::NotFound, "etcdserver: requested lease not found".into())
        );
        // Over --max-request-bytes (1.5 MiB): etcd's refusal; over it plus 512 KiB: grpc-go's.
        let (code, msg) = grpc(c.put("big", vec![b'x'; 1_600_000], None).await);
        assert_eq!((code, msg.as_str()), (tonic::Code::InvalidArgument, "etcdserver: request is too large"));
        let (code, msg) = grpc(c.put("big", vec![b'x'; 2 << 20], None).await);
        assert_eq!(code, tonic::Code::ResourceExhausted, "{msg}");
        // The server is fine after all that.
        assert_eq!(c.get("a", None).await.expect("get").kvs()[0].value(), b"3");
    });
}

#[test]
fn the_keyspace_survives_restarts_from_the_log_and_from_a_snapshot() {
    let dir = temp_dir();
    let port = free_port();
    // Snapshots often (every ~200 entries): the second restart loads one.
    let extra = ["--snapshot-every-entries", "200"];
    let mut server = start(dir.path(), port, &extra);
    run(async {
        let mut c = connect(port).await;
        for i in 0..50 {
            c.put(format!("k{:02}", i % 10), format!("v{i}"), None).await.expect("put");
        }
    });
    server.kill();
    server.restart();
    run(async {
        let mut c = connect(port).await;
        let got = c.get("k", Some(GetOptions::new().with_prefix())).await.expect("range");
        assert_eq!((got.count(), got.header().expect("header").revision()), (10, 51));
        assert_eq!(got.kvs()[3].version(), 5);
        for i in 50..600 {
            c.put(format!("k{:02}", i % 10), format!("v{i}"), None).await.expect("put");
        }
        c.compact(300, None).await.expect("compact");
    });
    let snapshots = std::fs::read_dir(dir.path().join("snapshots")).expect("a snapshot directory");
    let snapshot = snapshots.filter_map(Result::ok).find(|e| e.file_name().to_string_lossy().ends_with(".snap"));
    let image = std::fs::read(snapshot.expect("a snapshot was written").path()).expect("read it");
    assert!(image.windows(8).any(|w| w == b"BETCDIMG"), "the snapshot holds the etcd keyspace beside the tree");
    server.kill();
    server.restart();
    run(async {
        let mut c = connect(port).await;
        let got = c.get("k", Some(GetOptions::new().with_prefix())).await.expect("range");
        assert_eq!((got.count(), got.header().expect("header").revision()), (10, 601));
        assert_eq!(got.kvs()[9].value(), b"v599");
        assert_eq!(
            grpc(c.get("k00", Some(GetOptions::new().with_revision(299))).await).1,
            "etcdserver: mvcc: required revision has been compacted"
        );
        let at = c.get("k00", Some(GetOptions::new().with_revision(300))).await.expect("read at the compaction");
        assert_eq!(at.kvs()[0].value(), b"v290");
    });
}

#[test]
fn an_ensemble_serves_etcd_on_every_member_and_carries_on_after_its_leader_dies() {
    use baton_tests::cluster::Cluster;
    let dir = temp_dir();
    let mut cluster =
        Cluster::start_with_etcd(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), 3, 26_300, 26_400, &[]);
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).expect("a leader");
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    let other = (1..=3).find(|&i| i != leader && i != follower).expect("another follower");
    let endpoint = |i: usize| cluster.etcd_endpoint(i).expect("etcd served");
    let (at_follower, at_other) = (endpoint(follower), endpoint(other));
    run(async {
        let mut c = Client::connect([at_follower.clone()], None).await.expect("connect to a follower");
        // Written through a follower (forwarded to the leader), read back linearizably there
        // and on the other follower.
        for i in 0..20 {
            c.put(format!("k{i}"), format!("v{i}"), None).await.expect("put through a follower");
        }
        let mut d = Client::connect([at_other.clone()], None).await.expect("connect");
        let got = d.get("k", Some(GetOptions::new().with_prefix())).await.expect("linearizable read");
        assert_eq!((got.count(), got.header().expect("header").revision()), (20, 21));
        let t = Txn::new()
            .when([Compare::value("k3", CompareOp::Equal, "v3")])
            .and_then([TxnOp::put("k3", "w3", None), TxnOp::delete("k4", None)]);
        assert!(d.txn(t).await.expect("txn").succeeded());
    });
    cluster.nodes[leader - 1].kill();
    assert!(cluster.wait_for_leader(&[follower, other], Duration::from_secs(20)).is_some(), "a new leader");
    run(async {
        let mut c = Client::connect([at_follower.clone()], None).await.expect("connect");
        // The next write after the failover: the revision goes on from where it was.
        let mut put = None;
        for _ in 0..50 {
            match c.put("after", "failover", None).await {
                Ok(r) => {
                    put = Some(r);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        assert_eq!(put.expect("a write after the failover").header().expect("header").revision(), 23);
        let mut d = Client::connect([at_other.clone()], None).await.expect("connect");
        let got = d.get("", Some(GetOptions::new().with_from_key())).await.expect("read");
        assert_eq!(got.count(), 20, "19 of k0..k19 and after");
        let k3 = d.get("k3", Some(GetOptions::new().with_serializable())).await.expect("read");
        assert_eq!((k3.kvs()[0].value(), k3.kvs()[0].version()), (&b"w3"[..], 2));
    });
}

#[test]
fn leases_are_granted_kept_alive_and_revoked_through_the_log_and_expire_on_the_leader() {
    use etcd_client::{LeaseGrantOptions, LeaseTimeToLiveOptions};
    let dir = temp_dir();
    let port = free_port();
    let _server = start(dir.path(), port, &[]);
    run(async {
        let mut c = connect(port).await;
        // etcd's minimum TTL, a chosen ID, and a lease that exists already.
        let g = c.lease_grant(1, Some(LeaseGrantOptions::new().with_id(7))).await.expect("grant");
        assert_eq!((g.id(), g.ttl()), (7, 2));
        assert_eq!(
            grpc(c.lease_grant(5, Some(LeaseGrantOptions::new().with_id(7))).await),
            (tonic::Code::FailedPrecondition, "etcdserver: lease already exists".into())
        );
        let server_chosen = c.lease_grant(60, None).await.expect("grant").id();
        assert!(server_chosen > 0);
        c.put("x", "1", Some(PutOptions::new().with_lease(server_chosen))).await.expect("put");
        c.put("y", "1", Some(PutOptions::new().with_lease(server_chosen))).await.expect("put");
        let t =
            c.lease_time_to_live(server_chosen, Some(LeaseTimeToLiveOptions::new().with_keys())).await.expect("ttl");
        assert_eq!((t.granted_ttl(), t.keys().len()), (60, 2));
        assert!(t.ttl() > 50 && t.ttl() <= 60, "{}", t.ttl());
        let leases: Vec<i64> = c.leases().await.expect("leases").leases().iter().map(|l| l.id()).collect();
        assert_eq!(leases.len(), 2);
        let unknown = c.lease_time_to_live(12345, None).await.expect("ttl of an unknown lease");
        assert_eq!(unknown.ttl(), -1);
        // A revoke deletes its keys in one revision.
        let before = c.get("x", None).await.expect("get").header().expect("header").revision();
        let r = c.lease_revoke(server_chosen).await.expect("revoke");
        assert_eq!(r.header().expect("header").revision(), before + 1);
        assert_eq!(c.get("", Some(GetOptions::new().with_from_key())).await.expect("get").count(), 0);
        assert_eq!(
            grpc(c.lease_revoke(server_chosen).await),
            (tonic::Code::NotFound, "etcdserver: requested lease not found".into())
        );
        // Lease 7 (2 s) kept alive for 4 s outlives its TTL; then left alone, it expires and
        // the leader revokes it: its key goes.
        c.put("kept", "1", Some(PutOptions::new().with_lease(7))).await.expect("put");
        let (mut keeper, mut answers) = c.lease_keep_alive(7).await.expect("keep-alive stream");
        for _ in 0..8 {
            keeper.keep_alive().await.expect("keep alive");
            let a = answers.message().await.expect("an answer").expect("not closed");
            assert_eq!((a.id(), a.ttl()), (7, 2));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(c.get("kept", None).await.expect("get").count(), 1, "kept alive past its TTL");
        drop(keeper);
        let mut gone = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if c.get("kept", None).await.expect("get").count() == 0 {
                gone = true;
                break;
            }
        }
        assert!(gone, "an expired lease's key is deleted");
        assert_eq!(c.lease_time_to_live(7, None).await.expect("ttl").ttl(), -1, "the lease is gone too");
    });
}

/// The (kind, key, revision) of every event in the next `n` events of `stream`.
async fn next_events(stream: &mut etcd_client::WatchStream, n: usize) -> Vec<(bool, Vec<u8>, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events in time")
            .expect("a watch answer")
            .expect("the stream is open");
        assert!(!r.canceled(), "cancelled: {}", r.cancel_reason());
        for e in r.events() {
            let kv = e.kv().expect("an event's key");
            out.push((e.event_type() == etcd_client::EventType::Put, kv.key().to_vec(), kv.mod_revision()));
        }
    }
    out
}

#[test]
fn watches_see_every_change_in_order_from_now_or_from_history_and_end_at_a_compaction() {
    use etcd_client::WatchOptions;
    let dir = temp_dir();
    let port = free_port();
    let _server = start(dir.path(), port, &[]);
    run(async {
        let mut c = connect(port).await;
        let mut w = connect(port).await;
        // From now: puts and deletes on a prefix, with their previous values; a NOPUT watcher
        // sees only the deletes.
        let (_w1, mut all) =
            w.watch("p/", Some(WatchOptions::new().with_prefix().with_prev_key())).await.expect("watch");
        let (_w2, mut deletes) = w
            .watch("p/", Some(WatchOptions::new().with_prefix().with_filters([etcd_client::WatchFilterType::NoPut])))
            .await
            .expect("watch");
        c.put("p/a", "1", None).await.expect("put"); // 2
        c.put("other", "x", None).await.expect("put"); // 3, not watched
        c.put("p/a", "2", None).await.expect("put"); // 4
        c.delete("p/", Some(DeleteOptions::new().with_prefix())).await.expect("delete"); // 5
        let got = next_events(&mut all, 3).await;
        assert_eq!(got, vec![(true, b"p/a".to_vec(), 2), (true, b"p/a".to_vec(), 4), (false, b"p/a".to_vec(), 5)]);
        assert_eq!(next_events(&mut deletes, 1).await, vec![(false, b"p/a".to_vec(), 5)]);
        // From history: 1,500 puts, then a watcher from revision 2 replays all of them (more
        // than one catch-up pass and than a stream's queue) and goes on live, with no gap and
        // no duplicate.
        for i in 0..1500 {
            c.put(format!("h/{:04}", i % 100), format!("{i}"), None).await.expect("put");
        }
        let (_w3, mut replay) =
            w.watch("", Some(WatchOptions::new().with_all_keys().with_start_revision(2))).await.expect("watch");
        c.put("h/live", "1", None).await.expect("put");
        let got = next_events(&mut replay, 1505).await;
        let revisions: Vec<i64> = got.iter().map(|e| e.2).collect();
        assert_eq!(revisions, (2..=1506).collect::<Vec<_>>(), "every revision once, in order");
        assert_eq!(got.last().map(|e| e.1.clone()), Some(b"h/live".to_vec()));
        // From a compacted revision: cancelled, with the compaction's revision.
        c.compact(1000, None).await.expect("compact");
        let (_w4, mut old) =
            w.watch("h/", Some(WatchOptions::new().with_prefix().with_start_revision(10))).await.expect("watch");
        let mut cancelled = None;
        while cancelled.is_none() {
            let r = tokio::time::timeout(Duration::from_secs(10), old.message())
                .await
                .expect("an answer in time")
                .expect("an answer")
                .expect("open");
            if r.canceled() {
                cancelled = Some(r.compact_revision());
            }
        }
        assert_eq!(cancelled, Some(1000));
    });
}

#[test]
fn maintenance_and_cluster_answer_as_etcds_do_and_hashes_agree_across_an_ensemble() {
    use baton_tests::cluster::Cluster;
    use etcd_client::AlarmAction;
    let dir = temp_dir();
    let cluster = Cluster::start_with_etcd(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), 3, 26_500, 26_600, &[]);
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).expect("a leader");
    let endpoints: Vec<String> = (1..=3).map(|i| cluster.etcd_endpoint(i).expect("etcd served")).collect();
    run(async {
        let mut c = Client::connect([endpoints[0].clone()], None).await.expect("connect");
        for i in 0..30 {
            c.put(format!("k{i}"), format!("v{i}"), None).await.expect("put");
        }
        let s = c.status().await.expect("status");
        assert_eq!((s.version(), s.leader()), ("3.5.0", leader as u64));
        assert!(s.raft_term() >= 1 && s.db_size() > 0);
        let members = c.member_list().await.expect("member list");
        let mut listed: Vec<(u64, Vec<String>)> =
            members.members().iter().map(|m| (m.id(), m.client_urls().to_vec())).collect();
        listed.sort_unstable();
        // Every member with its etcd client URL, as the membership names it.
        let expected: Vec<(u64, Vec<String>)> = (1..=3).map(|i| (i as u64, vec![endpoints[i - 1].clone()])).collect();
        assert_eq!(listed, expected);
        assert!(c
            .alarm(AlarmAction::Get, etcd_client::AlarmType::None, None)
            .await
            .expect("alarms")
            .alarms()
            .is_empty());
        c.defragment().await.expect("defragment succeeds: nothing to defragment");
        let (code, msg) = grpc(c.member_add(["http://127.0.0.1:1"], None).await);
        assert_eq!(code, tonic::Code::Unimplemented, "{msg}");
        // Every member hashes the same keys at the same revision alike.
        let mut hashes = Vec::new();
        for e in &endpoints {
            let mut m = Client::connect([e.clone()], None).await.expect("connect");
            m.get("k0", None).await.expect("a linearizable read: this member has applied revision 31");
            hashes.push(m.hash_kv(31).await.expect("hashkv").hash());
        }
        assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
        // A snapshot streams the state: both state machines, in Baton's format.
        let mut stream = c.snapshot().await.expect("snapshot");
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.expect("a chunk") {
            bytes.extend_from_slice(chunk.blob());
        }
        assert!(bytes.starts_with(b"BETCDIMG"), "the keyspace's image comes first");
    });
}

#[test]
fn a_watcher_that_asks_for_progress_notifications_gets_the_revision_it_has_seen_up_to() {
    use etcd_client::WatchOptions;
    let dir = temp_dir();
    let port = free_port();
    let _server = start(dir.path(), port, &["--etcd-watch-progress-notify-ms", "300"]);
    run(async {
        let mut c = connect(port).await;
        let mut w = connect(port).await;
        let (_watcher, mut stream) =
            w.watch("q", Some(WatchOptions::new().with_progress_notify())).await.expect("watch");
        c.put("elsewhere", "1", None).await.expect("put"); // revision 2, not watched
        let mut progress = None;
        while progress.is_none() {
            let r = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("a progress notification in time")
                .expect("an answer")
                .expect("open");
            if r.events().is_empty() && !r.created() && r.header().is_some_and(|h| h.revision() == 2) {
                progress = Some(r.watch_id());
            }
        }
        assert!(progress.is_some());
    });
}

#[test]
fn watchers_on_many_connections_each_see_a_single_keys_changes() {
    let dir = temp_dir();
    let port = free_port();
    let _server = start(dir.path(), port, &[]);
    run(async {
        let mut writer = connect(port).await;
        writer.put("/bench/watched", "0", None).await.expect("put");
        let mut streams = Vec::new();
        for _ in 0..8 {
            let mut c = connect(port).await;
            // The watcher handle is dropped at once (etcd-client then closes its half of the
            // stream): etcd keeps sending the watch's events, and so must Baton.
            let (_, s) = c.watch("/bench/watched", None).await.expect("watch");
            streams.push((c, s));
        }
        writer.put("/bench/watched", "1", None).await.expect("put");
        for (_, s) in &mut streams {
            assert_eq!(next_events(s, 1).await, vec![(true, b"/bench/watched".to_vec(), 3)]);
        }
    });
}

#[test]
fn through_a_leader_sigkill_no_acknowledged_put_is_lost_watchers_resume_exactly_and_leases_survive() {
    use baton_tests::cluster::Cluster;
    use etcd_client::WatchOptions;
    let dir = temp_dir();
    let mut cluster =
        Cluster::start_with_etcd(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), 3, 26_700, 26_800, &[]);
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).expect("a leader");
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    let other = (1..=3).find(|&i| i != leader && i != follower).expect("another follower");
    let endpoint = |i: usize| cluster.etcd_endpoint(i).expect("etcd served");
    let (at_leader, at_follower, at_other) = (endpoint(leader), endpoint(follower), endpoint(other));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // Before the kill: a lease kept alive through a follower, a prefix watch on the leader,
    // and puts through the other follower.
    let (lease, mut keeper, mut keep_answers, mut watch_stream, mut acked, _leader_client) = rt.block_on(async {
        let mut f = Client::connect([at_follower.clone()], None).await.expect("connect");
        let lease = f.lease_grant(4, None).await.expect("grant").id();
        f.put("leased", "1", Some(PutOptions::new().with_lease(lease))).await.expect("put");
        let (keeper, keep_answers) = f.lease_keep_alive(lease).await.expect("keep-alive");
        let mut l = Client::connect([at_leader.clone()], None).await.expect("connect");
        let (_, stream) = l.watch("p/", Some(WatchOptions::new().with_prefix())).await.expect("watch");
        let mut o = Client::connect([at_other.clone()], None).await.expect("connect");
        let mut acked = Vec::new();
        for i in 0..100 {
            let r = o.put(format!("p/{i:04}"), "x", None).await.expect("put before the kill");
            acked.push(r.header().expect("header").revision());
        }
        (lease, keeper, keep_answers, stream, acked, l)
    });
    cluster.nodes[leader - 1].kill();
    rt.block_on(async {
        // The watch on the dead leader ends; what it delivered is the start of the history.
        let mut seen: Vec<i64> = Vec::new();
        while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_secs(5), watch_stream.message()).await {
            seen.extend(r.events().iter().filter_map(|e| e.kv().map(|kv| kv.mod_revision())));
        }
        // Puts through the other follower go on once there is a new leader.
        let mut o = Client::connect([at_other.clone()], None).await.expect("connect");
        let mut i = 100;
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while i < 200 {
            assert!(std::time::Instant::now() < end, "writes resumed after the failover");
            // Keep the lease alive meanwhile (its 4 s TTL passes during the failover).
            let _ = keeper.keep_alive().await;
            let _ = tokio::time::timeout(Duration::from_millis(100), keep_answers.message()).await;
            match o.put(format!("p/{i:04}"), "x", None).await {
                Ok(r) => {
                    acked.push(r.header().expect("header").revision());
                    i += 1;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        // The watcher resumes on a live server from the revision after the last it saw.
        let from = seen.last().map_or(2, |r| r + 1);
        let mut f = Client::connect([at_follower.clone()], None).await.expect("connect");
        let (_, mut resumed) =
            f.watch("p/", Some(WatchOptions::new().with_prefix().with_start_revision(from))).await.expect("watch");
        let last_acked = *acked.last().expect("puts");
        while seen.last().is_none_or(|r| *r < last_acked) {
            let r = tokio::time::timeout(Duration::from_secs(10), resumed.message())
                .await
                .expect("events in time")
                .expect("an answer")
                .expect("open");
            seen.extend(r.events().iter().filter_map(|e| e.kv().map(|kv| kv.mod_revision())));
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "no event twice, in order");
        for r in &acked {
            assert!(seen.contains(r), "the acknowledged put at revision {r} was seen");
        }
        let got = f.get("p/", Some(GetOptions::new().with_prefix().with_count_only())).await.expect("count");
        assert!(got.count() >= 200, "no acknowledged put lost: {}", got.count());
        // The lease lived through the failover, kept alive through a follower.
        assert_eq!(f.get("leased", None).await.expect("get").count(), 1, "the leased key survived");
        assert!(f.lease_time_to_live(lease, None).await.expect("ttl").ttl() > 0);
    });
}

#[test]
fn a_leader_cut_off_from_its_ensemble_serves_no_stale_linearizable_read() {
    use baton_tests::cluster::Cluster;
    use std::time::Instant;
    let _one = baton_tests::load::one_cluster_at_a_time();
    let dir = temp_dir();
    let cluster = Cluster::start_with_etcd(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), 3, 26_900, 27_000, &[]);
    let old = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).expect("a leader");
    let rest: Vec<usize> = (1..=3).filter(|&i| i != old).collect();
    let endpoint = |i: usize| cluster.etcd_endpoint(i).expect("etcd served");
    let (at_old, at_rest) = (endpoint(old), endpoint(rest[0]));
    run(async {
        let mut c = Client::connect([at_old.clone()], None).await.expect("connect to the leader");
        c.put("k", "before", None).await.expect("put");
    });
    cluster.isolate(old);
    let isolated = Instant::now();
    // Linearizable reads on the old leader from the moment it is cut off, beside a write on
    // the majority's side: a read invoked after that write was acknowledged must not return
    // the value it replaced.
    let acked: std::sync::Arc<std::sync::Mutex<Option<Instant>>> = Default::default();
    let reader = {
        let (acked, at_old) = (acked.clone(), at_old.clone());
        std::thread::spawn(move || {
            let mut after_ack = (0, 0); // (reads invoked after the ack, of them answered)
            run(async {
                let mut c = Client::connect([at_old], None).await.expect("connect to the old leader");
                loop {
                    let invoked = Instant::now();
                    let ack = *acked.lock().expect("lock");
                    if ack.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
                        break;
                    }
                    let read = tokio::time::timeout(Duration::from_secs(3), c.get("k", None)).await;
                    if let Some(t) = ack.filter(|t| *t < invoked) {
                        after_ack.0 += 1;
                        if let Ok(Ok(r)) = read {
                            after_ack.1 += 1;
                            let value = r.kvs().first().map(|kv| kv.value().to_vec());
                            assert_eq!(
                                value.as_deref(),
                                Some(&b"after"[..]),
                                "a linearizable read invoked {:?} after a newer write was acknowledged",
                                invoked - t
                            );
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            after_ack
        })
    };
    let new = cluster.wait_for_leader(&rest, Duration::from_secs(20)).expect("a new leader on the majority's side");
    assert_ne!(new, old);
    run(async {
        let mut c = Client::connect([at_rest.clone()], None).await.expect("connect");
        loop {
            if c.put("k", "after", None).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        *acked.lock().expect("lock") = Some(Instant::now());
        // The old leader has not seen that write: its serializable (local) read says so.
        let mut o = Client::connect([at_old.clone()], None).await.expect("connect to the old leader");
        let stale = o.get("k", Some(GetOptions::new().with_serializable())).await.expect("a serializable read");
        assert_eq!(stale.kvs()[0].value(), b"before", "the old leader is cut off");
    });
    let (after_ack, answered) = reader.join().expect("no stale linearizable read");
    assert!(after_ack > 0, "reads were invoked on the old leader after the write ({:?} cut off)", isolated.elapsed());
    eprintln!("{after_ack} linearizable reads on the cut-off leader after the write, {answered} answered");
    // Healed, the old leader catches up and answers.
    cluster.heal();
    run(async {
        let mut o = Client::connect([at_old.clone()], None).await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = o.get("k", None).await {
                assert_eq!(r.kvs()[0].value(), b"after");
                break;
            }
            assert!(Instant::now() < deadline, "the old leader answers once healed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn a_watcher_that_asks_for_fragments_gets_a_large_answer_cut_below_the_request_limit() {
    use etcd_client::WatchOptions;
    let dir = temp_dir();
    let port = free_port();
    let _server = start(dir.path(), port, &["--etcd-max-request-bytes", "4096"]);
    run(async {
        let mut c = connect(port).await;
        for i in 0..10 {
            c.put(format!("f/{i}"), vec![b'x'; 1000], None).await.expect("put");
            // revisions 2..=11
        }
        // Both replay the ten puts from history in one pass: one answer of ~10 KB, sent
        // whole to one watcher and in fragments below 4 KiB to the other (etcd-client
        // hands fragments over as they come, so each is one message here).
        let mut w = connect(port).await;
        let mut received = Vec::new();
        for fragment in [false, true] {
            let mut options = WatchOptions::new().with_prefix().with_start_revision(2);
            if fragment {
                options = options.with_fragment();
            }
            let (_watcher, mut stream) = w.watch("f/", Some(options)).await.expect("watch");
            let mut messages = Vec::new();
            while messages.iter().sum::<usize>() < 10 {
                let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
                    .await
                    .expect("an answer in time")
                    .expect("an answer")
                    .expect("open");
                let revisions: Vec<i64> =
                    r.events().iter().filter_map(|e| e.kv()).map(|kv| kv.mod_revision()).collect();
                if !revisions.is_empty() {
                    assert_eq!(revisions[0], 2 + messages.iter().sum::<usize>() as i64, "in order, none twice");
                    messages.push(revisions.len());
                }
            }
            received.push(messages);
        }
        assert_eq!(received[0], vec![10], "whole without fragment");
        assert_eq!(received[1], vec![3, 3, 3, 1], "cut below the limit with fragment");
    });
}

#[test]
fn past_its_space_quota_the_keyspace_raises_nospace_and_takes_writes_again_once_disarmed() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType, CompactionOptions};
    let dir = temp_dir();
    let port = free_port();
    let _server = start(dir.path(), port, &["--etcd-quota-bytes", "40000"]);
    run(async {
        let mut c = connect(port).await;
        let value = vec![b'v'; 1000];
        let mut written = 0;
        let refused = loop {
            match c.put(format!("q/{written:03}"), value.clone(), None).await {
                Ok(_) => written += 1,
                Err(e) => break grpc::<()>(Err(e)),
            }
            assert!(written < 100, "the quota refuses a write before 100 KB");
        };
        assert_eq!(refused, (tonic::Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded".into()));
        assert!((30..40).contains(&written), "{written} puts of 1 KB under a 40 KB quota");
        // The alarm is raised through the log: listed, in Status, and every write that adds
        // data is refused at apply, even a small one; reads and deletes go on.
        let mut listed = Vec::new();
        for _ in 0..50 {
            listed = c.alarm(AlarmAction::Get, AlarmType::None, None).await.expect("alarms").alarms().to_vec();
            if !listed.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let listed: Vec<(u64, i32)> = listed.iter().map(|a| (a.member_id(), a.alarm() as i32)).collect();
        assert_eq!(listed, vec![(1, AlarmType::Nospace as i32)]);
        let status = c.status().await.expect("status");
        assert!(status.errors().iter().any(|e| e.contains("alarm:NOSPACE")), "{:?}", status.errors());
        assert_eq!(grpc(c.put("small", "1", None).await).0, tonic::Code::ResourceExhausted);
        assert_eq!(grpc(c.lease_grant(10, None).await).0, tonic::Code::ResourceExhausted);
        assert_eq!(c.get("q/000", None).await.expect("a read").kvs()[0].value(), &value[..]);
        let deleted = c.delete("q/", Some(DeleteOptions::new().with_prefix())).await.expect("a delete").deleted();
        assert_eq!(deleted, written);
        // Space freed: compaction (physical: pruned before the answer) shrinks the keyspace,
        // but the alarm holds until disarmed, as etcd's.
        let rev = c.get("q/", None).await.expect("read").header().expect("header").revision();
        c.compact(rev, Some(CompactionOptions::new().with_physical())).await.expect("compact");
        // (The deletes' tombstones stay: they are at the compaction's revision, as etcd's.)
        let size = c.status().await.expect("status").db_size();
        assert!(size < 5_000, "the history went: {size} bytes left");
        assert_eq!(grpc(c.put("small", "1", None).await).0, tonic::Code::ResourceExhausted);
        let mut member = AlarmOptions::new();
        member.with_member(1);
        let disarmed = c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(member)).await.expect("disarm");
        assert_eq!(disarmed.alarms().len(), 1);
        assert!(c.alarm(AlarmAction::Get, AlarmType::None, None).await.expect("alarms").alarms().is_empty());
        c.put("small", "1", None).await.expect("a write after the alarm was disarmed");
    });
}

#[test]
fn a_corrupt_alarm_refuses_reads_and_writes_with_etcds_error_until_it_is_disarmed() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let dir = temp_dir();
    let port = free_port();
    let _server = start(dir.path(), port, &[]);
    run(async {
        let mut c = connect(port).await;
        c.put("k", "1", None).await.expect("put");
        let mut member = AlarmOptions::new();
        member.with_member(1);
        c.alarm(AlarmAction::Activate, AlarmType::Corrupt, Some(member.clone())).await.expect("raise");
        let corrupt = (tonic::Code::DataLoss, "etcdserver: corrupt cluster".to_string());
        assert_eq!(grpc(c.get("k", None).await), corrupt);
        assert_eq!(grpc(c.get("k", Some(GetOptions::new().with_serializable())).await), corrupt);
        assert_eq!(grpc(c.put("k", "2", None).await), corrupt);
        assert_eq!(grpc(c.delete("k", None).await), corrupt);
        assert_eq!(grpc(c.lease_grant(10, None).await), corrupt);
        let reads = etcd_client::Txn::new().and_then([etcd_client::TxnOp::get("k", None)]);
        assert_eq!(grpc(c.txn(reads).await), corrupt);
        // Maintenance still answers, and says why.
        let errors = c.status().await.expect("status").errors().join(" ");
        assert!(errors.contains("CORRUPT"), "{errors}");
        c.alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(member)).await.expect("disarm");
        let got = c.get("k", None).await.expect("a read after the alarm was disarmed");
        assert_eq!(got.kvs()[0].value(), b"1");
        c.put("k", "2", None).await.expect("a write after the alarm was disarmed");
    });
}

/// Bytes as they are: what a broken or hostile client sends.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[test]
fn malformed_messages_and_unknown_methods_get_their_status_and_a_rate_limited_log_line() {
    let dir = temp_dir();
    let port = free_port();
    let server = start(dir.path(), port, &[]);
    run(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut raw = tonic::client::Grpc::new(channel);
        let call = |path: &'static str, body: Vec<u8>| {
            let mut raw = raw.clone();
            async move {
                raw.ready().await.expect("ready");
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
                raw.unary(tonic::Request::new(body), path, RawCodec).await
            }
        };
        // Field 1 (key) claiming 100 bytes that are not there.
        let broken = vec![0x0a, 100, b'k'];
        let status = call("/etcdserverpb.KV/Put", broken.clone()).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        let status = call("/etcdserverpb.KV/Nope", Vec::new()).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        // A flood of them costs a line a second per kind, and everyone else carries on.
        for _ in 0..300 {
            assert!(call("/etcdserverpb.KV/Put", broken.clone()).await.is_err());
        }
        raw.ready().await.expect("the connection is still up");
        let mut c = connect(port).await;
        c.put("still", "fine", None).await.expect("a put beside the flood");
    });
    let log = server.log_tail(200);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("etcd request refused")).collect();
    assert!(lines.iter().any(|l| l.contains("/etcdserverpb.KV/Put") && l.contains("code=13")), "{log}");
    assert!(lines.iter().any(|l| l.contains("/etcdserverpb.KV/Nope") && l.contains("code=12")), "{log}");
    assert!(lines.len() <= 6, "rate-limited: {} lines for 302 refusals:\n{}", lines.len(), lines.join("\n"));
}

#[test]
fn a_server_stops_on_sigterm_with_watch_and_keep_alive_streams_open_and_a_second_may_not_share_its_etcd_port() {
    // The etcd port is served by every shard on SO_REUSEPORT sockets: a second server on the
    // same etcd port (another client port) would split etcd's clients between two keyspaces.
    let dir = temp_dir();
    let port = free_port();
    let mut server = start(dir.path(), port, &[]);
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_baton_test_server"))
        .args(["--client-addr", "127.0.0.1:0", "--etcd-addr", &format!("127.0.0.1:{port}"), "--admin-addr", "off"])
        .arg("--data-dir")
        .arg(dir.path().join("second"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = second.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second server served the etcd port");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "it must fail, not serve");
    // Streams that never end on their own: a prefix watch and a lease's keep-alives.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (_client, _watch, _keep) = rt.block_on(async {
        let mut c = connect(port).await;
        let lease = c.lease_grant(30, None).await.expect("grant").id();
        let keep = c.lease_keep_alive(lease).await.expect("keep-alive");
        let (watcher, mut events) =
            c.watch("s/", Some(etcd_client::WatchOptions::new().with_prefix())).await.expect("watch");
        c.put("s/1", "x", None).await.expect("put");
        let got = tokio::time::timeout(Duration::from_secs(10), events.message()).await.expect("an event in time");
        assert_eq!(got.expect("message").expect("open").events().len(), 1);
        (c, (watcher, events), keep)
    });
    let stopped = server.terminate(Duration::from_secs(10));
    assert!(stopped.is_some_and(|s| s.success()), "SIGTERM stops the server cleanly with streams open: {stopped:?}");
}

#[test]
fn a_connection_holds_at_most_etcd_max_concurrent_streams_and_the_next_call_waits_for_one_to_end() {
    let dir = temp_dir();
    let port = free_port();
    let _server = start(dir.path(), port, &["--etcd-max-concurrent-streams", "1"]);
    run(async {
        let mut c = connect(port).await;
        c.put("k", "1", None).await.expect("a call alone goes through");
        // A watch holds the connection's one stream: the next call waits.
        let (watcher, events) = c.watch("w", None).await.expect("watch");
        let waiting = tokio::time::timeout(Duration::from_millis(1500), c.get("k", None)).await;
        assert!(waiting.is_err(), "a second stream was let in: {waiting:?}");
        // The watch's stream ends: the call goes through.
        drop((watcher, events));
        let got = tokio::time::timeout(Duration::from_secs(10), c.get("k", None)).await.expect("in time");
        assert_eq!(got.expect("get").kvs()[0].value(), b"1");
    });
}
