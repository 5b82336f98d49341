//! etcd's Lock and Election services (`v3lockpb.Lock`, `v3electionpb.Election`).
//!
//! etcd 3.4 runs `clientv3/concurrency`'s recipes for them against an in-process client of
//! its own KV and Lease services; these are the same steps against this server's KV and
//! Lease services, so every check, limit and error of those applies. What the in-process
//! client's watch does — wait for the newest key created before mine to be deleted — is a
//! wait for the keyspace to change (`Front::changes`) and a fresh look at that key.
//!
//! As etcd 3.4: a lease of 0 grants one of 60 s that nobody keeps alive; the lock key is
//! `name/` and the lease ID in lowercase hex; an error of an inner request reaches the client
//! as gRPC's Unknown with the inner message (a plain Go error in etcd); the election's own
//! errors are `election: not leader`, `election: no leader` and `"leader" field must be
//! provided`, also Unknown; a caller whose request is cancelled while it waits has its key
//! deleted. `etcdctl lock` and `etcdctl elect` do not call these services: they run the
//! recipes themselves over KV, Lease and Watch.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Code, Request, Response, Status};

use super::front::Front;
use super::pb::etcdserverpb::kv_server::Kv;
use super::pb::etcdserverpb::lease_server::Lease;
use super::pb::etcdserverpb::{self as pb, compare, range_request, request_op, response_op};
use super::pb::{mvccpb, v3electionpb as epb, v3lockpb as lpb};

/// What the recipes call: this server's KV and Lease services, as etcd's in-process client.
pub struct Recipes {
    front: Arc<Front>,
    kv: super::kv::KvService,
    lease: Arc<super::lease::LeaseService>,
}

/// The TTL of the lease a request with lease 0 is given (concurrency's `defaultSessionTTL`).
const SESSION_TTL: i64 = 60;

/// An inner request's error as etcd's in-process client hands it back: a plain error, which
/// gRPC sends as Unknown with its message.
fn inner(s: Status) -> Status {
    match s.code() {
        Code::Cancelled => s,
        _ => Status::unknown(s.message().to_string()),
    }
}

/// The end of the range of every key starting with `prefix` (clientv3's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

/// The key of `lease` under `prefix`: concurrency's `fmt.Sprintf("%s%x", pfx, lease)`.
fn own_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

fn with_slash(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// The oldest (`Ascend`) or newest (`Descend`) key under `prefix` by create revision, with
/// create revisions up to `max_create` (0: any): concurrency's `WithFirstCreate` and
/// `WithLastCreate`.
fn by_create(prefix: &[u8], order: range_request::SortOrder, max_create: i64) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: range_request::SortTarget::Create as i32,
        max_create_revision: max_create,
        ..Default::default()
    }
}

fn one_key(key: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest { key: key.to_vec(), ..Default::default() }
}

fn create_revision_is(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

fn op(request: request_op::Request) -> pb::RequestOp {
    pb::RequestOp { request: Some(request) }
}

fn put(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    op(request_op::Request::RequestPut(pb::PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    }))
}

/// The key-values of the `i`th answer of a txn, if it was a range.
fn kvs_of(answer: &pb::TxnResponse, i: usize) -> &[mvccpb::KeyValue] {
    match answer.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

/// Deletes a waiter's key if its request goes away before it holds the lock or leadership
/// (etcd's `m.Unlock(client.Ctx())` / `e.Resign(client.Ctx())` on a cancelled wait).
struct Abandoned {
    front: Option<Arc<Front>>,
    key: Vec<u8>,
}

impl Abandoned {
    fn done(mut self) {
        self.front = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let Some(front) = self.front.take() else { return };
        let key = std::mem::take(&mut self.key);
        super::rt::spawn(async move {
            let delete =
                baton_engine::mvcc::EtcdTxn::DeleteRange(super::convert::delete_range(pb::DeleteRangeRequest {
                    key,
                    ..Default::default()
                }));
            if let Err(e) = front.write(delete).await {
                tracing::debug!(error = %e.message(), "the key of an abandoned lock or campaign was not deleted");
            }
        });
    }
}

impl Recipes {
    /// The recipes over `front`'s KV and Lease services.
    pub fn new(front: Arc<Front>, lease: Arc<super::lease::LeaseService>) -> Recipes {
        Recipes { kv: super::kv::KvService { front: front.clone() }, front, lease }
    }

    async fn txn(&self, t: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        self.kv.txn(Request::new(t)).await.map(Response::into_inner).map_err(inner)
    }

    async fn range(&self, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        self.kv.range(Request::new(r)).await.map(Response::into_inner).map_err(inner)
    }

    /// `lease`, or a new lease of [`SESSION_TTL`] for 0 (concurrency's `NewSession`).
    async fn session(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let granted = self.lease.lease_grant(Request::new(pb::LeaseGrantRequest { ttl: SESSION_TTL, id: 0 })).await;
        Ok(granted.map_err(inner)?.into_inner().id)
    }

    /// Puts `key` (with `value` and `lease`) unless it exists; the txn's answer, whether it
    /// put it, and the key's create revision. The txn also reads `also`, after.
    async fn create_once(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        also: Option<pb::RangeRequest>,
    ) -> Result<(pb::TxnResponse, i64), Status> {
        let read_also = || also.clone().map(|r| op(request_op::Request::RequestRange(r)));
        let answer = self
            .txn(pb::TxnRequest {
                compare: vec![create_revision_is(key, 0)],
                success: std::iter::once(put(key, value, lease)).chain(read_also()).collect(),
                failure: std::iter::once(op(request_op::Request::RequestRange(one_key(key))))
                    .chain(read_also())
                    .collect(),
            })
            .await?;
        let revision = if answer.succeeded {
            answer.header.as_ref().map_or(0, |h| h.revision)
        } else {
            kvs_of(&answer, 0).first().map_or(0, |kv| kv.create_revision)
        };
        Ok((answer, revision))
    }

    /// concurrency's `waitDeletes`: until no key under `prefix` was created at or before
    /// `max_create`, waits for the newest such key to go; the last look's header.
    async fn wait_deletes(&self, prefix: &[u8], max_create: i64) -> Result<pb::ResponseHeader, Status> {
        loop {
            let mut changes = self.front.changes();
            let newest = self.range(by_create(prefix, range_request::SortOrder::Descend, max_create)).await?;
            let Some(last) = newest.kvs.first() else {
                return Ok(newest.header.unwrap_or_default());
            };
            self.wait_gone(&last.key, last.create_revision, &mut changes).await?;
        }
    }

    /// Waits until `key` no longer exists as created at `created` (a watch for its delete).
    async fn wait_gone(
        &self,
        key: &[u8],
        created: i64,
        changes: &mut tokio::sync::watch::Receiver<i64>,
    ) -> Result<(), Status> {
        loop {
            let still = self.front.shared.etcd().range(&super::convert::range(one_key(key)));
            let still = still.map_err(|e| inner(super::front::status(e)))?;
            if !still.kvs.iter().any(|kv| kv.create_revision == created) {
                return Ok(());
            }
            if changes.changed().await.is_err() {
                return Err(Status::unavailable("etcdserver: server stopped"));
            }
        }
    }

    /// The election's leader now: the oldest key under `prefix`, with the read's header.
    async fn leader_of(&self, prefix: &[u8]) -> Result<(pb::ResponseHeader, Option<mvccpb::KeyValue>), Status> {
        let first = self.range(by_create(prefix, range_request::SortOrder::Ascend, 0)).await?;
        Ok((first.header.unwrap_or_default(), first.kvs.into_iter().next()))
    }
}

/// `v3lockpb.Lock`.
pub struct LockService(pub Arc<Recipes>);

#[tonic::async_trait]
impl lpb::lock_server::Lock for LockService {
    async fn lock(&self, request: Request<lpb::LockRequest>) -> Result<Response<lpb::LockResponse>, Status> {
        let r = request.into_inner();
        let recipes = &self.0;
        let lease = recipes.session(r.lease).await?;
        let prefix = with_slash(&r.name);
        let key = own_key(&prefix, lease);
        let owner = by_create(&prefix, range_request::SortOrder::Ascend, 0);
        let (answer, revision) = recipes.create_once(&key, b"", lease, Some(owner)).await?;
        // Locking twice with the same lease is a no-op: the key is there already.
        let oldest = kvs_of(&answer, 1).first().map(|kv| kv.create_revision);
        let header = if oldest.is_none_or(|created| created == revision) {
            answer.header.unwrap_or_default()
        } else {
            let abandoned = Abandoned { front: Some(recipes.front.clone()), key: key.clone() };
            let header = recipes.wait_deletes(&prefix, revision - 1).await?;
            abandoned.done();
            header
        };
        Ok(Response::new(lpb::LockResponse { header: Some(header), key }))
    }

    async fn unlock(&self, request: Request<lpb::UnlockRequest>) -> Result<Response<lpb::UnlockResponse>, Status> {
        let r = request.into_inner();
        let delete = pb::DeleteRangeRequest { key: r.key, ..Default::default() };
        let deleted = self.0.kv.delete_range(Request::new(delete)).await.map_err(inner)?.into_inner();
        Ok(Response::new(lpb::UnlockResponse { header: deleted.header }))
    }
}

/// `v3electionpb.Election`.
pub struct ElectionService(pub Arc<Recipes>);

fn missing_leader() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

/// The election's leader changes as `Observe` streams them.
type Observed = Pin<Box<dyn Stream<Item = Result<epb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl epb::election_server::Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let r = request.into_inner();
        let recipes = &self.0;
        let lease = recipes.session(r.lease).await?;
        let prefix = with_slash(&r.name);
        let key = own_key(&prefix, lease);
        let (answer, revision) = recipes.create_once(&key, &r.value, lease, None).await?;
        let leader = epb::LeaderKey { name: r.name.clone(), key: key.clone(), rev: revision, lease };
        let abandoned = Abandoned { front: Some(recipes.front.clone()), key: key.clone() };
        if !answer.succeeded && kvs_of(&answer, 0).first().is_some_and(|kv| kv.value != r.value) {
            // Campaigning again with another value proclaims it.
            self.proclaim(Request::new(epb::ProclaimRequest { leader: Some(leader.clone()), value: r.value })).await?;
        }
        recipes.wait_deletes(&prefix, revision - 1).await?;
        abandoned.done();
        // The header of the campaign's txn, as etcd answers, not of the wait.
        Ok(Response::new(epb::CampaignResponse { header: answer.header, leader: Some(leader) }))
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let r = request.into_inner();
        let leader = r.leader.ok_or_else(missing_leader)?;
        let answer = self
            .0
            .txn(pb::TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![put(&leader.key, &r.value, leader.lease)],
                failure: Vec::new(),
            })
            .await?;
        if !answer.succeeded {
            return Err(Status::unknown("election: not leader"));
        }
        Ok(Response::new(epb::ProclaimResponse { header: answer.header }))
    }

    async fn leader(&self, request: Request<epb::LeaderRequest>) -> Result<Response<epb::LeaderResponse>, Status> {
        let r = request.into_inner();
        match self.0.leader_of(&with_slash(&r.name)).await? {
            (header, Some(kv)) => Ok(Response::new(epb::LeaderResponse { header: Some(header), kv: Some(kv) })),
            (_, None) => Err(Status::unknown("election: no leader")),
        }
    }

    type ObserveStream = Observed;

    /// Every leader in turn and each value it proclaims: the leader (waiting for one if there
    /// is none), then its key each time it changes, until it goes and the next is sent.
    /// Several proclamations applied in one batch are seen as the last of them.
    async fn observe(&self, request: Request<epb::LeaderRequest>) -> Result<Response<Observed>, Status> {
        let prefix = with_slash(&request.into_inner().name);
        let recipes = self.0.clone();
        let changes = recipes.front.changes();
        // (the leader's key and the revision of the value last sent, if one was)
        let state = (recipes, prefix, changes, None::<(Vec<u8>, i64)>);
        let stream = futures_util::stream::unfold(state, |(recipes, prefix, mut changes, mut sent)| async move {
            loop {
                let found = match &sent {
                    None => recipes.leader_of(&prefix).await,
                    Some((key, _)) => recipes.range(one_key(key)).await.map(|r| {
                        let header = r.header.unwrap_or_default();
                        (header, r.kvs.into_iter().next())
                    }),
                };
                let (header, kv) = match found {
                    Ok(found) => found,
                    // As etcd: an inner error ends the stream.
                    Err(_) => return None,
                };
                match (kv, &sent) {
                    // The leader's key is gone: look for the next leader at once.
                    (None, Some(_)) => {
                        sent = None;
                        continue;
                    }
                    (Some(kv), last) if last.as_ref().is_none_or(|(_, revision)| *revision != kv.mod_revision) => {
                        sent = Some((kv.key.to_vec(), kv.mod_revision));
                        let answer = epb::LeaderResponse { header: Some(header), kv: Some(kv) };
                        return Some((Ok(answer), (recipes, prefix, changes, sent)));
                    }
                    _ => {}
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(&self, request: Request<epb::ResignRequest>) -> Result<Response<epb::ResignResponse>, Status> {
        let leader = request.into_inner().leader.ok_or_else(missing_leader)?;
        let delete = op(request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: leader.key.clone(),
            ..Default::default()
        }));
        let answer = self
            .0
            .txn(pb::TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![delete],
                failure: Vec::new(),
            })
            .await?;
        // Not the leader (any more): nothing to delete, and no error, as etcd.
        Ok(Response::new(epb::ResignResponse { header: answer.header }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_and_own_keys_are_clientv3s() {
        assert_eq!(prefix_end(b"lock/"), b"lock0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(own_key(b"mylock/", 0x694d_7b3a_b8e4_e204), b"mylock/694d7b3ab8e4e204".to_vec());
    }
}
