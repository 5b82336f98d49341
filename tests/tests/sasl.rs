//! SASL DIGEST-MD5 (`--sasl-user`) with real clients: kazoo with pure-sasl, and ZooKeeper
//! 3.8's own Java client (zkCli, which Curator uses underneath) with a JAAS `Client`
//! section. Both were run against ZooKeeper 3.8 with the same users in its JAAS `Server`
//! section when this was written, with the same results.

use baton_tests::clients::{kazoo, zkcli};
use baton_tests::server::BatonProcess;
use baton_tests::temp_dir;

const USERS: [&str; 4] = ["--sasl-user", "bob:bobsecret", "--sasl-user", "alice:pa,ss"];

#[test]
fn kazoo_logs_in_with_digest_md5_and_the_sasl_scheme_guards_nodes() {
    let dir = temp_dir();
    let server = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), &USERS);
    let (ok, said) = kazoo("sasl.py", &[&server.connect_string()]);
    assert!(ok && said.contains("sasl: ok"), "kazoo SASL checks failed:\n{said}");
}

#[test]
fn zkcli_with_a_jaas_client_section_authenticates_and_a_wrong_password_is_refused() {
    let dir = temp_dir();
    let server = BatonProcess::start(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), &USERS);
    let jaas = |password: &str| {
        let path = dir.path().join(format!("jaas-{password}.conf"));
        let text = format!(
            "Client {{\n  org.apache.zookeeper.server.auth.DigestLoginModule required\n  username=\"bob\"\n  password=\"{password}\";\n}};\n"
        );
        std::fs::write(&path, text).expect("write the JAAS file");
        format!("-Djava.security.auth.login.config={}", path.display())
    };
    let good = jaas("bobsecret");
    let script = "whoami\ncreate /mine data sasl:bob:cdrwa\ngetAcl /mine\nget /mine\nquit\n";
    let text = zkcli(&server.connect_string(), script, &[("CLIENT_JVMFLAGS", &good)]);
    for expected in ["state:SaslAuthenticated", "sasl: bob", "Created /mine", "'sasl,'bob", ": cdrwa", "data"] {
        assert!(text.contains(expected), "zkCli output lacks {expected:?}:\n{text}");
    }
    // Another client without SASL may not read it.
    let text = zkcli(&server.connect_string(), "get /mine\nquit\n", &[]);
    assert!(text.contains("Insufficient permission : /mine"), "an anonymous read of /mine:\n{text}");

    let bad = jaas("wrong");
    let text = zkcli(&server.connect_string(), "whoami\nquit\n", &[("CLIENT_JVMFLAGS", &bad)]);
    assert!(text.contains("state:AuthFailed"), "a wrong password must fail the login:\n{text}");
    assert!(!text.contains("sasl: bob"), "a wrong password must not authenticate:\n{text}");
    assert!(server.log_tail(200).contains("Client failed to SASL authenticate"), "the refusal is logged");
}
