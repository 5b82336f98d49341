//! The randomized nemesis (`baton_tests::nemesis`) against a three-server and a five-server
//! ensemble of real processes. A short run in the test suite; a long one with
//!
//! ```sh
//! BATON_NEMESIS_SECS=1800 cargo test --release -p baton-tests --test nemesis -- --nocapture
//! ```
//!
//! `BATON_NEMESIS_SEED=<n>` replays a schedule (every run prints its seed).

use std::time::Duration;

use baton_tests::load::one_cluster_at_a_time;
use baton_tests::nemesis::{run, Config};
use baton_tests::temp_dir;

fn seed() -> u64 {
    match std::env::var("BATON_NEMESIS_SEED") {
        Ok(s) => s.parse().expect("BATON_NEMESIS_SEED is a number"),
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        }
    }
}

fn seconds(default: u64) -> Duration {
    let secs = std::env::var("BATON_NEMESIS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    Duration::from_secs(secs)
}

fn nemesis(servers: usize, default_secs: u64, base: u16) {
    let _one = one_cluster_at_a_time();
    let dir = temp_dir();
    let config = Config {
        seed: seed(),
        servers,
        duration: seconds(default_secs),
        base,
        registers: 8,
        clients: 3,
        etcd_clients: 2,
    };
    eprintln!(
        "nemesis: {servers} servers for {:?}, seed {} (BATON_NEMESIS_SEED replays it)",
        config.duration, config.seed
    );
    let report = run(env!("CARGO_BIN_EXE_baton_test_server"), dir.path(), &config);
    eprintln!("nemesis: {}", report.summary());
    assert!(
        report.anomalies.is_empty(),
        "the nemesis found anomalies; replay with BATON_NEMESIS_SEED={}:\n{}",
        config.seed,
        report.summary()
    );
    let faults: usize = report.faults.values().sum();
    assert!(faults >= 5, "faults were injected: {:?}", report.faults);
    let acknowledged = report.operations.iter().filter(|(k, _)| !k.ends_with('?')).map(|(_, n)| *n).sum::<usize>();
    assert!(acknowledged >= 200, "operations were checked: {:?}", report.operations);
    let etcd = report.operations.iter().filter(|(k, _)| k.starts_with("etcd-") && !k.ends_with('?')).count();
    assert_eq!(etcd, 3, "etcd puts, transactions and reads were checked: {:?}", report.operations);
}

#[test]
fn three_servers_under_a_randomized_nemesis_stay_linearizable_and_converge() {
    nemesis(3, 60, 27_100);
}

#[test]
fn five_servers_under_a_randomized_nemesis_stay_linearizable_and_converge() {
    nemesis(5, 40, 27_300);
}
