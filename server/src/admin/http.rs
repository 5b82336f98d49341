//! The admin HTTP server (ZooKeeper's AdminServer, on `--admin-addr`): `/metrics` for
//! Prometheus, ZooKeeper's admin commands as JSON under `/commands/`, `/health` (the process
//! answers) and `/ready` (it serves clients: it has a leader, or is read-only).
//!
//! It runs on a thread of its own with a single-threaded tokio runtime (axum over hyper):
//! scrapes and commands are rare, read only what the other layers publish in [`Shared`], and
//! must answer while the shards are busy or still recovering — the server starts it before
//! recovery, so `/health` answers and `/ready` says 503 during a long one.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::runtime::Shared;

/// The running admin server; dropping it stops it (its thread is joined).
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` (an error if it cannot) and serves it on a new thread.
    pub fn start(addr: SocketAddr, node: Arc<Shared>) -> std::io::Result<AdminServer> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("baton-admin".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(%e, "admin server: the socket could not be used"),
                };
                let served = axum::serve(listener, router(node)).with_graceful_shutdown(async move {
                    let _ = stopped.await;
                });
                if let Err(e) = served.await {
                    tracing::error!(%e, "admin server stopped");
                }
            })
        })?;
        Ok(AdminServer { addr, stop: Some(stop), thread: Some(thread) })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn router(node: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/commands", get(commands))
        .route("/commands/", get(commands))
        .route("/commands/{name}", get(command))
        .with_state(node)
}

async fn health() -> Response {
    json(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

/// 200 while the server serves clients (it has a leader, or serves read-only sessions), 503
/// while it does not.
async fn ready(State(node): State<Arc<Shared>>) -> Response {
    let serving = node.role.get().serving() || node.read_only.load(std::sync::atomic::Ordering::Relaxed);
    let status = if serving { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(status, serde_json::json!({ "ready": serving, "state": node.mode() }))
}

async fn metrics(State(node): State<Arc<Shared>>) -> Response {
    let (text, content_type) = super::metrics::render(&node);
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// A link per command (ZooKeeper's AdminServer sends it without a content type).
async fn commands() -> Response {
    super::commands::index().into_response()
}

/// Every command answers 200, an unknown one too, with what went wrong in its `error` key.
async fn command(
    State(node): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Response {
    json(StatusCode::OK, super::commands::run(&node, &name, &params))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    let text = serde_json::to_string_pretty(&body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}
