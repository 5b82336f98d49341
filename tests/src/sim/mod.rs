//! A deterministic simulator for Zab replication: several servers, each running the same
//! replica driver as `baton` (`baton_engine::replica::Replica`, with its Zab core), driven
//! by one seeded random generator through a simulated network (delay, connection resets,
//! duplicates, partitions into groups and cuts of any set of links; FIFO per link),
//! simulated disks behind the driver's store traits (slow fsync, crashes that keep any
//! prefix of what was not yet fsync'ed, background snapshots that a crash can lose) and a
//! virtual clock. The driver's own decisions run here too: recovery from the disk at every
//! restart, snapshots every N applied entries followed by log compaction, and dropping
//! client batches prepared for an earlier leadership (clients' batches reach a leader's
//! replica a moment after its sequencer prepared them).
//!
//! A run has a **fault phase** (crashes, restarts, partitions, resets, duplicates, client
//! writes throughout) and then a **liveness phase** (everything healed and restarted) that
//! must end with one established leader, every server following it and serving, and every
//! server's state equal. After every event the checker verifies, for the guarantees of
//! `../shared/DESIGN.md` ("Replication (Zab)"):
//!
//! - every server applies the same entries in the same zxid order: each server's applied
//!   sequence is a prefix of one global committed history (so no committed entry is ever lost
//!   or reordered: a server that diverged, or a truncation below an applied entry, fails);
//! - at most one leader is established per epoch;
//! - every write acknowledged to a client (applied by the leader that proposed it) is in the
//!   final history at its zxid;
//! - writes are linearizable: a write invoked after another was acknowledged is ordered after
//!   it (its zxid is greater);
//! - a read after `sync` is linearizable: it sees every write acknowledged before the sync
//!   was invoked, on whichever server it runs;
//! - and the whole client history — writes to a few registers and reads after `sync`, with
//!   writes whose fate a client never learned left open — passes the linearizability checker
//!   (`crate::linearizability`);
//! - every entry is logged at the zxid its proposer prepared it for;
//! - a truncation never cuts an applied entry that no snapshot covers;
//! - each replica's invariants and its core's (`Replica::check_invariants`).
//!
//! The same seed replays the same run exactly: nothing here reads a clock or iterates a
//! hash map.

pub mod disk;
mod net;
mod node;
pub mod zk;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use baton_engine::replica::{Input, ReplicaConfig};
use baton_engine::zab::{LogEntry, Payload, Role, ServerId, ZabConfig};
use baton_engine::{SessionId, Zxid};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::linearizability::{self, Operation, RegisterOp};
use disk::{finish_job, AppliedBatch, Observed, SyncedRead};
pub use net::NetFaults;
use net::{InFlight, Network, Sent};
use node::Node;

/// Registers the simulated clients write and read.
const KEYS: u64 = 3;

/// A write's payload names its register, its value and the zxid its proposer prepared it
/// for (as a real entry carries its zxid inside).
fn write_payload(key: u64, value: u64, prepared_for: Zxid) -> Payload {
    Payload::from(format!("k{key}=w{value}@{:x}", prepared_for.0).into_bytes())
}

/// The register, value and prepared-for zxid of a write's payload.
fn parse_write(payload: &[u8]) -> Option<(u64, u64, Zxid)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (key, rest) = text.strip_prefix('k')?.split_once("=w")?;
    let (value, zxid) = rest.split_once('@')?;
    Some((key.parse().ok()?, value.parse().ok()?, Zxid(u64::from_str_radix(zxid, 16).ok()?)))
}

/// Runs a replica step to its end: the simulator's stores never wait, so one poll must do.
/// Steps a replica with `input`, turning a store failure or a panic (a broken invariant)
/// into the run's error for server `id`.
fn step_replica<L, E, S, P, M>(
    replica: &mut baton_engine::replica::Replica<L, E, S, P, M>,
    input: Input,
    id: ServerId,
) -> Result<(), String>
where
    L: baton_engine::replica::Log,
    E: baton_engine::replica::Epochs,
    S: baton_engine::replica::Snapshots,
    P: baton_engine::replica::Peers,
    M: baton_engine::replica::StateMachine,
{
    let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_now(replica.step(input))));
    match stepped {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("server {id}: a store failed: {e}")),
        Err(_) => Err(format!("server {id}: the replica panicked (an invariant?)")),
    }
}

/// A random split of servers `1..=n` into two groups, `None` if one came out empty.
fn random_split(rng: &mut StdRng, n: usize) -> Option<(Vec<ServerId>, Vec<ServerId>)> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for id in 1..=n as u64 {
        if rng.random_bool(0.5) {
            a.push(id)
        } else {
            b.push(id)
        }
    }
    (!a.is_empty() && !b.is_empty()).then_some((a, b))
}

fn run_now<T>(future: impl Future<Output = T>) -> T {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a simulated store waited"),
    }
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The seed: the whole run is a function of it.
    pub seed: u64,
    /// Voting servers.
    pub servers: usize,
    /// Observers (non-voting members), numbered after the voters.
    pub observers: usize,
    /// Virtual ms of faults.
    pub fault_ms: u64,
    /// Virtual ms of the healed liveness phase (clients write during its first half).
    pub heal_ms: u64,
    /// Virtual ms per tick.
    pub tick_ms: u64,
    /// A client write every this many ms.
    pub write_every_ms: u64,
    /// Network faults during the fault phase.
    pub net: NetFaults,
    /// Crashes and partitions during the fault phase.
    pub crashes: bool,
    /// Each server snapshots its state after this many applied entries (then compacts its
    /// log once the snapshot is written).
    pub snapshot_every_entries: u64,
    /// Snapshots each server keeps.
    pub snapshots_to_keep: usize,
    /// Keep a trace of events (printed when a run fails).
    pub trace: bool,
}

impl SimOptions {
    /// The default run for a seed: 3 or 5 servers, 12 s of faults, 12 s to heal.
    pub fn for_seed(seed: u64) -> SimOptions {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_5eed);
        SimOptions {
            seed,
            servers: if seed % 4 == 3 { 5 } else { 3 },
            observers: if seed % 4 == 1 { 2 } else { 0 },
            fault_ms: 12_000,
            heal_ms: 12_000,
            tick_ms: 100,
            write_every_ms: 25,
            net: NetFaults { reset: 0.01, duplicate: 0.01, delay_ms: (1, 30) },
            crashes: true,
            snapshot_every_entries: rng.random_range(8..120),
            snapshots_to_keep: rng.random_range(1..=3),
            trace: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Entries in the final committed history.
    pub committed: usize,
    /// Client writes acknowledged.
    pub acknowledged: usize,
    /// Distinct established leaderships (epochs).
    pub epochs: usize,
    /// Crashes injected.
    pub crashes: u64,
    /// Of those, servers whose log and snapshots were discarded (`--resync`).
    pub discards: u64,
    /// Disks that filled up for a while (their server withdrew from the ensemble).
    pub disks_full: u64,
    /// SNAPs installed.
    pub snapshots_installed: u64,
    /// SNAPs a leader (or relaying observer) began sending; those not installed were cut
    /// off by a broken link or a crash in the middle, and the learner synchronised again.
    pub snapshots_sent: u64,
    /// Local snapshots written (each followed by log compaction).
    pub snapshots_written: u64,
    /// Client batches a leader's replica dropped because they were prepared for another of
    /// its leaderships.
    pub stale_proposals: u64,
    /// Reads after `sync` checked.
    pub synced_reads: u64,
    /// Session liveness reports that reached a leader.
    pub touches: u64,
    /// Messages sent and lost.
    pub messages: (u64, u64),
    /// A digest of every event, to check that a seed replays exactly.
    pub fingerprint: u64,
}

/// A batch of client writes on its way from a leader's sequencer to its replica.
#[derive(Debug, Clone)]
struct Batch {
    node: usize,
    life: u64,
    /// The zxid the first write was prepared for.
    first: Zxid,
    /// (register, value) of each write.
    writes: Vec<(u64, u64)>,
}

#[derive(Debug, Clone)]
enum Event {
    Tick(usize, u64),
    Deliver(InFlight),
    /// Server `node` learns that its connection to `peer` broke.
    Disconnected {
        node: usize,
        peer: ServerId,
        life: u64,
    },
    Durable {
        node: usize,
        life: u64,
        generation: u64,
        upto: usize,
    },
    /// A background snapshot is on disk.
    SnapshotWritten {
        node: usize,
        life: u64,
    },
    Propose(Batch),
    Restart(usize),
    /// Server `i`'s disk has room again.
    DiskFreed(usize),
    Fault,
    Heal,
    Write,
    SyncRead,
}

/// A client write proposed and not yet known.
#[derive(Debug, Clone)]
struct Pending {
    node: usize,
    life: u64,
    zxid: Zxid,
    payload: Payload,
    /// The greatest zxid acknowledged when it was invoked.
    acknowledged_before: Zxid,
    /// Its operation in `operations`.
    op: usize,
}

/// A run handles a few hundred thousand events at most; far more means events that keep
/// scheduling each other without time passing.
const RUNAWAY_EVENTS: u64 = 2_000_000;

struct Sim {
    opts: SimOptions,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    nodes: Vec<Node>,
    configs: Vec<ReplicaConfig>,
    net: Network,
    faults: NetFaults,
    /// The one committed history every server's applied sequence must be a prefix of.
    history: Vec<LogEntry>,
    leaders: BTreeMap<u32, ServerId>,
    pending: Vec<Pending>,
    /// The clients' history, for the linearizability checker.
    operations: Vec<Operation>,
    /// Reads after sync in flight: (node, life, sync id) → (register, operation index).
    reads: BTreeMap<(usize, u64, u64), (u64, usize)>,
    acknowledged: Vec<(Zxid, Payload)>,
    /// The greatest zxid acknowledged so far.
    acknowledged_max: Zxid,
    /// Syncs in flight: (node, life, id) → the greatest zxid acknowledged when invoked.
    syncs: BTreeMap<(usize, u64, u64), Zxid>,
    next_sync: u64,
    synced_reads: u64,
    /// Sessions renewed by a leader from liveness reports.
    touches: u64,
    writes: u64,
    fsync_at: Vec<u64>,
    crashes: u64,
    discards: u64,
    disks_full: u64,
    snapshots_installed: u64,
    snapshots_sent: u64,
    snapshots_written: u64,
    stale_proposals: u64,
    fingerprint: u64,
    trace: Vec<String>,
}

/// Runs one simulation. `Err` describes the first violated guarantee (with the trace's tail
/// when `opts.trace`).
pub fn run(opts: SimOptions) -> Result<Report, String> {
    let mut sim = Sim::new(opts);
    match sim.run() {
        Ok(()) => Ok(sim.report()),
        Err(why) => {
            let tail: Vec<&String> = sim.trace.iter().rev().take(400).collect();
            let trace: Vec<&str> = tail.into_iter().rev().map(String::as_str).collect();
            Err(format!("seed {} at {} ms: {why}\n{}", sim.opts.seed, sim.now, trace.join("\n")))
        }
    }
}

impl Sim {
    fn new(opts: SimOptions) -> Sim {
        let voters: Vec<ServerId> = (1..=opts.servers as u64).collect();
        let observers: Vec<ServerId> = (opts.servers as u64 + 1..=(opts.servers + opts.observers) as u64).collect();
        // With two or more observers, the last one follows the first (a tree of observers).
        let relayed = (observers.len() >= 2).then(|| (observers[observers.len() - 1], observers[0]));
        let configs: Vec<ReplicaConfig> = voters
            .iter()
            .chain(&observers)
            .map(|&id| {
                let zab = ZabConfig {
                    observers: observers.clone(),
                    upstream: relayed.filter(|(down, _)| *down == id).map(|(_, up)| up),
                    ..ZabConfig::new(id, voters.clone())
                };
                ReplicaConfig {
                    snapshot_every_entries: opts.snapshot_every_entries,
                    // As the server: each draws its snapshot points apart (odd seeds: spread;
                    // even: exactly every N, the other path).
                    snapshot_spread_seed: (opts.seed % 2 == 1).then_some(opts.seed ^ id),
                    // Large enough to matter only for runs with big payloads.
                    snapshot_every_bytes: 64 << 10,
                    ..ReplicaConfig::new(zab)
                }
            })
            .collect();
        let nodes = configs.iter().map(|c| Node::new(c.zab.id)).collect();
        let rng = StdRng::seed_from_u64(opts.seed);
        let faults = opts.net;
        let n = opts.servers + opts.observers;
        Sim {
            opts,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes,
            configs,
            net: Network::default(),
            faults,
            history: Vec::new(),
            leaders: BTreeMap::new(),
            pending: Vec::new(),
            acknowledged: Vec::new(),
            operations: Vec::new(),
            reads: BTreeMap::new(),
            acknowledged_max: Zxid::ZERO,
            syncs: BTreeMap::new(),
            next_sync: 0,
            synced_reads: 0,
            touches: 0,
            writes: 0,
            fsync_at: vec![0; n],
            crashes: 0,
            discards: 0,
            disks_full: 0,
            snapshots_installed: 0,
            snapshots_sent: 0,
            snapshots_written: 0,
            stale_proposals: 0,
            fingerprint: 0xcbf2_9ce4_8422_2325,
            trace: Vec::new(),
        }
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.opts.trace {
            let line = format!("{:>6} {}", self.now, what());
            self.trace.push(line);
        }
    }

    fn mix(&mut self, value: u64) {
        self.fingerprint = (self.fingerprint ^ value).wrapping_mul(0x0100_0000_01b3);
    }

    fn run(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.restart(i)?;
        }
        if self.opts.crashes {
            self.schedule(500, Event::Fault);
        }
        self.schedule(100, Event::Write);
        self.schedule(150, Event::SyncRead);
        let fault_end = self.opts.fault_ms;
        let end = fault_end + self.opts.heal_ms;
        let mut healed = false;
        let mut handled = 0u64;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            handled += 1;
            if handled > RUNAWAY_EVENTS {
                return Err(format!(
                    "a runaway: more than {RUNAWAY_EVENTS} events by {at} ms (a step that schedules itself?)"
                ));
            }
            if at > end {
                break;
            }
            if !healed && at >= fault_end {
                healed = true;
                self.heal_everything()?;
            }
            self.now = at;
            let Some(event) = self.events.remove(&seq) else { continue };
            self.mix(at);
            self.event(event)?;
        }
        self.check_end()
    }

    fn heal_everything(&mut self) -> Result<(), String> {
        self.now = self.opts.fault_ms;
        self.note(|| "== healing: no more faults".into());
        self.faults = NetFaults::CALM;
        self.net.heal();
        for i in 0..self.nodes.len() {
            self.free_disk(i);
            if self.nodes[i].replica.is_none() {
                self.restart(i)?;
            }
        }
        Ok(())
    }

    /// Server `i`'s disk has room again: what waited is fsync'ed.
    fn free_disk(&mut self, i: usize) {
        if self.nodes[i].disk.borrow_mut().full_since.take().is_some() {
            let id = self.nodes[i].id;
            self.note(|| format!("server {id}: disk has room again"));
            if self.nodes[i].replica.is_some() {
                self.refsync(i);
            }
        }
    }

    /// Delivers `input` to server `i`'s replica (if it runs), then checks and acts on what
    /// the step did.
    fn step(&mut self, i: usize, input: Input) -> Result<(), String> {
        let Some(replica) = self.nodes[i].replica.as_mut() else { return Ok(()) };
        step_replica(replica, input, i as ServerId + 1)?;
        self.settle(i)
    }

    fn event(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick(i, life) => {
                if self.nodes[i].life != life || self.nodes[i].replica.is_none() {
                    return Ok(());
                }
                self.step(i, Input::Tick)?;
                // A server that has ticked since its disk filled is out of the ensemble.
                let full_since = self.nodes[i].disk.borrow().full_since;
                let role = self.nodes[i].replica.as_ref().map(|r| r.zab().role());
                if let (Some(since), Some(role)) = (full_since, role) {
                    if role != Role::Looking {
                        return Err(format!("server {}: its disk is full since {since} but it is {role:?}", i + 1));
                    }
                }
                let next = self.now + self.opts.tick_ms;
                self.schedule(next, Event::Tick(i, life));
            }
            Event::Deliver(flight) => {
                if !self.net.alive(&flight) {
                    self.net.lost += 1;
                    return Ok(());
                }
                let i = (flight.to - 1) as usize;
                let (from, msg) = (flight.from, flight.msg);
                self.mix(from * 31 + flight.to);
                self.note(|| format!("{from} -> {}: {}", i + 1, brief(&msg)));
                self.step(i, Input::Message(from, msg))?;
            }
            Event::Disconnected { node, peer, life } => {
                if self.nodes[node].life != life || self.nodes[node].replica.is_none() {
                    return Ok(());
                }
                self.note(|| format!("server {}: lost its connection to {peer}", node + 1));
                self.step(node, Input::Disconnected(peer))?;
            }
            Event::Durable { node, life, generation, upto } => {
                let zxid = {
                    let n = &self.nodes[node];
                    let mut disk = n.disk.borrow_mut();
                    if n.life != life || disk.generation != generation || n.replica.is_none() {
                        return Ok(());
                    }
                    if disk.full_since.is_some() {
                        // Waits for room (freeing the disk fsyncs the whole log again).
                        return Ok(());
                    }
                    disk.durable = disk.durable.max(upto.min(disk.log.len()));
                    disk.durable_zxid()
                };
                self.step(node, Input::Durable(zxid))?;
            }
            Event::SnapshotWritten { node, life } => {
                let n = &self.nodes[node];
                if n.life != life || n.replica.is_none() {
                    return Ok(());
                }
                if let Some(job) = n.job.borrow_mut().as_mut() {
                    finish_job(&mut n.disk.borrow_mut(), job, self.opts.snapshots_to_keep);
                    self.snapshots_written += 1;
                }
            }
            Event::Propose(batch) => self.propose(batch)?,
            Event::Restart(i) => {
                if self.nodes[i].replica.is_none() {
                    self.restart(i)?;
                }
            }
            Event::DiskFreed(i) => self.free_disk(i),
            Event::Fault => self.fault(),
            Event::Heal => {
                self.note(|| "heal partitions".into());
                self.net.heal();
            }
            Event::Write => self.write()?,
            Event::SyncRead => self.sync_read()?,
        }
        Ok(())
    }

    fn fault(&mut self) {
        if self.now >= self.opts.fault_ms {
            return;
        }
        let n = self.nodes.len();
        match self.rng.random_range(0..10) {
            0..=2 => {
                let i = self.rng.random_range(0..n);
                if self.nodes[i].replica.is_some() {
                    self.crash(i);
                    let voters = self.configs.iter().filter(|c| c.zab.is_voter(c.zab.id)).count();
                    let resyncing = self.nodes.iter().any(|node| node.disk.borrow().resync_pending);
                    if voters >= 3 && !resyncing && self.rng.random_bool(0.15) {
                        self.discard(i);
                    }
                    let back = self.now + self.rng.random_range(100..3000);
                    self.schedule(back, Event::Restart(i));
                }
            }
            6 if !self.net.partitioned() => {
                // Any shape: a random set of links, not necessarily a split into groups.
                let mut pairs = Vec::new();
                for x in 1..=n as u64 {
                    for y in x + 1..=n as u64 {
                        if self.rng.random_bool(0.4) {
                            pairs.push((x, y));
                        }
                    }
                }
                if !pairs.is_empty() {
                    self.note(|| format!("cut links {pairs:?}"));
                    self.net.cut_links(self.now, &pairs);
                    for &(x, y) in &pairs {
                        self.tell_reset(x, y);
                    }
                    let heal = self.now + self.rng.random_range(300..4000);
                    self.schedule(heal, Event::Heal);
                }
            }
            3..=5 if !self.net.partitioned() => {
                if let Some((a, b)) = random_split(&mut self.rng, n) {
                    self.note(|| format!("partition {a:?} | {b:?}"));
                    for (x, y) in self.net.partition(self.now, &a, &b) {
                        self.tell_reset(x, y);
                    }
                    let heal = self.now + self.rng.random_range(300..4000);
                    self.schedule(heal, Event::Heal);
                }
            }
            7 => {
                // One full disk at a time, on a server of an ensemble of three voters or
                // more (a lone voter stays in and serves reads).
                let i = self.rng.random_range(0..n);
                let voters = self.configs.iter().filter(|c| c.zab.is_voter(c.zab.id)).count();
                let any_full = self.nodes.iter().any(|node| node.disk.borrow().full_since.is_some());
                if voters >= 3 && !any_full {
                    self.nodes[i].disk.borrow_mut().full_since = Some(self.now);
                    self.disks_full += 1;
                    let id = self.nodes[i].id;
                    self.note(|| format!("server {id}: disk full"));
                    let freed = self.now + self.rng.random_range(200..4000);
                    self.schedule(freed, Event::DiskFreed(i));
                }
            }
            _ => {}
        }
        let next = self.now + self.rng.random_range(200..1500);
        self.schedule(next, Event::Fault);
    }

    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.replica.is_none() {
            return;
        }
        node.replica = None;
        node.life += 1;
        let (durable, len, keep) = node.disk.borrow_mut().crash(&mut self.rng);
        let id = node.id;
        for peer in 1..=self.nodes.len() as u64 {
            if peer != id {
                self.net.reset(self.now, id, peer);
                self.tell_reset(id, peer);
            }
        }
        self.pending.retain(|p| p.node != i);
        self.crashes += 1;
        self.note(|| format!("crash {id}: kept {keep} of {len} logged ({durable} fsync'ed)"));
    }

    /// Both ends of a reset connection learn of it (a dead end does not).
    fn tell_reset(&mut self, a: ServerId, b: ServerId) {
        for (node, peer) in [(a, b), (b, a)] {
            let i = (node - 1) as usize;
            let life = self.nodes[i].life;
            self.schedule(self.now + 1, Event::Disconnected { node: i, peer, life });
        }
    }

    /// A crashed server's log and snapshots are discarded, as `--resync` does for a damaged
    /// log (its epochs are kept); it restarts voting for no one until a leader has
    /// synchronised it. Only one server at a time, and never one that would be needed for a
    /// quorum with no other way to form one (three voters or more).
    fn discard(&mut self, i: usize) {
        let id = self.nodes[i].id;
        {
            let mut disk = self.nodes[i].disk.borrow_mut();
            disk.log.clear();
            disk.snapshots.clear();
            disk.durable = 0;
            disk.generation += 1;
            disk.resync_pending = true;
            // The accepted epoch is a promise and stays; the current epoch describes the
            // history, which is gone.
            disk.accepted_epoch = disk.accepted_epoch.max(disk.current_epoch);
            disk.current_epoch = 0;
        }
        self.discards += 1;
        self.note(|| format!("discard {id}'s log and snapshots (--resync)"));
    }

    /// Starts server `i` from its disk (its first start, or after a crash).
    fn restart(&mut self, i: usize) -> Result<(), String> {
        let mut config = self.configs[i].clone();
        config.zab.resynchronising = self.nodes[i].disk.borrow().resync_pending;
        let id = self.nodes[i].id;
        self.nodes[i].start(config).map_err(|e| format!("server {id}: recovery failed: {e}"))?;
        self.note(|| format!("restart {id}"));
        let life = self.nodes[i].life;
        let at = self.now + self.rng.random_range(1..self.opts.tick_ms);
        self.schedule(at, Event::Tick(i, life));
        if let Some(replica) = self.nodes[i].replica.as_mut() {
            run_now(replica.start()).map_err(|e| format!("server {id}: a store failed: {e}"))?;
        }
        self.settle(i)
    }

    /// Schedules an fsync of the whole log (after an append, a cut or a rewrite).
    fn refsync(&mut self, i: usize) {
        let node = &self.nodes[i];
        let (life, generation, upto) = {
            let disk = node.disk.borrow();
            (node.life, disk.generation, disk.log.len())
        };
        let at = self.fsync_time(i);
        self.schedule(at, Event::Durable { node: i, life, generation, upto });
    }

    fn fsync_time(&mut self, i: usize) -> u64 {
        let slow = self.rng.random_bool(0.02);
        let delay = if slow { self.rng.random_range(50..400) } else { self.rng.random_range(1..8) };
        let at = (self.now + delay).max(self.fsync_at[i]);
        self.fsync_at[i] = at;
        at
    }

    /// Clients act during the fault phase and the first half of the healed phase.
    fn clients_done(&self) -> bool {
        self.now >= self.opts.fault_ms + self.opts.heal_ms / 2
    }

    /// Clients send writes to an established leader, whose sequencer prepares them for the
    /// next zxids and hands them to its replica a moment later (by then it may have lost or
    /// changed its leadership: the replica must drop them).
    fn write(&mut self) -> Result<(), String> {
        if self.clients_done() {
            return Ok(());
        }
        // A leader whose write path is stalled takes no new writes meanwhile (its clients
        // wait), so at most one stalled batch per leader is on its way.
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| matches!(self.nodes[i].role(), Some(Role::Leading { established: true, .. })))
            .filter(|&i| self.nodes[i].proposing_until <= self.now)
            .collect();
        if !leaders.is_empty() {
            let i = leaders[self.rng.random_range(0..leaders.len())];
            let count = self.rng.random_range(1..=3u32);
            let mut writes = Vec::new();
            for _ in 0..count {
                self.writes += 1;
                writes.push((self.rng.random_range(0..KEYS), self.writes));
            }
            // Usually a moment; now and then the leader's write path stalls (a long batch, a
            // slow disk), and what it prepared meanwhile reaches the replica after an
            // election that this server may win again, in a new epoch.
            let delay =
                if self.rng.random_bool(0.01) { self.rng.random_range(100..800) } else { self.rng.random_range(0..4) };
            let node = &mut self.nodes[i];
            let next = node.replica.as_ref().and_then(|r| r.zab().next_zxid().ok());
            if let Some(next) = next {
                // As the write path's sequencer: batches of one leadership get consecutive
                // zxids while earlier ones are still on their way to the replica.
                let first = match node.prepared {
                    Some(p) if p.epoch() == next.epoch() && p > next => p,
                    _ => next,
                };
                node.prepared = Some(Zxid::new(first.epoch(), first.counter() + count));
                let at = (self.now + delay).max(node.proposing_until);
                node.proposing_until = at;
                let batch = Batch { node: i, life: node.life, first, writes };
                self.schedule(at, Event::Propose(batch));
            }
        }
        let next = self.now + self.opts.write_every_ms;
        self.schedule(next, Event::Write);
        Ok(())
    }

    /// A prepared batch reaches its leader's replica.
    fn propose(&mut self, batch: Batch) -> Result<(), String> {
        let i = batch.node;
        if self.nodes[i].life != batch.life {
            return Ok(());
        }
        let Some(replica) = self.nodes[i].replica.as_mut() else { return Ok(()) };
        // Leading again, but no longer where these were prepared: the replica must drop them.
        let stale = replica.zab().next_zxid().is_ok_and(|next| next != batch.first);
        let payloads: Vec<Payload> = batch
            .writes
            .iter()
            .enumerate()
            .map(|(k, &(key, value))| {
                write_payload(key, value, Zxid::new(batch.first.epoch(), batch.first.counter() + k as u32))
            })
            .collect();
        let proposed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_now(replica.propose(Some(batch.first), payloads.clone()))
        }));
        let zxids = match proposed {
            Ok(Ok(zxids)) => zxids,
            Ok(Err(e)) => return Err(format!("server {}: a store failed: {e}", i + 1)),
            Err(_) => return Err(format!("server {}: the replica panicked (an invariant?)", i + 1)),
        };
        match zxids {
            Some(zxids) => {
                // Invoked, for the checkers, when they reach the log: their effect can only
                // come after that (a later invocation narrows what the checkers accept, and
                // keeps the histories' concurrency small enough to search).
                let life = self.nodes[i].life;
                for ((zxid, payload), (key, value)) in zxids.into_iter().zip(payloads).zip(batch.writes) {
                    let op = self.operations.len();
                    let write = RegisterOp::Write(value);
                    self.operations.push(Operation { key, op: write, invoked: self.now, completed: None });
                    let acknowledged_before = self.acknowledged_max;
                    self.pending.push(Pending { node: i, life, zxid, payload, acknowledged_before, op });
                }
            }
            None if stale => {
                self.stale_proposals += 1;
                self.note(|| format!("server {}: dropped a batch prepared for {}", i + 1, batch.first));
            }
            None => {}
        }
        self.settle(i)
    }

    /// A client syncs on a random serving server, then reads there.
    fn sync_read(&mut self) -> Result<(), String> {
        if self.clients_done() {
            return Ok(());
        }
        let i = self.rng.random_range(0..self.nodes.len());
        let life = self.nodes[i].life;
        self.next_sync += 1;
        let id = self.next_sync;
        if self.nodes[i].replica.is_some() {
            // Its session is alive here: the report travels to the leader.
            self.step(i, Input::Touch(vec![SessionId((id % 16) as i64)]))?;
            self.syncs.insert((i, life, id), self.acknowledged_max);
            let key = self.rng.random_range(0..KEYS);
            let read = Operation { key, op: RegisterOp::Read(None), invoked: self.now, completed: None };
            self.reads.insert((i, life, id), (key, self.operations.len()));
            self.operations.push(read);
            self.step(i, Input::Sync(id))?;
        }
        let next = self.now + self.rng.random_range(10..80);
        self.schedule(next, Event::SyncRead);
        Ok(())
    }

    /// Checks and acts on what server `i`'s last step did.
    fn settle(&mut self, i: usize) -> Result<(), String> {
        let seen = std::mem::take(&mut *self.nodes[i].seen.borrow_mut());
        let id = self.nodes[i].id;
        let synchronised = self.nodes[i].replica.as_ref().is_some_and(|r| !r.zab().abstaining());
        if synchronised && std::mem::take(&mut self.nodes[i].disk.borrow_mut().resync_pending) {
            self.note(|| format!("server {id}: resynchronised; votes again"));
        }
        if let Some(v) = seen.violations.first() {
            return Err(format!("server {id}: {v}"));
        }

        for event in seen.events {
            match event {
                Observed::Role(role) => {
                    self.note(|| format!("server {id}: {role:?}"));
                    if let Role::Leading { epoch, established: true } = role {
                        match self.leaders.get(&epoch) {
                            Some(&other) if other != id => {
                                return Err(format!("two leaders established in epoch {epoch}: {other} and {id}"));
                            }
                            _ => {
                                self.leaders.insert(epoch, id);
                            }
                        }
                    }
                }
                Observed::Installed(zxid, state) => {
                    self.check_prefix(id, &state)?;
                    self.snapshots_installed += 1;
                    self.note(|| format!("server {id}: installed snapshot at {zxid}"));
                }
                Observed::Applied(batch) => self.applied(i, batch)?,
                Observed::Synced(read) => self.synced(i, read)?,
                Observed::Touched(count, leading) => {
                    if !leading {
                        return Err(format!("server {id}: only the leader renews sessions"));
                    }
                    self.touches += count as u64;
                }
            }
        }
        for (to, msg) in seen.sent {
            if matches!(msg, baton_engine::zab::Message::Snap { .. }) {
                self.snapshots_sent += 1;
            }
            let now = self.now;
            let faults = self.faults;
            match self.net.send(&mut self.rng, &faults, now, id, to, msg) {
                Sent::Delivered(flights) => {
                    for (at, flight) in flights {
                        self.schedule(at, Event::Deliver(flight));
                    }
                }
                Sent::Reset => self.tell_reset(id, to),
            }
        }
        if seen.fsync {
            self.refsync(i);
        }
        if seen.snapshot_started {
            let life = self.nodes[i].life;
            let at = self.now + self.rng.random_range(1..300);
            self.schedule(at, Event::SnapshotWritten { node: i, life });
        }
        if let Some(replica) = self.nodes[i].replica.as_ref() {
            let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| replica.check_invariants()));
            if check.is_err() {
                return Err(format!("server {id}: core invariant violated"));
            }
        }
        Ok(())
    }

    /// Checks entries `from..to` of server `i`'s applied list against the history (and that
    /// each was logged at the zxid it was prepared for), and acknowledges the writes its
    /// leader proposed.
    fn applied(&mut self, i: usize, batch: AppliedBatch) -> Result<(), String> {
        let id = self.nodes[i].id;
        let AppliedBatch { from, entries: fresh, leading } = batch;
        for (k, entry) in (from..).zip(&fresh) {
            if let Some((_, _, prepared_for)) = parse_write(&entry.payload) {
                if prepared_for != entry.zxid {
                    return Err(format!(
                        "server {id}: an entry prepared for {prepared_for} was logged at {}",
                        entry.zxid
                    ));
                }
            }
            match self.history.get(k) {
                Some(h) if h != entry => {
                    return Err(format!(
                        "server {id} applied {} at position {k}, the history has {} there",
                        entry.zxid, h.zxid
                    ));
                }
                Some(_) => {}
                None => self.history.push(entry.clone()),
            }
        }
        let Some(through) = fresh.last().map(|e| e.zxid) else { return Ok(()) };
        // Writes this server proposed and has now applied, while still leading the epoch it
        // proposed them in, are acknowledged to their clients. A leader that lost its epoch
        // does not know their fate: they stay unacknowledged.
        let life = self.nodes[i].life;
        let mut still = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            if p.node == i && (p.life != life || leading != Some(p.zxid.epoch())) {
                continue;
            }
            if p.node == i && p.zxid <= through {
                let find = |entries: &[LogEntry]| entries.iter().find(|e| e.zxid == p.zxid).map(|e| e.payload.clone());
                let logged = find(&fresh).or_else(|| find(&self.nodes[i].applied.borrow()));
                match logged {
                    Some(payload) if payload == p.payload => {
                        if p.zxid <= p.acknowledged_before {
                            return Err(format!(
                                "write {} is ordered before write {}, acknowledged before it was invoked",
                                p.zxid, p.acknowledged_before
                            ));
                        }
                        self.acknowledged_max = self.acknowledged_max.max(p.zxid);
                        self.acknowledged.push((p.zxid, p.payload));
                        self.operations[p.op].completed = Some(self.now);
                    }
                    _ => return Err(format!("server {id}: its own proposal {} was replaced before commit", p.zxid)),
                }
            } else {
                still.push(p);
            }
        }
        self.pending = still;
        Ok(())
    }

    /// A sync on server `i` is done, and the read after it answered.
    fn synced(&mut self, i: usize, done: SyncedRead) -> Result<(), String> {
        let (id, life) = (self.nodes[i].id, self.nodes[i].life);
        let SyncedRead { id: sync, zxid, read, values } = done;
        let Some(required) = self.syncs.remove(&(i, life, sync)) else {
            return Err(format!("server {id}: sync {sync} completed twice or never started"));
        };
        let Some(zxid) = zxid else {
            // No leader to sync with: the client is told to retry; its read never happens.
            self.reads.remove(&(i, life, sync));
            return Ok(());
        };
        if read < zxid {
            return Err(format!("server {id}: sync {sync} done at {zxid} but only {read} is applied"));
        }
        if read < required {
            return Err(format!(
                "server {id}: a read after sync sees {read}, missing write {required} acknowledged before the sync"
            ));
        }
        self.synced_reads += 1;
        if let Some((key, op)) = self.reads.remove(&(i, life, sync)) {
            let value = values.get(key as usize).copied().flatten();
            self.operations[op].op = RegisterOp::Read(value);
            self.operations[op].completed = Some(self.now);
        }
        Ok(())
    }

    fn check_prefix(&self, id: ServerId, state: &[LogEntry]) -> Result<(), String> {
        for (k, entry) in state.iter().enumerate() {
            if let Some(h) = self.history.get(k) {
                if h != entry {
                    return Err(format!("server {id}: a snapshot disagrees with the history at {k}"));
                }
            }
        }
        Ok(())
    }

    fn check_end(&mut self) -> Result<(), String> {
        let roles: Vec<Option<Role>> = self.nodes.iter().map(Node::role).collect();
        let leaders: Vec<(usize, u32)> = roles
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Some(Role::Leading { epoch, established: true }) => Some((i, *epoch)),
                _ => None,
            })
            .collect();
        let [(leader, epoch)] = leaders[..] else {
            return Err(format!("not one established leader after healing: {roles:?}"));
        };
        for (i, role) in roles.iter().enumerate() {
            if i == leader {
                continue;
            }
            let followed = self.configs[i].zab.upstream.unwrap_or(leader as u64 + 1);
            let expected = Role::Following { leader: followed, epoch, serving: true };
            if *role != Some(expected) {
                return Err(format!("server {} is {role:?}, not following {} in epoch {epoch}", i + 1, leader + 1));
            }
        }
        for node in &self.nodes {
            let applied = node.applied.borrow();
            if *applied != self.history {
                return Err(format!(
                    "server {} applied {} entries, the history has {}",
                    node.id,
                    applied.len(),
                    self.history.len()
                ));
            }
        }
        let position: BTreeMap<Zxid, &Payload> = self.history.iter().map(|e| (e.zxid, &e.payload)).collect();
        for (z, p) in &self.acknowledged {
            if position.get(z) != Some(&p) {
                return Err(format!("acknowledged write {z} is not in the final history"));
            }
        }
        if self.acknowledged.is_empty() {
            return Err("no write was ever acknowledged".into());
        }
        linearizability::check(&self.operations).map_err(|v| v.to_string())
    }

    fn report(&self) -> Report {
        Report {
            committed: self.history.len(),
            acknowledged: self.acknowledged.len(),
            epochs: self.leaders.len(),
            crashes: self.crashes,
            discards: self.discards,
            disks_full: self.disks_full,
            snapshots_installed: self.snapshots_installed,
            snapshots_sent: self.snapshots_sent,
            snapshots_written: self.snapshots_written,
            stale_proposals: self.stale_proposals,
            synced_reads: self.synced_reads,
            touches: self.touches,
            messages: (self.net.sent, self.net.lost),
            fingerprint: self.fingerprint,
        }
    }
}

fn brief(msg: &baton_engine::zab::Message) -> String {
    use baton_engine::zab::Message as M;
    match msg {
        M::Append { epoch, entries } => format!(
            "Append e{epoch} {}..{} ({})",
            entries.first().map_or(Zxid::ZERO, |e| e.zxid),
            entries.last().map_or(Zxid::ZERO, |e| e.zxid),
            entries.len()
        ),
        M::Snap { epoch, zxid } => format!("Snap e{epoch} {zxid}"),
        M::SnapChunk { epoch, data } => format!("SnapChunk e{epoch} ({} bytes)", data.len()),
        M::SnapEnd { epoch, bytes, .. } => format!("SnapEnd e{epoch} ({bytes} bytes)"),
        other => format!("{other:?}"),
    }
}
