//! The etcd v3 front: etcd's gRPC API over the same log as the ZooKeeper front (DESIGN.md,
//! "Two fronts, one log"). etcd clients speak gRPC over HTTP/2: the `h2` crate on the glommio
//! shards (`serve`) carries each request to tonic's generated services, which need no
//! runtime of their own. The front reaches the write path through the same messages as a
//! shard (`crate::runtime::messages`) and reads etcd's keyspace from
//! [`crate::runtime::Shared::etcd`].
//!
//! Measured against tonic on a tokio thread of its own (`bench/README.md`, "The etcd front's
//! transport"): puts and reads the same within this machine's noise, watch events to 10,000
//! watchers 1.3× as many; and no thread beside the shards, whose count sets how many cores
//! serve etcd clients.
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
pub mod recipes;
pub mod refusals;
pub mod rt;
pub mod serve;
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
    /// `v3lockpb`.
    pub mod v3lockpb {
        include!("pb/v3lockpb.rs");
    }
    /// `v3electionpb`.
    pub mod v3electionpb {
        include!("pb/v3electionpb.rs");
    }
}

use std::sync::Arc;

use crate::runtime::inbox::Inbox;
use crate::runtime::{Shared, ToShard};

/// What etcd's gRPC server takes beyond `--max-request-bytes` (grpc-go refuses larger
/// messages with its own error; the handlers say so in its words, see `kv::KvService::limit`).
const GRPC_OVERHEAD_BYTES: usize = 512 << 10;

/// tonic refuses messages past this many times etcd's gRPC limit before decoding them (its
/// own error, OutOfRange): the bound on what one request can make this server hold.
const DECODE_LIMIT_FACTOR: usize = 4;

/// The etcd port's services (behind the refusal log).
pub type Services = refusals::LogRefusals<tonic::service::Routes>;

/// What serving etcd clients on the shards takes: the services each serving shard runs, and
/// the tasks one of them runs for all (the write path's answers and events, watchers'
/// catching up).
pub struct OnShards {
    /// The services, cloned for each shard.
    pub services: Services,
    front: Arc<front::Front>,
    hub: Arc<std::sync::Mutex<watch::Hub>>,
    /// Connections open on every shard.
    pub live: Arc<std::sync::atomic::AtomicUsize>,
}

impl OnShards {
    /// The etcd front of this server.
    pub fn new(shared: Arc<Shared>) -> OnShards {
        let front = Arc::new(front::Front::new(shared.clone()));
        let hub = Arc::new(std::sync::Mutex::new(watch::Hub::default()));
        let max = shared
            .config
            .etcd_max_request_bytes
            .saturating_add(GRPC_OVERHEAD_BYTES)
            .saturating_mul(DECODE_LIMIT_FACTOR);
        let kv = pb::etcdserverpb::kv_server::KvServer::new(kv::KvService { front: front.clone() })
            .max_decoding_message_size(max);
        let leases = Arc::new(lease::LeaseService::new(front.clone()));
        let lease =
            pb::etcdserverpb::lease_server::LeaseServer::from_arc(leases.clone()).max_decoding_message_size(max);
        let recipes = Arc::new(recipes::Recipes::new(front.clone(), leases));
        let lock = pb::v3lockpb::lock_server::LockServer::new(recipes::LockService(recipes.clone()))
            .max_decoding_message_size(max);
        let election = pb::v3electionpb::election_server::ElectionServer::new(recipes::ElectionService(recipes))
            .max_decoding_message_size(max);
        let watch = watch::WatchRoute::new(watch::WatchService { front: front.clone(), hub: hub.clone() }, max);
        let maintenance =
            pb::etcdserverpb::maintenance_server::MaintenanceServer::new(maintenance::MaintenanceService {
                front: front.clone(),
            });
        let cluster = pb::etcdserverpb::cluster_server::ClusterServer::new(maintenance::MaintenanceService {
            front: front.clone(),
        });
        let routes = tonic::service::Routes::new(kv)
            .add_service(lease)
            .add_service(watch)
            .add_service(maintenance)
            .add_service(cluster)
            .add_service(lock)
            .add_service(election)
            .prepare();
        OnShards {
            services: tower::Layer::layer(&refusals::LogRefusalsLayer(shared.clone()), routes),
            front,
            hub,
            live: Arc::default(),
        }
    }

    /// The tasks for all shards, run on one: the write path's answers and committed batches
    /// to the front, and watchers caught up, until the server stops and its connections have
    /// finished or had their time (`serve::STOP_GRACE`); then whatever still waits is told
    /// there is no answer.
    pub async fn background(&self, inbox: Inbox<ToShard>) {
        let pump = front::pump(self.front.clone(), self.hub.clone(), inbox);
        let catch_up = watch::catch_up(self.front.clone(), self.hub.clone());
        let (stopping, live) = (self.front.shared.clone(), self.live.clone());
        futures_lite::future::or(futures_lite::future::zip(pump, catch_up), async move {
            stopping.stopping.wait().await;
            let until = std::time::Instant::now() + serve::STOP_GRACE;
            while live.load(std::sync::atomic::Ordering::Acquire) > 0 && std::time::Instant::now() < until {
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            }
            ((), ())
        })
        .await;
        self.front.drop_all();
    }
}
