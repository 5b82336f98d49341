//! The etcd v3 front: etcd's gRPC API over the same log as the ZooKeeper front (DESIGN.md,
//! "Two fronts, one log"). etcd clients speak HTTP/2, so this front runs tonic on a tokio
//! runtime of its own thread beside the glommio shards; it reaches the write path through
//! the same messages as a shard (`crate::runtime::messages`) and reads etcd's keyspace from
//! [`crate::runtime::Shared::etcd`].
//!
//! Served so far: KV (Range, Put, DeleteRange, Txn, Compact), Watch (streams of watchers,
//! history replay, slow watchers caught up from history) and Lease (Grant, Revoke,
//! KeepAlive, TimeToLive, Leases; expiry decided by the leader), Maintenance (Status,
//! Alarm, Defragment, Hash, HashKV, Snapshot) and Cluster (MemberList; membership changes
//! answer "not supported yet").
//!
//! `pb` is generated from etcd's protos in `server/proto` by `server/proto/generate.sh`
//! (checked in, so that building Baton needs no protobuf compiler).
#![allow(clippy::result_large_err, reason = "tonic::Status is the error every gRPC handler returns")]

pub mod convert;
pub mod front;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod refusals;
pub mod watch;

/// etcd's protobuf messages and gRPC services (generated; see the module's documentation).
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod pb {
    /// `authpb`.
    pub mod authpb {
        include!("pb/authpb.rs");
    }
    /// `mvccpb`.
    pub mod mvccpb {
        include!("pb/mvccpb.rs");
    }
    /// `etcdserverpb`.
    pub mod etcdserverpb {
        include!("pb/etcdserverpb.rs");
    }
}

use std::net::SocketAddr;
use std::sync::Arc;

use crate::runtime::inbox::Inbox;
use crate::runtime::{Shared, ToShard};

/// What etcd's gRPC server takes beyond `--max-request-bytes` (grpc-go refuses larger
/// messages with its own error; the handlers say so in its words, see `kv::KvService::limit`).
const GRPC_OVERHEAD_BYTES: usize = 512 << 10;

/// tonic refuses messages past this many times etcd's gRPC limit before decoding them (its
/// own error, OutOfRange): the bound on what one request can make this server hold.
const DECODE_LIMIT_FACTOR: usize = 4;

/// A client connection that says it has no vectored writes, so that HTTP/2 copies each
/// answer's frames (up to 1 KiB) into its write buffer and sends many answers with one
/// write. With vectored writes the `h2` crate chains any frame of 256 bytes or more by
/// reference and writes it at once: a 256-byte value's Range answer is over 256 bytes, so
/// every read cost a `writev` of its own and 44% of this thread's time went to the kernel's
/// TCP send path. Unvectored, linearizable reads went from 94K/s to 171K/s (32 connections ×
/// 8 in flight, this 2-core machine; see `bench/README.md`).
struct Unvectored(tokio::net::TcpStream);

impl tokio::io::AsyncRead for Unvectored {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Unvectored {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl tonic::transport::server::Connected for Unvectored {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

/// Binds `addr` and serves etcd clients on a thread of its own until the server stops.
/// Returns the bound address (for port 0) and the thread.
pub fn start(
    shared: Arc<Shared>,
    addr: SocketAddr,
    inbox: Inbox<ToShard>,
) -> std::io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let thread = std::thread::Builder::new().name("baton-etcd".into()).spawn(move || {
        // One thread: on this project's 2-core machine a runtime of two workers, competing
        // with the shards, served 30-45% fewer puts and reads (baton-bench etcd, 32 x 8).
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the etcd front's runtime did not start; stopping");
                shared.stopping.set();
                return;
            }
        };
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "the etcd port could not be served; stopping");
                    shared.stopping.set();
                    return;
                }
            };
            let front = Arc::new(front::Front::new(shared.clone()));
            let hub = Arc::new(std::sync::Mutex::new(watch::Hub::default()));
            let pump = tokio::spawn(front::pump(front.clone(), hub.clone(), inbox));
            let catch_up = tokio::spawn(watch::catch_up(front.clone(), hub.clone()));
            let max = shared
                .config
                .etcd_max_request_bytes
                .saturating_add(GRPC_OVERHEAD_BYTES)
                .saturating_mul(DECODE_LIMIT_FACTOR);
            let kv = pb::etcdserverpb::kv_server::KvServer::new(kv::KvService { front: front.clone() })
                .max_decoding_message_size(max);
            let lease = pb::etcdserverpb::lease_server::LeaseServer::new(lease::LeaseService::new(front.clone()))
                .max_decoding_message_size(max);
            let watch =
                pb::etcdserverpb::watch_server::WatchServer::new(watch::WatchService { front: front.clone(), hub })
                    .max_decoding_message_size(max);
            let maintenance =
                pb::etcdserverpb::maintenance_server::MaintenanceServer::new(maintenance::MaintenanceService {
                    front: front.clone(),
                });
            let cluster = pb::etcdserverpb::cluster_server::ClusterServer::new(maintenance::MaintenanceService {
                front: front.clone(),
            });
            use tonic::codegen::tokio_stream::StreamExt as _;
            let incoming = tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map(|accepted| accepted.map(Unvectored));
            let stopping = shared.clone();
            let served = tonic::transport::Server::builder()
                .layer(refusals::LogRefusalsLayer)
                .add_service(kv)
                .add_service(lease)
                .add_service(watch)
                .add_service(maintenance)
                .add_service(cluster)
                .serve_with_incoming_shutdown(incoming, async move { stopping.stopping.wait().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the etcd front stopped; stopping");
                shared.stopping.set();
            }
            pump.abort();
            catch_up.abort();
        });
    })?;
    Ok((local, thread))
}
