//! TLS on the ZooKeeper client port (`--secure-client-addr`) with real clients: kazoo with
//! `use_ssl` and a client certificate; one from another CA is refused, with a log line; the
//! plain port serves beside it. Certificates are made here (rcgen) for 127.0.0.1.

use std::path::{Path, PathBuf};

use baton_tests::clients::kazoo;
use baton_tests::server::{free_port, BatonProcess};
use baton_tests::temp_dir;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA: its certificate (PEM) and what signs with it.
struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key");
        let cert = params.self_signed(&key).expect("self-signed");
        Authority { cert, key }
    }

    /// A certificate for `names` (DNS names or IP addresses) with common name `cn`, written
    /// as `<stem>.pem` and `<stem>.key` in `dir`.
    fn issue(&self, dir: &Path, stem: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.distinguished_name.push(DnType::OrganizationName, "Baton tests");
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("signed");
        let (cert_path, key_path) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
        (cert_path, key_path)
    }

    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert.pem()).expect("write the CA");
        path.to_path_buf()
    }
}

/// The certificate's subject as RFC 2253 writes it, by openssl (Java's `getName()` agrees).
fn subject_of(cert: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(cert)
        .output()
        .expect("openssl runs");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    line.strip_prefix("subject=").unwrap_or(&line).to_string()
}

/// What most tests need, under `dir/certs`: a CA (its PEM), a server certificate for
/// 127.0.0.1, alice's client certificate, and mallory's from another CA.
struct Kit {
    certs: PathBuf,
    ca: Authority,
    ca_pem: PathBuf,
    server: (PathBuf, PathBuf),
    alice: (PathBuf, PathBuf),
    rogue: (PathBuf, PathBuf),
    /// The other CA's certificate (PEM).
    rogue_ca_pem: PathBuf,
}

impl Kit {
    fn new(dir: &Path) -> Kit {
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).expect("mkdir");
        let ca = Authority::new("Baton test CA");
        let ca_pem = ca.write(&certs.join("ca.pem"));
        let server = ca.issue(&certs, "server", "baton", &["127.0.0.1", "localhost"]);
        let alice = ca.issue(&certs, "client", "alice", &[]);
        let rogue_ca = Authority::new("Another CA");
        let rogue = rogue_ca.issue(&certs, "rogue", "mallory", &["127.0.0.1"]);
        let rogue_ca_pem = rogue_ca.write(&certs.join("rogue-ca.pem"));
        Kit { certs, ca, ca_pem, server, alice, rogue, rogue_ca_pem }
    }

    /// The server's certificate and key, and the CA its clients' certificates must come from.
    fn server_flags(&self) -> [&str; 6] {
        ["--tls-cert", s(&self.server.0), "--tls-key", s(&self.server.1), "--tls-client-ca", s(&self.ca_pem)]
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn kazoo_works_over_tls_with_a_client_certificate_and_another_cas_is_refused() {
    let dir = temp_dir();
    let kit = Kit::new(dir.path());
    let (certs, ca_pem) = (&kit.certs, &kit.ca_pem);
    let (client_cert, client_key) = &kit.alice;
    let (rogue_cert, rogue_key) = &kit.rogue;
    let (bob_cert, bob_key) = kit.ca.issue(certs, "bob", "bob", &[]);

    let secure = format!("127.0.0.1:{}", free_port());
    let server = BatonProcess::start(
        env!("CARGO_BIN_EXE_baton_test_server"),
        &dir.path().join("data"),
        &[&["--secure-client-addr", secure.as_str()][..], &kit.server_flags()].concat(),
    );
    // Alice's id in the x509 scheme, as Java (and `openssl x509 -nameopt RFC2253`) writes her
    // certificate's subject: its names last to first.
    let alice = subject_of(client_cert);
    assert!(alice.starts_with("CN=alice") || alice.ends_with("CN=alice"), "{alice}");
    let (ok, said) = kazoo("tls.py", &[&secure, s(ca_pem), s(client_cert), s(client_key), "owner", &alice]);
    assert!(ok && said.contains("OK"), "kazoo over TLS:\n{said}");
    let (ok, said) = kazoo("tls.py", &[&secure, s(ca_pem), s(&bob_cert), s(&bob_key), "other"]);
    assert!(ok && said.contains("OK"), "bob's certificate does not pass alice's x509 ACL:\n{said}");
    let (ok, said) = kazoo("tls.py", &[&secure, s(ca_pem), s(rogue_cert), s(rogue_key), "refused"]);
    assert!(ok && said.contains("OK"), "a certificate from another CA must be refused:\n{said}");
    let log = std::fs::read_to_string(server.log_path()).expect("the log");
    assert!(log.contains("TLS handshake failed"), "the refusal is logged:\n{log}");
    // The plain port serves beside it.
    assert_eq!(baton_tests::raw::four_letter(server.addr, b"ruok"), "imok");

    // zkCli with ZooKeeper's Netty TLS settings: a PKCS#12 keystore and truststore made from
    // the same PEM files; `whoami` shows the x509 id ZooKeeper would.
    let keystore = certs.join("alice.p12");
    let made = std::process::Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:secret", "-name", "alice", "-in"])
        .args([client_cert, std::path::Path::new("-inkey"), client_key, std::path::Path::new("-out"), &keystore])
        .status()
        .expect("openssl runs");
    assert!(made.success(), "the keystore");
    let truststore = certs.join("trust.p12");
    let made = std::process::Command::new("keytool")
        .args(["-importcert", "-noprompt", "-alias", "ca", "-storetype", "PKCS12", "-storepass", "secret", "-file"])
        .arg(ca_pem)
        .arg("-keystore")
        .arg(&truststore)
        .output()
        .expect("keytool (Java's) runs");
    assert!(made.status.success(), "the truststore: {}", String::from_utf8_lossy(&made.stderr));
    let java = "/usr/share/java";
    let classpath = ["zookeeper", "netty-buffer", "netty-codec", "netty-common", "netty-handler", "netty-resolver"]
        .iter()
        .chain(&["netty-transport", "netty-transport-native-epoll", "netty-transport-native-unix-common"])
        .chain(&["slf4j-log4j12", "log4j-1.2"])
        .map(|jar| format!("{java}/{jar}.jar"))
        .collect::<Vec<_>>()
        .join(":");
    // Debian's zkCli puts only zookeeper.jar on its class path; a later -cp wins.
    let flags = format!(
        "-cp /etc/zookeeper/conf:{classpath} -Dzookeeper.clientCnxnSocket=org.apache.zookeeper.ClientCnxnSocketNetty \
         -Dzookeeper.client.secure=true -Dzookeeper.ssl.keyStore.location={} -Dzookeeper.ssl.keyStore.password=secret \
         -Dzookeeper.ssl.keyStore.type=PKCS12 -Dzookeeper.ssl.trustStore.location={} \
         -Dzookeeper.ssl.trustStore.password=secret -Dzookeeper.ssl.trustStore.type=PKCS12",
        s(&keystore),
        s(&truststore)
    );
    let said = baton_tests::clients::zkcli(
        &secure,
        "create /zkcli-tls hello\nget /zkcli-tls\nwhoami\nquit\n",
        &[("CLIENT_JVMFLAGS", &flags)],
    );
    assert!(said.contains("Created /zkcli-tls") && said.contains("\nhello\n"), "zkCli over TLS:\n{said}");
    assert!(said.contains(&format!("x509: {alice}")), "zkCli's whoami shows the x509 id:\n{said}");
}

#[test]
fn bad_tls_settings_stop_the_server_at_start_naming_the_file() {
    let dir = temp_dir();
    let missing = dir.path().join("missing.pem");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton_test_server"))
        .args(["--client-addr", &format!("127.0.0.1:{}", free_port()), "--etcd-addr", "off", "--admin-addr", "off"])
        .args(["--secure-client-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--tls-cert", s(&missing), "--tls-key", s(&missing)])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run baton");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("missing.pem"), "the file is named: {said}");
    let (code, _, said) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton_test_server"))
            .args(["--check-config", "--secure-client-addr", "127.0.0.1:2281"])
            .output()
            .expect("run baton");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("--secure-client-addr 127.0.0.1:2281 needs --tls-cert and --tls-key"), "{said}");
}

#[test]
fn etcdctl_works_over_tls_with_a_client_certificate_and_another_cas_is_refused() {
    let dir = temp_dir();
    let kit = Kit::new(dir.path());
    let ca_pem = &kit.ca_pem;
    let (client_cert, client_key) = &kit.alice;
    let (rogue_cert, rogue_key) = &kit.rogue;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = BatonProcess::start(
        env!("CARGO_BIN_EXE_baton_test_server"),
        &dir.path().join("data"),
        &[&["--etcd-addr", addr.as_str(), "--etcd-tls"][..], &kit.server_flags()].concat(),
    );
    let tls = |cert: &Path, key: &Path| {
        vec![
            "--cacert".to_string(),
            s(ca_pem).to_string(),
            "--cert".into(),
            s(cert).into(),
            "--key".into(),
            s(key).into(),
        ]
    };
    let endpoint = format!("https://{addr}");
    let with = |cert: &Path, key: &Path, args: &[&str]| {
        let mut all: Vec<String> = tls(cert, key);
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        baton_tests::clients::etcdctl(&endpoint, &all, "")
    };
    let (ok, said) = with(client_cert, client_key, &["put", "over", "tls"]);
    assert!(ok && said == "OK\n", "etcdctl put over TLS: {said}");
    let (ok, said) = with(client_cert, client_key, &["get", "over", "--print-value-only"]);
    assert!(ok && said == "tls\n", "etcdctl get over TLS: {said}");
    let (ok, said) = with(client_cert, client_key, &["member", "list"]);
    assert!(ok && said.contains(&format!("https://{addr}")), "client URLs say https: {said}");
    // Plain gRPC on a TLS port gets nowhere.
    let (ok, said) =
        baton_tests::clients::etcdctl(&addr, &["--dial-timeout", "2s", "--command-timeout", "3s", "get", "over"], "");
    assert!(!ok, "plain gRPC on the TLS port: {said}");
    // A client certificate from another CA is refused, and the refusal logged.
    let (ok, said) = with(rogue_cert, rogue_key, &["--dial-timeout", "2s", "--command-timeout", "3s", "get", "over"]);
    assert!(!ok, "a certificate from another CA: {said}");
    let log = std::fs::read_to_string(server.log_path()).expect("the log");
    assert!(log.contains("etcd client's TLS handshake failed"), "{log}");
}

/// The subject of the certificate a TLS server at `addr` presents (openssl's s_client, with
/// `flags`, such as a client certificate).
fn served_subject(addr: &str, flags: &[&str]) -> String {
    let out = std::process::Command::new("timeout")
        .args(["10", "openssl", "s_client", "-nameopt", "RFC2253", "-connect", addr])
        .args(flags)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("subject=")).unwrap_or_default().to_string()
}

/// A server with TLS alone (`--client-addr off`): while a kazoo session writes through it,
/// its certificate is replaced and a CA added to its client CA file; new handshakes get the
/// new certificate and accept the new CA's clients, and no write fails.
#[test]
fn certificates_and_cas_are_reloaded_under_load_on_a_server_without_a_plain_port() {
    let dir = temp_dir();
    let kit = Kit::new(dir.path());
    let certs = &kit.certs;
    let (second_cert, second_key) = kit.ca.issue(certs, "second", "second", &["127.0.0.1"]);
    let (cert, key, ca) = (certs.join("live.pem"), certs.join("live.key"), certs.join("live-ca.pem"));
    std::fs::copy(&kit.server.0, &cert).expect("copy");
    std::fs::copy(&kit.server.1, &key).expect("copy");
    std::fs::copy(&kit.ca_pem, &ca).expect("copy");
    let secure = format!("127.0.0.1:{}", free_port());
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let server = BatonProcess::start(
        env!("CARGO_BIN_EXE_baton_test_server"),
        &dir.path().join("data"),
        &["--client-addr", "off", "--secure-client-addr", &secure, "--admin-addr", &admin.to_string()]
            .into_iter()
            .chain(["--tls-cert", s(&cert), "--tls-key", s(&key), "--tls-client-ca", s(&ca)])
            .collect::<Vec<_>>(),
    );
    assert!(std::net::TcpStream::connect(server.addr).is_err(), "the plain port is off");
    let (alice_cert, alice_key) = (s(&kit.alice.0), s(&kit.alice.1));
    let served = || served_subject(&secure, &["-cert", alice_cert, "-key", alice_key]);
    assert!(served().contains("CN=baton"), "{}", served());

    let load = {
        let args: Vec<String> =
            [&secure, s(&kit.ca_pem), alice_cert, alice_key, "load", "10"].iter().map(|a| a.to_string()).collect();
        std::thread::spawn(move || kazoo("tls.py", &args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    std::thread::sleep(std::time::Duration::from_secs(1));
    // Rotated in place (key first, then the certificate, as a renewal script would).
    std::fs::copy(&second_key, &key).expect("copy");
    std::fs::copy(&second_cert, &cert).expect("copy");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !served().contains("CN=second") {
        assert!(std::time::Instant::now() < deadline, "still {}", served());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The writer's connection, listed as ZooKeeper lists one on its secure port.
    let cons = baton_tests::clients::http_json(admin, "/commands/cons");
    let counts = (cons["connections"].as_array().map(Vec::len), cons["secure_connections"].as_array().map(Vec::len));
    assert_eq!(counts, (Some(0), Some(1)), "{cons}");
    // Another CA's client is refused until its CA is added to the file.
    let (rogue_cert, rogue_key) = (s(&kit.rogue.0), s(&kit.rogue.1));
    let rogue = |mode| kazoo("tls.py", &[&secure, s(&kit.ca_pem), rogue_cert, rogue_key, mode]);
    let (ok, said) = rogue("refused");
    assert!(ok && said.contains("OK"), "another CA's client, before its CA is added:\n{said}");
    let both = [std::fs::read_to_string(&kit.ca_pem), std::fs::read_to_string(&kit.rogue_ca_pem)];
    std::fs::write(&ca, both.map(|pem| pem.expect("read a CA")).concat()).expect("write the CA file");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (ok, said) = rogue("connects");
        if ok && said.contains("OK") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the added CA's client is still refused:\n{said}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let (ok, said) = load.join().expect("the writer");
    let writes: u64 = said.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(ok && said.contains("OK") && writes > 0, "the writer through the reloads:\n{said}");
}

#[test]
fn an_ensemble_replicates_over_mutual_tls_and_refuses_a_peer_without_its_cas_certificate() {
    use baton_tests::cluster::Cluster;
    use baton_tests::raw::RawClient;
    let dir = temp_dir();
    let kit = Kit::new(dir.path());
    // One certificate for the three servers, all on 127.0.0.1: dialers check the address.
    let (ca_pem, (cert, key), (rogue_cert, rogue_key)) = (&kit.ca_pem, &kit.server, &kit.rogue);
    let flags = ["--peer-tls", "--tls-cert", s(cert), "--tls-key", s(key), "--tls-peer-ca", s(ca_pem)];
    let cluster = Cluster::start(env!("CARGO_BIN_EXE_baton_test_server"), &dir.path().join("data"), 3, 25_100, &flags);
    let leader = cluster.wait_for_leader(&[1, 2, 3], std::time::Duration::from_secs(30)).expect("a leader over TLS");
    let addrs = cluster.addrs();
    let mut writer = RawClient::connect(addrs[leader - 1], 10_000, None).expect("connect");
    assert_eq!(writer.create("/over-peer-tls", b"replicated", 0).expect("create").err, 0);
    let other = if leader == 1 { 2 } else { 1 };
    let mut reader = RawClient::connect(addrs[other - 1], 10_000, None).expect("connect");
    assert_eq!(reader.sync("/over-peer-tls"), Some(0));
    assert_eq!(reader.get_data("/over-peer-tls", false).expect("data").1, b"replicated");
    // A would-be peer with another CA's certificate, and one with none, are refused and named.
    let peer_port = cluster.peer_addr(other).to_string();
    // Refusals are logged at most once a second: try until one is.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for attempt in 0.. {
        let extra = if attempt % 2 == 0 { vec!["-cert", s(rogue_cert), "-key", s(rogue_key)] } else { vec![] };
        let said = std::process::Command::new("timeout")
            .args(["10", "openssl", "s_client", "-connect", &peer_port])
            .args(&extra)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs");
        let log = std::fs::read_to_string(cluster.nodes[other - 1].log_path()).expect("the log");
        if log.contains("refusing a connection on the peer port: its TLS handshake failed") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal logged:\n{log}\nopenssl: {}",
            String::from_utf8_lossy(&said.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
