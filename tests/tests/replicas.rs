//! Three replicas on real sockets and real WALs, each on its own glommio executor thread:
//! they elect a leader and replicate its proposals; when the leader stops, the others elect
//! another and go on; the old leader restarts from its disk and catches up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_engine::zab::{Role, ServerId, ZabConfig};
use baton_engine::Zxid;

use baton_engine::replica::StateMachine;
use baton_server::peer::replica::{run, ReplicaConfig};
use baton_tests::proxy::Proxy;

type Log = Arc<Mutex<Vec<(Zxid, Vec<u8>)>>>;

struct Applied(Log, Arc<Mutex<Vec<Zxid>>>);

impl StateMachine for Applied {
    fn apply(&mut self, entries: &[baton_engine::zab::LogEntry]) {
        let mut log = self.0.lock().expect("log lock");
        log.extend(entries.iter().map(|e| (e.zxid, e.payload.to_vec())));
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (z, p) in self.0.lock().expect("log lock").iter() {
            out.extend_from_slice(&z.0.to_le_bytes());
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    fn install(&mut self, zxid: Zxid, mut data: &[u8]) {
        self.1.lock().expect("installs lock").push(zxid);
        let mut log = self.0.lock().expect("log lock");
        log.clear();
        while data.len() >= 12 {
            let z = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
            let n = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes")) as usize;
            log.push((Zxid(z), data[12..12 + n].to_vec()));
            data = &data[12 + n..];
        }
    }
}

struct Running {
    log: Log,
    /// The zxids of every snapshot installed (recovered from disk or received by SNAP).
    installs: Arc<Mutex<Vec<Zxid>>>,
    role: Arc<Mutex<Role>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// Peer ports: each test its own range (tests of one binary run in parallel).
fn peers(base: u16) -> BTreeMap<ServerId, SocketAddr> {
    (1..=3u64).map(|id| (id, SocketAddr::from(([127, 0, 0, 1], base + id as u16)))).collect()
}

fn start(id: ServerId, dir: &Path) -> Running {
    start_with(id, dir, 29_100, 0)
}

fn start_with(id: ServerId, dir: &Path, base: u16, snapshot_every_entries: u64) -> Running {
    let peers = peers(base);
    start_on(id, dir, peers[&id], peers, snapshot_every_entries)
}

/// Starts replica `id` listening on `listen` and reaching peer `j` at `peers[j]`.
fn start_on(
    id: ServerId,
    dir: &Path,
    listen: SocketAddr,
    peers: BTreeMap<ServerId, SocketAddr>,
    snapshot_every_entries: u64,
) -> Running {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let role = Arc::new(Mutex::new(Role::Looking));
    let stop = Arc::new(AtomicBool::new(false));
    let mut config = ReplicaConfig {
        listen: Some(listen),
        peers,
        tick: Duration::from_millis(50),
        frame_bytes_max: 1 << 20,
        ..ReplicaConfig::new(ZabConfig::new(id, vec![1, 2, 3]), dir.join(format!("replica-{id}")))
    };
    config.driver.snapshot_every_entries = snapshot_every_entries;
    let installs = Arc::new(Mutex::new(Vec::new()));
    let (l, r, s, ins) = (log.clone(), role.clone(), stop.clone(), installs.clone());
    let thread = std::thread::spawn(move || {
        baton_engine::sys::raise_memlock_limit();
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor");
        executor.run(async move {
            let state = Applied(l, ins);
            let result = run(config, state, move |handle| {
                // The client: while this replica leads, one proposal every 5 ms.
                glommio::spawn_local(async move {
                    let mut k = 0u64;
                    loop {
                        glommio::timer::sleep(Duration::from_millis(5)).await;
                        let role = handle.role();
                        *r.lock().expect("role lock") = role;
                        if s.load(Ordering::SeqCst) {
                            handle.stop();
                            return;
                        }
                        if matches!(role, Role::Leading { established: true, .. }) {
                            k += 1;
                            handle.propose(None, vec![format!("{id}-{k}").into_bytes().into()]);
                        }
                    }
                })
                .detach();
            })
            .await;
            result.expect("replica ran");
        });
    });
    Running { log, installs, role, stop, thread }
}

fn stop(r: Running) -> Log {
    r.stop.store(true, Ordering::SeqCst);
    r.thread.join().expect("replica thread");
    r.log
}

fn len(log: &Log) -> usize {
    log.lock().expect("log lock").len()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_prefixes(logs: &[Vec<(Zxid, Vec<u8>)>]) {
    for a in logs {
        for b in logs {
            let n = a.len().min(b.len());
            assert_eq!(a[..n], b[..n], "two replicas applied different histories");
        }
    }
}

fn leader(replicas: &BTreeMap<ServerId, Running>) -> Option<ServerId> {
    replicas
        .iter()
        .find(|(_, r)| matches!(*r.role.lock().expect("role lock"), Role::Leading { established: true, .. }))
        .map(|(id, _)| *id)
}

fn temp_dir(name: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-tmp");
    std::fs::create_dir_all(&base).expect("test dir");
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

// Once flaky (about 1 run in 10): a replica stopped in this process could leave a link that a
// peer had opened into its dying listener; the peer saw no failure and its answers to the
// restarted replica's election went nowhere. Links now go up only when a live accept loop
// answers the hello, and a peer seen with a new incarnation has its old link dropped (see
// `baton_server::peer::transport`); 0 failures in 40 runs since.
#[test]
fn three_replicas_replicate_fail_over_and_catch_up() {
    let dir = temp_dir("replicas");
    let mut replicas: BTreeMap<ServerId, Running> = (1..=3).map(|id| (id, start(id, &dir))).collect();
    wait_until("every replica applied 30 entries", || replicas.values().all(|r| len(&r.log) >= 30));
    wait_until("a leader is established", || leader(&replicas).is_some());
    let first = leader(&replicas).expect("a leader");

    let old = replicas.remove(&first).expect("leader");
    let old_log = stop(old);
    let before: usize = replicas.values().map(|r| len(&r.log)).min().unwrap_or(0);
    wait_until("the others elect a new leader and go on", || {
        leader(&replicas).is_some_and(|l| l != first) && replicas.values().all(|r| len(&r.log) >= before + 30)
    });

    // The old leader comes back from its disk (its state machine starts empty and is rebuilt
    // from what the new leader commits).
    replicas.insert(first, start(first, &dir));
    let target = replicas.values().map(|r| len(&r.log)).max().unwrap_or(0);
    let caught_up = |r: &BTreeMap<ServerId, Running>| len(&r[&first].log) >= target;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !caught_up(&replicas) {
        if Instant::now() > deadline {
            let state: Vec<_> =
                replicas.iter().map(|(id, r)| (*id, *r.role.lock().expect("role"), len(&r.log))).collect();
            panic!("the restarted replica {first} did not catch up to {target}: {state:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let logs: Vec<Vec<(Zxid, Vec<u8>)>> =
        replicas.into_values().map(|r| stop(r).lock().expect("log lock").clone()).collect();
    let mut all = logs.clone();
    all.push(old_log.lock().expect("log lock").clone());
    assert_prefixes(&all);
    assert!(logs.iter().all(|l| l.len() >= 60), "{:?}", logs.iter().map(Vec::len).collect::<Vec<_>>());
    let epochs: std::collections::BTreeSet<u32> = logs[0].iter().map(|(z, _)| z.epoch()).collect();
    assert!(epochs.len() >= 2, "entries of two leaderships: {epochs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_replica_behind_the_compacted_log_is_brought_back_with_a_snapshot() {
    let dir = temp_dir("snap");
    let base = 29_200;
    let mut replicas: BTreeMap<ServerId, Running> = (1..=3).map(|id| (id, start_with(id, &dir, base, 25))).collect();
    wait_until("a leader is established", || leader(&replicas).is_some());
    // Stop a follower; the others commit far past it and compact their logs every 25 entries.
    let lagging = (1..=3).find(|id| Some(*id) != leader(&replicas)).expect("a follower");
    let behind = stop(replicas.remove(&lagging).expect("follower"));
    let was = len(&behind);
    let last = behind.lock().expect("log lock").last().map_or(Zxid::ZERO, |(z, _)| *z);
    wait_until("the others commit 150 more entries", || replicas.values().all(|r| len(&r.log) >= was + 150));
    replicas.insert(lagging, start_with(lagging, &dir, base, 25));
    let target = replicas.values().map(|r| len(&r.log)).max().unwrap_or(0);
    wait_until("the lagging replica catches up", || len(&replicas[&lagging].log) >= target);
    let installs = replicas[&lagging].installs.lock().expect("installs lock").clone();
    assert!(installs.iter().any(|z| *z > last), "it received a SNAP beyond {last}: {installs:?}");
    let logs: Vec<Vec<(Zxid, Vec<u8>)>> =
        replicas.into_values().map(|r| stop(r).lock().expect("log lock").clone()).collect();
    assert_prefixes(&logs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_leader_cut_off_from_the_majority_is_replaced_and_rejoins_after_healing() {
    let dir = temp_dir("partition");
    let real = |id: ServerId| SocketAddr::from(([127, 0, 0, 1], 29_300 + id as u16));
    let via = |from: ServerId, to: ServerId| SocketAddr::from(([127, 0, 0, 1], 29_400 + (from * 10 + to) as u16));
    let mut proxies: BTreeMap<(ServerId, ServerId), Proxy> = BTreeMap::new();
    for from in 1..=3u64 {
        for to in 1..=3u64 {
            if from != to {
                proxies.insert((from, to), Proxy::start(via(from, to), real(to)).expect("proxy port"));
            }
        }
    }
    let mut replicas: BTreeMap<ServerId, Running> = BTreeMap::new();
    for id in 1..=3u64 {
        let peers = (1..=3u64).map(|j| (j, if j == id { real(id) } else { via(id, j) })).collect();
        replicas.insert(id, start_on(id, &dir, real(id), peers, 0));
    }
    wait_until("every replica applied 30 entries", || replicas.values().all(|r| len(&r.log) >= 30));
    wait_until("a leader is established", || leader(&replicas).is_some());
    let cut_off = leader(&replicas).expect("a leader");

    let set_cut = |proxies: &BTreeMap<(ServerId, ServerId), Proxy>, cut: bool| {
        for ((from, to), p) in proxies {
            if *from == cut_off || *to == cut_off {
                if cut {
                    p.cut();
                } else {
                    p.heal();
                }
            }
        }
    };
    set_cut(&proxies, true);
    let majority: Vec<ServerId> = (1..=3).filter(|&id| id != cut_off).collect();
    let before = majority.iter().map(|id| len(&replicas[id].log)).min().unwrap_or(0);
    wait_until("the majority elects another leader and goes on", || {
        let new = leader(&replicas).filter(|&l| l != cut_off);
        new.is_some() && majority.iter().all(|id| len(&replicas[id].log) >= before + 30)
    });
    wait_until("the cut-off leader steps down", || {
        !matches!(*replicas[&cut_off].role.lock().expect("role lock"), Role::Leading { .. })
    });

    set_cut(&proxies, false);
    let target = majority.iter().map(|id| len(&replicas[id].log)).max().unwrap_or(0);
    wait_until("the old leader rejoins and catches up", || {
        len(&replicas[&cut_off].log) >= target
            && matches!(*replicas[&cut_off].role.lock().expect("role lock"), Role::Following { serving: true, .. })
    });
    let logs: Vec<Vec<(Zxid, Vec<u8>)>> =
        replicas.into_values().map(|r| stop(r).lock().expect("log lock").clone()).collect();
    assert_prefixes(&logs);
    drop(proxies);
    let _ = std::fs::remove_dir_all(&dir);
}
