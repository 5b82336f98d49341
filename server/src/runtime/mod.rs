//! Thread-per-core runtime: one glommio executor per shard, all accepting clients on the
//! same port (SO_REUSEPORT), with the sequencer (the [`Core`](crate::core::Core)) on shard 0.
//!
//! ```text
//!   shard i: accept ─▶ conn tasks ─reads─▶ shared tree (read lock)
//!                          │ writes, connects, session touches
//!                          ▼
//!   shard 0: Core ── Sequencer ─▶ WAL (group commit) ─durable─▶ apply under the write lock
//!                                                              └─▶ every shard's inbox, in zxid order
//! ```
//!
//! The ordering rule that keeps watches exact: the core pushes a committed batch into every
//! shard's inbox *while it still holds the tree's write lock*, and a shard drains its inbox
//! *while it holds the read lock*, before it serves a read. So whatever state a read sees,
//! the shard has already sent the notifications of every change in it (event before data),
//! and a watch registered by that read misses no later change.

pub mod inbox;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use baton_engine::sequencer::{AuthId, WriteOp};
use baton_engine::tree::{Change, DataTree};
use baton_engine::Zxid;
use crossbeam::utils::CachePadded;

use crate::config::ServerConfig;
use crate::watch::ConnId;
use crate::zk::proto::ConnectRequest;
use inbox::Outbox;

/// Index of a shard (0 also runs the core).
pub type ShardId = usize;

/// What a shard asks of the core.
#[derive(Debug)]
pub enum ToCore {
    /// A connect request (new session or resuming one).
    Connect {
        /// Shard of the connection.
        shard: ShardId,
        /// The connection.
        conn: ConnId,
        /// What the client sent.
        req: ConnectRequest,
    },
    /// A write to sequence.
    Write {
        /// Shard of the connection.
        shard: ShardId,
        /// The connection.
        conn: ConnId,
        /// Its session.
        session: i64,
        /// Request id (to match the reply to its slot).
        xid: i32,
        /// Opcode the client used (shapes the reply).
        op_code: i32,
        /// A multi's opcodes.
        multi_ops: Vec<i32>,
        /// The operation.
        op: WriteOp,
        /// Identities proven on the connection.
        auth: Vec<AuthId>,
    },
    /// A client's `sync`: answered once this server has applied every write the ensemble
    /// accepted before it.
    Sync {
        /// Shard of the connection.
        shard: ShardId,
        /// The connection.
        conn: ConnId,
        /// Request id.
        xid: i32,
        /// The path the client named (echoed in the reply).
        path: String,
    },
    /// Sessions heard from since the last report (ZooKeeper's learner pings carry the same).
    Touch(Vec<i64>),
}

/// One committed entry as every shard sees it.
#[derive(Debug)]
pub struct CommittedEntry {
    /// Its zxid.
    pub zxid: Zxid,
    /// What it changed, for watches.
    pub changes: Vec<Change>,
}

/// Something the core tells one shard to do with one of its connections.
#[derive(Debug)]
pub enum Action {
    /// The reply to a write (committed or refused): fills the slot of request `xid`.
    Reply {
        /// The connection.
        conn: ConnId,
        /// The request it answers.
        xid: i32,
        /// The reply frame.
        frame: Vec<u8>,
    },
    /// The connection's session is open (new or resumed).
    Connected {
        /// The connection.
        conn: ConnId,
        /// Session id.
        session: i64,
        /// Negotiated timeout.
        timeout_ms: i32,
        /// The connect response.
        frame: Vec<u8>,
    },
    /// Send `frame` (if any) and close the connection.
    Close {
        /// The connection.
        conn: ConnId,
        /// A last frame.
        frame: Option<Vec<u8>>,
    },
}

/// What the core sends a shard.
#[derive(Debug)]
pub enum ToShard {
    /// A committed batch (shared by all shards) and this shard's actions, each after the
    /// entry at its index.
    Committed {
        /// The batch, in zxid order.
        entries: Arc<Vec<CommittedEntry>>,
        /// (index into `entries`, action), in order.
        actions: Vec<(usize, Action)>,
    },
    /// An action not tied to a commit (a refused write, a resumed session).
    Act(Action),
    /// This server stopped serving (it lost its leader): close every connection.
    Disconnect,
}

/// Counters of one shard, written by it alone.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Requests received.
    pub received: AtomicU64,
    /// Open connections.
    pub connections: AtomicUsize,
    /// Watches held.
    pub watches: AtomicUsize,
    /// Paths watched.
    pub watched_paths: AtomicUsize,
    /// Connections holding a watch.
    pub watching_conns: AtomicUsize,
}

/// Counters of the core.
#[derive(Debug, Default)]
pub struct CoreStats {
    /// Entries committed.
    pub committed: AtomicU64,
    /// Writes refused before the log.
    pub rejected: AtomicU64,
    /// Entries waiting to become durable.
    pub outstanding: AtomicUsize,
    /// Live sessions.
    pub sessions: AtomicUsize,
    /// Entries durable in the WAL.
    pub wal_entries_durable: AtomicU64,
    /// WAL flushes.
    pub wal_batches: AtomicU64,
    /// The server's [`Mode`], as a number.
    pub mode: AtomicU8,
    /// The epoch it leads or follows (0 while looking).
    pub epoch: AtomicU32,
    /// The leader it follows, or its own id when leading (0 while looking).
    pub leader: AtomicU64,
    /// Whether it serves clients.
    pub serving: AtomicBool,
}

/// What a server is doing in its ensemble, as `srvr` and `mntr` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Electing a leader (or synchronising).
    Looking = 0,
    /// A server alone in its ensemble.
    Standalone = 1,
    /// Leading.
    Leader = 2,
    /// Following a leader.
    Follower = 3,
    /// Observing (not voting).
    Observer = 4,
}

impl Mode {
    /// From [`CoreStats::mode`].
    pub fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Standalone,
            2 => Mode::Leader,
            3 => Mode::Follower,
            4 => Mode::Observer,
            _ => Mode::Looking,
        }
    }

    /// ZooKeeper's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Looking => "looking",
            Mode::Standalone => "standalone",
            Mode::Leader => "leader",
            Mode::Follower => "follower",
            Mode::Observer => "observer",
        }
    }
}

/// A connection as the four-letter words list it.
#[derive(Debug)]
pub struct ConnInfo {
    /// Client address.
    pub peer: SocketAddr,
    /// Bound session (0 until connected).
    pub session_id: AtomicI64,
    /// Negotiated timeout.
    pub timeout_ms: AtomicI32,
    /// Requests received.
    pub received: AtomicU64,
    /// Frames sent.
    pub sent: AtomicU64,
}

/// State every shard reaches.
pub struct Shared {
    /// Settings.
    pub config: ServerConfig,
    tree: RwLock<DataTree>,
    /// When the server started.
    pub started: Instant,
    /// Per-shard counters.
    pub shard_stats: Vec<CachePadded<ShardStats>>,
    /// Core counters.
    pub core_stats: CoreStats,
    /// Open connections, for `cons` and `stat`.
    pub conns: Mutex<BTreeMap<(ShardId, ConnId), Arc<ConnInfo>>>,
    /// Connections open across all shards (for `max_connections`).
    pub open_connections: AtomicUsize,
    /// Queue into the core.
    pub to_core: Outbox<ToCore>,
    /// Queue into each shard.
    pub to_shard: Vec<Outbox<ToShard>>,
    /// Set when the server stops (a signal or a fatal error): every shard winds down.
    pub stopping: AtomicBool,
    /// Set when the core has drained its in-flight writes.
    pub core_done: AtomicBool,
}

impl Shared {
    /// Read access to the tree. Hold it only briefly and never across an await: the core
    /// waits for it to apply commits.
    pub fn tree(&self) -> RwLockReadGuard<'_, DataTree> {
        // A poisoned lock means a thread panicked while holding it; the tree itself is only
        // mutated by `apply`, which does not leave it half-changed on a panic it could catch.
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Write access (the core only).
    pub fn tree_mut(&self) -> RwLockWriteGuard<'_, DataTree> {
        self.tree.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more connection unless the limit is reached.
    pub fn admit_connection(&self) -> bool {
        let limit = self.config.max_connections;
        self.open_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .is_ok()
    }

    /// Total requests received by every shard.
    pub fn received(&self) -> u64 {
        self.shard_stats.iter().map(|s| s.received.load(Ordering::Relaxed)).sum()
    }
}

/// Why a server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Recovery or the write path failed.
    #[error(transparent)]
    Node(#[from] crate::core::CoreError),
    /// The listener failed.
    #[error("client port: {0}")]
    Listen(std::io::Error),
    /// An executor could not start or died.
    #[error("executor: {0}")]
    Executor(String),
}

/// Number of shards for a configured core count (0: every core this process may run on).
pub fn shard_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs a server until it is stopped (SIGTERM/SIGINT) or fails. Blocks the calling thread;
/// `ready` is called with the bound address once every shard accepts clients.
pub fn run(config: ServerConfig, ready: impl FnOnce(SocketAddr)) -> Result<(), ServeError> {
    refuse_if_served(config.client_addr)?;
    let shards = shard_count(config.cores);
    let (to_core, core_inbox) = inbox::inbox::<ToCore>();
    let mut outboxes = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = inbox::inbox::<ToShard>();
        outboxes.push(tx);
        inboxes.push(rx);
    }
    let stop_flag = shutdown_flag();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(Arc<Shared>, SocketAddr), ServeError>>();
    let mut inboxes = inboxes.into_iter();
    let first_inbox = inboxes.next().ok_or_else(|| ServeError::Executor("no shards".into()))?;
    // Shard 0: recovery, the core and its replica, and its own clients.
    let shard0 = executor(0)
        .spawn(move || async move {
            let replica_config = config.replica_config();
            let (id, observer) = (config.server_id, config.is_observer());
            let shared = Arc::new(Shared {
                tree: RwLock::new(DataTree::new()),
                started: Instant::now(),
                shard_stats: (0..shards).map(|_| CachePadded::new(ShardStats::default())).collect(),
                core_stats: CoreStats::default(),
                conns: Mutex::new(BTreeMap::new()),
                open_connections: AtomicUsize::new(0),
                to_core,
                to_shard: outboxes,
                stopping: AtomicBool::new(false),
                core_done: AtomicBool::new(false),
                config,
            });
            let core = crate::core::Core::new(shared.clone(), id, observer);
            let listener: Rc<RefCell<Option<glommio::net::TcpListener>>> = Rc::new(RefCell::new(None));
            let started = {
                let (shared, listener) = (shared.clone(), listener.clone());
                move |recovered: Result<(), crate::core::CoreError>| {
                    if let Err(e) = recovered {
                        let _ = started_tx.send(Err(e.into()));
                        return;
                    }
                    let bound = listen(shared.config.client_addr).and_then(|l| {
                        let addr = l.local_addr()?;
                        *listener.borrow_mut() = Some(l);
                        Ok(addr)
                    });
                    let _ = match bound {
                        Ok(addr) => started_tx.send(Ok((shared.clone(), addr))),
                        Err(e) => {
                            shared.stopping.store(true, Ordering::Release);
                            started_tx.send(Err(ServeError::Listen(e)))
                        }
                    };
                }
            };
            let core_tasks = crate::core::run(core, replica_config, core_inbox, stop_flag.clone(), started);
            let shard = {
                let (shared, listener) = (shared.clone(), listener.clone());
                async move {
                    // The client port opens once recovery is done.
                    loop {
                        let taken = listener.borrow_mut().take();
                        if let Some(l) = taken {
                            return crate::serve::run_shard(shared, 0, first_inbox, l, stop_flag).await;
                        }
                        if shared.stopping.load(Ordering::Acquire) {
                            return Ok(());
                        }
                        glommio::timer::sleep(Duration::from_millis(2)).await;
                    }
                }
            };
            let outcome = futures_lite::future::zip(core_tasks, shard).await.0;
            shared.stopping.store(true, Ordering::Release);
            outcome
        })
        .map_err(|e| ServeError::Executor(e.to_string()))?;
    let (shared, bound) = match started_rx.recv() {
        Ok(Ok(started)) => started,
        Ok(Err(e)) => {
            let _ = shard0.join();
            return Err(e);
        }
        Err(_) => return Err(join_error(shard0.join())),
    };
    let mut others = Vec::new();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<(), ServeError>>();
    for (i, inbox) in inboxes.enumerate() {
        let id = i + 1;
        let shard_shared = shared.clone();
        let bound_tx = bound_tx.clone();
        let stop_flag = shutdown_flag();
        let handle = executor(id)
            .spawn(move || async move {
                let listener = match listen(bound) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(ServeError::Listen(e)));
                        return Ok(());
                    }
                };
                let _ = bound_tx.send(Ok(()));
                crate::serve::run_shard(shard_shared, id, inbox, listener, stop_flag).await
            })
            .map_err(|e| ServeError::Executor(e.to_string()));
        match handle {
            Ok(h) => others.push(h),
            Err(e) => {
                shared.stopping.store(true, Ordering::Release);
                return Err(e);
            }
        }
    }
    drop(bound_tx);
    let mut failure = None;
    for _ in 0..others.len() {
        match bound_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(ServeError::Executor("a shard died while starting".into())),
        }
    }
    if let Some(e) = failure {
        shared.stopping.store(true, Ordering::Release);
        return Err(e);
    }
    ready(bound);
    tracing::info!(shards, "every shard accepts clients");
    let mut outcome = match shard0.join() {
        Ok(r) => r,
        Err(e) => Err(ServeError::Executor(format!("shard 0: {e}"))),
    };
    shared.stopping.store(true, Ordering::Release);
    for (i, h) in others.into_iter().enumerate() {
        if let Err(e) = h.join().map_err(|e| ServeError::Executor(format!("shard {}: {e}", i + 1))).and_then(|r| r) {
            if outcome.is_ok() {
                outcome = Err(e);
            }
        }
    }
    outcome
}

/// A listening socket for the client port, bound with SO_REUSEPORT (every shard listens on
/// the port) and SO_REUSEADDR (so that connections an earlier server on this port left in
/// TIME_WAIT do not stop a restart; glommio's own `bind` sets only the first). Must run on
/// the shard's executor.
fn listen(addr: SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    bind_listener(addr, true)
}

/// A listening socket with SO_REUSEADDR (so connections a predecessor left in TIME_WAIT do
/// not block the port) and, for the client port's shards, SO_REUSEPORT.
pub(crate) fn bind_listener(addr: SocketAddr, reuse_port: bool) -> std::io::Result<glommio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::unix::io::{FromRawFd, IntoRawFd};
    let domain = if addr.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    // SAFETY: a bound, listening socket whose only owner becomes the listener.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

fn executor(id: ShardId) -> glommio::LocalExecutorBuilder {
    // Unbound: the kernel places the threads. Pinning pays off on a dedicated machine; on a
    // shared one (or next to a load generator) a pinned shard cannot move off a busy core.
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).name(&format!("baton-shard-{id}"))
}

fn join_error(joined: glommio::Result<Result<(), ServeError>, ()>) -> ServeError {
    match joined {
        Ok(Err(e)) => e,
        Ok(Ok(())) => ServeError::Executor("shard 0 stopped while starting".into()),
        Err(e) => ServeError::Executor(format!("shard 0: {e}")),
    }
}

/// glommio binds with SO_REUSEPORT (for the shards of this process), which would also let a
/// second server process share the port and split the clients between two trees. So refuse
/// to start if something already accepts connections there. (A plain bind is no test: it also
/// fails on connections a killed predecessor left in FIN_WAIT.)
fn refuse_if_served(addr: SocketAddr) -> Result<(), ServeError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = if addr.ip().is_unspecified() { SocketAddr::new([127, 0, 0, 1].into(), addr.port()) } else { addr };
    // A killed predecessor's listening socket can keep accepting for a moment while the
    // kernel tears down its io_uring instance: only a port that stays served for 3 s counts.
    let mut tries = 0;
    while std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(300)).is_ok() {
        tries += 1;
        if tries >= 30 {
            return Err(ServeError::Listen(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{addr} is already served by another process"),
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

static SHUTDOWN: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// The flag SIGTERM and SIGINT set. The handler only sets it; shards poll it.
pub fn shutdown_flag() -> Arc<AtomicBool> {
    SHUTDOWN
        .get_or_init(|| {
            let flag = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                if let Err(e) = signal_hook::flag::register(signal, flag.clone()) {
                    tracing::warn!(error = %e, signal, "cannot handle signal; it will stop the process abruptly");
                }
            }
            flag
        })
        .clone()
}

/// Resolves once `flag` or `also` is set (checked every 50 ms).
pub async fn until_set(flag: &AtomicBool, also: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) && !also.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}
