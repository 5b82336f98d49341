//! Starting a server: one glommio executor (shard) per core, all accepting clients on the
//! same port (SO_REUSEPORT); shard 0 also runs the write path and its replica. The client
//! port opens once the replica has recovered. Stopping: a signal (or a fatal error) sets
//! `Shared::stopping`; the write path lets its writes in flight commit, the shards pass on
//! the last replies, and every executor ends.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::admin::http::AdminServer;
use crate::config::ServerConfig;
use crate::peer::replica::{ReplicaConfig, ReplicaError};
use crate::runtime::inbox::{self, Inbox};
use crate::runtime::{net, stop, ShardId, Shared, ToShard, ToWritePath};

/// Why a server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Recovery or replication failed.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The client port could not be served.
    #[error("client port: {0}")]
    Listen(std::io::Error),
    /// An executor could not start or died.
    #[error("executor: {0}")]
    Executor(String),
    /// The TLS settings could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::runtime::tls::TlsError),
}

impl ServeError {
    /// Whether the server stopped because its log is damaged (a record or a header that does
    /// not verify), as opposed to an I/O failure or a bad setting: `--resync` is the remedy.
    pub fn damaged_data(&self) -> bool {
        use baton_engine::replica::StorageError;
        use baton_engine::wal::WalError;
        matches!(self, ServeError::Replica(ReplicaError::Storage(StorageError::Wal(WalError::Corrupt { .. }))))
    }
}

/// Number of shards for a configured core count (0: every core this process may run on).
pub fn shard_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs a server until it is stopped (SIGTERM/SIGINT) or fails. Blocks the calling thread;
/// `ready` is called with the bound address of the plain client port (None: it is off) once
/// every shard accepts clients.
pub fn run(config: ServerConfig, ready: impl FnOnce(Option<SocketAddr>)) -> Result<(), ServeError> {
    if let Some(plain) = config.client_addr.0 {
        net::refuse_if_served(plain).map_err(ServeError::Listen)?;
    }
    if let Some(secure) = config.secure_client_addr.0 {
        net::refuse_if_served(secure).map_err(ServeError::Listen)?;
    }
    let crate::runtime::tls::Acceptors { zk: tls, etcd: etcd_tls, peer: peer_tls } =
        crate::runtime::tls::acceptors(&config)?;
    // Signals are handled from here on (before, SIGTERM ends the process at once).
    let shutdown = stop::shutdown();
    let shards = shard_count(config.cores);
    let (to_write_path, write_inbox) = inbox::inbox::<ToWritePath>();
    let (outboxes, inboxes): (Vec<_>, Vec<_>) = (0..shards).map(|_| inbox::inbox::<ToShard>()).unzip();
    let etcd_addr = config.etcd_addr.0;
    let mut shared = Shared::new(config, to_write_path, outboxes);
    let etcd_inbox = etcd_addr.map(|_| {
        let (outbox, inbox) = inbox::inbox::<ToShard>();
        shared.etcd_front = Some(outbox);
        inbox
    });
    let shared = Arc::new(shared);
    // The admin server answers from the start (`/health`; `/ready` once there is a leader).
    // As ZooKeeper's AdminServer, one that cannot bind its address is reported and the
    // server goes on without it.
    let _admin = shared.config.admin_addr.0.and_then(|addr| match AdminServer::start(addr, shared.clone()) {
        Ok(admin) => {
            tracing::info!(addr = %admin.addr(), "admin server (/metrics, /commands, /health, /ready)");
            println!("baton: admin HTTP (/metrics, /commands, /health, /ready) on {}", admin.addr());
            Some(admin)
        }
        Err(e) => {
            tracing::error!(%addr, %e, "the admin server could not start; serving clients without it");
            None
        }
    });
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<Bound, ServeError>>();
    let mut inboxes = inboxes.into_iter();
    let first_inbox = inboxes.next().ok_or_else(|| ServeError::Executor("no shards".into()))?;
    let (etcd_zero, etcd_zero_inbox) = inbox::inbox::<EtcdOnShard>();
    let shard0 = {
        let (shared, tls) = (shared.clone(), (tls.clone(), peer_tls));
        executor(0)
            .spawn(move || shard_zero(shared, shutdown, write_inbox, first_inbox, etcd_zero_inbox, started_tx, tls))
            .map_err(|e| ServeError::Executor(e.to_string()))?
    };
    let (bound, secure_bound) = match started_rx.recv() {
        Ok(Ok(bound)) => bound,
        Ok(Err(e)) => {
            let _ = shard0.join();
            return Err(e);
        }
        Err(_) => return Err(join_error(shard0.join())),
    };
    // The etcd port, once recovery is done too: on every shard but shard 0 (which has the
    // write path) when there are several, else on shard 0.
    let mut etcd_shards: Vec<Option<EtcdOnShard>> = Vec::new();
    if let (Some(addr), Some(inbox)) = (etcd_addr, etcd_inbox) {
        let listen = |e: std::io::Error| {
            shared.stopping.set();
            ServeError::Listen(std::io::Error::new(e.kind(), format!("etcd port {addr}: {e}")))
        };
        net::refuse_if_served(addr).map_err(listen)?;
        let first = net::bind_socket(addr, true).map_err(listen)?;
        let local = first.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(addr);
        let front = Arc::new(crate::etcd::OnShards::new(shared.clone()));
        let (mut first, mut inbox) = (Some(first), Some(inbox));
        for id in 0..shards {
            if id == 0 && shards > 1 {
                etcd_shards.push(None);
                continue;
            }
            let socket = match first.take() {
                Some(s) => s,
                None => net::bind_socket(local, true).map_err(listen)?,
            };
            // The tasks for all of them go on the last.
            let inbox = if id + 1 == shards { inbox.take() } else { None };
            etcd_shards.push(Some(EtcdOnShard { socket, front: front.clone(), inbox, tls: etcd_tls.clone() }));
        }
        let over = if etcd_tls.is_some() { " over TLS" } else { "" };
        tracing::info!(addr = %local, tls = etcd_tls.is_some(), "serving etcd v3 clients");
        println!("baton: serving etcd v3 clients{over} on {local}");
    }
    let mut etcd_shards = etcd_shards.into_iter();
    if let Some(Some(etcd)) = etcd_shards.next() {
        let _ = etcd_zero.send(etcd);
    }
    drop(etcd_zero);
    let mut others = Vec::new();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<(), ServeError>>();
    for (i, inbox) in inboxes.enumerate() {
        let id = i + 1;
        let (shard_shared, bound_tx, tls) = (shared.clone(), bound_tx.clone(), tls.clone());
        let etcd = etcd_shards.next().flatten();
        let handle = executor(id)
            .spawn(move || async move {
                let listeners = bound
                    .map(|a| net::bind_listener(a, true))
                    .transpose()
                    .and_then(|l| Ok((l, secure_bound.map(|a| net::bind_listener(a, true)).transpose()?)));
                let (listener, secure) = match listeners {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(ServeError::Listen(e)));
                        return Ok(());
                    }
                };
                let _ = bound_tx.send(Ok(()));
                glommio::spawn_local(returning_freed()).detach();
                let etcd_shared = shard_shared.clone();
                let zk = crate::zk::tasks::run_shard(shard_shared, id, inbox, listener, secure.zip(tls));
                let etcd = async move {
                    if let Some(etcd) = etcd {
                        etcd.serve(etcd_shared).await;
                    }
                };
                futures_lite::future::zip(zk, etcd).await;
                Ok(())
            })
            .map_err(|e| ServeError::Executor(e.to_string()));
        match handle {
            Ok(h) => others.push(h),
            Err(e) => {
                shared.stopping.set();
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
        shared.stopping.set();
        return Err(e);
    }
    if let Some(secure) = secure_bound {
        tracing::info!(addr = %secure, "serving ZooKeeper clients over TLS");
        println!("baton: serving ZooKeeper clients over TLS on {secure}");
    }
    ready(bound);
    tracing::info!(shards, "every shard accepts clients");
    let mut outcome = match shard0.join() {
        Ok(r) => r,
        Err(e) => Err(ServeError::Executor(format!("shard 0: {e}"))),
    };
    shared.stopping.set();
    for (i, h) in others.into_iter().enumerate() {
        if let Err(e) = h.join().map_err(|e| ServeError::Executor(format!("shard {}: {e}", i + 1))).and_then(|r| r) {
            if outcome.is_ok() {
                outcome = Err(e);
            }
        }
    }
    outcome
}

/// Shard 0: the write path and its replica, and (once recovery is done) its own clients.
async fn shard_zero(
    shared: Arc<Shared>,
    shutdown: Arc<stop::Event>,
    write_inbox: Inbox<ToWritePath>,
    inbox: Inbox<ToShard>,
    etcd: Inbox<EtcdOnShard>,
    started_tx: std::sync::mpsc::Sender<Result<Bound, ServeError>>,
    (tls, peer_tls): (Option<futures_rustls::TlsAcceptor>, Option<crate::runtime::tls::PeerTls>),
) -> Result<(), ServeError> {
    glommio::spawn_local(returning_freed()).detach();
    // A signal stops this server.
    let signalled = {
        let shared = shared.clone();
        glommio::spawn_local(async move {
            shutdown.wait().await;
            shared.stopping.set();
        })
    };
    let (listener_tx, listener_rx) = glommio::channels::local_channel::new_bounded(1);
    let started = {
        let shared = shared.clone();
        move |recovered: Result<(), ReplicaError>| {
            if let Err(e) = recovered {
                let _ = started_tx.send(Err(e.into()));
                return;
            }
            let bind = |addr: Option<SocketAddr>| {
                addr.map(|a| net::bind_listener(a, true).and_then(|l| Ok((l.local_addr()?, l)))).transpose()
            };
            let secure = shared.config.secure_client_addr.0.filter(|_| tls.is_some());
            let bound = bind(shared.config.client_addr.0).and_then(|plain| Ok((plain, bind(secure)?)));
            match bound {
                Ok((plain, secure)) => {
                    let (addr, listener) = plain.unzip();
                    let (secure_addr, secure_listener) = secure.unzip();
                    let _ = listener_tx.try_send((listener, secure_listener.zip(tls)));
                    let _ = started_tx.send(Ok((addr, secure_addr)));
                }
                Err(e) => {
                    shared.stopping.set();
                    let _ = started_tx.send(Err(ServeError::Listen(e)));
                }
            }
        }
    };
    let replica_config = ReplicaConfig { peer_tls, ..ReplicaConfig::for_server(&shared.config) };
    let write_path = crate::write::driver::run(shared.clone(), replica_config, write_inbox, started);
    let clients = {
        let shared = shared.clone();
        async move {
            // The client port opens once recovery is done (never, if it failed); the etcd
            // port too, if this shard serves it.
            if let Some((listener, secure)) = listener_rx.recv().await {
                let etcd = async {
                    if let Some(etcd) = etcd.recv().await {
                        etcd.serve(shared.clone()).await;
                    }
                };
                let zk = crate::zk::tasks::run_shard(shared.clone(), 0, inbox, listener, secure);
                futures_lite::future::zip(zk, etcd).await;
            }
        }
    };
    let (outcome, ()) = futures_lite::future::zip(write_path, clients).await;
    shared.stopping.set();
    drop(signalled);
    outcome.map_err(ServeError::from)
}

/// The addresses shard 0 bound for ZooKeeper clients: the plain port and the TLS port (None:
/// off).
type Bound = (Option<SocketAddr>, Option<SocketAddr>);

/// What a shard needs to serve etcd clients.
struct EtcdOnShard {
    socket: socket2::Socket,
    front: Arc<crate::etcd::OnShards>,
    /// The front's inbox, for the one shard that runs the tasks for all.
    inbox: Option<Inbox<ToShard>>,
    /// With `--etcd-tls`: the port speaks TLS.
    tls: Option<futures_rustls::TlsAcceptor>,
}

impl EtcdOnShard {
    async fn serve(self, shared: Arc<Shared>) {
        // Each its own task: the accept loop must not be polled by every wake of the others
        // (see `serve::accept_loop`).
        let listener = net::listener_from(self.socket);
        let accepting = glommio::spawn_local(crate::etcd::serve::accept_loop(
            shared,
            listener,
            self.front.services.clone(),
            self.front.live.clone(),
            self.tls,
        ));
        let background = self.inbox.map(|inbox| {
            let front = self.front.clone();
            glommio::spawn_local(async move { front.background(inbox).await })
        });
        accepting.await;
        if let Some(b) = background {
            b.await;
        }
    }
}

/// How often a shard gives the pages its allocator has left empty back to the system.
const RETURN_FREED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Gives this shard's empty heap pages back to the system every [`RETURN_FREED_EVERY`], for
/// as long as the shard runs. mimalloc gives back a page left empty only a second after
/// (its purge delay), and only when the thread next allocates: a shard that freed much and
/// went idle kept it all resident. A million etcd keys put, then idle: 253-258 MB resident
/// every time with this (or no purge delay), against 264 or 327 MB by chance without.
async fn returning_freed() {
    loop {
        glommio::timer::sleep(RETURN_FREED_EVERY).await;
        baton_engine::alloc::return_freed();
    }
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
