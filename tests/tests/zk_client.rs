//! Compatibility with an unmodified third-party Rust client (`zookeeper-client`) against a
//! real `baton` process: every client opcode the crate exposes, errors, watches, ACLs.

use std::time::Duration;

use baton_tests::server::BatonProcess;
use baton_tests::temp_dir;
use zookeeper_client as zk;

fn start(dir: &std::path::Path) -> BatonProcess {
    BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir, &["--tick-ms", "500"])
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

async fn connect(server: &BatonProcess) -> zk::Client {
    tokio::time::timeout(Duration::from_secs(10), zk::Client::connect(&server.connect_string()))
        .await
        .expect("connect in time")
        .expect("connect")
}

fn run<F: std::future::Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), f).await.expect("test finished within 60 s") });
}

#[test]
fn crud_stat_and_errors_match_zookeeper() {
    let dir = temp_dir();
    let server = start(dir.path());
    run(async {
        let c = connect(&server).await;
        let (stat, _) = c.create("/a", b"one", &persistent()).await.expect("create");
        assert_eq!((stat.version, stat.data_length, stat.num_children), (0, 3, 0));
        assert_eq!(stat.czxid, stat.mzxid);
        let (data, stat) = c.get_data("/a").await.expect("get");
        assert_eq!(data, b"one");
        let stat2 = c.set_data("/a", b"two", Some(stat.version)).await.expect("set");
        assert_eq!(stat2.version, 1);
        assert!(stat2.mzxid > stat.mzxid);
        assert_eq!(c.set_data("/a", b"x", Some(7)).await, Err(zk::Error::BadVersion));
        assert_eq!(c.create("/a", b"", &persistent()).await.map(|_| ()), Err(zk::Error::NodeExists));
        assert_eq!(c.get_data("/missing").await.map(|_| ()), Err(zk::Error::NoNode));
        assert_eq!(c.create("/x/y", b"", &persistent()).await.map(|_| ()), Err(zk::Error::NoNode));
        c.create("/a/b", b"", &persistent()).await.expect("child");
        assert_eq!(c.delete("/a", None).await, Err(zk::Error::NotEmpty));
        let exists = c.check_stat("/a").await.expect("exists").expect("present");
        assert_eq!(exists.num_children, 1);
        assert_eq!(c.check_stat("/nope").await.expect("exists"), None);
        let (children, parent) = c.get_children("/a").await.expect("children2");
        assert_eq!((children, parent.num_children), (vec!["b".to_string()], 1));
        assert_eq!(c.list_children("/").await.expect("ls /").len(), 2, "/a and /zookeeper");
        c.create("/a/b/c", b"", &persistent()).await.expect("grandchild");
        assert_eq!(c.count_descendants_number("/a").await.expect("getAllChildrenNumber"), 2);
        c.delete("/a/b/c", Some(0)).await.expect("delete");
        c.sync("/a").await.expect("sync");
    });
}

#[test]
fn sequential_ephemeral_container_and_ttl_nodes() {
    let dir = temp_dir();
    let server = start(dir.path());
    run(async {
        let c = connect(&server).await;
        c.create("/q", b"", &persistent()).await.expect("q");
        let seq = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
        let (_, s1) = c.create("/q/n-", b"", &seq).await.expect("seq 1");
        let (_, s2) = c.create("/q/n-", b"", &seq).await.expect("seq 2");
        assert_eq!((s1.into_i64(), s2.into_i64()), (0, 1), "the counter is the parent's cversion");
        let mut names = c.list_children("/q").await.expect("ls");
        names.sort();
        assert_eq!(names, vec!["n-0000000000", "n-0000000001"]);
        let eph = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        let (stat, _) = c.create("/q/e", b"", &eph).await.expect("ephemeral");
        assert_eq!(stat.ephemeral_owner, c.session_id().0);
        assert_eq!(
            c.create("/q/e/child", b"", &persistent()).await.map(|_| ()),
            Err(zk::Error::NoChildrenForEphemerals)
        );
        assert_eq!(c.list_ephemerals("/").await.expect("getEphemerals"), vec!["/q/e".to_string()]);
        let container = zk::CreateMode::Container.with_acls(zk::Acls::anyone_all());
        let (stat, _) = c.create("/box", b"", &container).await.expect("container");
        // Clients see 0 for containers and TTL znodes, as ZooKeeper's getClientEphemeralOwner.
        assert_eq!(stat.ephemeral_owner, 0);
        let ttl = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()).with_ttl(Duration::from_secs(60));
        let (stat, _) = c.create("/ttl", b"", &ttl).await.expect("ttl node");
        assert_eq!(stat.ephemeral_owner, 0);
    });
}

#[test]
fn multi_write_and_multi_read() {
    let dir = temp_dir();
    let server = start(dir.path());
    run(async {
        let c = connect(&server).await;
        let mut w = c.new_multi_writer();
        w.add_create("/m", b"m", &persistent()).expect("op");
        w.add_create("/m/c", b"", &persistent()).expect("op");
        w.add_set_data("/m", b"m2", Some(0)).expect("op");
        w.add_check_version("/m", 1).expect("op");
        let results = w.commit().await.expect("multi");
        assert_eq!(results.len(), 4);
        let mut w = c.new_multi_writer();
        w.add_create("/m2", b"", &persistent()).expect("op");
        w.add_delete("/nope", None).expect("op");
        match w.commit().await {
            Err(zk::MultiWriteError::OperationFailed { index: 1, source: zk::Error::NoNode }) => {}
            other => panic!("expected operation 1 to fail with NoNode, got {other:?}"),
        }
        assert_eq!(c.check_stat("/m2").await.expect("exists"), None, "a failed multi applies nothing");
        let mut r = c.new_multi_reader();
        r.add_get_data("/m").expect("op");
        r.add_get_children("/m").expect("op");
        r.add_get_data("/nope").expect("op");
        let results = r.commit().await.expect("multiRead");
        match &results[..] {
            [zk::MultiReadResult::Data { data, .. }, zk::MultiReadResult::Children { children }, zk::MultiReadResult::Error { err: zk::Error::NoNode }] =>
            {
                assert_eq!(data, b"m2");
                assert_eq!(children, &vec!["c".to_string()]);
            }
            other => panic!("unexpected multiRead results {other:?}"),
        }
    });
}

#[test]
fn watches_one_shot_persistent_and_recursive() {
    let dir = temp_dir();
    let server = start(dir.path());
    run(async {
        let c = connect(&server).await;
        let other = connect(&server).await;
        c.create("/w", b"", &persistent()).await.expect("w");
        let (_, _, data_watch) = c.get_and_watch_data("/w").await.expect("watch data");
        let (_, child_watch) = c.list_and_watch_children("/w").await.expect("watch children");
        let (exists, create_watch) = c.check_and_watch_stat("/w/new").await.expect("watch exists");
        assert!(exists.is_none());
        let mut recursive = c.watch("/w", zk::AddWatchMode::PersistentRecursive).await.expect("addWatch");
        other.set_data("/w", b"changed", None).await.expect("set");
        let e = tokio::time::timeout(Duration::from_secs(5), data_watch.changed()).await.expect("data event");
        assert_eq!((e.event_type, e.path.as_str()), (zk::EventType::NodeDataChanged, "/w"));
        other.create("/w/new", b"", &persistent()).await.expect("create");
        let e = tokio::time::timeout(Duration::from_secs(5), create_watch.changed()).await.expect("create event");
        assert_eq!((e.event_type, e.path.as_str()), (zk::EventType::NodeCreated, "/w/new"));
        let e = tokio::time::timeout(Duration::from_secs(5), child_watch.changed()).await.expect("child event");
        assert_eq!((e.event_type, e.path.as_str()), (zk::EventType::NodeChildrenChanged, "/w"));
        // The recursive watch saw the data change, then the create below it.
        let e1 = tokio::time::timeout(Duration::from_secs(5), recursive.changed()).await.expect("recursive 1");
        let e2 = tokio::time::timeout(Duration::from_secs(5), recursive.changed()).await.expect("recursive 2");
        assert_eq!((e1.event_type, e1.path.as_str()), (zk::EventType::NodeDataChanged, "/w"));
        assert_eq!((e2.event_type, e2.path.as_str()), (zk::EventType::NodeCreated, "/w/new"));
        // A watch event reaches a client before any read of the change's effects.
        let (_, _, w2) = c.get_and_watch_data("/w").await.expect("watch again");
        other.set_data("/w", b"again", None).await.expect("set");
        let e = tokio::time::timeout(Duration::from_secs(5), w2.changed()).await.expect("event");
        assert_eq!(e.event_type, zk::EventType::NodeDataChanged);
        assert_eq!(c.get_data("/w").await.expect("get").0, b"again");
    });
}

#[test]
fn digest_acls_are_enforced_and_whoami_reports_them() {
    let dir = temp_dir();
    let server = start(dir.path());
    run(async {
        let owner = connect(&server).await;
        owner.auth("digest", b"alice:secret").await.expect("addauth");
        let users = owner.list_auth_users().await.expect("whoAmI");
        assert!(users.iter().any(|u| u.scheme() == "digest" && u.user().starts_with("alice:")), "{users:?}");
        let private = zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all());
        owner.create("/private", b"s3cret", &private).await.expect("create with auth ACL");
        let (acl, _) = owner.get_acl("/private").await.expect("getACL");
        assert_eq!(acl.len(), 1);
        assert_eq!(acl[0].scheme(), "digest");
        let stranger = connect(&server).await;
        assert_eq!(stranger.get_data("/private").await.map(|_| ()), Err(zk::Error::NoAuth));
        assert_eq!(stranger.set_data("/private", b"x", None).await.map(|_| ()), Err(zk::Error::NoAuth));
        assert_eq!(owner.get_data("/private").await.expect("owner reads").0, b"s3cret");
        owner.set_acl("/private", &zk::Acls::anyone_read(), None).await.expect("setACL");
        assert_eq!(stranger.get_data("/private").await.expect("now readable").0, b"s3cret");
        assert_eq!(stranger.set_data("/private", b"x", None).await.map(|_| ()), Err(zk::Error::NoAuth));
    });
}

#[test]
fn empty_containers_and_expired_ttl_nodes_are_reaped() {
    let dir = temp_dir();
    let server = start(dir.path());
    run(async {
        let c = connect(&server).await;
        let container = zk::CreateMode::Container.with_acls(zk::Acls::anyone_all());
        c.create("/box", b"", &container).await.expect("container");
        c.create("/box/item", b"", &persistent()).await.expect("child");
        let ttl = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()).with_ttl(Duration::from_millis(300));
        c.create("/short", b"", &ttl).await.expect("ttl node");
        c.create("/never-used", b"", &container).await.expect("empty container");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(c.check_stat("/box").await.expect("exists").is_some(), "a container with a child stays");
        assert_eq!(c.check_stat("/short").await.expect("exists"), None, "a TTL node past its TTL is reaped");
        assert!(
            c.check_stat("/never-used").await.expect("exists").is_some(),
            "a container that never had a child stays"
        );
        c.delete("/box/item", None).await.expect("delete child");
        let mut gone = false;
        for _ in 0..40 {
            if c.check_stat("/box").await.expect("exists").is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "an emptied container is reaped");
    });
}

#[test]
fn the_client_keeps_its_session_and_ephemeral_across_a_leader_change() {
    use baton_tests::cluster::Cluster;
    let dir = temp_dir();
    let mut cluster = Cluster::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), 3, 28_900, &[]);
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(30)).expect("a leader");
    // Start on a follower so that the session outlives the leader's process.
    let connect = cluster.connect_string_avoiding(leader);
    let killed = std::sync::Mutex::new(Some(&mut cluster.nodes[leader - 1]));
    run(async {
        let c = tokio::time::timeout(Duration::from_secs(10), zk::Client::connect(&connect))
            .await
            .expect("connect in time")
            .expect("connect");
        let session = c.session_id();
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        c.create("/lease", b"", &ephemeral).await.expect("ephemeral");
        let mut acked = Vec::new();
        for i in 0..300 {
            if i == 100 {
                if let Some(node) = killed.lock().expect("lock").take() {
                    node.kill();
                }
            }
            let path = format!("/w{i:03}");
            loop {
                match c.create(&path, b"v", &persistent()).await {
                    Ok(_) | Err(zk::Error::NodeExists) => break,
                    // The request's connection broke (the crate reports a reset as a custom
                    // I/O error): as with ConnectionLoss, the outcome is unknown; retry.
                    Err(zk::Error::ConnectionLoss | zk::Error::Custom(_)) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("create {path}: {e}"),
                }
            }
            acked.push(path);
        }
        assert_eq!(c.session_id(), session, "the session survived the leader change");
        c.sync("/").await.expect("sync");
        let children = c.list_children("/").await.expect("ls /");
        assert!(children.contains(&"lease".to_string()), "the live session's ephemeral stayed");
        for path in &acked {
            assert!(children.contains(&path[1..].to_string()), "{path} acknowledged but missing");
        }
    });
}

/// Sessions race to create the same paths (150 rounds); every session told NodeExists reads
/// the node at once, on whichever server it is connected to. Returns the refusals seen.
async fn race_creates(clients: &[zk::Client]) -> usize {
    let mut exists_seen = 0;
    for round in 0..150 {
        let path = format!("/race-{round}");
        let attempts: Vec<_> = clients
            .iter()
            .map(|c| {
                let (c, path) = (c.clone(), path.clone());
                tokio::spawn(async move {
                    match c.create(&path, b"", &persistent()).await {
                        Ok(_) => false,
                        Err(zk::Error::NodeExists) => {
                            let read = c.get_data(&path).await.map(|_| ());
                            assert_eq!(read, Ok(()), "{path}: NodeExists, then the session could not read it");
                            true
                        }
                        Err(e) => panic!("{path}: {e}"),
                    }
                })
            })
            .collect();
        for a in attempts {
            exists_seen += usize::from(a.await.expect("attempt"));
        }
    }
    exists_seen
}

/// A write refused because of a write still in flight (here NodeExists, against another
/// session's create not yet committed) is answered only after that write is applied, as
/// ZooKeeper orders its error transactions: a client told "exists" then finds the node. Found
/// by kazoo's Counter recipe (four sessions ensuring one path, then reading it: NoNode).
#[test]
fn a_refusal_is_answered_after_the_write_it_conflicted_with() {
    let dir = temp_dir();
    let server = start(dir.path());
    run(async {
        let clients = [connect(&server).await, connect(&server).await, connect(&server).await, connect(&server).await];
        // Every round has one creator and three refusals: the race was really run.
        assert_eq!(race_creates(&clients).await, 150 * 3);
    });
}

/// The same across an ensemble: a follower answers a refusal the leader forwards only once
/// its own tree has applied what the leader had sequenced when it refused.
#[test]
fn a_forwarded_refusal_is_answered_after_the_follower_applied_the_conflicting_write() {
    use baton_tests::cluster::Cluster;
    let dir = temp_dir();
    let cluster = Cluster::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), 3, 28_700, &[]);
    cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(30)).expect("a leader");
    let addrs = cluster.addrs();
    run(async {
        let mut clients = Vec::new();
        for i in 0..6 {
            let addr = addrs[i % addrs.len()].to_string();
            let c = tokio::time::timeout(Duration::from_secs(10), zk::Client::connect(&addr))
                .await
                .expect("connect in time")
                .expect("connect");
            clients.push(c);
        }
        assert_eq!(race_creates(&clients).await, 150 * 5);
    });
}
