//! etcd's Lock and Election services on a real `baton` process, through the `etcd-client`
//! crate (which calls the services), and `etcdctl lock` / `etcdctl elect` (which run the same
//! recipes themselves over KV, Lease and Watch): one holder at a time, waiters served in
//! order, a lock freed by its lease's expiry, leaders observed in turn, and etcd 3.4's errors.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::etcd::{connect, grpc, run};
use baton_tests::server::{free_port, BatonProcess};
use baton_tests::temp_dir;
use etcd_client::{Client, LeaderKey, LockOptions, ProclaimOptions, ResignOptions};

fn start(dir: &std::path::Path, etcd_port: u16) -> BatonProcess {
    let addr = format!("127.0.0.1:{etcd_port}");
    BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir, &["--tick-ms", "500", "--etcd-addr", &addr])
}

#[test]
fn locks_are_held_one_at_a_time_in_order_and_freed_by_unlock_or_lease_expiry() {
    let dir = temp_dir();
    let port = free_port();
    let _server = start(dir.path(), port);
    run(async move {
        let mut c = connect(port).await;
        let first = c.lease_grant(30, None).await.expect("lease").id();
        let second = c.lease_grant(30, None).await.expect("lease").id();
        let held = c.lock("jobs", Some(LockOptions::new().with_lease(first))).await.expect("lock");
        assert_eq!(held.key(), format!("jobs/{first:x}").as_bytes(), "name/ and the lease in hex, as etcd");
        // Locking again with the same lease is a no-op.
        let again = c.lock("jobs", Some(LockOptions::new().with_lease(first))).await.expect("relock");
        assert_eq!(again.key(), held.key());

        let mut waiter = connect(port).await;
        let waiting =
            tokio::spawn(async move { waiter.lock("jobs", Some(LockOptions::new().with_lease(second))).await });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!waiting.is_finished(), "the second holder waits while the first holds the lock");
        let unlocked = c.unlock(held.key()).await.expect("unlock");
        assert!(unlocked.header().is_some_and(|h| h.revision() > 0));
        let next = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("in time").expect("task");
        let next = next.expect("the waiter holds the lock");
        assert_eq!(next.key(), format!("jobs/{second:x}").as_bytes());
        // Its key's create revision is a fencing token: later holders have larger ones.
        let first_rev = held.header().map_or(0, |h| h.revision());
        let token = c.get(next.key(), None).await.expect("get").kvs()[0].create_revision();
        assert!(token > first_rev, "{token} after {first_rev}");

        // Lease 0: the server grants one (60 s, as etcd), under the same name.
        let own = c.lock("other", None).await.expect("lock without a lease");
        assert!(own.key().starts_with(b"other/") && own.key().len() > 6, "{:?}", own.key());
        // A lease that does not exist: the inner put's error, as etcd 3.4 passes it on.
        let (code, message) = grpc(c.lock("jobs2", Some(LockOptions::new().with_lease(12_345))).await);
        assert_eq!((code, message.as_str()), (tonic::Code::Unknown, "etcdserver: requested lease not found"));

        // A waiter that goes away (its call cancelled) leaves no key behind, as etcd deletes it.
        let holder = c.lease_grant(30, None).await.expect("lease").id();
        let quitter = c.lease_grant(30, None).await.expect("lease").id();
        c.lock("queue", Some(LockOptions::new().with_lease(holder))).await.expect("lock");
        let mut w = connect(port).await;
        let gives_up = tokio::spawn(async move { w.lock("queue", Some(LockOptions::new().with_lease(quitter))).await });
        let in_queue = |c: &mut Client| {
            let mut c = c.clone();
            async move { c.get("queue/", Some(etcd_client::GetOptions::new().with_prefix())).await.expect("get").count() }
        };
        let end = Instant::now() + Duration::from_secs(5);
        while in_queue(&mut c).await < 2 {
            assert!(Instant::now() < end, "the waiter's key was never put");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gives_up.abort();
        let end = Instant::now() + Duration::from_secs(10);
        while in_queue(&mut c).await > 1 {
            assert!(Instant::now() < end, "the waiter's key stayed after it went away");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // A holder whose lease expires (nobody keeps it alive) frees the lock for the next.
        let short = c.lease_grant(2, None).await.expect("lease").id();
        let long = c.lease_grant(30, None).await.expect("lease").id();
        c.lock("expiring", Some(LockOptions::new().with_lease(short))).await.expect("lock");
        let began = Instant::now();
        let next = c.lock("expiring", Some(LockOptions::new().with_lease(long))).await.expect("after the expiry");
        assert_eq!(next.key(), format!("expiring/{long:x}").as_bytes());
        assert!(began.elapsed() >= Duration::from_millis(500), "it waited for the expiry");
    });
}

#[test]
fn an_election_has_one_leader_at_a_time_observed_in_turn_with_etcds_errors() {
    let dir = temp_dir();
    let port = free_port();
    let _server = start(dir.path(), port);
    run(async move {
        let mut c = connect(port).await;
        let mut observed = c.observe("ballot").await.expect("observe");
        let (code, message) = grpc(c.leader("ballot").await);
        assert_eq!((code, message.as_str()), (tonic::Code::Unknown, "election: no leader"));

        let a = c.lease_grant(30, None).await.expect("lease").id();
        let b = c.lease_grant(30, None).await.expect("lease").id();
        let won = c.campaign("ballot", "alice", a).await.expect("campaign");
        let alice: LeaderKey = won.leader().expect("a leader key").clone();
        assert_eq!(alice.key(), format!("ballot/{a:x}").as_bytes());
        assert_eq!(alice.lease(), a);
        let leader = c.leader("ballot").await.expect("leader");
        assert_eq!(leader.kv().map(|kv| kv.value()), Some(&b"alice"[..]));

        let mut rival = connect(port).await;
        let campaigning = tokio::spawn(async move { rival.campaign("ballot", "bob", b).await });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!campaigning.is_finished(), "bob waits while alice leads");
        let proclaim = ProclaimOptions::new().with_leader(alice.clone());
        c.proclaim("alice, again", Some(proclaim)).await.expect("proclaim");
        c.resign(Some(ResignOptions::new().with_leader(alice.clone()))).await.expect("resign");
        let bob = tokio::time::timeout(Duration::from_secs(10), campaigning).await.expect("in time").expect("task");
        let bob = bob.expect("bob leads").leader().expect("key").clone();
        assert_eq!(bob.key(), format!("ballot/{b:x}").as_bytes());
        assert!(bob.rev() > alice.rev());
        assert_eq!(c.leader("ballot").await.expect("leader").kv().map(|kv| kv.value()), Some(&b"bob"[..]));

        // The observer saw alice, her proclamation, then bob.
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let message = tokio::time::timeout(Duration::from_secs(10), observed.message()).await.expect("in time");
            let message = message.expect("a message").expect("the stream goes on");
            seen.push(message.kv().map(|kv| kv.value().to_vec()).unwrap_or_default());
        }
        assert_eq!(seen, [b"alice".to_vec(), b"alice, again".to_vec(), b"bob".to_vec()]);

        // etcd 3.4's errors, as gRPC's Unknown.
        let stale = ProclaimOptions::new().with_leader(alice.clone());
        let (code, message) = grpc(c.proclaim("too late", Some(stale)).await);
        assert_eq!((code, message.as_str()), (tonic::Code::Unknown, "election: not leader"));
        let (code, message) = grpc(c.proclaim("who?", Some(ProclaimOptions::new())).await);
        assert_eq!((code, message.as_str()), (tonic::Code::Unknown, "\"leader\" field must be provided"));
        // Resigning when not the leader is no error.
        c.resign(Some(ResignOptions::new().with_leader(alice))).await.expect("resign again");
    });
}

/// `etcdctl` (Debian's 3.4) with `args`, its output to a file; the process and the file.
fn etcdctl_in_background(port: u16, args: &[&str], out: &std::path::Path) -> Child {
    Command::new("timeout")
        .args(["30", "etcdctl", "--endpoints", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::from(std::fs::File::create(out).expect("output file")))
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl runs (tests/run-all.sh installs Debian's etcd-client)")
}

/// Waits until `path` holds at least `lines` lines; its text.
fn wait_lines(path: &std::path::Path, lines: usize) -> String {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines {
            return text;
        }
        assert!(Instant::now() < end, "{} has {text:?}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGINT, as a user's Ctrl-C: etcdctl unlocks or resigns, then exits.
fn interrupt(child: &mut Child) {
    // SAFETY: signalling a child we started, by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
}

#[test]
fn etcdctl_lock_and_elect_take_turns() {
    let dir = temp_dir();
    let port = free_port();
    let _server = start(dir.path(), port);
    let out = |name: &str| dir.path().join(name);

    // Two holders of one lock: the second waits until the first lets go.
    let mut first = etcdctl_in_background(port, &["lock", "door"], &out("first"));
    let held = wait_lines(&out("first"), 1);
    assert!(held.starts_with("door/"), "{held:?}");
    let mut second = etcdctl_in_background(port, &["lock", "door"], &out("second"));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(std::fs::read_to_string(out("second")).unwrap_or_default(), "", "the second waits");
    interrupt(&mut first);
    let next = wait_lines(&out("second"), 1);
    assert!(next.starts_with("door/") && next != held, "{next:?} after {held:?}");
    interrupt(&mut second);

    // An observer, a leader, a candidate that waits, and the leader resigning.
    let mut observer = etcdctl_in_background(port, &["elect", "-l", "chair"], &out("observer"));
    std::thread::sleep(Duration::from_millis(300));
    let mut alice = etcdctl_in_background(port, &["elect", "chair", "alice"], &out("alice"));
    assert!(wait_lines(&out("alice"), 2).ends_with("alice\n"));
    let mut bob = etcdctl_in_background(port, &["elect", "chair", "bob"], &out("bob"));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(std::fs::read_to_string(out("bob")).unwrap_or_default(), "", "bob waits");
    interrupt(&mut alice);
    assert!(wait_lines(&out("bob"), 2).ends_with("bob\n"));
    let seen = wait_lines(&out("observer"), 4);
    let values: Vec<&str> = seen.lines().skip(1).step_by(2).collect();
    assert_eq!(values, ["alice", "bob"], "{seen}");
    interrupt(&mut bob);
    interrupt(&mut observer);
}
