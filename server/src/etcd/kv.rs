//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Writes go through the write path (a follower forwards them to its leader, as any write)
//! and are answered once applied here; the keyspace decides their outcome where they apply,
//! on every server alike, as etcd does. Reads are served from this server's keyspace:
//! `serializable` ones at once, linearizable ones (the default) after a sync, which the
//! ensemble answers once a quorum has confirmed its leader.

use std::sync::Arc;
use std::time::Duration;

use baton_engine::mvcc::{self, EtcdResponse, EtcdTxn};
use prost::Message;
use tonic::{Request, Response, Status};

use super::convert;
use super::front::{status, Front};
use super::pb::etcdserverpb as pb;

/// The KV service of this server's etcd front.
pub struct KvService {
    pub(super) front: Arc<Front>,
}

impl KvService {
    /// etcd's two limits on a request's size: over `--max-request-bytes` plus gRPC's 512 KiB
    /// grpc-go refuses the message itself (ResourceExhausted, in its words); over the limit
    /// alone etcd refuses it ("request is too large").
    fn limit(&self, m: &impl Message) -> Result<(), Status> {
        let (len, max) = (m.encoded_len(), self.front.shared.config.etcd_max_request_bytes);
        let grpc_max = max.saturating_add(super::GRPC_OVERHEAD_BYTES);
        if len > grpc_max {
            return Err(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({len} vs. {grpc_max})"
            )));
        }
        if len > max {
            return Err(Status::invalid_argument("etcdserver: request is too large"));
        }
        Ok(())
    }

    fn max_ops(&self) -> usize {
        self.front.shared.config.etcd_max_txn_ops
    }
}

/// What etcd's quota charges a put: its size and 256 bytes for the key's metadata.
fn put_cost(p: &pb::PutRequest) -> u64 {
    256 + p.encoded_len() as u64
}

/// What etcd's quota charges a txn: the larger branch's puts (top level only, as etcd).
fn txn_cost(t: &pb::TxnRequest) -> u64 {
    let branch = |ops: &[pb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(pb::request_op::Request::RequestPut(p)) => put_cost(p),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

/// A write's answer that is not of the kind asked for (a bug; never a client's doing).
pub(super) fn mismatch(got: &EtcdResponse) -> Status {
    tracing::error!(?got, "an etcd write answered with another kind of answer");
    Status::internal("etcdserver: unexpected answer")
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let r = request.into_inner();
        mvcc::check_key(&r.key).map_err(status)?;
        if !r.serializable {
            self.front.sync().await?;
        }
        let answer = {
            let ks = self.front.shared.etcd();
            if ks.corrupt() {
                return Err(status(mvcc::MvccError::Corrupt));
            }
            ks.range(&convert::range(r)).map_err(status)?
        };
        let revision = answer.revision;
        let mut out = convert::range_response(answer);
        out.header = Some(self.front.header(revision));
        Ok(Response::new(out))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let p = request.into_inner();
        self.limit(&p)?;
        let cost = put_cost(&p);
        let p = convert::put(p);
        mvcc::check_put(&p).map_err(status)?;
        self.front.quota(cost)?;
        match self.front.write(EtcdTxn::Put(p)).await? {
            EtcdResponse::Put(r) => {
                let revision = r.revision;
                let mut out = convert::put_response(r);
                out.header = Some(self.front.header(revision));
                Ok(Response::new(out))
            }
            other => Err(mismatch(&other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let d = request.into_inner();
        self.limit(&d)?;
        mvcc::check_key(&d.key).map_err(status)?;
        match self.front.write(EtcdTxn::DeleteRange(convert::delete_range(d))).await? {
            EtcdResponse::DeleteRange(r) => {
                let revision = r.revision;
                let mut out = convert::delete_response(r);
                out.header = Some(self.front.header(revision));
                Ok(Response::new(out))
            }
            other => Err(mismatch(&other)),
        }
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let t = request.into_inner();
        self.limit(&t)?;
        let serializable = t
            .success
            .iter()
            .chain(&t.failure)
            .all(|op| matches!(&op.request, Some(pb::request_op::Request::RequestRange(r)) if r.serializable));
        let cost = txn_cost(&t);
        let t = convert::txn(t).map_err(status)?;
        mvcc::check_txn(&t, self.max_ops()).map_err(status)?;
        if cost > 0 {
            self.front.quota(cost)?;
        }
        let answer = if convert::read_only(&t) {
            // As etcd: a txn of reads alone is not proposed; it reads after a sync unless
            // every read in it is serializable. It runs on a clone of the keyspace (a
            // reference per map), so the lock is held only to take the clone.
            if !serializable {
                self.front.sync().await?;
            }
            let mut ks = self.front.shared.etcd().clone();
            if ks.corrupt() {
                return Err(status(mvcc::MvccError::Corrupt));
            }
            ks.txn(&t).map_err(status)?.0
        } else {
            match self.front.write(EtcdTxn::Txn(t)).await? {
                EtcdResponse::Txn(r) => r,
                other => return Err(mismatch(&other)),
            }
        };
        let revision = answer.revision;
        let mut out = convert::txn_response(answer);
        out.header = Some(self.front.header(revision));
        Ok(Response::new(out))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let c = request.into_inner();
        match self.front.write(EtcdTxn::Compact { revision: c.revision }).await? {
            EtcdResponse::Compact { revision } => {
                if c.physical {
                    // The history before the compaction goes a bounded part per applied batch
                    // (and per idle tick); `physical` waits until it is all gone.
                    while !self.front.shared.etcd().pruned() {
                        super::rt::sleep(Duration::from_millis(5)).await;
                    }
                }
                Ok(Response::new(pb::CompactionResponse { header: Some(self.front.header(revision)) }))
            }
            other => Err(mismatch(&other)),
        }
    }
}
