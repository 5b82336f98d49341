//! etcd's Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive,
//! LeaseLeases.
//!
//! A lease is granted and revoked through the log (its keys are deleted on every server in
//! one revision). Its deadline is kept by the write path beside ZooKeeper's sessions
//! (`write::path`, `leases`): every server tracks it, keep-alives renew it where they arrive
//! and a follower reports them to its leader, and only the leader expires it, by proposing a
//! revoke — as etcd's primary lessor does. A new leader gives every lease its whole TTL.
//!
//! TimeToLive's remaining TTL is this server's view: exact on the leader and on the server
//! the lease's keep-alives go to, a full TTL elsewhere (etcd asks its leader).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use baton_engine::mvcc::{EtcdResponse, EtcdTxn};
use tonic::codegen::tokio_stream::{wrappers::ReceiverStream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::front::Front;
use super::pb::etcdserverpb as pb;
use crate::runtime::ToWritePath;

/// The shortest TTL granted, in seconds: etcd's default (1.5 election timeouts of 1 s).
pub const MIN_LEASE_TTL: i64 = 2;

/// Keep-alive answers waiting for a slow client before its stream is dropped.
const KEEP_ALIVE_QUEUE: usize = 64;

/// The Lease service of this server's etcd front.
pub struct LeaseService {
    pub(super) front: Arc<Front>,
    /// When each lease heard from here expires, as far as this server knows.
    deadlines: Arc<Mutex<HashMap<i64, Instant>>>,
    next: AtomicU64,
}

/// Notes that lease `id` was renewed now for `ttl` seconds.
fn renew(deadlines: &Mutex<HashMap<i64, Instant>>, id: i64, ttl: i64) {
    let deadline = Instant::now() + std::time::Duration::from_secs(ttl.max(0) as u64);
    deadlines.lock().unwrap_or_else(|p| p.into_inner()).insert(id, deadline);
}

impl LeaseService {
    /// The service on `front`.
    pub fn new(front: Arc<Front>) -> LeaseService {
        LeaseService { front, deadlines: Arc::new(Mutex::new(HashMap::new())), next: AtomicU64::new(0) }
    }

    /// A lease ID for a grant that left it 0, as etcd makes them: this member's id in the top
    /// bits, then the time in ms and a counter; positive and unique in the ensemble.
    fn new_id(&self) -> i64 {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let member = self.front.shared.config.server_id & 0x7fff;
        let id = (member << 48) | ((ms & 0xff_ffff_ffff) << 8).wrapping_add(n & 0xff) & ((1 << 48) - 1);
        if id == 0 {
            1
        } else {
            id as i64
        }
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let r = request.into_inner();
        let id = if r.id == 0 { self.new_id() } else { r.id };
        self.front.quota(baton_engine::mvcc::LEASE_OVERHEAD)?;
        match self.front.write(EtcdTxn::LeaseGrant { id, ttl: r.ttl, min_ttl: MIN_LEASE_TTL }).await? {
            EtcdResponse::LeaseGrant { id, ttl, revision } => {
                renew(&self.deadlines, id, ttl);
                Ok(Response::new(pb::LeaseGrantResponse {
                    header: Some(self.front.header(revision)),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            other => Err(super::kv::mismatch(&other)),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        match self.front.write(EtcdTxn::LeaseRevoke { id }).await? {
            EtcdResponse::LeaseRevoke { revision } => {
                self.deadlines.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                Ok(Response::new(pb::LeaseRevokeResponse { header: Some(self.front.header(revision)) }))
            }
            other => Err(super::kv::mismatch(&other)),
        }
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(KEEP_ALIVE_QUEUE);
        let front = self.front.clone();
        let deadlines = self.deadlines.clone();
        super::rt::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                // As etcd: the header is filled before the renewal; TTL 0 for a lease that
                // does not exist (no error).
                let (revision, granted) = {
                    let ks = front.shared.etcd();
                    (ks.revision(), ks.lease(req.id).map(|l| l.ttl))
                };
                let ttl = match granted {
                    Some(ttl) => {
                        front.shared.to_write_path.send(ToWritePath::KeepAlive(vec![req.id]));
                        renew(&deadlines, req.id, ttl);
                        ttl
                    }
                    None => 0,
                };
                let answer = pb::LeaseKeepAliveResponse { header: Some(front.header(revision)), id: req.id, ttl };
                if tx.try_send(Ok(answer)).is_err() {
                    // The client reads none of its answers (or left): stop.
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        let (revision, lease) = {
            let ks = self.front.shared.etcd();
            (ks.revision(), ks.lease(r.id))
        };
        let header = Some(self.front.header(revision));
        let Some(lease) = lease else {
            // etcd answers an unknown lease with TTL -1, not an error.
            return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }));
        };
        let deadline = self.deadlines.lock().unwrap_or_else(|p| p.into_inner()).get(&r.id).copied();
        let ttl = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).as_secs() as i64,
            None => lease.ttl,
        };
        let keys = if r.keys { lease.keys.iter().map(|k| k.to_vec()).collect() } else { Vec::new() };
        Ok(Response::new(pb::LeaseTimeToLiveResponse { header, id: r.id, ttl, granted_ttl: lease.ttl, keys }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let (revision, leases) = {
            let ks = self.front.shared.etcd();
            (ks.revision(), ks.leases().map(|(id, _)| pb::LeaseStatus { id }).collect())
        };
        Ok(Response::new(pb::LeaseLeasesResponse { header: Some(self.front.header(revision)), leases }))
    }
}
