//! A deterministic simulator for the Zab core (`baton_engine::zab`): several servers' cores
//! driven by one seeded random generator through a simulated network (delay, connection
//! resets, duplicates, partitions into groups and cuts of any set of links; FIFO per link), simulated disks (slow fsync, crashes that
//! keep any prefix of what was not yet fsync'ed) and a virtual clock.
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
//! - each core's own invariants (`Zab::check_invariants`).
//!
//! The same seed replays the same run exactly: nothing here reads a clock or iterates a
//! hash map.

mod net;
mod node;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use baton_engine::zab::{Action, LogEntry, Payload, Role, ServerId, Zab, ZabConfig};
use baton_engine::Zxid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::linearizability::{self, Operation, RegisterOp};
pub use net::NetFaults;
use net::{InFlight, Network, Sent};

/// Registers the simulated clients write and read.
const KEYS: u64 = 3;

/// A write's payload names its register and value.
fn write_payload(key: u64, value: u64) -> Payload {
    Payload::from(format!("k{key}=w{value}").into_bytes())
}

/// The register and value of a write's payload.
fn parse_write(payload: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (key, value) = text.strip_prefix('k')?.split_once("=w")?;
    Some((key.parse().ok()?, value.parse().ok()?))
}
use node::{decode_state, encode_state, Node};

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
    /// Keep a trace of events (printed when a run fails).
    pub trace: bool,
}

impl SimOptions {
    /// The default run for a seed: 3 or 5 servers, 12 s of faults, 12 s to heal.
    pub fn for_seed(seed: u64) -> SimOptions {
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
    /// SNAPs installed.
    pub snapshots_installed: u64,
    /// Reads after `sync` checked.
    pub synced_reads: u64,
    /// Session liveness reports that reached a leader.
    pub touches: u64,
    /// Messages sent and lost.
    pub messages: (u64, u64),
    /// A digest of every event, to check that a seed replays exactly.
    pub fingerprint: u64,
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
    Restart(usize),
    Fault,
    Heal,
    Write,
    SyncRead,
}

struct Sim {
    opts: SimOptions,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    nodes: Vec<Node>,
    configs: Vec<ZabConfig>,
    net: Network,
    faults: NetFaults,
    /// The one committed history every server's applied sequence must be a prefix of.
    history: Vec<LogEntry>,
    leaders: BTreeMap<u32, ServerId>,
    /// Client writes proposed and not yet known: (node, life, zxid, payload, the greatest
    /// zxid acknowledged when it was invoked, its operation in `operations`).
    pending: Vec<(usize, u64, Zxid, Payload, Zxid, usize)>,
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
    snapshots_installed: u64,
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
        let configs: Vec<ZabConfig> = voters
            .iter()
            .chain(&observers)
            .map(|&id| ZabConfig {
                observers: observers.clone(),
                upstream: relayed.filter(|(down, _)| *down == id).map(|(_, up)| up),
                ..ZabConfig::new(id, voters.clone())
            })
            .collect();
        let nodes = configs.iter().map(|c| Node::new(c.clone())).collect();
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
            snapshots_installed: 0,
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
            let offset = self.rng.random_range(0..self.opts.tick_ms);
            self.schedule(offset, Event::Tick(i, 0));
            self.run_actions(i)?;
        }
        if self.opts.crashes {
            self.schedule(500, Event::Fault);
        }
        self.schedule(100, Event::Write);
        self.schedule(150, Event::SyncRead);
        let fault_end = self.opts.fault_ms;
        let end = fault_end + self.opts.heal_ms;
        let mut healed = false;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
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
            self.step(event)?;
        }
        self.check_end()
    }

    fn heal_everything(&mut self) -> Result<(), String> {
        self.now = self.opts.fault_ms;
        self.note(|| "== healing: no more faults".into());
        self.faults = NetFaults::CALM;
        self.net.heal();
        for i in 0..self.nodes.len() {
            if self.nodes[i].zab.is_none() {
                self.restart(i)?;
            }
        }
        Ok(())
    }

    fn step(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick(i, life) => {
                if self.nodes[i].life != life || self.nodes[i].zab.is_none() {
                    return Ok(());
                }
                if let Some(zab) = self.nodes[i].zab.as_mut() {
                    zab.on_tick();
                }
                self.run_actions(i)?;
                if self.rng.random_bool(0.02) {
                    self.local_snapshot(i)?;
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
                if let Some(zab) = self.nodes[i].zab.as_mut() {
                    zab.on_message(from, msg);
                    self.run_actions(i)?;
                }
            }
            Event::Disconnected { node, peer, life } => {
                if self.nodes[node].life != life {
                    return Ok(());
                }
                if let Some(zab) = self.nodes[node].zab.as_mut() {
                    zab.on_disconnected(peer);
                    self.note(|| format!("server {}: lost its connection to {peer}", node + 1));
                    self.run_actions(node)?;
                }
            }
            Event::Durable { node, life, generation, upto } => {
                let n = &mut self.nodes[node];
                if n.life != life || n.disk.generation != generation || n.zab.is_none() {
                    return Ok(());
                }
                n.disk.durable = n.disk.durable.max(upto.min(n.disk.log.len()));
                let zxid = match n.disk.durable {
                    0 => n.disk.snapshot.0,
                    d => n.disk.log[d - 1].0,
                };
                if let Some(zab) = n.zab.as_mut() {
                    zab.on_durable(zxid);
                }
                self.run_actions(node)?;
            }
            Event::Restart(i) => {
                if self.nodes[i].zab.is_none() {
                    self.restart(i)?;
                }
            }
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
                if self.nodes[i].zab.is_some() {
                    self.crash(i);
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
                let mut a = Vec::new();
                let mut b = Vec::new();
                for id in 1..=n as u64 {
                    if self.rng.random_bool(0.5) {
                        a.push(id)
                    } else {
                        b.push(id)
                    }
                }
                if !a.is_empty() && !b.is_empty() {
                    self.note(|| format!("partition {a:?} | {b:?}"));
                    for (x, y) in self.net.partition(self.now, &a, &b) {
                        self.tell_reset(x, y);
                    }
                    let heal = self.now + self.rng.random_range(300..4000);
                    self.schedule(heal, Event::Heal);
                }
            }
            _ => {}
        }
        let next = self.now + self.rng.random_range(200..1500);
        self.schedule(next, Event::Fault);
    }

    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.zab.is_none() {
            return;
        }
        node.zab = None;
        node.life += 1;
        // Appended but not fsync'ed: any prefix of it may have reached the disk.
        let (durable, len) = (node.disk.durable, node.disk.log.len());
        let keep = self.rng.random_range(durable..=len);
        node.disk.log.truncate(keep);
        node.disk.durable = keep;
        node.disk.generation += 1;
        node.applied = node.disk.snapshot.1.clone();
        let id = node.id;
        for peer in 1..=self.nodes.len() as u64 {
            if peer != id {
                self.net.reset(self.now, id, peer);
                self.tell_reset(id, peer);
            }
        }
        self.pending.retain(|(n, _, _, _, _, _)| *n != i);
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

    fn restart(&mut self, i: usize) -> Result<(), String> {
        let persisted = self.nodes[i].disk.persisted();
        let zab = Zab::new(self.configs[i].clone(), persisted);
        let node = &mut self.nodes[i];
        node.zab = Some(zab);
        node.applied = node.disk.snapshot.1.clone();
        let (id, life) = (node.id, node.life);
        self.note(|| format!("restart {id}"));
        let at = self.now + self.rng.random_range(1..self.opts.tick_ms);
        self.schedule(at, Event::Tick(i, life));
        self.run_actions(i)
    }

    /// A server snapshots its applied state and drops the log it covers.
    fn local_snapshot(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let zxid = node.applied_zxid();
        if zxid <= node.disk.snapshot.0 {
            return Ok(());
        }
        node.disk.snapshot = (zxid, node.applied.clone());
        let before = node.disk.log.len();
        node.disk.log.retain(|(z, _)| *z > zxid);
        let dropped = before - node.disk.log.len();
        node.disk.durable = node.disk.durable.saturating_sub(dropped);
        node.disk.generation += 1;
        if let Some(zab) = node.zab.as_mut() {
            zab.compact(zxid);
        }
        self.refsync(i);
        Ok(())
    }

    /// Schedules an fsync of the whole log (after a cut or a rewrite).
    fn refsync(&mut self, i: usize) {
        let node = &self.nodes[i];
        let (life, generation, upto) = (node.life, node.disk.generation, node.disk.log.len());
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

    fn write(&mut self) -> Result<(), String> {
        if self.clients_done() {
            return Ok(());
        }
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                matches!(self.nodes[i].zab.as_ref().map(|z| z.role()), Some(Role::Leading { established: true, .. }))
            })
            .collect();
        if !leaders.is_empty() {
            let i = leaders[self.rng.random_range(0..leaders.len())];
            let count = self.rng.random_range(1..=3);
            let mut writes = Vec::new();
            for _ in 0..count {
                self.writes += 1;
                writes.push((self.rng.random_range(0..KEYS), self.writes));
            }
            let payloads: Vec<Payload> = writes.iter().map(|&(k, v)| write_payload(k, v)).collect();
            if let Some(zab) = self.nodes[i].zab.as_mut() {
                if let Ok(zxids) = zab.propose(payloads.clone()) {
                    let life = self.nodes[i].life;
                    for ((z, p), (key, value)) in zxids.into_iter().zip(payloads).zip(writes) {
                        let op = self.operations.len();
                        let write = RegisterOp::Write(value);
                        self.operations.push(Operation { key, op: write, invoked: self.now, completed: None });
                        self.pending.push((i, life, z, p, self.acknowledged_max, op));
                    }
                }
            }
            self.run_actions(i)?;
        }
        let next = self.now + self.opts.write_every_ms;
        self.schedule(next, Event::Write);
        Ok(())
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
        if let Some(zab) = self.nodes[i].zab.as_mut() {
            // Its session is alive here: the report travels to the leader.
            zab.touch(vec![id % 16]);
            if zab.sync(id) {
                self.syncs.insert((i, life, id), self.acknowledged_max);
                let key = self.rng.random_range(0..KEYS);
                let read = Operation { key, op: RegisterOp::Read(None), invoked: self.now, completed: None };
                self.reads.insert((i, life, id), (key, self.operations.len()));
                self.operations.push(read);
            }
        }
        let next = self.now + self.rng.random_range(10..80);
        self.schedule(next, Event::SyncRead);
        self.run_actions(i)
    }

    fn run_actions(&mut self, i: usize) -> Result<(), String> {
        loop {
            let actions = match self.nodes[i].zab.as_mut() {
                Some(zab) => zab.take_actions(),
                None => return Ok(()),
            };
            if actions.is_empty() {
                break;
            }
            for action in actions {
                self.action(i, action)?;
            }
        }
        if let Some(zab) = self.nodes[i].zab.as_ref() {
            let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| zab.check_invariants()));
            if check.is_err() {
                return Err(format!("server {}: core invariant violated", i + 1));
            }
        }
        Ok(())
    }

    fn action(&mut self, i: usize, action: Action) -> Result<(), String> {
        let id = self.nodes[i].id;
        match action {
            Action::Send { to, msg } => {
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
            Action::SaveEpochs { accepted, current } => {
                let disk = &mut self.nodes[i].disk;
                disk.accepted_epoch = accepted;
                disk.current_epoch = current;
            }
            Action::Append { entries } => {
                self.nodes[i].disk.log.extend(entries);
                self.refsync(i);
            }
            Action::Truncate { after } => {
                let applied = self.nodes[i].applied_zxid();
                if applied > after {
                    return Err(format!("server {id}: truncation after {after} cuts applied {applied}"));
                }
                let disk = &mut self.nodes[i].disk;
                disk.log.retain(|(z, _)| *z <= after);
                disk.durable = disk.durable.min(disk.log.len());
                disk.generation += 1;
                self.note(|| format!("server {id}: truncate after {after}"));
                self.refsync(i);
            }
            Action::InstallSnapshot { zxid, data } => {
                let state = decode_state(&data).ok_or("undecodable snapshot")?;
                if state.last().map_or(Zxid::ZERO, |(z, _)| *z) != zxid {
                    return Err(format!("server {id}: snapshot at {zxid} does not end there"));
                }
                self.check_prefix(id, &state)?;
                let node = &mut self.nodes[i];
                node.applied = state.clone();
                node.disk.snapshot = (zxid, state);
                node.disk.log.clear();
                node.disk.durable = 0;
                node.disk.generation += 1;
                self.snapshots_installed += 1;
                self.note(|| format!("server {id}: installed snapshot at {zxid}"));
            }
            Action::Commit { through } => self.apply(i, through)?,
            Action::TakeSnapshot { peer } => {
                let node = &self.nodes[i];
                let (zxid, data) = (node.applied_zxid(), encode_state(&node.applied));
                if let Some(zab) = self.nodes[i].zab.as_mut() {
                    zab.on_snapshot(peer, zxid, data);
                }
            }
            Action::Synced { id: sync, zxid } => {
                let node = &self.nodes[i];
                let Some(required) = self.syncs.remove(&(i, node.life, sync)) else {
                    return Err(format!("server {id}: sync {sync} completed twice or never started"));
                };
                let read = node.applied_zxid();
                if read < zxid {
                    return Err(format!("server {id}: sync {sync} done at {zxid} but only {read} is applied"));
                }
                if read < required {
                    return Err(format!(
                        "server {id}: a read after sync sees {read}, missing write {required} acknowledged before the sync"
                    ));
                }
                self.synced_reads += 1;
                if let Some((key, op)) = self.reads.remove(&(i, node.life, sync)) {
                    let value = node.applied.iter().rev().filter_map(|(_, p)| parse_write(p)).find(|(k, _)| *k == key);
                    self.operations[op].op = RegisterOp::Read(value.map(|(_, v)| v));
                    self.operations[op].completed = Some(self.now);
                }
            }
            Action::Touched { sessions } => {
                if !matches!(self.nodes[i].zab.as_ref().map(|z| z.role()), Some(Role::Leading { .. })) {
                    return Err(format!("server {id}: only the leader renews sessions"));
                }
                self.touches += sessions.len() as u64;
            }
            Action::RoleChanged(role) => {
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
        }
        Ok(())
    }

    /// Applies the logged entries up to `through` and checks them against the history.
    fn apply(&mut self, i: usize, through: Zxid) -> Result<(), String> {
        let id = self.nodes[i].id;
        let from = self.nodes[i].applied_zxid();
        let fresh: Vec<LogEntry> =
            self.nodes[i].disk.log.iter().filter(|(z, _)| *z > from && *z <= through).cloned().collect();
        let reached = fresh.last().map_or(from, |(z, _)| *z);
        if reached < through {
            return Err(format!("server {id}: commit through {through} but the log stops at {reached}"));
        }
        let start = self.nodes[i].applied.len();
        self.nodes[i].applied.extend(fresh);
        for k in start..self.nodes[i].applied.len() {
            let entry = self.nodes[i].applied[k].clone();
            match self.history.get(k) {
                Some(h) if *h != entry => {
                    return Err(format!(
                        "server {id} applied {} at position {k}, the history has {} there",
                        entry.0, h.0
                    ));
                }
                Some(_) => {}
                None => self.history.push(entry),
            }
        }
        // Writes this server proposed and has now applied, while still leading the epoch it
        // proposed them in, are acknowledged to their clients. A leader that lost its epoch
        // does not know their fate: they stay unacknowledged.
        let life = self.nodes[i].life;
        let leading = match self.nodes[i].zab.as_ref().map(|z| z.role()) {
            Some(Role::Leading { epoch, established: true }) => Some(epoch),
            _ => None,
        };
        let mut still = Vec::new();
        for (n, l, z, p, before, op) in std::mem::take(&mut self.pending) {
            if n == i && (l != life || leading != Some(z.epoch())) {
                continue;
            }
            if n == i && z <= through {
                let logged = self.nodes[i].applied.iter().find(|(az, _)| *az == z);
                match logged {
                    Some((_, ap)) if *ap == p => {
                        if z <= before {
                            return Err(format!(
                                "write {z} is ordered before write {before}, acknowledged before it was invoked"
                            ));
                        }
                        self.acknowledged_max = self.acknowledged_max.max(z);
                        self.acknowledged.push((z, p));
                        self.operations[op].completed = Some(self.now);
                    }
                    _ => return Err(format!("server {id}: its own proposal {z} was replaced before commit")),
                }
            } else {
                still.push((n, l, z, p, before, op));
            }
        }
        self.pending = still;
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
        let roles: Vec<Option<Role>> = self.nodes.iter().map(|n| n.zab.as_ref().map(|z| z.role())).collect();
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
            let followed = self.configs[i].upstream.unwrap_or(leader as u64 + 1);
            let expected = Role::Following { leader: followed, epoch, serving: true };
            if *role != Some(expected) {
                return Err(format!("server {} is {role:?}, not following {} in epoch {epoch}", i + 1, leader + 1));
            }
        }
        for node in &self.nodes {
            if node.applied != self.history {
                return Err(format!(
                    "server {} applied {} entries, the history has {}",
                    node.id,
                    node.applied.len(),
                    self.history.len()
                ));
            }
        }
        let position: BTreeMap<Zxid, &Payload> = self.history.iter().map(|(z, p)| (*z, p)).collect();
        for (z, p) in &self.acknowledged {
            if position.get(z) != Some(&p) {
                return Err(format!("acknowledged write {z} is not in the final history"));
            }
        }
        let after_heal = self.acknowledged.len();
        if after_heal == 0 {
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
            snapshots_installed: self.snapshots_installed,
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
            entries.first().map_or(Zxid::ZERO, |e| e.0),
            entries.last().map_or(Zxid::ZERO, |e| e.0),
            entries.len()
        ),
        M::Snap { epoch, zxid, data } => format!("Snap e{epoch} {zxid} ({} bytes)", data.len()),
        other => format!("{other:?}"),
    }
}
