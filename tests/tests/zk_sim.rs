//! The server's write path (sessions, forwarding, refusals, expiry) under the deterministic
//! simulator with faults (`baton_tests::sim::zk`). A failing seed prints the command that
//! replays it with its trace: `BATON_ZKSIM_SEED=<seed> cargo test --release -p baton-tests
//! --test zk_sim -- --nocapture`; `BATON_ZKSIM_SEEDS=<n>` sets how many seeds run.

use baton_tests::sim::zk::{run_zk, ZkSimOptions};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn sessions_refusals_and_expiry_keep_their_guarantees_under_faults() {
    if let Some(seed) = env_u64("BATON_ZKSIM_SEED") {
        let opts = ZkSimOptions { trace: true, ..ZkSimOptions::for_seed(seed) };
        match run_zk(opts) {
            Ok(report) => eprintln!("seed {seed}: {report:?}"),
            Err(why) => panic!("{why}\nreplay: BATON_ZKSIM_SEED={seed} cargo test --release -p baton-tests --test zk_sim -- --nocapture"),
        }
        return;
    }
    let seeds = env_u64("BATON_ZKSIM_SEEDS").unwrap_or(1_000);
    let mut total = baton_tests::sim::zk::ZkSimReport::default();
    for seed in 0..seeds {
        match run_zk(ZkSimOptions::for_seed(seed)) {
            Ok(r) => {
                total.sessions += r.sessions;
                total.resumed += r.resumed;
                total.expired += r.expired;
                total.applied += r.applied;
                total.refused += r.refused;
                total.reads += r.reads;
                total.etcd_applied += r.etcd_applied;
                total.etcd_failed_compares += r.etcd_failed_compares;
                total.etcd_reads += r.etcd_reads;
                total.crashes += r.crashes;
            }
            Err(why) => {
                let first = why.lines().next().unwrap_or_default().to_string();
                panic!("{first}\nreplay: BATON_ZKSIM_SEED={seed} cargo test --release -p baton-tests --test zk_sim -- --nocapture");
            }
        }
    }
    eprintln!("{seeds} seeds: {total:?}");
    assert!(total.sessions > seeds && total.resumed > 0, "sessions opened and resumed elsewhere");
    assert!(total.expired > 0, "sessions expired (clients cut off long enough)");
    assert!(total.refused > 0 && total.applied > seeds * 20, "writes applied and refused");
    assert!(total.reads > seeds * 10, "reads after sync checked");
    assert!(total.etcd_applied > seeds * 20, "etcd writes applied");
    assert!(total.etcd_failed_compares > 0, "etcd transactions took their failure branch");
    assert!(total.etcd_reads > seeds * 10, "etcd linearizable reads checked");
}

#[test]
fn a_calm_ensemble_expires_no_session() {
    let opts = ZkSimOptions { faults: false, ..ZkSimOptions::for_seed(5) };
    let report = run_zk(opts).expect("a calm run passes");
    assert_eq!(report.expired, 0, "{report:?}");
    assert!(report.applied > 100 && report.reads > 50, "{report:?}");
    assert!(report.etcd_applied > 100 && report.etcd_reads > 50, "{report:?}");
}

#[test]
fn a_seed_replays_exactly() {
    let a = run_zk(ZkSimOptions::for_seed(11)).expect("seed 11 passes");
    let b = run_zk(ZkSimOptions::for_seed(11)).expect("seed 11 passes");
    assert_eq!(a, b);
}
