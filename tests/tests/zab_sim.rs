//! The Zab core under the deterministic simulator (`baton_tests::sim`): many seeds of
//! crashes, partitions, connection resets, duplicates and slow disks, each checked after every
//! event and required to heal.
//!
//! A failing seed is printed with the command that replays it exactly:
//! `BATON_SIM_SEED=<seed> cargo test --release -p baton-tests --test zab_sim -- --nocapture`
//! (which also prints the run's event trace). `BATON_SIM_SEEDS=<n>` sets how many seeds the
//! sweep runs.

use baton_tests::sim::{run, NetFaults, SimOptions};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn replay_hint(seed: u64) -> String {
    format!("replay: BATON_SIM_SEED={seed} cargo test --release -p baton-tests --test zab_sim -- --nocapture")
}

#[test]
fn every_seed_keeps_the_guarantees_and_heals() {
    if let Some(seed) = env_u64("BATON_SIM_SEED") {
        let opts = SimOptions { trace: true, ..SimOptions::for_seed(seed) };
        match run(opts) {
            Ok(report) => eprintln!("seed {seed}: {report:?}"),
            Err(why) => panic!("{why}\n{}", replay_hint(seed)),
        }
        return;
    }
    let seeds = env_u64("BATON_SIM_SEEDS").unwrap_or(10_000);
    let (mut committed, mut acked, mut epochs, mut crashes, mut snaps, mut reads, mut touches) = (0, 0, 0, 0, 0, 0, 0);
    let (mut written, mut stale, mut discards, mut full, mut snaps_sent) = (0, 0, 0, 0, 0);
    for seed in 0..seeds {
        match run(SimOptions::for_seed(seed)) {
            Ok(r) => {
                committed += r.committed;
                acked += r.acknowledged;
                epochs += r.epochs;
                crashes += r.crashes;
                discards += r.discards;
                full += r.disks_full;
                snaps += r.snapshots_installed;
                snaps_sent += r.snapshots_sent;
                reads += r.synced_reads;
                touches += r.touches;
                written += r.snapshots_written;
                stale += r.stale_proposals;
            }
            Err(why) => {
                let first_line = why.lines().next().unwrap_or_default().to_string();
                panic!("{first_line}\n{}", replay_hint(seed));
            }
        }
    }
    eprintln!(
        "{seeds} seeds: {committed} entries committed, {acked} writes acknowledged, {epochs} epochs, \
         {crashes} crashes ({discards} with the log discarded, --resync), {full} disks full for a while, {snaps} snapshots installed (of {snaps_sent} begun), {written} snapshots written, {stale} stale batches \
         dropped, {reads} reads after sync, {touches} session renewals"
    );
    assert!(acked > seeds as usize, "writes were acknowledged");
    assert!(snaps > 0, "some followers were brought back with a snapshot");
    // A SNAP spans many messages (small chunks): some are cut off in the middle, and the
    // learner is synchronised again (every seed's guarantees and healing checked above).
    assert!(snaps_sent > snaps, "some SNAPs were interrupted: {snaps_sent} begun, {snaps} installed");
    assert!(written > seeds, "the replicas snapshot and compact their logs: {written}");
    assert!(stale > 0, "batches prepared for an earlier leadership reached a replica and were dropped");
    assert!(reads > seeds, "reads after sync were checked");
    assert!(touches > seeds, "session liveness reached the leaders: {touches}");
    assert!(discards > 0, "some servers had their log discarded and were resynchronised");
    assert!(full > seeds / 4, "disks filled up and their servers withdrew: {full}");
}

#[test]
fn a_seed_replays_exactly() {
    let a = run(SimOptions::for_seed(7)).expect("seed 7 passes");
    let b = run(SimOptions::for_seed(7)).expect("seed 7 passes");
    assert_eq!(a, b);
    let c = run(SimOptions::for_seed(8)).expect("seed 8 passes");
    assert_ne!(a.fingerprint, c.fingerprint, "another seed is another run");
}

#[test]
fn a_calm_cluster_elects_once_and_commits_everything() {
    let opts = SimOptions { crashes: false, net: NetFaults::CALM, ..SimOptions::for_seed(1) };
    let report = run(opts).expect("a calm run passes");
    assert_eq!(report.epochs, 1, "one election, no leader change: {report:?}");
    assert_eq!(report.acknowledged, report.committed, "every proposal committed: {report:?}");
}
