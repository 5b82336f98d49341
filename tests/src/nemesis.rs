//! A randomized nemesis of real processes, in the manner of Jepsen: an ensemble of `baton`
//! processes on 127.0.0.1 (every peer link through a fault-injecting proxy) takes a seeded
//! schedule of overlapping faults — SIGKILL and restart, SIGSTOP/SIGCONT pauses, partitions
//! (one server isolated, majority/minority, one link cut), failing and slow fdatasync, slow
//! peer links — while clients run compare-and-set, writes and `sync`-then-read on registers,
//! sequential creates and ephemeral nodes of sessions that come and go. Afterwards the faults
//! are healed and the run must settle: one leader, every server with the same tree, every
//! acknowledged create present. The register history goes through the linearizability
//! checker; sequential creates must follow real-time order; an ephemeral of a session whose
//! close was acknowledged must never be seen again.
//!
//! With etcd clients, the servers also serve etcd's API and those clients put, compare-and-set
//! by transaction and read linearizably (etcd's default) on their own keys through any
//! server, a partitioned old leader included. Afterwards the keys' whole history, watched
//! from revision 1, says which writes of unknown outcome took effect; that history goes
//! through the linearizability checker too, and every server must hold the same keyspace.
//!
//! The seed fixes the sequence of faults (which, where, for how long) and the clients'
//! choices; the processes' own timing — how long a restart takes, when an undo falls due
//! against the next fault — varies from run to run, so a replay is the same schedule, not
//! the same execution. A failure prints the seed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::linearizability::{self, Operation, RegisterOp};
use crate::raw::RawClient;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seeds the fault schedule and the clients' choices.
    pub seed: u64,
    /// Voters in the ensemble (3 or 5).
    pub servers: usize,
    /// How long faults are injected (the healed phase comes after).
    pub duration: Duration,
    /// First port of the cluster's range (see [`Cluster::start`]).
    pub base: u16,
    /// Registers the clients share.
    pub registers: u64,
    /// Register clients.
    pub clients: usize,
    /// etcd register clients (0: the servers' etcd ports stay closed).
    pub etcd_clients: usize,
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Operations recorded, by kind (`write`, `cas`, `read`, `create-seq`, `ephemeral`), and
    /// of those with an unknown outcome (`…?`).
    pub operations: BTreeMap<String, usize>,
    /// Everything that broke a guarantee.
    pub anomalies: Vec<String>,
}

impl Report {
    /// One line per figure, for the test's output and the README.
    pub fn summary(&self) -> String {
        let faults: usize = self.faults.values().sum();
        let ops: usize = self.operations.iter().filter(|(k, _)| !k.ends_with('?')).map(|(_, n)| n).sum();
        format!(
            "seed {}: {faults} faults {:?}; {ops} operations {:?}; {} anomalies{}",
            self.seed,
            self.faults,
            self.operations,
            self.anomalies.len(),
            self.anomalies.iter().map(|a| format!("\n  - {a}")).collect::<String>()
        )
    }
}

/// Microseconds since the run started: the clients' shared clock.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// What the clients record, shared.
#[derive(Default)]
struct Recorded {
    registers: Vec<Operation>,
    /// Acknowledged sequential creates: (invoked, completed, sequence number, name).
    sequential: Vec<(u64, u64, u64, String)>,
    /// The etcd clients' register operations (keys absent at first).
    etcd_registers: Vec<Operation>,
    /// The values of the etcd writes whose outcome their clients did not learn, with their
    /// index in `etcd_registers`.
    etcd_unknown: BTreeMap<u64, usize>,
    /// Ephemerals whose session's close was acknowledged: (path, when).
    closed_ephemerals: Vec<(String, u64)>,
    /// Ephemerals seen after their session's close was acknowledged.
    ghosts: Vec<String>,
    /// Sessions declared expired although their client had a ping answered less than the
    /// timeout (minus the time a server may answer without its leader) before.
    early_expiries: Vec<String>,
    counts: BTreeMap<String, usize>,
}

impl Recorded {
    fn count(&mut self, kind: &str) {
        *self.counts.entry(kind.to_string()).or_default() += 1;
    }
}

/// A server's state as the nemesis left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Process {
    Running,
    Paused,
    Down,
}

/// A fault to undo at a time.
enum Undo {
    Resume(usize, u32),
    Restart(usize),
    Heal(Vec<(usize, usize)>),
    ClearFailpoints(usize),
}

/// Runs one schedule; never panics on what it finds (see [`Report::anomalies`]), only on a
/// broken harness.
pub fn run(bin: &str, dir: &Path, config: &Config) -> Report {
    let flags = [
        "--snapshot-every-entries",
        "3000",
        "--wal-segment-bytes",
        "1048576",
        "--max-frame-bytes",
        "65536",
        "--tick-ms",
        "1000",
    ];
    let n = config.servers;
    let mut cluster = if config.etcd_clients > 0 {
        Cluster::start_with_etcd(bin, dir, n, config.base, config.base + 100, &flags)
    } else {
        Cluster::start(bin, dir, n, config.base, &flags)
    };
    let all: Vec<usize> = (1..=n).collect();
    let mut report = Report { seed: config.seed, ..Report::default() };
    let Some(leader) = cluster.wait_for_leader(&all, Duration::from_secs(60)) else {
        report.anomalies.push("no leader at start".into());
        return report;
    };
    setup(cluster.nodes[leader - 1].addr, config.registers);

    let clock = Clock(Instant::now());
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let addrs = cluster.addrs();
    let mut threads = Vec::new();
    let client = |id: u64, seed: u64| ClientCtx {
        id,
        addrs: addrs.clone(),
        clock,
        recorded: recorded.clone(),
        stop: stop.clone(),
        completed: completed.clone(),
        seed,
    };
    for c in 0..config.clients {
        let ctx = client(c as u64 + 1, config.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(c as u64 + 1)));
        let registers = config.registers;
        threads.push(std::thread::spawn(move || registers_client(ctx, registers)));
    }
    let endpoints: Vec<String> = (1..=n).filter_map(|i| cluster.etcd_endpoint(i)).collect();
    for e in 0..config.etcd_clients {
        let ctx = client(2000 + e as u64, config.seed.rotate_left(29 + e as u32));
        let (registers, endpoints) = (config.registers, endpoints.clone());
        threads.push(std::thread::spawn(move || etcd_client(ctx, endpoints, registers)));
    }
    for (k, kind) in [ClientKind::Sequential, ClientKind::Ephemeral, ClientKind::Keeper].into_iter().enumerate() {
        let ctx = client(1000 + k as u64, config.seed.rotate_left(17 + k as u32));
        threads.push(std::thread::spawn(move || match kind {
            ClientKind::Sequential => sequential_client(ctx),
            ClientKind::Ephemeral => ephemeral_client(ctx),
            ClientKind::Keeper => keeper_client(ctx),
        }));
    }

    inject(&mut cluster, config, &mut report);

    // Healed: one leader, then the clients must make progress again.
    let Some(_) = cluster.wait_for_leader(&all, Duration::from_secs(60)) else {
        stop.store(true, Ordering::SeqCst);
        report.anomalies.push(format!("no single leader within 60 s of healing: {:?}", modes(&cluster)));
        return report;
    };
    let before = completed.load(Ordering::SeqCst);
    let end = Instant::now() + Duration::from_secs(30);
    while completed.load(Ordering::SeqCst) < before + 50 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    if completed.load(Ordering::SeqCst) < before + 50 {
        report.anomalies.push("clients made no progress after healing".into());
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        if t.join().is_err() {
            report.anomalies.push("a client thread panicked".into());
        }
    }
    let mut recorded = match Arc::try_unwrap(recorded) {
        Ok(r) => r.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(_) => panic!("the clients were joined: nothing else holds the record"),
    };
    final_reads(&cluster, config.registers, clock, &mut recorded);
    if config.etcd_clients > 0 {
        etcd_settle(&cluster, clock, &mut recorded, &mut report);
    }
    check(&cluster, &recorded, &mut report);
    report.operations = recorded.counts.clone();
    report
}

fn modes(cluster: &Cluster) -> Vec<Option<String>> {
    (1..=cluster.nodes.len()).map(|i| cluster.mode(i)).collect()
}

fn setup(addr: SocketAddr, registers: u64) {
    let mut c = RawClient::connect(addr, 10_000, None).expect("connect to the leader");
    for parent in ["/reg", "/seq", "/eph"] {
        assert_eq!(c.create(parent, b"", 0).expect("reply").err, 0, "create {parent}");
    }
    for k in 0..registers {
        assert_eq!(c.create(&format!("/reg/r{k}"), b"0", 0).expect("reply").err, 0);
    }
}

/// The nemesis proper: faults from the seed until the duration is up, then every one undone.
fn inject(cluster: &mut Cluster, config: &Config, report: &mut Report) {
    let n = config.servers;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut state = vec![Process::Running; n + 1];
    let mut cut: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut pending: Vec<(Instant, Undo)> = Vec::new();
    let started = Instant::now();
    let end = started + config.duration;
    // At most a minority of processes down or paused at once, so that the run makes progress
    // (partitions are not limited: they may leave no majority for a while).
    let minority = (n - 1) / 2;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1200)));
        let now = Instant::now();
        let (due, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(at, _)| *at <= now);
        pending = rest;
        for (_, undo) in due {
            undo_fault(cluster, undo, &mut state, &mut cut);
        }
        let t = started.elapsed().as_secs_f64();
        let hold = Duration::from_millis(rng.random_range(500..5000));
        let running: Vec<usize> = (1..=n).filter(|&i| state[i] == Process::Running).collect();
        let troubled = n - running.len();
        let target = running[rng.random_range(0..running.len())];
        let kind = rng.random_range(0..9u32);
        let mut what = format!("server {target}");
        let fault: &'static str = match kind {
            0 if troubled < minority => {
                cluster.nodes[target - 1].kill();
                state[target] = Process::Down;
                pending.push((now + hold, Undo::Restart(target)));
                "kill"
            }
            1 | 2 if troubled < minority => {
                let Some(pid) = cluster.nodes[target - 1].pid() else { continue };
                // SAFETY: signalling our own child by its pid.
                unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
                state[target] = Process::Paused;
                let pause = Duration::from_millis(rng.random_range(100..5000));
                pending.push((now + pause, Undo::Resume(target, pid)));
                "pause"
            }
            3 => {
                let links = links_of(n, &[target]);
                cut_links(cluster, &links, &mut cut);
                pending.push((now + hold, Undo::Heal(links)));
                "isolate"
            }
            4 => {
                let mut minority_side: Vec<usize> = (1..=n).collect();
                for i in (1..minority_side.len()).rev() {
                    minority_side.swap(i, rng.random_range(0..=i));
                }
                minority_side.truncate(rng.random_range(1..=minority.max(1)));
                let links = links_of(n, &minority_side);
                cut_links(cluster, &links, &mut cut);
                pending.push((now + hold, Undo::Heal(links)));
                minority_side.sort_unstable();
                what = format!("{minority_side:?} from the rest");
                "partition"
            }
            5 => {
                let other = (1..=n).filter(|&j| j != target).nth(rng.random_range(0..n - 1)).expect("another");
                let links = vec![(target, other), (other, target)];
                cut_links(cluster, &links, &mut cut);
                pending.push((now + hold, Undo::Heal(links)));
                what = format!("{target} <-> {other}");
                "cut-link"
            }
            6 if troubled < minority => {
                cluster.nodes[target - 1].set_failpoints("wal-fdatasync=return(eio)");
                state[target] = Process::Down;
                pending.push((now + hold, Undo::Restart(target)));
                "fdatasync-eio"
            }
            7 => {
                let ms = rng.random_range(50..800);
                cluster.nodes[target - 1].set_failpoints(&format!("wal-fdatasync=return(delay:{ms})"));
                pending.push((now + hold, Undo::ClearFailpoints(target)));
                "slow-disk"
            }
            8 => {
                let ms = rng.random_range(5..200);
                cluster.nodes[target - 1].set_failpoints(&format!("peer-send=return(delay:{ms})"));
                pending.push((now + hold, Undo::ClearFailpoints(target)));
                "slow-link"
            }
            _ => continue,
        };
        eprintln!("nemesis t={t:6.2}s {fault} {what}");
        *report.faults.entry(fault).or_default() += 1;
    }
    // Undo everything that is still in force.
    pending.sort_by_key(|(at, _)| *at);
    for (_, undo) in pending {
        undo_fault(cluster, undo, &mut state, &mut cut);
    }
    eprintln!("nemesis t={:6.2}s healed", started.elapsed().as_secs_f64());
}

/// Every directed link between a server in `side` and one outside it.
fn links_of(n: usize, side: &[usize]) -> Vec<(usize, usize)> {
    let mut links = Vec::new();
    for from in 1..=n {
        for to in 1..=n {
            if from != to && side.contains(&from) != side.contains(&to) {
                links.push((from, to));
            }
        }
    }
    links
}

/// Cuts links, counting overlapping cuts so that healing one fault leaves another in force.
fn cut_links(cluster: &Cluster, links: &[(usize, usize)], cut: &mut BTreeMap<(usize, usize), usize>) {
    for &(from, to) in links {
        let count = cut.entry((from, to)).or_default();
        if *count == 0 {
            cluster.link(from, to).cut();
        }
        *count += 1;
    }
}

fn undo_fault(cluster: &mut Cluster, undo: Undo, state: &mut [Process], cut: &mut BTreeMap<(usize, usize), usize>) {
    match undo {
        Undo::Resume(i, pid) => {
            // SAFETY: signalling our own child by its pid (harmless if it has exited).
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            if state[i] == Process::Paused {
                state[i] = Process::Running;
            }
        }
        Undo::Restart(i) => {
            let node = &mut cluster.nodes[i - 1];
            node.set_failpoints("");
            // A server whose fdatasync failed stops by itself — once it has written
            // something (an idle one never finds out); give it a moment, then kill it.
            if node.is_running() && node.wait_exit(Duration::from_secs(2)).is_none() {
                node.kill();
            }
            if let Err(why) = node.try_start_again() {
                panic!("restarting server {i}: {why}");
            }
            state[i] = Process::Running;
        }
        Undo::Heal(links) => {
            for link in links {
                let count = cut.entry(link).or_default();
                *count = count.saturating_sub(1);
                if *count == 0 {
                    cluster.link(link.0, link.1).heal();
                }
            }
        }
        Undo::ClearFailpoints(i) => cluster.nodes[i - 1].set_failpoints(""),
    }
}

#[derive(Clone, Copy)]
enum ClientKind {
    Sequential,
    Ephemeral,
    Keeper,
}

struct ClientCtx {
    id: u64,
    addrs: Vec<SocketAddr>,
    clock: Clock,
    recorded: Arc<Mutex<Recorded>>,
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
    seed: u64,
}

impl ClientCtx {
    /// A connection to some server, or `None` when none answers right now.
    fn connect(&self, rng: &mut StdRng, timeout_ms: i32) -> Option<RawClient> {
        let addr = self.addrs[rng.random_range(0..self.addrs.len())];
        let c = RawClient::connect(addr, timeout_ms, None);
        match c {
            Some(c) => {
                let _ = c.stream.set_read_timeout(Some(Duration::from_secs(4)));
                Some(c)
            }
            None => {
                std::thread::sleep(Duration::from_millis(50));
                None
            }
        }
    }

    fn record(&self, f: impl FnOnce(&mut Recorded)) {
        f(&mut self.recorded.lock().expect("recorded lock"));
    }

    fn done(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn parse_value(data: &[u8]) -> Option<u64> {
    std::str::from_utf8(data).ok()?.parse().ok()
}

/// Writes, compare-and-sets and `sync`-then-reads on random registers. Every value written
/// is unique, which makes setData at a read's version a compare-and-set on the value read.
/// Each client holds two sessions, usually on two servers, and picks one per operation: a
/// write through one and a read through the other right after is what catches a server that
/// answers a `sync` before it has caught up.
fn registers_client(ctx: ClientCtx, registers: u64) {
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    let mut conns: [Option<RawClient>; 2] = [None, None];
    let mut next = 0u64;
    while !ctx.stopped() {
        let conn = &mut conns[rng.random_range(0..2usize)];
        let Some(c) = conn.as_mut() else {
            *conn = ctx.connect(&mut rng, 6000);
            continue;
        };
        let key = rng.random_range(0..registers);
        let path = format!("/reg/r{key}");
        next += 1;
        let value = (ctx.id << 32) | next;
        let ok = match rng.random_range(0..10u32) {
            0..=3 => write(&ctx, c, key, &path, value),
            4..=6 => cas(&ctx, c, key, &path, value),
            _ => sync_read(&ctx, c, key, &path),
        };
        if !ok {
            *conn = None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// setData at any version; false when the connection is gone.
fn write(ctx: &ClientCtx, c: &mut RawClient, key: u64, path: &str, value: u64) -> bool {
    let invoked = ctx.clock.now();
    let reply = c.set_data_at(path, value.to_string().as_bytes(), -1);
    let completed = match &reply {
        Some(r) if r.err == 0 => Some(ctx.clock.now()),
        Some(_) => return true, // refused: it did not happen
        None => None,
    };
    ctx.record(|r| {
        r.count(if completed.is_some() { "write" } else { "write?" });
        r.registers.push(Operation { key, op: RegisterOp::Write(value), invoked, completed });
    });
    if completed.is_some() {
        ctx.done();
    }
    reply.is_some()
}

/// A (possibly stale) read, then setData at the version it returned.
fn cas(ctx: &ClientCtx, c: &mut RawClient, key: u64, path: &str, value: u64) -> bool {
    let Some(Ok((data, version))) = c.get_versioned(path) else { return false };
    let Some(expected) = parse_value(&data) else { return true };
    let invoked = ctx.clock.now();
    let reply = c.set_data_at(path, value.to_string().as_bytes(), version);
    let (ok, completed) = match &reply {
        Some(r) if r.err == 0 => (Some(true), Some(ctx.clock.now())),
        Some(r) if r.err == -103 => (Some(false), Some(ctx.clock.now())),
        Some(_) => return true,
        None => (None, None),
    };
    ctx.record(|r| {
        r.count(if completed.is_some() { "cas" } else { "cas?" });
        let op = RegisterOp::Cas { expected: Some(expected), new: value, ok };
        r.registers.push(Operation { key, op, invoked, completed });
    });
    if completed.is_some() {
        ctx.done();
    }
    reply.is_some()
}

/// sync, then a read on the same connection: linearizable.
fn sync_read(ctx: &ClientCtx, c: &mut RawClient, key: u64, path: &str) -> bool {
    let invoked = ctx.clock.now();
    match c.sync(path) {
        Some(0) => {}
        Some(_) => return true,
        None => return false,
    }
    let Some(Ok((data, _))) = c.get_versioned(path) else { return false };
    let completed = ctx.clock.now();
    let Some(value) = parse_value(&data) else { return true };
    ctx.record(|r| {
        r.count("read");
        r.registers.push(Operation { key, op: RegisterOp::Read(Some(value)), invoked, completed: Some(completed) });
    });
    ctx.done();
    true
}

/// The sequence number ZooKeeper appended to a sequential node's name.
fn sequence_of(name: &str) -> Option<u64> {
    name.get(name.len().checked_sub(10)?..)?.parse().ok()
}

/// The created path in a create reply's body (a jute string).
fn created_path(body: &[u8]) -> Option<String> {
    let len = usize::try_from(i32::from_be_bytes(body.get(..4)?.try_into().ok()?)).ok()?;
    String::from_utf8(body.get(4..4 + len)?.to_vec()).ok()
}

/// Sequential creates under /seq.
fn sequential_client(ctx: ClientCtx) {
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    let mut conn: Option<RawClient> = None;
    while !ctx.stopped() {
        let Some(c) = conn.as_mut() else {
            conn = ctx.connect(&mut rng, 6000);
            continue;
        };
        let invoked = ctx.clock.now();
        match c.create("/seq/s-", b"", 2) {
            Some(r) if r.err == 0 => {
                let completed = ctx.clock.now();
                let name = created_path(&r.body).unwrap_or_default();
                let seq = sequence_of(&name).unwrap_or(u64::MAX);
                ctx.record(|rec| {
                    rec.count("create-seq");
                    rec.sequential.push((invoked, completed, seq, name));
                });
                ctx.done();
            }
            Some(_) => {}
            None => {
                ctx.record(|rec| rec.count("create-seq?"));
                conn = None;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sessions that create an ephemeral, live a little, and close; after the close is
/// acknowledged, another connection (after `sync`) must never see the ephemeral again.
fn ephemeral_client(ctx: ClientCtx) {
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    let mut watcher: Option<RawClient> = None;
    let mut k = 0u64;
    while !ctx.stopped() {
        let Some(mut owner) = ctx.connect(&mut rng, 4000) else { continue };
        k += 1;
        let path = format!("/eph/e-{k:06}");
        match owner.create(&path, b"", 1) {
            Some(r) if r.err == 0 => {}
            _ => continue, // the session is abandoned; it expires
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(10..300)));
        let Some(close) = owner.call(baton_server::zk::proto::op::CLOSE_SESSION, &[]) else {
            ctx.record(|r| r.count("ephemeral?"));
            continue;
        };
        if close.err != 0 {
            continue;
        }
        let closed_at = ctx.clock.now();
        ctx.record(|r| {
            r.count("ephemeral");
            r.closed_ephemerals.push((path.clone(), closed_at));
        });
        ctx.done();
        // Look for it from another session, anywhere.
        if watcher.is_none() {
            watcher = ctx.connect(&mut rng, 6000);
        }
        if let Some(w) = watcher.as_mut() {
            let seen = match w.sync("/eph") {
                Some(0) => w.exists(&path).map(|r| r.err == 0),
                _ => None,
            };
            match seen {
                Some(true) => ctx.record(|r| r.ghosts.push(path.clone())),
                Some(false) => {}
                None => watcher = None,
            }
        }
    }
}

/// How long a server may answer pings while cut off from its leader before it gives up
/// (sync limit) plus how long its report of them may take to reach the leader.
const UNHEARD_MS: u64 = 2500;

/// Sessions kept alive by a ping every 300 ms through whichever server answers, resumed on
/// another server whenever theirs stops answering. A session declared expired although its
/// answered pings were never as far apart as its timeout (minus [`UNHEARD_MS`]) was expired
/// early: its client kept heartbeating to servers that had a leader.
fn keeper_client(ctx: ClientCtx) {
    const TIMEOUT_MS: i32 = 8000;
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    'sessions: while !ctx.stopped() {
        let Some(mut c) = ctx.connect(&mut rng, TIMEOUT_MS) else { continue };
        let session = (c.session_id, c.passwd.clone());
        // The longest silence between answered pings (a resume does not count: a follower
        // that has not applied the expiry yet may still take it).
        let mut last_ok = Instant::now();
        let mut longest = Duration::ZERO;
        while !ctx.stopped() {
            if c.call(baton_server::zk::proto::op::PING, &[]).is_some_and(|r| r.err == 0) {
                longest = longest.max(last_ok.elapsed());
                last_ok = Instant::now();
                std::thread::sleep(Duration::from_millis(300));
                continue;
            }
            // Its server went: resume the session on another.
            loop {
                if ctx.stopped() {
                    return;
                }
                let addr = ctx.addrs[rng.random_range(0..ctx.addrs.len())];
                match RawClient::resume(addr, TIMEOUT_MS, session.clone()) {
                    Ok(resumed) => {
                        let _ = resumed.stream.set_read_timeout(Some(Duration::from_secs(4)));
                        c = resumed;
                        ctx.record(|r| r.count("session-resumed"));
                        break;
                    }
                    Err(true) => {
                        let silent = longest.max(last_ok.elapsed());
                        ctx.record(|r| {
                            r.count("session-expired");
                            if silent < Duration::from_millis(TIMEOUT_MS as u64 - UNHEARD_MS) {
                                r.early_expiries.push(format!(
                                    "session {:#x} expired though its pings were never {} ms apart (timeout {TIMEOUT_MS} ms)",
                                    session.0,
                                    silent.as_millis()
                                ));
                            }
                        });
                        continue 'sessions;
                    }
                    Err(false) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
    }
}

/// Runs `f` on a runtime of its own within `limit`; `None` when it did not finish.
fn block_on<T>(rt: &tokio::runtime::Runtime, limit: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    rt.block_on(async { tokio::time::timeout(limit, f).await.ok() })
}

/// The etcd key of register `key`.
fn etcd_key(key: u64) -> String {
    format!("reg/r{key}")
}

/// Puts, compare-and-set transactions (a put if the key still holds the value last read, or
/// is still absent) and linearizable reads on random registers, each through a random
/// server; any error or timeout drops the connection and leaves the outcome unknown.
fn etcd_client(ctx: ClientCtx, endpoints: Vec<String>, registers: u64) {
    use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        panic!("a tokio runtime for an etcd client");
    };
    let mut rng = StdRng::seed_from_u64(ctx.seed);
    let mut conn: Option<Client> = None;
    let mut known: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    let mut next = 0u64;
    let limit = Duration::from_secs(4);
    while !ctx.stopped() {
        let Some(c) = conn.as_mut() else {
            let endpoint = endpoints[rng.random_range(0..endpoints.len())].clone();
            conn = block_on(&rt, Duration::from_secs(2), Client::connect([endpoint], None)).and_then(Result::ok);
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        };
        let key = rng.random_range(0..registers);
        next += 1;
        let value = (ctx.id << 32) | next;
        let roll = rng.random_range(0..10u32);
        let invoked = ctx.clock.now();
        let (op, outcome) = if roll < 4 {
            let done = block_on(&rt, limit, c.put(etcd_key(key), value.to_string(), None));
            (RegisterOp::Write(value), done.and_then(Result::ok).map(|_| true))
        } else if roll < 7 {
            let expected = known.get(&key).copied().flatten();
            let compare = match expected {
                Some(v) => Compare::value(etcd_key(key), CompareOp::Equal, v.to_string()),
                None => Compare::create_revision(etcd_key(key), CompareOp::Equal, 0),
            };
            let txn = Txn::new().when([compare]).and_then([TxnOp::put(etcd_key(key), value.to_string(), None)]);
            let done = block_on(&rt, limit, c.txn(txn));
            let ok = done.and_then(Result::ok).map(|r| r.succeeded());
            (RegisterOp::Cas { expected, new: value, ok }, ok)
        } else {
            match block_on(&rt, limit, c.get(etcd_key(key), None)) {
                Some(Ok(r)) => {
                    let completed = ctx.clock.now();
                    let read = match r.kvs().first() {
                        Some(kv) => match std::str::from_utf8(kv.value()).ok().and_then(|v| v.parse().ok()) {
                            Some(v) => Some(v),
                            None => panic!("etcd register {key} holds {:?}", kv.value()),
                        },
                        None => None,
                    };
                    known.insert(key, read);
                    ctx.record(|r| {
                        r.count("etcd-read");
                        let op = RegisterOp::Read(read);
                        r.etcd_registers.push(Operation { key, op, invoked, completed: Some(completed) });
                    });
                    ctx.done();
                }
                _ => {
                    conn = None;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            continue;
        };
        let completed = outcome.map(|_| ctx.clock.now());
        ctx.record(|r| {
            let kind = if matches!(op, RegisterOp::Write(_)) { "etcd-write" } else { "etcd-cas" };
            r.count(&format!("{kind}{}", if completed.is_some() { "" } else { "?" }));
            if completed.is_none() {
                r.etcd_unknown.insert(value, r.etcd_registers.len());
            }
            r.etcd_registers.push(Operation { key, op, invoked, completed });
        });
        if completed.is_some() {
            ctx.done();
            std::thread::sleep(Duration::from_millis(2));
        } else {
            // Most failures are quick ("no leader"): do not flood the history with them.
            conn = None;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// After the clients stopped: the etcd keys' whole history, watched from revision 1, tells
/// which writes of unknown outcome took effect (each value is unique; no client compacts).
/// Those that did are given the end of the run as their completion (they took effect before
/// it); those that did not are dropped (a write or a compare-and-set that changed nothing).
/// Every server must then hold the same keyspace (HashKV at one revision).
fn etcd_settle(cluster: &Cluster, clock: Clock, recorded: &mut Recorded, report: &mut Report) {
    use etcd_client::{Client, WatchOptions};
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        panic!("a tokio runtime");
    };
    let endpoints: Vec<String> = (1..=cluster.nodes.len()).filter_map(|i| cluster.etcd_endpoint(i)).collect();
    let history = block_on(&rt, Duration::from_secs(60), async {
        let mut c = Client::connect(endpoints.clone(), None).await.ok()?;
        let now = c.get("reg/", Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await.ok()?;
        let current = now.header()?.revision();
        let options = WatchOptions::new().with_prefix().with_start_revision(1);
        let (_watcher, mut stream) = c.watch("reg/", Some(options)).await.ok()?;
        let mut values = BTreeSet::new();
        let mut seen = 0;
        while seen < current {
            let message = stream.message().await.ok()??;
            for event in message.events() {
                if let Some(kv) = event.kv() {
                    seen = seen.max(kv.mod_revision());
                    if let Some(v) = std::str::from_utf8(kv.value()).ok().and_then(|v| v.parse::<u64>().ok()) {
                        values.insert(v);
                    }
                }
            }
            if message.events().is_empty() && message.header().is_some_and(|h| h.revision() >= current) {
                break;
            }
        }
        // Every server's keyspace at that revision.
        let mut hashes = Vec::new();
        for e in &endpoints {
            let m = Client::connect([e.clone()], None).await.ok()?;
            hashes.push(m.maintenance_client().hash_kv(current).await.ok()?.hash());
        }
        Some((values, hashes))
    });
    let Some((applied, hashes)) = history.flatten() else {
        report.anomalies.push("etcd: the healed ensemble did not give the keys' history".into());
        return;
    };
    if hashes.windows(2).any(|w| w[0] != w[1]) {
        report.anomalies.push(format!("etcd: the servers' keyspaces differ: HashKV {hashes:?}"));
    }
    let end = clock.now();
    let unknown = std::mem::take(&mut recorded.etcd_unknown);
    let mut dropped = BTreeSet::new();
    for (value, index) in unknown {
        let op = &mut recorded.etcd_registers[index];
        if applied.contains(&value) {
            op.completed = Some(end);
            if let RegisterOp::Cas { ok, .. } = &mut op.op {
                *ok = Some(true);
            }
        } else {
            dropped.insert(index);
        }
    }
    let mut index = 0;
    recorded.etcd_registers.retain(|_| {
        index += 1;
        !dropped.contains(&(index - 1))
    });
    for op in &recorded.etcd_registers {
        if let RegisterOp::Write(v) | RegisterOp::Cas { new: v, ok: Some(true), .. } = op.op {
            if !applied.contains(&v) {
                report
                    .anomalies
                    .push(format!("etcd: acknowledged write of {v} to register {} is not in its history", op.key));
            }
        }
    }
}

/// After the clients stopped: each register's value, read after `sync`, joins the history.
fn final_reads(cluster: &Cluster, registers: u64, clock: Clock, recorded: &mut Recorded) {
    let addr = cluster.nodes[0].addr;
    let Some(mut c) = RawClient::connect(addr, 10_000, None) else { return };
    for key in 0..registers {
        let path = format!("/reg/r{key}");
        let invoked = clock.now();
        if c.sync(&path) != Some(0) {
            continue;
        }
        if let Some(Ok((data, _))) = c.get_versioned(&path) {
            if let Some(value) = parse_value(&data) {
                let completed = Some(clock.now());
                recorded.registers.push(Operation { key, op: RegisterOp::Read(Some(value)), invoked, completed });
            }
        }
    }
}

fn check(cluster: &Cluster, recorded: &Recorded, report: &mut Report) {
    let anomalies = &mut report.anomalies;
    // Registers: the creation of each as a write of 0 before anything else.
    let mut history: Vec<Operation> = (0..recorded.registers.iter().map(|o| o.key + 1).max().unwrap_or(0))
        .map(|key| Operation { key, op: RegisterOp::Write(0), invoked: 0, completed: Some(0) })
        .collect();
    history.extend(recorded.registers.iter().cloned());
    if let Err(v) = linearizability::check(&history) {
        anomalies.push(format!("registers: {v}"));
    }
    if let Err(v) = linearizability::check(&recorded.etcd_registers) {
        anomalies.push(format!("etcd registers: {v}"));
    }
    // Sequential creates: unique, and in real-time order.
    let seqs: BTreeSet<u64> = recorded.sequential.iter().map(|s| s.2).collect();
    if seqs.len() != recorded.sequential.len() {
        anomalies.push("two acknowledged sequential creates got one sequence number".into());
    }
    let mut by_completion: Vec<&(u64, u64, u64, String)> = recorded.sequential.iter().collect();
    by_completion.sort_by_key(|s| s.1);
    let mut highest_done: Option<(u64, u64)> = None; // (completed, seq) with the highest seq so far
    let mut by_invocation: Vec<&(u64, u64, u64, String)> = recorded.sequential.iter().collect();
    by_invocation.sort_by_key(|s| s.0);
    let mut i = 0;
    for s in &by_invocation {
        while i < by_completion.len() && by_completion[i].1 < s.0 {
            let seq = by_completion[i].2;
            if highest_done.is_none_or(|(_, h)| seq > h) {
                highest_done = Some((by_completion[i].1, seq));
            }
            i += 1;
        }
        if let Some((_, h)) = highest_done {
            if s.2 <= h {
                anomalies.push(format!("sequential create {} got {} after one that finished first got {h}", s.3, s.2));
                break;
            }
        }
    }
    // Ephemerals of closed sessions: never seen after the close.
    for ghost in &recorded.ghosts {
        anomalies.push(format!("{ghost} was seen after its session's close was acknowledged"));
    }
    // Sessions kept alive: never expired early.
    anomalies.extend(recorded.early_expiries.iter().cloned());
    // Every server: the same tree summary, every acknowledged sequential create present,
    // no ephemeral of a closed session.
    let n = cluster.nodes.len();
    let summary = |i: usize| (cluster.srvr(i, "Zxid"), cluster.srvr(i, "Node count"));
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let all: Vec<_> = (1..=n).map(summary).collect();
        if all[0].0.is_some() && all.iter().all(|s| *s == all[0]) {
            break;
        }
        if Instant::now() > end {
            anomalies.push(format!("servers did not converge: {all:?}"));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut children: Vec<BTreeSet<String>> = Vec::new();
    for i in 1..=n {
        let Some(mut c) = RawClient::connect(cluster.nodes[i - 1].addr, 10_000, None) else {
            anomalies.push(format!("server {i} does not take a session after healing"));
            return;
        };
        let _ = c.sync("/seq");
        let seq: BTreeSet<String> = c.children("/seq").unwrap_or_default().into_iter().collect();
        for (_, _, _, name) in &recorded.sequential {
            let short = name.trim_start_matches("/seq/");
            if !seq.contains(short) {
                anomalies.push(format!("server {i} lost the acknowledged sequential create {name}"));
                break;
            }
        }
        let eph: BTreeSet<String> = c.children("/eph").unwrap_or_default().into_iter().collect();
        for (path, _) in &recorded.closed_ephemerals {
            if eph.contains(path.trim_start_matches("/eph/")) {
                anomalies.push(format!("server {i} still holds {path} after its session closed"));
                break;
            }
        }
        children.push(seq);
    }
    if children.iter().any(|c| *c != children[0]) {
        anomalies.push("servers hold different sequential nodes".into());
    }
}
