//! Debian's zkCli (ZooKeeper 3.8's own Java client) against a real `baton` process.
//! `tests/run-all.sh` installs the `zookeeper` package; without zkCli this test fails.

use baton_tests::server::BatonProcess;
use baton_tests::temp_dir;

/// Runs zkCli against `server` with `script` on its stdin; returns what it printed.
fn zkcli(server: &BatonProcess, script: &str) -> String {
    baton_tests::clients::zkcli(&server.connect_string(), script, &[])
}

#[test]
fn zkcli_session_of_everyday_commands() {
    let dir = temp_dir();
    let server = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), &[]);
    let script = "create /hello world\nget /hello\nset /hello again\nstat /hello\ncreate -e /eph x\n\
                  create -s /seq- a\nls /\naddauth digest alice:secret\ncreate /secure data auth:alice:cdrwa\n\
                  getAcl /secure\ndelete /hello\nls /\nquit\n";
    let text = zkcli(&server, script);
    for expected in [
        "Created /hello",
        "world",
        "dataVersion = 1",
        "dataLength = 5",
        "Created /eph",
        "Created /seq-0000000002",
        "[eph, hello, seq-0000000002, zookeeper]",
        "Created /secure",
        "'digest,'alice:aYXlLOpEooaV1cRAvUL1fp9Qt7E=",
        ": cdrwa",
        "[eph, secure, seq-0000000002, zookeeper]",
    ] {
        assert!(text.contains(expected), "zkCli output lacks {expected:?}:\n{text}");
    }
}

#[test]
fn zkcli_add_watch_persistent_recursive_fires_for_every_descendant_and_stays() {
    let dir = temp_dir();
    let server = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), &[]);
    let script = "create /p\naddWatch -m PERSISTENT_RECURSIVE /p\ncreate /p/x\ncreate /p/x/y\nset /p/x changed\n\
                  delete /p/x/y\nls /p\nls /p/x\nget /p/x\nstat /p\nls /\nquit\n";
    let text = zkcli(&server, script);
    assert!(!text.contains("ConnectionLoss"), "addWatch must not drop the connection:\n{text}");
    for expected in [
        "type:NodeCreated path:/p/x\n",
        "type:NodeCreated path:/p/x/y\n",
        "type:NodeDataChanged path:/p/x\n",
        "type:NodeDeleted path:/p/x/y\n",
    ] {
        assert!(text.contains(expected), "zkCli output lacks {expected:?}:\n{text}");
    }
    assert!(!text.contains("type:NodeChildrenChanged"), "a recursive watch never sends NodeChildrenChanged:\n{text}");
}
