//! A three-node Baton cluster of real processes under continuous client load: SIGKILL the
//! leader, then a follower, and restart them; cut the leader off from the majority with
//! fault-injecting proxies on every peer link; restart the whole cluster. Afterwards every
//! acknowledged write is on every server and their trees are identical.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_tests::cluster::Cluster;
use baton_tests::load::{assert_converged, one_cluster_at_a_time, Load};
use baton_tests::raw::RawClient;
use baton_tests::temp_dir;

const LIMIT: Duration = Duration::from_secs(30);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_baton_test_server")
}

#[test]
fn a_three_node_cluster_keeps_every_acknowledged_write_through_kills_a_partition_and_a_full_restart() {
    let _one = one_cluster_at_a_time();
    let dir = temp_dir();
    // Frequent snapshots and small segments: log compaction, segment recycling and
    // synchronisation by SNAP all happen along the way.
    let flags = ["--snapshot-every-entries", "400", "--wal-segment-bytes", "65536", "--max-frame-bytes", "16384"];
    let mut cluster = Cluster::start(bin(), dir.path(), 3, 29_600, &flags);
    let all = [1, 2, 3];
    let leader = cluster.wait_for_leader(&all, LIMIT).expect("a leader is elected");
    let mut c = RawClient::connect(cluster.nodes[leader - 1].addr, 4000, None).expect("connect to the leader");
    assert_eq!(c.create("/load", b"", 0).expect("reply").err, 0);
    drop(c);
    let load = Load::start(cluster.addrs(), 3);
    load.progress(&cluster, 300, LIMIT, "at start");

    // 1. SIGKILL the leader: the other two elect one and writes go on.
    cluster.nodes[leader - 1].kill();
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let second = cluster.wait_for_leader(&rest, LIMIT).expect("the survivors elect a leader");
    load.progress(&cluster, 300, LIMIT, "after killing the leader");
    cluster.nodes[leader - 1].start_again();
    assert!(cluster.wait_for_leader(&all, LIMIT).is_some(), "the old leader rejoins");
    load.progress(&cluster, 300, LIMIT, "after the old leader rejoined");

    // 2. SIGKILL a follower, then restart it.
    let follower = all.iter().copied().find(|&i| i != second).expect("a follower");
    cluster.nodes[follower - 1].kill();
    load.progress(&cluster, 300, LIMIT, "with a follower down");
    cluster.nodes[follower - 1].start_again();
    let third = cluster.wait_for_leader(&all, LIMIT).expect("the follower rejoins");
    load.progress(&cluster, 300, LIMIT, "after the follower rejoined");

    // 3. Cut the leader off from the majority: it steps down, the majority elects another.
    cluster.isolate(third);
    let majority: Vec<usize> = all.iter().copied().filter(|&i| i != third).collect();
    assert!(cluster.wait_for_leader(&majority, LIMIT).is_some(), "the majority elects a leader");
    load.progress(&cluster, 300, LIMIT, "with the old leader cut off");
    cluster.heal();
    assert!(cluster.wait_for_leader(&all, LIMIT).is_some(), "the cut-off server rejoins");
    load.progress(&cluster, 300, LIMIT, "after the partition healed");

    // 4. Restart the whole cluster.
    for node in &mut cluster.nodes {
        node.kill();
    }
    for node in &mut cluster.nodes {
        node.start_again();
    }
    assert!(cluster.wait_for_leader(&all, LIMIT).is_some(), "the restarted cluster elects a leader");
    load.progress(&cluster, 300, LIMIT, "after restarting the cluster");
    let acked = load.stop();

    // Every server: the same znodes with the same data and Stat, every acknowledged one in.
    assert_converged(&cluster, &all, &acked, LIMIT);
    assert!(acked.len() >= 2700, "the load made progress through every phase");
}

/// A child that gets SIGTERM if it is still running when dropped (a failed assertion must
/// not leave `baton dev`'s ensemble running; SIGTERM stops all of it).
struct StopOnDrop(std::process::Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // SAFETY: signalling our own child, not yet reaped, by its pid.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}

#[test]
fn baton_dev_runs_a_local_ensemble_and_stops_all_of_it() {
    let _one = one_cluster_at_a_time();
    use std::io::{BufRead, BufReader};
    let dir = temp_dir();
    let mut dev = StopOnDrop(
        std::process::Command::new(bin())
            .args(["dev", "--nodes", "3", "--client-port", "29801", "--peer-port", "29811", "--etcd-port", "29821"])
            .args(["--admin-port", "29831"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--", "--cores", "1", "--peer-tick-ms", "50"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn baton dev"),
    );
    let stdout = dev.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let banner = lines.find_map(|l| l.ok().filter(|l| l.contains("connect string"))).expect("the banner");
    assert!(banner.contains("127.0.0.1:29801,127.0.0.1:29802,127.0.0.1:29803"), "{banner}");
    assert!(banner.contains("etcd endpoints 127.0.0.1:29821,127.0.0.1:29822,127.0.0.1:29823"), "{banner}");
    assert!(banner.contains("admin HTTP on 127.0.0.1:29831-29833"), "{banner}");
    let addrs: Vec<SocketAddr> = (29801..=29803).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
    // Servers refuse clients until they have a leader: retry.
    let connect = |addr: SocketAddr| {
        let end = Instant::now() + LIMIT;
        loop {
            if let Some(c) = RawClient::connect(addr, 4000, None) {
                return c;
            }
            assert!(Instant::now() < end, "{addr} never served");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut first = connect(addrs[0]);
    assert_eq!(first.create("/from-1", b"hello", 0).expect("reply").err, 0);
    let mut third = connect(addrs[2]);
    assert_eq!(third.sync("/from-1"), Some(0));
    assert_eq!(third.get_data("/from-1", false).expect("data").1, b"hello");
    drop((first, third));
    // The same ensemble serves etcd clients: a key written through server 1's etcd port is
    // read back linearizably through server 3's.
    let (put, said) = baton_tests::clients::etcdctl("127.0.0.1:29821", &["put", "from-etcd", "1"], "");
    assert!(put, "{said}");
    let (got, said) = baton_tests::clients::etcdctl("127.0.0.1:29823", &["get", "from-etcd", "--print-value-only"], "");
    assert!(got && said == "1\n", "{said}");
    // etcd's member list names every member's etcd endpoint.
    let (listed, said) = baton_tests::clients::etcdctl("127.0.0.1:29822", &["member", "list"], "");
    assert!(listed && (1..=3).all(|i| said.contains(&format!("http://127.0.0.1:{}", 29_820 + i))), "{said}");
    // A Status on every member: each counts an etcd request (the dashboard's panel, below).
    let every = "127.0.0.1:29821,127.0.0.1:29822,127.0.0.1:29823";
    let (status, said) = baton_tests::clients::etcdctl(every, &["endpoint", "status"], "");
    assert!(status && said.lines().count() == 3, "{said}");
    // Each server's admin port: one leader, whose /metrics lists both followers' lag.
    let end = Instant::now() + LIMIT;
    loop {
        let scraped: Vec<String> = (29_831..=29_833)
            .map(|p| baton_tests::clients::http_get(([127, 0, 0, 1], p).into(), "/metrics").2)
            .collect();
        let leaders: Vec<&String> =
            scraped.iter().filter(|m| m.contains("baton_server_state{state=\"leader\"} 1")).collect();
        assert!(leaders.len() <= 1, "one leader at most");
        let followers = leaders.first().map_or(0, |m| {
            m.lines().filter(|l| l.starts_with("baton_learner_entries_behind{") && l.contains("follower")).count()
        });
        if followers == 2 {
            baton_tests::clients::dashboard_queries_parse_and_name_served_metrics(
                leaders[0],
                &dir.path().join("rules.json"),
            );
            // ZooKeeper's ensemble commands: every server in Zab's broadcast phase, voting,
            // three voters in the view.
            for port in 29_831..=29_833u16 {
                let ask =
                    |c: &str| baton_tests::clients::http_json(([127, 0, 0, 1], port).into(), &format!("/commands/{c}"));
                let zab = ask("zabstate");
                assert_eq!((&zab["zabstate"], &zab["voting"]), (&"broadcast".into(), &true.into()), "{zab}");
                let view = ask("voting_view");
                let members = view["current_config"].as_object().map(|m| m.len());
                assert_eq!(members, Some(3), "{view}");
                assert_eq!(ask("observers")["synced_observers"], 0);
            }
            break;
        }
        assert!(Instant::now() < end, "no leader reporting two followers: {scraped:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(dev.0.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + LIMIT;
    while matches!(dev.0.try_wait(), Ok(None)) {
        assert!(Instant::now() < end, "baton dev did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    for addr in addrs {
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
            "{addr} still served"
        );
    }
}

#[test]
fn an_observer_serves_reads_and_writes_and_follows_a_new_leader() {
    let _one = one_cluster_at_a_time();
    let dir = temp_dir();
    let mut cluster = Cluster::with_observers(bin(), dir.path(), 3, 1, 29_900, &[]);
    let all = [1, 2, 3, 4];
    let leader = cluster.wait_for_leader(&all, LIMIT).expect("a leader");
    assert_eq!(cluster.mode(4).as_deref(), Some("observer"));
    let observer = cluster.nodes[3].addr;
    let mut o = RawClient::connect(observer, 4000, None).expect("connect to the observer");
    for i in 0..50 {
        assert_eq!(o.create(&format!("/obs-{i}"), b"v", 0).expect("reply").err, 0, "write through the observer");
    }
    let mut v = RawClient::connect(cluster.nodes[leader - 1].addr, 4000, None).expect("connect to the leader");
    assert_eq!(v.set_data("/obs-0", b"changed").expect("reply").1.err, 0);
    assert_eq!(o.sync("/obs-0"), Some(0));
    assert_eq!(o.get_data("/obs-0", false).expect("data").1, b"changed", "a read after sync sees the write");
    drop((o, v));

    cluster.nodes[leader - 1].kill();
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    assert!(cluster.wait_for_leader(&rest, LIMIT).is_some(), "a new leader, followed by the observer");
    let mut o = RawClient::connect(observer, 4000, None).expect("reconnect to the observer");
    assert_eq!(o.create("/after", b"", 0).expect("reply").err, 0, "the observer forwards to the new leader");
    assert_eq!(o.sync("/"), Some(0));
    let mut names = o.children("/").expect("children");
    names.sort();
    assert!(names.contains(&"after".to_string()) && names.iter().filter(|n| n.starts_with("obs-")).count() == 50);
    // A voter that is not the observer's: the same znodes.
    let voter = rest.iter().copied().find(|&i| i != 4).expect("a voter");
    let mut c = RawClient::connect(cluster.nodes[voter - 1].addr, 4000, None).expect("connect to a voter");
    assert_eq!(c.sync("/"), Some(0));
    let mut theirs = c.children("/").expect("children");
    theirs.sort();
    assert_eq!(theirs, names);
}

#[test]
fn static_membership_from_toml_files_with_an_observer_feeding_another() {
    let _one = one_cluster_at_a_time();
    use baton_tests::server::BatonProcess;
    let dir = temp_dir();
    let peers = r#"peer = ["1=127.0.0.1:29951", "2=127.0.0.1:29952:observer", "3=127.0.0.1:29953:observer"]"#;
    let mut nodes = Vec::new();
    for id in 1..=3 {
        // Server 3 observes through server 2, which relays the leader's commits to it.
        let upstream = if id == 3 { "observer_upstream = 2\n" } else { "" };
        let file = dir.path().join(format!("baton-{id}.toml"));
        let text = format!("server_id = {id}\n{peers}\n{upstream}peer_tick_ms = 50\ncores = 1\ntick_ms = 500\n");
        std::fs::write(&file, text).expect("write the config");
        let config = file.to_str().expect("utf-8 path");
        nodes.push(BatonProcess::start(bin(), &dir.path().join(format!("n{id}")), &["--config", config]));
    }
    let mode = |i: usize| {
        baton_tests::raw::four_letter(nodes[i].addr, b"srvr")
            .lines()
            .find_map(|l| l.strip_prefix("Mode: ").map(str::to_string))
    };
    let end = Instant::now() + LIMIT;
    while (mode(0).as_deref(), mode(1).as_deref(), mode(2).as_deref())
        != (Some("leader"), Some("observer"), Some("observer"))
    {
        assert!(Instant::now() < end, "the ensemble did not form: {:?}", (mode(0), mode(1), mode(2)));
        std::thread::sleep(Duration::from_millis(20));
    }
    // `conf` names each server and the membership as a ZooKeeper ensemble's does.
    let conf = baton_tests::raw::four_letter(nodes[2].addr, b"conf");
    assert!(conf.contains("serverId=3\n") && conf.contains("peerType=1\n"), "{conf}");
    assert!(conf.contains("membership: \nserver.1=127.0.0.1:29951:29951:participant\n"), "{conf}");
    let mut chained = RawClient::connect(nodes[2].addr, 4000, None).expect("connect to the chained observer");
    for i in 0..20 {
        assert_eq!(chained.create(&format!("/c{i}"), b"v", 0).expect("reply").err, 0, "relayed write");
    }
    let mut leader = RawClient::connect(nodes[0].addr, 4000, None).expect("connect to the leader");
    assert_eq!(leader.set_data("/c0", b"new").expect("reply").1.err, 0);
    assert_eq!(chained.sync("/c0"), Some(0));
    assert_eq!(chained.get_data("/c0", false).expect("data").1, b"new");
    assert_eq!(leader.children("/").expect("children").len(), 21, "20 znodes and /zookeeper");
}

#[test]
fn the_leader_expires_a_session_whose_client_vanished_from_a_follower() {
    let _one = one_cluster_at_a_time();
    let dir = temp_dir();
    let cluster = Cluster::start(bin(), dir.path(), 3, 29_500, &[]);
    let leader = cluster.wait_for_leader(&[1, 2, 3], LIMIT).expect("a leader");
    let follower = [1, 2, 3].into_iter().find(|&i| i != leader).expect("a follower");
    // Ticks of 500 ms: the shortest session timeout granted is 1 s.
    let mut gone = RawClient::connect(cluster.nodes[follower - 1].addr, 1000, None).expect("connect to a follower");
    assert_eq!(gone.create("/lease", b"", 1).expect("reply").err, 0, "an ephemeral");
    let mut watcher = RawClient::connect(cluster.nodes[leader - 1].addr, 30_000, None).expect("connect to the leader");
    assert_eq!(watcher.exists("/lease").expect("reply").err, 0);
    // Another client with the same short timeout stays busy on the same follower: its
    // session must be renewed by the follower's reports to the leader.
    let mut alive = RawClient::connect(cluster.nodes[follower - 1].addr, 1000, None).expect("connect");
    assert_eq!(alive.create("/alive", b"", 1).expect("reply").err, 0);
    // The first client vanishes without closing its session; the follower stops hearing
    // from it, so its reports to the leader stop renewing it.
    drop(gone);
    let end = Instant::now() + LIMIT;
    loop {
        assert_eq!(alive.exists("/alive").expect("the live session is served").err, 0, "the live session expired");
        let err = watcher.exists("/lease").expect("reply").err;
        if err != 0 {
            break;
        }
        assert!(Instant::now() < end, "the session never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Three more timeouts of activity: the live one stays.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(alive.exists("/alive").expect("the live session is served").err, 0, "the live session expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    // And the ephemeral is gone on every server.
    for (i, addr) in cluster.addrs().into_iter().enumerate() {
        let mut c = RawClient::connect(addr, 30_000, None).expect("connect");
        assert_eq!(c.sync("/"), Some(0));
        assert_ne!(c.exists("/lease").expect("reply").err, 0, "the ephemeral is still on server {}", i + 1);
    }
}

#[test]
fn a_follower_too_slow_to_read_is_dropped_without_holding_the_leader_back_and_catches_up() {
    let _one = one_cluster_at_a_time();
    let dir = temp_dir();
    // A small bound on what may wait for one peer: the bound is reached fast.
    let cluster = Cluster::start(bin(), dir.path(), 3, 29_400, &["--max-peer-queue-bytes", "65536"]);
    let leader = cluster.wait_for_leader(&[1, 2, 3], LIMIT).expect("a leader");
    let slow = [1, 2, 3].into_iter().find(|&i| i != leader).expect("a follower");
    let mut c = RawClient::connect(cluster.nodes[leader - 1].addr, 10_000, None).expect("connect to the leader");
    assert_eq!(c.create("/slow", b"", 0).expect("reply").err, 0);
    // The follower stops reading what the leader sends it (its socket and the proxy's fill
    // up, then the leader's queue for it).
    cluster.link(leader, slow).pause();
    // 24 MB: more than the kernel's socket buffers on the way absorb.
    let value = vec![7u8; 4096];
    for i in 0..6000 {
        let reply = c.create(&format!("/slow/n{i:04}"), &value, 0).expect("the leader keeps answering");
        assert_eq!(reply.err, 0, "write {i} with one follower stalled");
    }
    cluster.link(leader, slow).resume();
    // The stalled follower rejoins and catches up.
    let summary = |i: usize| (cluster.srvr(i, "Zxid"), cluster.srvr(i, "Node count"));
    let end = Instant::now() + LIMIT;
    while summary(slow) != summary(leader) || cluster.mode(slow).as_deref() != Some("follower") {
        assert!(
            Instant::now() < end,
            "the slow follower never caught up: {:?} vs {:?}",
            summary(slow),
            summary(leader)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut f = RawClient::connect(cluster.nodes[slow - 1].addr, 10_000, None).expect("connect to the follower");
    assert_eq!(f.children("/slow").expect("children").len(), 6000);
}

/// How many times `line` appears in server `i`'s log.
fn logged(cluster: &Cluster, i: usize, line: &str) -> usize {
    std::fs::read_to_string(cluster.nodes[i - 1].log_path()).unwrap_or_default().matches(line).count()
}

fn wait_logged(cluster: &Cluster, i: usize, line: &str, count: usize, what: &str) {
    let end = Instant::now() + LIMIT;
    while logged(cluster, i, line) < count {
        assert!(Instant::now() < end, "{what}: server {i} never logged {line:?} {count} times");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_follower_brought_back_by_a_streamed_snap_under_load_survives_the_snap_being_cut_off_and_a_crash_inside_it() {
    let _one = one_cluster_at_a_time();
    let dir = temp_dir();
    // Frequent snapshots: the leader's log soon starts after anything the stopped follower has.
    let flags = ["--snapshot-every-entries", "500"];
    let mut cluster = Cluster::start(bin(), dir.path(), 3, 29_300, &flags);
    let all = [1, 2, 3];
    let leader = cluster.wait_for_leader(&all, LIMIT).expect("a leader");
    let f = all.into_iter().find(|&i| i != leader).expect("a follower");
    let mut c = RawClient::connect(cluster.nodes[leader - 1].addr, 10_000, None).expect("connect to the leader");
    assert_eq!(c.create("/load", b"", 0).expect("reply").err, 0);
    assert_eq!(c.create("/big", b"", 0).expect("reply").err, 0);
    // A tree of 12 MB: a SNAP of a dozen 1 MiB chunks.
    let value = vec![5u8; 4096];
    for i in 0..3000 {
        assert_eq!(c.create(&format!("/big/n{i:04}"), &value, 0).expect("reply").err, 0);
    }
    cluster.nodes[f - 1].kill();
    // As much again while it is down: the log grows past half a snapshot (the least between
    // two), so the leader snapshots and forgets what the follower would need for a DIFF.
    assert_eq!(c.create("/big2", b"", 0).expect("reply").err, 0);
    for i in 0..3000 {
        assert_eq!(c.create(&format!("/big2/n{i:04}"), &value, 0).expect("reply").err, 0);
    }
    let load = Load::start(cluster.addrs(), 2);
    load.progress(&cluster, 1500, LIMIT, "with the follower down");

    // Every read from a peer slowed: the SNAP takes seconds to arrive.
    cluster.nodes[f - 1].set_failpoints("peer-recv=return(delay:20)");
    let (begun, cut, installed) =
        ("receiving a snapshot from the leader", "a SNAP cut off before its end", "snapshot from the leader installed");
    // 1. The link breaks in the middle of the SNAP: the follower drops what arrived and
    //    synchronises again.
    cluster.nodes[f - 1].start_again();
    wait_logged(&cluster, f, begun, 1, "first SNAP");
    std::thread::sleep(Duration::from_millis(300));
    cluster.link(leader, f).cut();
    wait_logged(&cluster, f, cut, 1, "the cut");
    assert_eq!(logged(&cluster, f, installed), 0, "the SNAP was cut off before its end");
    // What arrived of it is deleted (in steps, on a thread of its own).
    let snapshots = dir.path().join(format!("n{f}")).join("snapshots");
    let partial = || -> Vec<String> {
        let names = std::fs::read_dir(&snapshots).expect("the follower's snapshot directory");
        names
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp") && n != "snap-spare.tmp")
            .collect()
    };
    let end = Instant::now() + LIMIT;
    while !partial().is_empty() {
        assert!(Instant::now() < end, "the cut-off SNAP's file stays: {:?}", partial());
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.link(leader, f).heal();
    // 2. The follower dies in the middle of the next one.
    wait_logged(&cluster, f, begun, 2, "second SNAP");
    std::thread::sleep(Duration::from_millis(300));
    cluster.nodes[f - 1].kill();
    assert_eq!(logged(&cluster, f, installed), 0, "killed before the SNAP's end");
    // 3. Restarted at full speed, it is brought back while the load goes on.
    cluster.nodes[f - 1].set_failpoints("");
    cluster.nodes[f - 1].start_again();
    wait_logged(&cluster, f, installed, 1, "third SNAP");
    assert!(cluster.wait_for_leader(&all, LIMIT).is_some(), "the follower rejoins");
    load.progress(&cluster, 500, LIMIT, "after the follower rejoined");
    let acked = load.stop();
    assert_converged(&cluster, &all, &acked, LIMIT);
    let mut r = RawClient::connect(cluster.nodes[f - 1].addr, 10_000, None).expect("connect to the follower");
    assert_eq!(r.children("/big").expect("children").len(), 3000);
}
