//! The thin glommio task around the [`WritePath`] on shard 0: it feeds the machine what the
//! shards send, the replica reports and the clock says, and carries out its [`Effect`]s
//! (queue pushes to shards and to the replica, counters, the operator's line). It decides
//! nothing.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_engine::mvcc::KeySpace;
use baton_engine::replica::{ImageSink, SnapshotImage, StateMachine};
use baton_engine::state::{StateImage, StateLoader};
use baton_engine::tree::DataTree;
use baton_engine::zab::{LogEntry, Payload, Role, ServerId};
use baton_engine::{SessionId, Zxid};

use super::path::{Effect, Now, WritePath, WritePathConfig};
use crate::peer::replica::{ReplicaConfig, ReplicaError, ReplicaHandle};
use crate::runtime::inbox::Inbox;
use crate::runtime::local_queue::LocalNotify;
use crate::runtime::{mode_name, Shared, ToShard, ToWritePath};

/// Messages from shards handled per pass (one proposal, one tree lock).
const BATCH_MAX: usize = 1024;

/// How long a stopping server waits for its writes in flight to commit.
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// The time now, as the write path takes it.
fn now() -> Now {
    let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    Now { instant: Instant::now(), wall_ms }
}

/// The write path with what it acts on.
struct Driver {
    path: WritePath,
    shared: Arc<Shared>,
    /// Present once the replica has recovered.
    replica: Option<ReplicaHandle>,
    /// Notified after every input handled (a stopping server waits for its writes in flight
    /// to be answered: committed, refused, or dropped on a role change).
    progress: Rc<LocalNotify>,
    /// When the replica's metrics were last published (they are copied a few times a
    /// second, not after every input).
    published_at: Instant,
}

/// How often the replica's metrics are published for `/metrics`.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

impl Driver {
    fn carry_out(&mut self) {
        loop {
            let effects = self.path.take_effects();
            if effects.is_empty() {
                break;
            }
            for effect in effects {
                self.effect(effect);
            }
        }
        self.publish_stats();
        self.progress.notify();
    }

    fn effect(&mut self, effect: Effect) {
        let shared = &self.shared;
        match effect {
            Effect::Client { shard, msg } => {
                if let Some(outbox) = shared.answers_to(shard) {
                    outbox.send(ToShard::Client(msg));
                }
            }
            Effect::Publish { batch, answers } => {
                for (slot, answers) in answers.into_iter().enumerate() {
                    if let Some(outbox) = shared.answers_to(slot) {
                        outbox.send(ToShard::Committed { batch: batch.clone(), answers });
                    }
                }
            }
            Effect::Propose { first, payloads } => {
                if let Some(r) = &self.replica {
                    r.propose(Some(first), payloads);
                }
            }
            Effect::Forward { to, data } => {
                if let Some(r) = &self.replica {
                    r.send(to, data);
                }
            }
            Effect::Sync { id } => match &self.replica {
                Some(r) => r.sync(id),
                None => self.path.sync_failed(id),
            },
            Effect::ReportLiveness { sessions } => {
                if let Some(r) = &self.replica {
                    r.touch(sessions);
                }
            }
            Effect::ReadOnly(on) => shared.read_only.store(on, std::sync::atomic::Ordering::Relaxed),
            Effect::DisconnectAll => {
                for outbox in shared.to_shard.iter().chain(&shared.etcd_front) {
                    outbox.send(ToShard::Disconnect);
                }
            }
            Effect::RoleReported { role, announce } => {
                if !role.serving() && shared.role.get().serving() {
                    shared.write_stats.looking_count.fetch_add(1, Relaxed);
                }
                shared.role.set(role);
                if announce && !shared.standalone() {
                    self::announce(shared, role);
                }
            }
            Effect::Fatal { why } => {
                tracing::error!(%why, "stopping");
                shared.stopping.set();
            }
        }
    }

    fn publish_stats(&mut self) {
        let stats = &self.shared.write_stats;
        let path = self.path.stats();
        stats.committed.store(path.committed, Relaxed);
        stats.rejected.store(path.rejected, Relaxed);
        stats.outstanding.store(path.outstanding, Relaxed);
        stats.sessions.store(path.sessions, Relaxed);
        if let Some(r) = &self.replica {
            let status = r.status();
            stats.wal_entries_durable.store(status.wal_entries_durable, Relaxed);
            stats.wal_batches.store(status.wal_batches, Relaxed);
            if self.published_at.elapsed() >= PUBLISH_EVERY {
                self.published_at = Instant::now();
                *stats.replica.lock().unwrap_or_else(|p| p.into_inner()) = r.metrics();
                *stats.commit_us.lock().unwrap_or_else(|p| p.into_inner()) = path.commit_us;
            }
        }
    }
}

/// For the operator watching the terminal (and `baton dev`): the role, the epoch and the
/// leader, each time they change.
fn announce(shared: &Shared, role: Role) {
    let id = shared.config.server_id;
    let mode = mode_name(role, false, shared.config.is_observer());
    match role {
        _ if !role.serving() => println!("baton: server {id} is looking for a leader"),
        Role::Looking => println!("baton: server {id} is looking for a leader"),
        Role::Leading { epoch, .. } => println!("baton: server {id} is {mode} in epoch {epoch}, leader {id}"),
        Role::Following { leader, epoch, .. } => {
            println!("baton: server {id} is {mode} in epoch {epoch}, leader {leader}")
        }
    }
}

/// The write path as the replica's state machine.
struct Machine(Rc<RefCell<Driver>>);

impl Driver {
    /// Runs `input` on the write path with the tree read-locked, then carries out what it
    /// asked for.
    fn with_tree(&mut self, input: impl FnOnce(&mut WritePath, &DataTree)) {
        let shared = self.shared.clone();
        let tree = shared.tree();
        input(&mut self.path, &tree);
        drop(tree);
        self.carry_out();
    }
}

impl Machine {
    /// Puts a state rebuilt from a snapshot (the tree and etcd's keyspace) in place.
    fn replace_state(&mut self, zxid: Zxid, tree: DataTree, etcd: KeySpace, started: Instant) {
        let mut d = self.0.borrow_mut();
        let nodes = tree.node_count();
        let revision = etcd.revision();
        tracing::info!(%zxid, nodes, etcd_revision = revision, ms = started.elapsed().as_millis() as u64, "installed snapshot");
        // The old state goes after the locks are released (freeing millions of znodes takes
        // a while; nobody needs to wait for it).
        let old_tree = std::mem::replace(&mut *d.shared.tree_mut(), tree);
        let old_etcd = std::mem::replace(&mut *d.shared.etcd_mut(), etcd);
        d.with_tree(|path, tree| path.installed(tree, now()));
        let shared = d.shared.clone();
        d.path.installed_etcd(&shared.etcd(), now());
        drop(old_tree);
        drop(old_etcd);
    }
}

impl StateMachine for Machine {
    fn apply(&mut self, entries: &[LogEntry]) {
        // Tests make the process die (`apply=panic`) or stall here (see `baton_engine::faults`).
        fail::fail_point!("apply");
        let mut d = self.0.borrow_mut();
        let shared = d.shared.clone();
        let mut tree = shared.tree_mut();
        let mut etcd = shared.etcd_mut();
        d.path.apply(&mut tree, &mut etcd, now(), entries);
        // With the write lock still held: the batch reaches every shard before any of them
        // can read the state it produced (see `crate::runtime`).
        d.carry_out();
        drop(etcd);
        drop(tree);
    }

    fn replay(&mut self, entries: &[LogEntry]) {
        let mut d = self.0.borrow_mut();
        let shared = d.shared.clone();
        let mut tree = shared.tree_mut();
        let mut etcd = shared.etcd_mut();
        d.path.replay(&mut tree, &mut etcd, now(), entries);
        drop(etcd);
        drop(tree);
        d.carry_out();
    }

    fn snapshot(&self) -> Vec<u8> {
        let d = self.0.borrow();
        let started = Instant::now();
        let image = baton_engine::state::to_image(&d.shared.tree(), &d.shared.etcd());
        // Taken between two protocol steps (so exactly the applied state): this is how long
        // the write path paused for it.
        tracing::info!(bytes = image.len(), ms = started.elapsed().as_millis() as u64, "snapshot image taken");
        image
    }

    fn freeze(&self) -> Box<dyn SnapshotImage> {
        let started = Instant::now();
        let d = self.0.borrow();
        let view = d.shared.tree().view();
        let etcd = d.shared.etcd().clone();
        // The write path's whole pause for a snapshot: a reference per page of the tree and
        // one for the keyspace's maps.
        tracing::info!(
            znodes = view.node_count(),
            etcd_revision = etcd.revision(),
            us = started.elapsed().as_micros() as u64,
            "snapshot view taken; writing it in the background"
        );
        Box::new(StateImage::new(view, etcd))
    }

    fn install(&mut self, zxid: Zxid, data: &[u8]) {
        let started = Instant::now();
        match baton_engine::state::from_image(data) {
            Ok((tree, etcd)) => self.replace_state(zxid, tree, etcd, started),
            Err(e) => {
                tracing::error!(%zxid, error = %e, "a snapshot does not decode; stopping");
                self.0.borrow().shared.stopping.set();
            }
        }
    }

    fn install_shared(&mut self, zxid: Zxid, image: bytes::Bytes) {
        let started = Instant::now();
        match baton_engine::state::from_shared_image(&image) {
            Ok((tree, etcd)) => self.replace_state(zxid, tree, etcd, started),
            Err(e) => {
                tracing::error!(%zxid, error = %e, "a snapshot does not decode; stopping");
                self.0.borrow().shared.stopping.set();
            }
        }
    }

    fn receive(&mut self, _zxid: Zxid) -> Box<dyn ImageSink> {
        Box::new(StateLoader::new())
    }

    fn install_received(&mut self, zxid: Zxid, sink: Box<dyn ImageSink>) -> Result<(), String> {
        let started = Instant::now();
        let (tree, etcd) = baton_engine::replica::loaded_state(sink)?;
        self.replace_state(zxid, tree, etcd, started);
        Ok(())
    }

    fn synced(&mut self, id: u64, zxid: Option<Zxid>) {
        self.0.borrow_mut().with_tree(|path, tree| path.synced(tree, now(), id, zxid));
    }

    fn touched(&mut self, sessions: Vec<SessionId>) {
        self.0.borrow_mut().path.touched(now(), sessions);
    }

    fn role_changed(&mut self, role: Role, last_logged: Zxid) {
        self.0.borrow_mut().with_tree(|path, tree| path.role_changed(tree, now(), role, last_logged));
    }

    fn message(&mut self, from: ServerId, data: &Payload) {
        self.0.borrow_mut().with_tree(|path, tree| path.message(tree, now(), from, data));
    }
}

/// Runs the write path and its replica on the current executor until the server stops
/// (then lets in-flight writes commit, at most 10 s) or replication fails. `started` is
/// called once recovery is done — with its failure, if any — and, for a server alone in
/// its ensemble, once it serves.
pub async fn run(
    shared: Arc<Shared>,
    replica_config: ReplicaConfig,
    inbox: Inbox<ToWritePath>,
    started: impl FnOnce(Result<(), ReplicaError>),
) -> Result<(), ReplicaError> {
    let config = WritePathConfig {
        id: shared.config.server_id,
        // An answer list per shard, and one for the etcd front.
        shards: shared.to_shard.len() + 1,
        session_timeout_ms: (shared.config.min_session_timeout_ms(), shared.config.max_session_timeout_ms()),
        sequencer: baton_engine::sequencer::SequencerConfig {
            ttl_enabled: !shared.config.disable_ttl,
            enforce_quota: shared.config.enforce_quota,
        },
        read_only_after: (shared.config.read_only_mode && !shared.standalone())
            .then(|| Duration::from_millis(shared.config.tick_ms.max(2_000))),
    };
    let progress = Rc::new(LocalNotify::default());
    let driver = Rc::new(RefCell::new(Driver {
        path: WritePath::new(config, now()),
        shared: shared.clone(),
        replica: None,
        progress: progress.clone(),
        published_at: Instant::now(),
    }));
    let (recovered_tx, recovered_rx) = glommio::channels::local_channel::new_bounded::<()>(1);
    let mut replica = {
        let attach = driver.clone();
        glommio::spawn_local(crate::peer::replica::run(replica_config, Machine(driver.clone()), move |handle| {
            attach.borrow_mut().replica = Some(handle);
            let _ = recovered_tx.try_send(());
        }))
    };
    let recovered = async {
        if recovered_rx.recv().await.is_none() {
            // The replica ended without recovering: its outcome comes from the other branch.
            futures_lite::future::pending::<()>().await;
        }
        None
    };
    if let Some(ended) = futures_lite::future::or(recovered, async { Some((&mut replica).await) }).await {
        // The replica ended before it recovered: it failed (or the server stopped first).
        let failed = ended.is_err();
        started(ended);
        if !failed {
            shared.stopping.set();
        }
        shared.write_path_done.set();
        return Ok(());
    }
    started(Ok(()));
    let requests = glommio::spawn_local(serve_requests(driver.clone(), inbox));
    let ticks = glommio::spawn_local(tick(driver.clone()));
    let stopping = async {
        shared.stopping.wait().await;
        None
    };
    let outcome = match futures_lite::future::or(stopping, async { Some((&mut replica).await) }).await {
        Some(ended) => {
            if let Err(e) = &ended {
                tracing::error!(error = %e, "replication stopped");
            }
            drop(requests);
            drop(ticks);
            ended
        }
        None => {
            tracing::info!("shutting down: no new connections; letting in-flight writes commit");
            let drained = progress.until(|| !driver.borrow().path.has_pending_writes());
            futures_lite::future::or(drained, glommio::timer::sleep(DRAIN_MAX)).await;
            drop(requests);
            drop(ticks);
            let handle = driver.borrow().replica.clone();
            if let Some(r) = handle {
                r.stop();
            }
            replica.await
        }
    };
    shared.stopping.set();
    shared.write_path_done.set();
    outcome
}

/// Handles what the shards send, up to [`BATCH_MAX`] messages per pass, each pass one
/// proposal; waits for room in the replica (backpressure: each message prepares at most one
/// entry).
async fn serve_requests(driver: Rc<RefCell<Driver>>, inbox: Inbox<ToWritePath>) {
    while let Some(first) = inbox.recv().await {
        let replica = driver.borrow().replica.clone();
        let mut full = false;
        if let Some(r) = replica {
            r.ready().await;
            full = r.read_only_for_space();
        }
        let now = now();
        driver.borrow_mut().with_tree(|path, tree| {
            path.set_out_of_space(full);
            path.handle(tree, now, first);
            for _ in 1..BATCH_MAX {
                let Some(message) = inbox.try_recv() else { break };
                path.handle(tree, now, message);
            }
            path.flush();
        });
    }
}

/// Every half tick: session expiry and the reaper (they act only on the leader).
async fn tick(driver: Rc<RefCell<Driver>>) {
    let half_tick = Duration::from_millis(driver.borrow().shared.config.tick_ms.max(2) / 2);
    loop {
        glommio::timer::sleep(half_tick).await;
        // The disk's state is refreshed here too, not only when a client of this server
        // writes: writes forwarded by followers are refused alike.
        let full = driver.borrow().replica.as_ref().is_some_and(|r| r.read_only_for_space());
        driver.borrow_mut().with_tree(|path, tree| {
            path.set_out_of_space(full);
            path.tick(tree, now());
        });
        // A compaction's unreachable history also goes when no batch is applied (a
        // `physical` compaction waits for it), a bounded part per half tick.
        let shared = driver.borrow().shared.clone();
        if !shared.etcd().pruned() {
            shared.etcd_mut().prune_step(PRUNE_PER_TICK);
        }
        // And a repacked key map is caught up and taken.
        if shared.etcd().repack_pending() {
            shared.etcd_mut().repack_step(PRUNE_PER_TICK);
        }
    }
}

/// Revisions of compacted etcd history dropped, or changes carried into a repacked key map,
/// per half tick when idle.
const PRUNE_PER_TICK: usize = 8192;
