//! Crash recovery with real processes: a child appends to a WAL under load and is killed
//! with SIGKILL at a random moment, round after round. After each kill, recovery must yield
//! a gap-free prefix of what was appended, every entry intact, containing every entry whose
//! durability had been acknowledged before the kill. The child also releases old segments
//! for reuse as it goes (keeping the last `CRASH_KEEP_ENTRIES`), so most rounds write into
//! recycled segment files full of stale records.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use baton_engine::wal::WalReader;
use baton_tests::{crash_payload, temp_dir, CRASH_KEEP_ENTRIES};
use rand::{Rng, SeedableRng};

const ROUNDS: u32 = 30;

#[test]
fn sigkill_under_load_never_loses_an_acknowledged_append() {
    let seed: u64 = std::env::var("BATON_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = temp_dir();
    // zxid -> round of every acknowledged append.
    let mut acked: BTreeMap<u64, u32> = BTreeMap::new();
    let mut torn_tails = 0;
    let mut recycled = 0;
    for round in 1..=ROUNDS {
        let tasks = [1, 16, 256][rng.random_range(0..3)];
        let mut child = Command::new(env!("CARGO_BIN_EXE_wal_crash_child"))
            .arg(dir.path())
            .arg(round.to_string())
            .arg(tasks.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it get going (first ack), then kill it at a random moment.
        let started = Instant::now();
        let first = rx.recv_timeout(Duration::from_secs(20));
        assert!(first.is_ok(), "round {round}: child acknowledged nothing within 20 s");
        std::thread::sleep(Duration::from_millis(rng.random_range(1..120)));
        // SAFETY: sending a signal to our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().expect("wait");
        assert!(!status.success(), "child must have been killed");
        reader.join().expect("reader thread");
        let lines: Vec<String> = first.into_iter().chain(rx.try_iter()).collect();
        for line in &lines {
            // A line cut by the kill is not an acknowledgement (nothing was fully printed).
            if let Ok(z) = line.parse::<u64>() {
                acked.insert(z, round);
            }
        }
        let recovered = WalReader::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: recovery failed: {e}"));
        if recovered.torn_tail().is_some() {
            torn_tails += 1;
        }
        let mut found: BTreeMap<u64, u32> = BTreeMap::new();
        let first = recovered.records().next().map_or(1, |r| r.zxid.0);
        let max_acked = acked.keys().next_back().copied().unwrap_or(0);
        // Released at most through (durable at release) - KEEP, and durable runs ahead of
        // the printed acks by at most the appenders' one entry each.
        let bound = max_acked.saturating_sub(CRASH_KEEP_ENTRIES) + 256 + 1;
        assert!(first <= bound, "round {round}: log starts at {first}, beyond {bound}");
        recycled += recovered.segments().iter().filter(|s| s.header.recycled).count();
        for (expect, record) in (first..).zip(recovered.records()) {
            assert_eq!(record.zxid.0, expect, "round {round}: log has a gap");
            let r = crash_payload::check(record.zxid.0, record.payload)
                .unwrap_or_else(|| panic!("round {round}: entry {} is damaged", record.zxid.0));
            found.insert(record.zxid.0, r);
        }
        for (z, r) in acked.range(first..) {
            assert_eq!(found.get(z), Some(r), "round {round}: acknowledged entry {z} (round {r}) lost or replaced");
        }
        eprintln!(
            "round {round}: {tasks} appenders, {} acks in {:?}, log holds {} entries",
            lines.len(),
            started.elapsed(),
            found.len()
        );
    }
    assert!(acked.len() > ROUNDS as usize, "the children made progress");
    assert!(recycled > 0, "some rounds recovered recycled segments");
    eprintln!(
        "seed {seed}: {} acknowledged appends survived {ROUNDS} SIGKILLs ({torn_tails} torn tails cut, \
         {recycled} recycled segments recovered)",
        acked.len()
    );
}
