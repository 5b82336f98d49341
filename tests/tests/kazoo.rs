//! kazoo (Python, from PyPI) runs its recipes against a real `baton` process:
//! Lock, Election, Barrier, Queue/LockingQueue, Counter, Party, DataWatch/ChildrenWatch,
//! transactions, and ephemeral cleanup. `tests/run-all.sh` installs kazoo; without it this
//! test fails, it does not skip.

use baton_tests::clients::kazoo;
use baton_tests::cluster::Cluster;
use baton_tests::server::BatonProcess;
use baton_tests::temp_dir;

#[test]
fn kazoo_recipes_work_against_baton() {
    let dir = temp_dir();
    let server = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), &["--tick-ms", "500"]);
    let (ok, said) = kazoo("recipes.py", &[&server.connect_string()]);
    assert!(ok, "kazoo recipes failed:\n{said}");
}

#[test]
fn kazoo_keeps_its_session_watch_and_lock_across_a_leader_change() {
    let dir = temp_dir();
    let mut cluster = Cluster::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), 3, 29_700, &[]);
    let leader = cluster.wait_for_leader(&[1, 2, 3], std::time::Duration::from_secs(30)).expect("a leader");
    // The client starts on a follower (kazoo tries hosts in order) and stays there or moves on.
    let hosts = cluster.connect_string_avoiding(leader);
    let pid = cluster.nodes[leader - 1].pid().expect("the leader runs");
    let (ok, said) = kazoo("failover.py", &[&hosts, &pid.to_string()]);
    // The script killed the leader by its pid; reap it.
    cluster.nodes[leader - 1].kill();
    assert!(ok, "kazoo across a leader change failed:\n{said}");
}

#[test]
fn kazoo_sees_zookeepers_answers_at_the_edges_auth_failures_and_the_super_user() {
    let dir = temp_dir();
    let flags = ["--super-digest", "super:D/InIHSb7yEEbrWz8b9l71RjZJU="];
    let server = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), &flags);
    let (ok, said) = kazoo("compat.py", &[&server.connect_string()]);
    assert!(ok && said.contains("compat: ok"), "kazoo compat checks failed:\n{said}");
}
