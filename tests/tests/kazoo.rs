//! kazoo (Python, from PyPI) runs its recipes against a real `baton` process:
//! Lock, Election, Barrier, Queue/LockingQueue, Counter, Party, DataWatch/ChildrenWatch,
//! transactions, and ephemeral cleanup. `tests/run-all.sh` installs kazoo; without it this
//! test fails, it does not skip.

use std::process::Command;

use baton_tests::server::BatonProcess;
use baton_tests::temp_dir;

#[test]
fn kazoo_recipes_work_against_baton() {
    let dir = temp_dir();
    let server = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), &["--tick-ms", "500"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/kazoo/recipes.py");
    let mut child = Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(script)
        .arg(server.connect_string())
        .spawn()
        .expect("run python3 (is kazoo installed? tests/run-all.sh installs it)");
    let status = child.wait().expect("wait");
    assert!(status.success(), "kazoo recipes failed: {status}");
}
