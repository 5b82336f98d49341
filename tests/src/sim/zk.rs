//! The simulator with the server's real write path on every replica: sessions, forwarding,
//! refusals and expiry (`baton_server::write::WritePath` over a `DataTree`, as `baton` runs
//! them), driven by the same replica driver, network, disks and faults as the Zab simulation
//! ([`super`]): crashes that keep any unsynced prefix, partitions, resets, duplicates, full
//! disks. Simulated ZooKeeper clients open sessions on any server, resume them elsewhere when
//! their connection drops, heartbeat through the server they are connected to, create
//! ephemerals, compare-and-set registers (`setData` at the version they read) and read them
//! after `sync`. Simulated etcd clients, beside them, send the etcd front's requests to any
//! server: puts, compare-and-set transactions (a put if the value is the one last read),
//! compactions, and linearizable reads (a quorum-confirmed sync, then the server's keyspace).
//!
//! Checked, for every seed:
//! - the register history — blind writes, compare-and-sets (with their BadVersion
//!   refusals), reads after `sync` on whichever server — passes the linearizability checker;
//!   so does the etcd keys' history (puts, transactions that succeeded or failed, reads);
//! - a session whose close (by its client or by expiry) has been applied anywhere is never
//!   resumed afterwards, on any server;
//! - once healed, a client that stays connected and heartbeats keeps its session: no
//!   session of a connected client expires in the last part of the healed phase;
//! - every acknowledged ephemeral is in the final tree exactly when its session is alive;
//! - at the end one leader, every server serving, every tree identical (digest) and every
//!   etcd keyspace identical (image), with no ephemeral of a session the tree does not know;
//! - each replica's invariants after every step.
//!
//! The write path keeps some hash maps; what it tells clients within one step is put in
//! connection order here, so a seed replays exactly.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use baton_engine::mvcc::{
    Compare, CompareResult, CompareTarget, EtcdResponse, EtcdTxn, KeySpace, MvccError, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use baton_engine::replica::{ImageSink, Input, Parts, Replica, ReplicaConfig, SnapshotImage, StateMachine};
use baton_engine::sequencer::{CreateMode, CreateOp, SequencerConfig, WriteOp, WriteRequest};
use baton_engine::state::{StateImage, StateLoader};
use baton_engine::tree::{open_acl, DataTree, ErrorCode, OpResult};
use baton_engine::zab::{LogEntry, Message, Payload, Role, ServerId, ZabConfig};
use baton_engine::{SessionId, Zxid};
use baton_server::runtime::{ClientRef, ConnId, SessionRequest, ToClient, ToWritePath, WriteOutcome};
use baton_server::write::path::{Effect, Now, WritePath, WritePathConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::disk::{finish_job, Disk, Job, Seen, SimEpochs, SimLog, SimSnapshots};
use super::net::{NetFaults, Network, Sent};
use super::node::SimPeers;
use super::run_now;
use crate::linearizability::{self, Operation, RegisterOp};

/// Registers (znodes `/r0`, `/r1`, ...; etcd keys `r0`, `r1`, ...).
const REGISTERS: u64 = 3;

/// The checker's register number of etcd key `rK` (ZooKeeper's `/rK` is `K`).
const ETCD_REGISTER: u64 = 1_000;

/// The answer slot of the etcd front (the slot after the one shard).
const ETCD_SLOT: usize = 1;

/// How a run goes.
#[derive(Debug, Clone)]
pub struct ZkSimOptions {
    /// The whole run is a function of it.
    pub seed: u64,
    /// Voting servers.
    pub servers: usize,
    /// Simulated clients (each one session at a time).
    pub clients: usize,
    /// Simulated etcd clients (one request at a time, to any server).
    pub etcd_clients: usize,
    /// Virtual ms of faults, then of the healed phase.
    pub fault_ms: u64,
    /// Virtual ms of the healed phase.
    pub heal_ms: u64,
    /// Ms per tick (the write path ticks twice per tick, as `baton`).
    pub tick_ms: u64,
    /// The session timeout clients ask for.
    pub session_timeout_ms: i32,
    /// Crashes, partitions and full disks in the fault phase.
    pub faults: bool,
    /// Keep a trace (printed when a run fails).
    pub trace: bool,
}

impl ZkSimOptions {
    /// The default run for a seed: 3 or 5 servers, 4 clients, 10 s of faults, 12 s healed.
    pub fn for_seed(seed: u64) -> ZkSimOptions {
        ZkSimOptions {
            seed,
            servers: if seed % 3 == 2 { 5 } else { 3 },
            clients: 4,
            etcd_clients: 2,
            fault_ms: 10_000,
            heal_ms: 12_000,
            tick_ms: 100,
            session_timeout_ms: 2_000,
            faults: true,
            trace: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZkSimReport {
    /// Sessions opened.
    pub sessions: u64,
    /// Sessions resumed on another connection.
    pub resumed: u64,
    /// Sessions closed by expiry (not by their client).
    pub expired: u64,
    /// Writes acknowledged (applied).
    pub applied: u64,
    /// Writes refused (BadVersion, NodeExists, ...).
    pub refused: u64,
    /// Reads after sync checked.
    pub reads: u64,
    /// etcd writes applied (puts, transactions, compactions; etcd errors included).
    pub etcd_applied: u64,
    /// etcd transactions whose compare failed.
    pub etcd_failed_compares: u64,
    /// etcd linearizable reads checked.
    pub etcd_reads: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Entries in the final tree's history.
    pub last_zxid: u64,
    /// A digest of every event, to check that a seed replays exactly.
    pub fingerprint: u64,
}

/// The write path and its tree as a replica's state machine; what it asks for waits in
/// `effects` until the simulator carries it out after the step.
struct Machine {
    inner: Rc<RefCell<MachineState>>,
}

struct MachineState {
    tree: DataTree,
    /// etcd's keyspace.
    etcd: KeySpace,
    path: WritePath,
    effects: Vec<Effect>,
    now: Now,
    /// Applied entries (a truncation must never cut one).
    applied: Rc<RefCell<Vec<LogEntry>>>,
    /// Sessions whose close this server applied, with when.
    closed: Vec<SessionId>,
}

impl MachineState {
    fn drain(&mut self) {
        self.effects.extend(self.path.take_effects());
    }
}

impl Machine {
    /// Puts a state rebuilt from a snapshot in place.
    fn replace_state(&mut self, _zxid: Zxid, tree: DataTree, etcd: KeySpace) {
        let mut s = self.inner.borrow_mut();
        let s = &mut *s;
        let before: BTreeSet<SessionId> = s.tree.sessions().keys().copied().collect();
        for gone in before.iter().filter(|id| !tree.sessions().contains_key(id)) {
            s.closed.push(*gone);
        }
        s.tree = tree;
        s.etcd = etcd;
        s.applied.borrow_mut().clear();
        s.path.installed(&s.tree, s.now);
        s.drain();
    }
}

impl StateMachine for Machine {
    fn apply(&mut self, entries: &[LogEntry]) {
        let mut s = self.inner.borrow_mut();
        let s = &mut *s;
        let before: BTreeSet<SessionId> = s.tree.sessions().keys().copied().collect();
        s.path.apply(&mut s.tree, &mut s.etcd, s.now, entries);
        s.applied.borrow_mut().extend_from_slice(entries);
        for gone in before.iter().filter(|id| !s.tree.sessions().contains_key(id)) {
            s.closed.push(*gone);
        }
        s.drain();
    }

    fn replay(&mut self, entries: &[LogEntry]) {
        let mut s = self.inner.borrow_mut();
        let s = &mut *s;
        s.path.replay(&mut s.tree, &mut s.etcd, s.now, entries);
        s.applied.borrow_mut().extend_from_slice(entries);
        s.drain();
    }

    fn snapshot(&self) -> Vec<u8> {
        let s = self.inner.borrow();
        baton_engine::state::to_image(&s.tree, &s.etcd)
    }

    fn freeze(&self) -> Box<dyn SnapshotImage> {
        // As the server: a copy-on-write view, written when the simulated snapshot job is.
        let s = self.inner.borrow();
        Box::new(StateImage::new(s.tree.view(), s.etcd.clone()))
    }

    fn install(&mut self, zxid: Zxid, data: &[u8]) {
        let (tree, etcd) = baton_engine::state::from_image(data).expect("a snapshot this simulation took decodes");
        self.replace_state(zxid, tree, etcd);
    }

    fn receive(&mut self, _zxid: Zxid) -> Box<dyn ImageSink> {
        // As the server: the state rebuilt as the SNAP's chunks arrive.
        Box::new(StateLoader::new())
    }

    fn install_received(&mut self, zxid: Zxid, sink: Box<dyn ImageSink>) -> Result<(), String> {
        let (tree, etcd) = baton_engine::replica::loaded_state(sink)?;
        self.replace_state(zxid, tree, etcd);
        Ok(())
    }

    fn synced(&mut self, id: u64, zxid: Option<Zxid>) {
        let mut s = self.inner.borrow_mut();
        let s = &mut *s;
        s.path.synced(&s.tree, s.now, id, zxid);
        s.drain();
    }

    fn touched(&mut self, sessions: Vec<SessionId>) {
        let mut s = self.inner.borrow_mut();
        let now = s.now;
        s.path.touched(now, sessions);
    }

    fn role_changed(&mut self, role: Role, last_logged: Zxid) {
        let mut s = self.inner.borrow_mut();
        let s = &mut *s;
        s.path.role_changed(&s.tree, s.now, role, last_logged);
        s.drain();
    }

    fn message(&mut self, from: ServerId, data: &Payload) {
        let mut s = self.inner.borrow_mut();
        let s = &mut *s;
        s.path.message(&s.tree, s.now, from, data);
        s.drain();
    }
}

type ZkReplica = Replica<SimLog, SimEpochs, SimSnapshots, SimPeers, Machine>;

struct Server {
    id: ServerId,
    replica: Option<ZkReplica>,
    state: Option<Rc<RefCell<MachineState>>>,
    disk: Rc<RefCell<Disk>>,
    seen: Seen,
    job: Job,
    life: u64,
    /// When the last proposal reaches the replica (they arrive in the order made).
    proposing_until: u64,
}

/// What a client is doing.
#[derive(Debug, Clone)]
enum Waiting {
    Nothing,
    Connect,
    /// A write: the operation's index in the history (if it is one the checker sees) and
    /// the ephemeral it creates (if it does).
    Write {
        op: Option<usize>,
        ephemeral: Option<String>,
        close: bool,
    },
    /// A sync (invoked then), then a read of `key` there: the read covers what was
    /// acknowledged before the sync was invoked.
    Sync {
        key: u64,
        invoked: u64,
    },
    /// An etcd write: the operation's index in the history (none for a compaction).
    EtcdWrite {
        op: Option<usize>,
    },
    /// An etcd linearizable read of `key`: a sync, then the keyspace.
    EtcdRead {
        key: u64,
        invoked: u64,
    },
}

struct Client {
    /// An etcd client (no session; requests go to the etcd front's slot).
    etcd: bool,
    session: Option<(SessionId, Vec<u8>)>,
    /// (server index, connection, server life).
    conn: Option<(usize, ConnId, u64)>,
    waiting: Waiting,
    xid: i32,
    /// The last value and version read of each register.
    known: BTreeMap<u64, (Option<u64>, i32)>,
    ephemerals: u64,
}

#[derive(Debug, Clone)]
enum Event {
    Tick(usize, u64),
    Deliver(super::net::InFlight),
    Disconnected { node: usize, peer: ServerId, life: u64 },
    Durable { node: usize, life: u64, generation: u64, upto: usize },
    SnapshotWritten { node: usize, life: u64 },
    Input { node: usize, life: u64, input: Input },
    Client(usize),
    Restart(usize),
    DiskFreed(usize),
    Heal,
    Fault,
}

struct ZkSim {
    opts: ZkSimOptions,
    rng: StdRng,
    now: u64,
    base: Instant,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    servers: Vec<Server>,
    configs: Vec<ReplicaConfig>,
    net: Network,
    faults: NetFaults,
    clients: Vec<Client>,
    next_conn: u64,
    next_value: u64,
    /// The etcd front's request counter (one for every server: unique on each).
    etcd_xid: i32,
    /// etcd register writes whose client lost its connection, by that connection.
    etcd_orphans: BTreeMap<ConnId, usize>,
    /// The same writes by the value they put.
    etcd_unknown: BTreeMap<u64, usize>,
    /// The connection of the etcd request being handed to a write path.
    etcd_submitting: Option<ConnId>,
    operations: Vec<Operation>,
    /// When a close of each session was first applied anywhere.
    closed_at: BTreeMap<SessionId, u64>,
    /// Sessions their own clients closed.
    closed_by_client: BTreeSet<SessionId>,
    /// Acknowledged ephemerals: path → session.
    ephemerals: BTreeMap<String, SessionId>,
    report: ZkSimReport,
    trace: Vec<String>,
}

/// Runs one simulation.
pub fn run_zk(opts: ZkSimOptions) -> Result<ZkSimReport, String> {
    let mut sim = ZkSim::new(opts);
    match sim.run() {
        Ok(()) => Ok(sim.report.clone()),
        Err(why) => {
            let tail: Vec<&str> = sim.trace.iter().rev().take(300).rev().map(String::as_str).collect();
            Err(format!("seed {} at {} ms: {why}\n{}", sim.opts.seed, sim.now, tail.join("\n")))
        }
    }
}

impl ZkSim {
    fn new(opts: ZkSimOptions) -> ZkSim {
        let voters: Vec<ServerId> = (1..=opts.servers as u64).collect();
        let configs: Vec<ReplicaConfig> = voters
            .iter()
            .map(|&id| ReplicaConfig {
                snapshot_every_entries: 40,
                ..ReplicaConfig::new(ZabConfig::new(id, voters.clone()))
            })
            .collect();
        let servers = voters
            .iter()
            .map(|&id| Server {
                id,
                replica: None,
                state: None,
                disk: Rc::new(RefCell::new(Disk::default())),
                seen: Rc::new(RefCell::new(Default::default())),
                job: Rc::new(RefCell::new(None)),
                life: 0,
                proposing_until: 0,
            })
            .collect();
        let clients = (0..opts.clients + opts.etcd_clients)
            .map(|c| Client {
                etcd: c >= opts.clients,
                session: None,
                conn: None,
                waiting: Waiting::Nothing,
                xid: 0,
                known: BTreeMap::new(),
                ephemerals: 0,
            })
            .collect();
        ZkSim {
            rng: StdRng::seed_from_u64(opts.seed ^ 0x2b_5e55),
            // No duplicates: the peer links are TCP connections, and the write path's forwarded
            // requests travel once (the Zab simulation duplicates to stress the core alone).
            faults: if opts.faults {
                NetFaults { reset: 0.005, duplicate: 0.0, delay_ms: (1, 20) }
            } else {
                NetFaults::CALM
            },
            opts,
            now: 0,
            base: Instant::now(),
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            servers,
            configs,
            net: Network::default(),
            clients,
            next_conn: 0,
            next_value: 0,
            etcd_xid: 0,
            etcd_orphans: BTreeMap::new(),
            etcd_unknown: BTreeMap::new(),
            etcd_submitting: None,
            operations: Vec::new(),
            closed_at: BTreeMap::new(),
            closed_by_client: BTreeSet::new(),
            ephemerals: BTreeMap::new(),
            report: ZkSimReport::default(),
            trace: Vec::new(),
        }
    }

    fn clock(&self) -> Now {
        Now { instant: self.base + Duration::from_millis(self.now), wall_ms: 1_800_000_000_000 + self.now as i64 }
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
        self.report.fingerprint = (self.report.fingerprint ^ value).wrapping_mul(0x0100_0000_01b3);
    }

    fn run(&mut self) -> Result<(), String> {
        for i in 0..self.servers.len() {
            self.restart(i)?;
        }
        if self.opts.faults {
            self.schedule(800, Event::Fault);
        }
        for c in 0..self.clients.len() {
            let at = 50 + 10 * c as u64;
            self.schedule(at, Event::Client(c));
        }
        let end = self.opts.fault_ms + self.opts.heal_ms;
        let mut healed = false;
        let mut handled = 0u64;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            if at > end {
                break;
            }
            handled += 1;
            if handled > 3_000_000 {
                return Err("a runaway: events keep scheduling each other".into());
            }
            if !healed && at >= self.opts.fault_ms {
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
        self.note(|| "== healing".into());
        self.faults = NetFaults::CALM;
        self.net.heal();
        for i in 0..self.servers.len() {
            self.free_disk(i);
            if self.servers[i].replica.is_none() {
                self.restart(i)?;
            }
        }
        Ok(())
    }

    fn restart(&mut self, i: usize) -> Result<(), String> {
        let config = self.configs[i].clone();
        let now = self.clock();
        let s = &mut self.servers[i];
        *s.job.borrow_mut() = None;
        *s.seen.borrow_mut() = Default::default();
        let applied = Rc::new(RefCell::new(Vec::new()));
        let path_config = WritePathConfig {
            id: s.id,
            shards: 1 + ETCD_SLOT,
            session_timeout_ms: (1_000, 20_000),
            sequencer: SequencerConfig::default(),
            read_only_after: None,
        };
        let state = Rc::new(RefCell::new(MachineState {
            tree: DataTree::new(),
            etcd: KeySpace::new(),
            path: WritePath::new(path_config, now),
            effects: Vec::new(),
            now,
            applied: applied.clone(),
            closed: Vec::new(),
        }));
        let parts = Parts {
            log: SimLog { disk: s.disk.clone(), applied, seen: s.seen.clone() },
            epochs: SimEpochs(s.disk.clone()),
            snapshots: SimSnapshots { disk: s.disk.clone(), job: s.job.clone(), seen: s.seen.clone(), releasing: None },
            peers: SimPeers(s.seen.clone()),
            state: Machine { inner: state.clone() },
        };
        let disk = s.disk.clone();
        let logged = move |after: Zxid| {
            let entries: Vec<LogEntry> = disk.borrow().log.iter().filter(|e| e.zxid > after).cloned().collect();
            entries.into_iter()
        };
        let (replica, _) = Replica::recover(config, parts, logged).map_err(|e| format!("server {}: {e}", s.id))?;
        *s.seen.borrow_mut() = Default::default();
        // What recovery replayed is this server's own state, not news to anyone.
        state.borrow_mut().effects.clear();
        state.borrow_mut().closed.clear();
        s.replica = Some(replica);
        s.state = Some(state);
        let (id, life) = (s.id, s.life);
        self.note(|| format!("start {id}"));
        let at = self.now + self.rng.random_range(1..self.opts.tick_ms);
        self.schedule(at, Event::Tick(i, life));
        let replica = self.servers[i].replica.as_mut().expect("started");
        run_now(replica.start()).map_err(|e| format!("server {id}: {e}"))?;
        self.settle(i)
    }

    fn crash(&mut self, i: usize) {
        let s = &mut self.servers[i];
        if s.replica.is_none() {
            return;
        }
        s.replica = None;
        s.state = None;
        s.life += 1;
        s.disk.borrow_mut().crash(&mut self.rng);
        let id = s.id;
        for peer in 1..=self.servers.len() as u64 {
            if peer != id {
                self.net.reset(self.now, id, peer);
                self.tell_reset(id, peer);
            }
        }
        for c in 0..self.clients.len() {
            if self.clients[c].conn.is_some_and(|(node, _, _)| node == i) {
                self.lose_connection(c);
            }
        }
        self.report.crashes += 1;
        self.note(|| format!("crash {id}"));
    }

    fn tell_reset(&mut self, a: ServerId, b: ServerId) {
        for (node, peer) in [(a, b), (b, a)] {
            let i = (node - 1) as usize;
            let life = self.servers[i].life;
            self.schedule(self.now + 1, Event::Disconnected { node: i, peer, life });
        }
    }

    fn free_disk(&mut self, i: usize) {
        if self.servers[i].disk.borrow_mut().full_since.take().is_some() && self.servers[i].replica.is_some() {
            self.refsync(i);
        }
    }

    fn refsync(&mut self, i: usize) {
        let s = &self.servers[i];
        let (life, generation, upto) = {
            let disk = s.disk.borrow();
            (s.life, disk.generation, disk.log.len())
        };
        let at = self.now + self.rng.random_range(1..6);
        self.schedule(at, Event::Durable { node: i, life, generation, upto });
    }

    fn fault(&mut self) {
        if self.now >= self.opts.fault_ms {
            return;
        }
        let n = self.servers.len();
        match self.rng.random_range(0..8) {
            0 | 1 => {
                let i = self.rng.random_range(0..n);
                if self.servers[i].replica.is_some() {
                    self.crash(i);
                    let back = self.now + self.rng.random_range(100..2500);
                    self.schedule(back, Event::Restart(i));
                }
            }
            2 | 3 if !self.net.partitioned() => {
                if let Some((a, b)) = super::random_split(&mut self.rng, n) {
                    self.note(|| format!("partition {a:?} | {b:?}"));
                    for (x, y) in self.net.partition(self.now, &a, &b) {
                        self.tell_reset(x, y);
                    }
                    let heal = self.now + self.rng.random_range(300..3000);
                    self.schedule(heal, Event::Heal);
                }
            }
            4 => {
                let i = self.rng.random_range(0..n);
                if !self.servers.iter().any(|s| s.disk.borrow().full_since.is_some()) {
                    self.servers[i].disk.borrow_mut().full_since = Some(self.now);
                    let id = self.servers[i].id;
                    self.note(|| format!("server {id}: disk full"));
                    let freed = self.now + self.rng.random_range(200..3000);
                    self.schedule(freed, Event::DiskFreed(i));
                }
            }
            _ => {}
        }
        let next = self.now + self.rng.random_range(300..1500);
        self.schedule(next, Event::Fault);
    }

    fn event(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick(i, life) => {
                if self.servers[i].life != life || self.servers[i].replica.is_none() {
                    return Ok(());
                }
                self.step(i, Input::Tick)?;
                // The write path's half ticks (expiry, the reaper), and the liveness report
                // of the sessions whose clients are connected here (what the shards send).
                let touched: Vec<SessionId> = self
                    .clients
                    .iter()
                    .filter(|c| c.conn.is_some_and(|(node, _, l)| node == i && l == life))
                    .filter_map(|c| c.session.as_ref().map(|(id, _)| *id))
                    .collect();
                self.with_path(i, |path, tree, now| {
                    path.handle(tree, now, ToWritePath::Touch(touched));
                    path.tick(tree, now);
                    path.flush();
                })?;
                let next = self.now + self.opts.tick_ms / 2;
                self.schedule(next, Event::Tick(i, life));
            }
            Event::Deliver(flight) => {
                if !self.net.alive(&flight) {
                    return Ok(());
                }
                let i = (flight.to - 1) as usize;
                self.mix(flight.from * 31 + flight.to);
                self.step(i, Input::Message(flight.from, flight.msg))?;
            }
            Event::Disconnected { node, peer, life } => {
                if self.servers[node].life == life && self.servers[node].replica.is_some() {
                    self.step(node, Input::Disconnected(peer))?;
                }
            }
            Event::Durable { node, life, generation, upto } => {
                let zxid = {
                    let s = &self.servers[node];
                    let mut disk = s.disk.borrow_mut();
                    if s.life != life
                        || disk.generation != generation
                        || s.replica.is_none()
                        || disk.full_since.is_some()
                    {
                        return Ok(());
                    }
                    disk.durable = disk.durable.max(upto.min(disk.log.len()));
                    disk.durable_zxid()
                };
                self.step(node, Input::Durable(zxid))?;
            }
            Event::SnapshotWritten { node, life } => {
                let s = &self.servers[node];
                if s.life == life && s.replica.is_some() {
                    if let Some(job) = s.job.borrow_mut().as_mut() {
                        finish_job(&mut s.disk.borrow_mut(), job, 2);
                    }
                }
            }
            Event::Input { node, life, input } => {
                if self.servers[node].life == life && self.servers[node].replica.is_some() {
                    self.step(node, input)?;
                }
            }
            Event::Client(c) => self.client_acts(c)?,
            Event::Restart(i) => {
                if self.servers[i].replica.is_none() {
                    self.restart(i)?;
                }
            }
            Event::DiskFreed(i) => self.free_disk(i),
            Event::Heal => self.net.heal(),
            Event::Fault => self.fault(),
        }
        Ok(())
    }

    /// Runs `f` on server `i`'s write path and tree (if it runs), then acts on its effects.
    fn with_path(&mut self, i: usize, f: impl FnOnce(&mut WritePath, &DataTree, Now)) -> Result<(), String> {
        let now = self.clock();
        let Some(state) = self.servers[i].state.clone() else { return Ok(()) };
        {
            let mut s = state.borrow_mut();
            let s = &mut *s;
            s.now = now;
            f(&mut s.path, &s.tree, now);
            s.drain();
        }
        self.effects(i)
    }

    fn step(&mut self, i: usize, input: Input) -> Result<(), String> {
        let now = self.clock();
        if let Some(state) = &self.servers[i].state {
            state.borrow_mut().now = now;
        }
        let Some(replica) = self.servers[i].replica.as_mut() else { return Ok(()) };
        super::step_replica(replica, input, i as ServerId + 1)?;
        self.settle(i)
    }

    /// Acts on what server `i`'s last step did: network sends, fsyncs, snapshots, and the
    /// write path's effects.
    fn settle(&mut self, i: usize) -> Result<(), String> {
        let seen = std::mem::take(&mut *self.servers[i].seen.borrow_mut());
        let id = self.servers[i].id;
        if let Some(v) = seen.violations.first() {
            return Err(format!("server {id}: {v}"));
        }
        for (to, msg) in seen.sent {
            let faults = self.faults;
            match self.net.send(&mut self.rng, &faults, self.now, id, to, msg) {
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
            let life = self.servers[i].life;
            let at = self.now + self.rng.random_range(1..200);
            self.schedule(at, Event::SnapshotWritten { node: i, life });
        }
        if let Some(replica) = self.servers[i].replica.as_ref() {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| replica.check_invariants())).is_err() {
                return Err(format!("server {id}: replica invariant violated"));
            }
        }
        self.effects(i)
    }

    fn effects(&mut self, i: usize) -> Result<(), String> {
        let Some(state) = self.servers[i].state.clone() else { return Ok(()) };
        let (effects, closed) = {
            let mut s = state.borrow_mut();
            (std::mem::take(&mut s.effects), std::mem::take(&mut s.closed))
        };
        for session in closed {
            if !self.closed_at.contains_key(&session) {
                self.closed_at.insert(session, self.now);
                if !self.closed_by_client.contains(&session) {
                    self.report.expired += 1;
                    self.check_expiry(session)?;
                }
                self.note(|| format!("server {}: session {session:?} closed", i + 1));
            }
        }
        let life = self.servers[i].life;
        let mut answers: Vec<ToClient> = Vec::new();
        for effect in effects {
            match effect {
                Effect::Client { msg, .. } => answers.push(msg),
                Effect::Publish { batch, answers: per_shard } => {
                    self.etcd_puts_seen(&batch);
                    answers.extend(per_shard.into_iter().flatten().map(|(_, a)| a));
                }
                Effect::Propose { first, payloads } => {
                    let input = Input::Propose { first: Some(first), payloads };
                    let at = (self.now + self.rng.random_range(0..3)).max(self.servers[i].proposing_until);
                    self.servers[i].proposing_until = at;
                    self.schedule(at, Event::Input { node: i, life, input });
                }
                Effect::Forward { to, data } => {
                    self.servers[i].seen.borrow_mut().sent.push((to, Message::Forward { data }));
                }
                Effect::Sync { id } => self.schedule(self.now, Event::Input { node: i, life, input: Input::Sync(id) }),
                Effect::ReportLiveness { sessions } => {
                    self.schedule(self.now, Event::Input { node: i, life, input: Input::Touch(sessions) })
                }
                Effect::DisconnectAll => {
                    for c in 0..self.clients.len() {
                        if self.clients[c].conn.is_some_and(|(node, _, _)| node == i) {
                            self.lose_connection(c);
                        }
                    }
                }
                Effect::RoleReported { role, .. } => self.note(|| format!("server {}: {role:?}", i + 1)),
                Effect::ReadOnly(on) => self.note(|| format!("server {}: read-only {on}", i + 1)),
                Effect::Fatal { why } => return Err(format!("server {}: fatal: {why}", i + 1)),
            }
        }
        // Sends queued by forwards go out now.
        if !self.servers[i].seen.borrow().sent.is_empty() {
            self.settle(i)?;
        }
        // Per connection in order; across connections in connection order (the write path's
        // hash maps must not decide a run).
        answers.sort_by_key(conn_of);
        for answer in answers {
            self.answer(i, answer)?;
        }
        Ok(())
    }

    /// A session's close was applied while its client did not ask for it: expiry. Once
    /// healed, a client that stayed connected to a serving server must not lose its session.
    fn check_expiry(&mut self, session: SessionId) -> Result<(), String> {
        let settled = self.opts.fault_ms + 3 * self.opts.session_timeout_ms as u64;
        if self.now < settled {
            return Ok(());
        }
        let owner = self.clients.iter().position(|c| c.session.as_ref().is_some_and(|(s, _)| *s == session));
        match owner {
            Some(c) if self.clients[c].conn.is_some() => {
                Err(format!("session {session:?} of client {c}, connected and heartbeating while healed, expired"))
            }
            _ => Ok(()),
        }
    }

    fn lose_connection(&mut self, c: usize) {
        let Some((_, conn, _)) = self.clients[c].conn.take() else { return };
        self.note(|| format!("client {c}: connection lost"));
        // Whatever it waited for has an unknown outcome (a write may still commit). An etcd
        // write's answer may still come from its server, if that server applies it: then
        // the history learns its outcome (the client would have, had it waited).
        if let Waiting::EtcdWrite { op: Some(op) } = self.clients[c].waiting {
            self.etcd_orphans.insert(conn, op);
            let new = match self.operations[op].op {
                RegisterOp::Write(v) | RegisterOp::Cas { new: v, .. } => v,
                RegisterOp::Read(_) => unreachable!("a write's operation is a write"),
            };
            self.etcd_unknown.insert(new, op);
        }
        self.clients[c].waiting = Waiting::Nothing;
        let at = self.now + self.rng.random_range(30..300);
        self.schedule(at, Event::Client(c));
    }

    /// The client bound to `conn` on server `i`, if any.
    fn client_of(&self, i: usize, conn: ConnId) -> Option<usize> {
        let life = self.servers[i].life;
        self.clients.iter().position(|c| c.conn == Some((i, conn, life)))
    }

    fn answer(&mut self, i: usize, answer: ToClient) -> Result<(), String> {
        let Some(c) = self.client_of(i, conn_of(&answer)) else {
            if let ToClient::Written { conn, outcome: WriteOutcome::Etcd { result, .. }, .. } = answer {
                if let Some(op) = self.etcd_orphans.remove(&conn) {
                    self.note(|| format!("server {}: orphaned etcd write {op} answered {result:?}", i + 1));
                    self.etcd_written(op, result)?;
                }
            }
            return Ok(());
        };
        self.mix(c as u64 + 1);
        self.note(|| format!("client {c} <- server {}: {answer:?}", i + 1));
        if self.clients[c].etcd {
            return self.etcd_answer(i, c, answer);
        }
        match answer {
            ToClient::Connected { session, password, .. } => {
                if !matches!(self.clients[c].waiting, Waiting::Connect) {
                    return Err(format!("client {c}: a session answer it did not ask for"));
                }
                let resumed = self.clients[c].session.as_ref().is_some_and(|(s, _)| *s == session);
                if let Some(at) = self.closed_at.get(&session) {
                    return Err(format!(
                        "server {}: resumed session {session:?} for client {c}, closed at {at} ms",
                        i + 1
                    ));
                }
                if resumed {
                    self.report.resumed += 1;
                } else {
                    self.report.sessions += 1;
                }
                self.note(|| {
                    format!(
                        "client {c}: session {session:?} on server {} ({})",
                        i + 1,
                        if resumed { "resumed" } else { "new" }
                    )
                });
                self.clients[c].session = Some((session, password));
                self.clients[c].waiting = Waiting::Nothing;
                self.schedule_act(c);
            }
            ToClient::SessionExpired { .. } => {
                self.note(|| format!("client {c}: told its session expired"));
                let old = self.clients[c].session.take();
                if let Some((s, _)) = old {
                    // No server has applied a close of it: it is alive in the committed
                    // history (its creation committed before the client was told of it).
                    // Unless its client asked for the close and never learned the outcome:
                    // that close may have committed and been applied only by a recovery's
                    // replay, which is not news the simulator records.
                    if !self.closed_at.contains_key(&s) && !self.closed_by_client.contains(&s) {
                        return Err(format!("server {}: told client {c} its live session {s:?} expired", i + 1));
                    }
                }
                self.clients[c].conn = None;
                self.clients[c].waiting = Waiting::Nothing;
                self.schedule_act(c);
            }
            ToClient::Close { .. } => self.lose_connection(c),
            ToClient::Written { outcome, .. } => {
                let Waiting::Write { op, ephemeral, close } =
                    std::mem::replace(&mut self.clients[c].waiting, Waiting::Nothing)
                else {
                    return Err(format!("client {c}: an answer to a write it did not send"));
                };
                match outcome {
                    WriteOutcome::Etcd { .. } => {
                        return Err(format!("client {c}: an etcd answer to a ZooKeeper write"));
                    }
                    WriteOutcome::Applied { results, .. } => {
                        self.report.applied += 1;
                        if let Some(op) = op {
                            self.operations[op].completed = Some(self.now);
                            if let RegisterOp::Cas { ok, .. } = &mut self.operations[op].op {
                                *ok = Some(true);
                            }
                        }
                        if let (Some(path), Some((session, _))) = (ephemeral, &self.clients[c].session) {
                            self.ephemerals.insert(path, *session);
                        }
                        if close {
                            self.clients[c].session = None;
                            self.clients[c].conn = None;
                        }
                        if results.iter().any(|r| matches!(r, OpResult::Error(_))) {
                            return Err(format!(
                                "client {c}: an applied single write with an error result: {results:?}"
                            ));
                        }
                    }
                    WriteOutcome::Refused { rejected, .. } => {
                        self.report.refused += 1;
                        let code = match rejected {
                            baton_engine::sequencer::Rejected::Op(code) => code,
                            baton_engine::sequencer::Rejected::Multi(_) => ErrorCode::RuntimeInconsistency,
                        };
                        match (op, code) {
                            (Some(op), ErrorCode::BadVersion | ErrorCode::NodeExists) => {
                                self.operations[op].completed = Some(self.now);
                                if let RegisterOp::Cas { ok, .. } = &mut self.operations[op].op {
                                    *ok = Some(false);
                                }
                            }
                            // Refused for another reason (no leader, session moved): it did
                            // not happen. An operation without an outcome that is a read is
                            // left out of the check.
                            (Some(op), _) => {
                                self.operations[op].op = RegisterOp::Read(None);
                                self.operations[op].completed = None;
                            }
                            (None, _) => {}
                        }
                        if matches!(code, ErrorCode::SessionExpired | ErrorCode::SessionMoved) {
                            self.lose_connection(c);
                            return Ok(());
                        }
                    }
                }
                self.schedule_act(c);
            }
            ToClient::Synced { zxid, .. } => {
                let Waiting::Sync { key, invoked } = std::mem::replace(&mut self.clients[c].waiting, Waiting::Nothing)
                else {
                    return Err(format!("client {c}: a sync answer it did not ask for"));
                };
                if zxid.is_some() {
                    // The read after the sync, from this server's tree now.
                    let state = self.servers[i].state.clone().expect("answered by a running server");
                    let (value, version) = read_register(&state.borrow().tree, key);
                    self.operations.push(Operation {
                        key,
                        op: RegisterOp::Read(value),
                        invoked,
                        completed: Some(self.now),
                    });
                    self.clients[c].known.insert(key, (value, version));
                    self.report.reads += 1;
                }
                self.schedule_act(c);
            }
        }
        Ok(())
    }

    fn schedule_act(&mut self, c: usize) {
        let at = self.now + self.rng.random_range(5..60);
        self.schedule(at, Event::Client(c));
    }

    /// The client's next move: connect (or resume) when it has no connection, otherwise its
    /// next request.
    fn client_acts(&mut self, c: usize) -> Result<(), String> {
        if self.now >= self.opts.fault_ms + self.opts.heal_ms - 2_000
            || !matches!(self.clients[c].waiting, Waiting::Nothing)
        {
            return Ok(());
        }
        if self.clients[c].etcd {
            return self.etcd_client_acts(c);
        }
        let Some((i, conn, _)) = self.clients[c].conn else {
            let live: Vec<usize> = (0..self.servers.len()).filter(|&i| self.servers[i].replica.is_some()).collect();
            if live.is_empty() {
                self.schedule_act(c);
                return Ok(());
            }
            let i = live[self.rng.random_range(0..live.len())];
            self.next_conn += 1;
            let conn = ConnId(self.next_conn);
            self.clients[c].conn = Some((i, conn, self.servers[i].life));
            self.clients[c].waiting = Waiting::Connect;
            let (session_id, password) = self.clients[c].session.clone().unwrap_or((SessionId::NONE, Vec::new()));
            let req = SessionRequest {
                session_id,
                password,
                timeout_ms: self.opts.session_timeout_ms,
                last_zxid_seen: Zxid::ZERO,
                read_only: false,
            };
            let client = ClientRef { shard: 0, conn };
            return self.with_path(i, |path, tree, now| {
                path.handle(tree, now, ToWritePath::Connect { client, req });
                path.flush();
            });
        };
        let Some((session, _)) = self.clients[c].session.clone() else { return Ok(()) };
        self.clients[c].xid += 1;
        let xid = self.clients[c].xid;
        let client = ClientRef { shard: 0, conn };
        let roll = self.rng.random_range(0..100);
        let key = self.rng.random_range(0..REGISTERS);
        let message = if roll < 30 {
            self.clients[c].waiting = Waiting::Sync { key, invoked: self.now };
            ToWritePath::Sync { client, xid }
        } else {
            self.next_value += 1;
            let value = self.next_value;
            let (op, regop, ephemeral, close) = if roll < 55 {
                // A compare-and-set at the version last read (or a create if never seen).
                match self.clients[c].known.get(&key).copied() {
                    Some((Some(expected), version)) => (
                        WriteOp::SetData { path: register(key), data: Some(value.to_string().into_bytes()), version },
                        Some(RegisterOp::Cas { expected: Some(expected), new: value, ok: None }),
                        None,
                        false,
                    ),
                    // A create is a compare-and-set from "no node" (NodeExists: it held something).
                    _ => (
                        create(&register(key), value.to_string().into_bytes(), CreateMode::Persistent),
                        Some(RegisterOp::Cas { expected: None, new: value, ok: None }),
                        None,
                        false,
                    ),
                }
            } else if roll < 70 && self.clients[c].known.get(&key).is_some_and(|(v, _)| v.is_some()) {
                (
                    WriteOp::SetData { path: register(key), data: Some(value.to_string().into_bytes()), version: -1 },
                    Some(RegisterOp::Write(value)),
                    None,
                    false,
                )
            } else if roll < 97 {
                self.clients[c].ephemerals += 1;
                let path = format!("/e-{c}-{}", self.clients[c].ephemerals);
                (create(&path, Vec::new(), CreateMode::Ephemeral), None, Some(path), false)
            } else {
                self.closed_by_client.insert(session);
                (WriteOp::CloseSession, None, None, true)
            };
            let index = regop.map(|op| {
                self.operations.push(Operation { key, op, invoked: self.now, completed: None });
                self.operations.len() - 1
            });
            self.clients[c].waiting = Waiting::Write { op: index, ephemeral, close };
            let req = WriteRequest { session_id: session, cxid: xid, auth: Vec::new(), op };
            ToWritePath::Write { client, xid, req }
        };
        self.note(|| format!("client {c} -> server {}: {message:?}", i + 1));
        self.with_path(i, |path, tree, now| {
            path.handle(tree, now, message);
            path.flush();
        })
    }

    /// An etcd client's next move: pick a server when it has none (etcd clients have no
    /// session: a connection is only where requests go), otherwise its next request.
    fn etcd_client_acts(&mut self, c: usize) -> Result<(), String> {
        let Some((i, conn, _)) = self.clients[c].conn else {
            let live: Vec<usize> = (0..self.servers.len()).filter(|&i| self.servers[i].replica.is_some()).collect();
            if !live.is_empty() {
                let i = live[self.rng.random_range(0..live.len())];
                self.next_conn += 1;
                self.clients[c].conn = Some((i, ConnId(self.next_conn), self.servers[i].life));
            }
            self.schedule_act(c);
            return Ok(());
        };
        // A server's etcd writes share one session, so their cxids (by which the write path
        // finds whom an applied write answers) come from one counter, as the front's do.
        self.etcd_xid += 1;
        let xid = self.etcd_xid;
        let client = ClientRef { shard: ETCD_SLOT, conn };
        let roll = self.rng.random_range(0..100);
        let key = self.rng.random_range(0..REGISTERS);
        let message = if roll < 35 {
            self.clients[c].waiting = Waiting::EtcdRead { key, invoked: self.now };
            ToWritePath::Sync { client, xid }
        } else {
            self.next_value += 1;
            let value = self.next_value;
            let put = |value: u64| PutRequest {
                key: etcd_key(key),
                value: value.to_string().into_bytes(),
                ..PutRequest::default()
            };
            let (txn, op) = if roll < 60 {
                (EtcdTxn::Put(put(value)), Some(RegisterOp::Write(value)))
            } else if roll < 95 {
                // A put if the key holds what this client last read (if it was absent, if it
                // still is: etcd compares a missing key's create revision as 0).
                let expected = self.clients[c].known.get(&key).and_then(|(v, _)| *v);
                let target = match expected {
                    Some(v) => CompareTarget::Value(v.to_string().into_bytes()),
                    None => CompareTarget::Create(0),
                };
                let compare =
                    Compare { result: CompareResult::Equal, target, key: etcd_key(key), range_end: Vec::new() };
                let txn = TxnRequest {
                    compare: vec![compare],
                    success: vec![RequestOp::Put(put(value))],
                    failure: vec![RequestOp::Range(RangeRequest { key: etcd_key(key), ..RangeRequest::default() })],
                };
                (EtcdTxn::Txn(txn), Some(RegisterOp::Cas { expected, new: value, ok: None }))
            } else {
                // A compaction up to what this server has applied (some fail: compacted
                // already, or a revision the keyspace has not reached).
                let state = self.servers[i].state.clone().expect("a connected client's server runs");
                let revision = state.borrow().etcd.revision() - self.rng.random_range(0..3);
                (EtcdTxn::Compact { revision }, None)
            };
            let index = op.map(|op| {
                self.operations.push(Operation { key: ETCD_REGISTER + key, op, invoked: self.now, completed: None });
                self.operations.len() - 1
            });
            self.clients[c].waiting = Waiting::EtcdWrite { op: index };
            let session = baton_server::etcd::front::etcd_session(self.servers[i].id);
            let req = WriteRequest { session_id: session, cxid: xid, auth: Vec::new(), op: WriteOp::Etcd(txn) };
            ToWritePath::Write { client, xid, req }
        };
        self.note(|| format!("etcd client {c} -> server {}: {message:?}", i + 1));
        self.etcd_submitting = Some(conn);
        let done = self.with_path(i, |path, tree, now| {
            path.handle(tree, now, message);
            path.flush();
        });
        self.etcd_submitting = None;
        done
    }

    /// A committed batch as a server applies it: an etcd register write whose client does not
    /// know its outcome, now seen applied (its value is unique), took effect before now.
    fn etcd_puts_seen(&mut self, batch: &[baton_server::runtime::CommittedChanges]) {
        if self.etcd_unknown.is_empty() {
            return;
        }
        for event in batch.iter().flat_map(|c| &c.etcd_events) {
            let Some(value) = std::str::from_utf8(&event.kv.value).ok().and_then(|v| v.parse::<u64>().ok()) else {
                continue;
            };
            if let Some(op) = self.etcd_unknown.remove(&value) {
                if self.operations[op].completed.is_none() {
                    self.operations[op].completed = Some(self.now);
                    if let RegisterOp::Cas { ok, .. } = &mut self.operations[op].op {
                        *ok = Some(true);
                    }
                }
            }
        }
    }

    /// An etcd register write's answer, now.
    fn etcd_written(&mut self, op: usize, result: Result<EtcdResponse, MvccError>) -> Result<(), String> {
        match result {
            Ok(EtcdResponse::Put(_)) => self.operations[op].completed = Some(self.now),
            Ok(EtcdResponse::Txn(txn)) => {
                self.operations[op].completed = Some(self.now);
                if let RegisterOp::Cas { ok, .. } = &mut self.operations[op].op {
                    *ok = Some(txn.succeeded);
                }
                if !txn.succeeded {
                    self.report.etcd_failed_compares += 1;
                }
            }
            other => return Err(format!("etcd register write {op} answered {other:?}")),
        }
        Ok(())
    }

    /// What the write path told an etcd client.
    fn etcd_answer(&mut self, i: usize, c: usize, answer: ToClient) -> Result<(), String> {
        let waiting = std::mem::replace(&mut self.clients[c].waiting, Waiting::Nothing);
        match (answer, waiting) {
            (ToClient::Close { conn }, waiting) => {
                // The front's "no leader". Answered as the request arrived, it was neither
                // proposed nor forwarded: it did not happen. Later, the outcome is unknown.
                match waiting {
                    Waiting::EtcdWrite { op: Some(op) } if self.etcd_submitting == Some(conn) => {
                        self.operations[op].op = RegisterOp::Read(None);
                        self.operations[op].completed = None;
                    }
                    waiting => self.clients[c].waiting = waiting,
                }
                self.lose_connection(c);
                return Ok(());
            }
            (ToClient::Written { outcome, .. }, Waiting::EtcdWrite { op }) => match outcome {
                WriteOutcome::Etcd { result, .. } => {
                    self.report.etcd_applied += 1;
                    if let Some(op) = op {
                        self.etcd_written(op, result)?;
                    }
                }
                WriteOutcome::Refused { .. } => {
                    // Refused before the log (a full disk): it did not happen.
                    if let Some(op) = op {
                        self.operations[op].op = RegisterOp::Read(None);
                        self.operations[op].completed = None;
                    }
                }
                WriteOutcome::Applied { .. } => return Err(format!("etcd client {c}: a ZooKeeper answer")),
            },
            (ToClient::Synced { zxid, .. }, Waiting::EtcdRead { key, invoked }) => {
                if zxid.is_some() {
                    let state = self.servers[i].state.clone().expect("answered by a running server");
                    let read =
                        state.borrow().etcd.range(&RangeRequest { key: etcd_key(key), ..RangeRequest::default() });
                    let kvs = read.map_err(|e| format!("etcd client {c}: reading {key}: {e}"))?.kvs;
                    let value = match kvs.first() {
                        Some(kv) => Some(
                            std::str::from_utf8(&kv.value)
                                .ok()
                                .and_then(|v| v.parse().ok())
                                .ok_or_else(|| format!("etcd key r{key} holds {:?}", kv.value))?,
                        ),
                        None => None,
                    };
                    let op = RegisterOp::Read(value);
                    self.operations.push(Operation {
                        key: ETCD_REGISTER + key,
                        op,
                        invoked,
                        completed: Some(self.now),
                    });
                    self.clients[c].known.insert(key, (value, 0));
                    self.report.etcd_reads += 1;
                }
            }
            (answer, waiting) => {
                return Err(format!("etcd client {c}: {answer:?} while waiting for {waiting:?}"));
            }
        }
        self.schedule_act(c);
        Ok(())
    }

    fn check_end(&mut self) -> Result<(), String> {
        let roles: Vec<Option<Role>> =
            self.servers.iter().map(|s| s.replica.as_ref().map(|r| r.zab().role())).collect();
        let leaders = roles.iter().filter(|r| matches!(r, Some(Role::Leading { established: true, .. }))).count();
        let serving = roles.iter().all(|r| r.is_some_and(|r| r.serving()));
        if leaders != 1 || !serving {
            return Err(format!("not healed: roles {roles:?}"));
        }
        let trees: Vec<Rc<RefCell<MachineState>>> = self.servers.iter().filter_map(|s| s.state.clone()).collect();
        let digests: Vec<(u64, Zxid)> =
            trees.iter().map(|s| (s.borrow().tree.digest(), s.borrow().tree.last_zxid())).collect();
        if digests.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!("trees differ once healed: {digests:?}"));
        }
        let keyspaces: Vec<(i64, Vec<u8>)> = trees
            .iter()
            .map(|s| {
                let s = s.borrow();
                (s.etcd.revision(), s.etcd.to_image())
            })
            .collect();
        if keyspaces.windows(2).any(|w| w[0] != w[1]) {
            let revisions: Vec<i64> = keyspaces.iter().map(|k| k.0).collect();
            return Err(format!("etcd keyspaces differ once healed (revisions {revisions:?})"));
        }
        let state = trees[0].borrow();
        let tree = &state.tree;
        tree.check_invariants();
        for path in tree.sorted_paths() {
            if let Some(node) = tree.get(&path) {
                let owner = node.stat().ephemeral_owner;
                if owner != 0 && !tree.sessions().contains_key(&SessionId(owner)) {
                    return Err(format!("{path} belongs to session {owner:#x}, which the tree does not know"));
                }
            }
        }
        for (path, session) in &self.ephemerals {
            let alive = tree.sessions().contains_key(session);
            let there = tree.get(path).is_some();
            if alive != there {
                return Err(format!(
                    "acknowledged ephemeral {path} of session {session:?}: session alive {alive}, node there {there}"
                ));
            }
        }
        self.report.last_zxid = tree.last_zxid().0;
        drop(state);
        linearizability::check(&self.operations).map_err(|v| {
            let mut ops: Vec<&Operation> = self.operations.iter().filter(|o| o.key == v.key).collect();
            ops.sort_by_key(|o| o.invoked);
            let lines: Vec<String> =
                ops.iter().map(|o| format!("  {:?} [{}, {:?}]", o.op, o.invoked, o.completed)).collect();
            format!("{v}:\n{}", lines.join("\n"))
        })
    }
}

fn conn_of(answer: &ToClient) -> ConnId {
    match answer {
        ToClient::Written { conn, .. }
        | ToClient::Synced { conn, .. }
        | ToClient::Connected { conn, .. }
        | ToClient::SessionExpired { conn }
        | ToClient::Close { conn } => *conn,
    }
}

fn register(key: u64) -> String {
    format!("/r{key}")
}

fn etcd_key(key: u64) -> Vec<u8> {
    format!("r{key}").into_bytes()
}

fn create(path: &str, data: Vec<u8>, mode: CreateMode) -> WriteOp {
    WriteOp::Create(CreateOp {
        path: path.into(),
        data: Some(data),
        acl: open_acl(),
        mode,
        ttl_ms: 0,
        container: false,
    })
}

/// A register's value (its data, a number) and version; `None` before it exists.
fn read_register(tree: &DataTree, key: u64) -> (Option<u64>, i32) {
    match tree.get(&register(key)) {
        Some(node) => {
            let value = std::str::from_utf8(node.data()).ok().and_then(|s| s.parse().ok());
            (value, node.stat().version)
        }
        None => (None, -1),
    }
}
