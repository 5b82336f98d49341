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

/// zkCli's quota commands: the server keeps `zookeeper_stats` up to date (the client writes
/// `count=0,bytes=0`). Every expected line is what ZooKeeper 3.8 printed for the same script.
#[test]
fn zkcli_quotas_are_listed_with_live_stats_and_deleted() {
    let dir = temp_dir();
    let server = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), &[]);
    let script = "create /p\ncreate /p/a hello\nsetquota -n 3 /p\nlistquota /p\ncreate /p/b 12345\nset /p/a hi\n\
                  listquota /p\nget /zookeeper/quota/p/zookeeper_stats\nsetquota -N 4 /p\ncreate /p/c x\n\
                  create /p/d y\nlistquota /p\nsetquota -n 5 /p/a\ndelquota -N /p\nlistquota /p\ndelquota /p\n\
                  listquota /p\nls /zookeeper/quota\nquit\n";
    let text = zkcli(&server, script);
    let expected = [
        "absolute path is /zookeeper/quota/p/zookeeper_limits",
        "Output quota for /p count=3,bytes=-1=;byteHardLimit=-1;countHardLimit=-1\nOutput stat for /p count=2,bytes=5\n",
        "Output quota for /p count=3,bytes=-1=;byteHardLimit=-1;countHardLimit=-1\nOutput stat for /p count=3,bytes=7\n",
        "\ncount=3,bytes=7\n",
        // Not enforced: the hard limit of 4 lets the fifth znode in, and the stats show it.
        "Created /p/d",
        "Output quota for /p count=3,bytes=-1=;byteHardLimit=-1;countHardLimit=4\nOutput stat for /p count=5,bytes=9\n",
        "/p/a has a parent /p which has a quota",
        "Output quota for /p count=3,bytes=-1=;byteHardLimit=-1;countHardLimit=-1\nOutput stat for /p count=5,bytes=9\n",
        "quota for /p does not exist.",
        "\n[]\n",
    ];
    for line in expected {
        assert!(text.contains(line), "zkCli output lacks {line:?}:\n{text}");
    }
    assert!(!text.contains("Quota has exceeded"), "quotas are not enforced by default:\n{text}");
}

/// With `--enforce-quota` (ZooKeeper's zookeeper.enforceQuota), hard limits refuse creates
/// and setData with QuotaExceeded, which zkCli prints as ZooKeeper 3.8's did.
#[test]
fn zkcli_hard_quotas_refuse_writes_when_enforced() {
    let dir = temp_dir();
    let server = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), &["--enforce-quota"]);
    let script = "create /r\nsetquota -N 2 /r\nsetquota -B 6 /r\ncreate /r/a 12345\ncreate /r/b x\n\
                  set /r/a 1234567\nset /r/a 123456\nlistquota /r\ndelquota -N /r\ncreate /r/b\nlistquota /r\n\
                  setquota -n 1 /r\ncreate /r/c\nlistquota /r\nquit\n";
    let text = zkcli(&server, script);
    let expected = [
        "Created /r/a",
        "Quota has exceeded : /r/b",
        "Quota has exceeded : /r/a",
        "Output quota for /r count=-1,bytes=-1=;byteHardLimit=6;countHardLimit=2\nOutput stat for /r count=2,bytes=6\n",
        "Created /r/b",
        "Output quota for /r count=-1,bytes=-1=;byteHardLimit=6;countHardLimit=-1\nOutput stat for /r count=3,bytes=6\n",
        // A soft limit is only logged.
        "Created /r/c",
        "Output quota for /r count=1,bytes=-1=;byteHardLimit=6;countHardLimit=-1\nOutput stat for /r count=4,bytes=6\n",
    ];
    for line in expected {
        assert!(text.contains(line), "zkCli output lacks {line:?}:\n{text}");
    }
}
