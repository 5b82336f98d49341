//! etcd's Maintenance and Cluster services.
//!
//! - Status: etcd's version string (3.5, which 3.4 and 3.5 clients accept), the keyspace's
//!   size (`KeySpace::size_bytes`, what the quota bounds), the leader's member id, the Zab
//!   zxid and epoch as raft index and term, and the alarms raised among its errors.
//! - Alarm: list, activate, deactivate; alarms are replicated state (`EtcdTxn::Alarm`). A
//!   server whose keyspace would pass `--etcd-quota-bytes` raises NOSPACE, and then every
//!   server refuses puts, txns with puts and lease grants at apply, as etcd's capped applier
//!   does, until it is disarmed. (A full disk also refuses writes with NOSPACE's error.)
//! - Defragment: succeeds at once (Baton compacts in place and has nothing to defragment).
//! - Hash, HashKV: a hash of the keys live at a revision (HashKV) or now (Hash), equal on
//!   every member at the same revision.
//! - Snapshot: the server's state image (both state machines, as its snapshot files hold
//!   them), streamed, padded with zeros to a multiple of 512 bytes and followed by its
//!   SHA-256, the shape etcd's stream has (a bbolt file of 512-byte pages, then its hash),
//!   which `etcdctl snapshot save` checks. It is Baton's format, not bbolt: `etcdctl snapshot
//!   status/restore` cannot read it.
//! - MoveLeader, and Cluster's MemberAdd/Remove/Update/Promote: membership is static for now,
//!   so these answer with a clear error. MemberList lists the configured members, each with
//!   the etcd client URL the membership gives it (`--peer ID=HOST:PORT;ETCD_HOST:ETCD_PORT`).

use std::sync::Arc;

use baton_engine::mvcc::{EtcdResponse, EtcdTxn, RangeRequest};
use baton_engine::state::StateImage;
use baton_engine::zab::Role;
use sha2::Digest;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::front::{status, Front};
use super::pb::etcdserverpb as pb;

/// The version Status reports (etcd's API level this front follows).
pub const ETCD_VERSION: &str = "3.5.0";

/// Bytes of a Snapshot response.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// The page size a snapshot stream is padded to (etcd's clients expect bbolt's).
const SNAPSHOT_PAGE: usize = 512;

/// The Maintenance and Cluster services of this server's etcd front.
pub struct MaintenanceService {
    pub(super) front: Arc<Front>,
}

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!(
        "baton: {what} is not supported yet: membership is static (set it with --peer on every server)"
    ))
}

impl MaintenanceService {
    fn leader(&self) -> u64 {
        match self.front.shared.role.get() {
            Role::Leading { .. } => self.front.shared.config.server_id,
            Role::Following { leader, .. } => leader,
            Role::Looking => 0,
        }
    }

    /// A hash of the keys live at `revision` (0: now), with the compaction revision.
    fn hash_at(&self, revision: i64) -> Result<(u32, i64, i64), Status> {
        let ks = self.front.shared.etcd().clone();
        let all = RangeRequest { key: vec![0], range_end: vec![0], revision, ..RangeRequest::default() };
        let answer = ks.range(&all).map_err(status)?;
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for kv in &answer.kvs {
            for field in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                h.update(&field.to_le_bytes());
            }
            h.update(&(kv.key.len() as u64).to_le_bytes());
            h.update(&kv.key);
            h.update(&(kv.value.len() as u64).to_le_bytes());
            h.update(&kv.value);
        }
        Ok((h.digest() as u32, ks.compact_revision(), answer.revision))
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        let r = request.into_inner();
        let member = |(member_id, alarm): (u64, i32)| pb::AlarmMember { member_id, alarm };
        // etcd's AlarmRequest actions: GET, ACTIVATE, DEACTIVATE.
        let (alarms, revision) = match r.action {
            0 => {
                let ks = self.front.shared.etcd();
                // GET lists every alarm, or those of one type.
                let alarms = ks.alarms().filter(|(_, a)| r.alarm == 0 || *a == r.alarm).map(member).collect();
                (alarms, ks.revision())
            }
            1 | 2 => {
                let txn = EtcdTxn::Alarm { activate: r.action == 1, member: r.member_id, alarm: r.alarm };
                match self.front.write(txn).await? {
                    EtcdResponse::Alarm { alarms, revision } => {
                        if r.action == 2 && !alarms.is_empty() {
                            tracing::info!(member = r.member_id, alarm = r.alarm, "etcd alarm disarmed");
                        }
                        (alarms.into_iter().map(member).collect(), revision)
                    }
                    other => return Err(super::kv::mismatch(&other)),
                }
            }
            other => return Err(Status::invalid_argument(format!("etcdserver: unknown alarm action {other}"))),
        };
        Ok(Response::new(pb::AlarmResponse { header: Some(self.front.header(revision)), alarms }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let ks = self.front.shared.etcd().clone();
        let applied = self.front.shared.tree().last_zxid().0;
        let size = ks.size_bytes() as i64;
        let role = self.front.shared.role.get();
        let mut errors = Vec::new();
        if !role.serving() {
            errors.push("etcdserver: no leader".to_string());
        }
        // As etcd: each alarm raised, as its AlarmMember prints.
        for (member, alarm) in ks.alarms() {
            let name = match alarm {
                1 => "NOSPACE".to_string(),
                2 => "CORRUPT".to_string(),
                other => other.to_string(),
            };
            errors.push(format!("memberID:{member} alarm:{name} "));
        }
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.front.header(ks.revision())),
            version: ETCD_VERSION.into(),
            db_size: size,
            leader: self.leader(),
            raft_index: applied,
            raft_term: u64::from(role.epoch()),
            raft_applied_index: applied,
            errors,
            db_size_in_use: size,
            is_learner: self.front.shared.config.is_observer(),
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let revision = self.front.shared.etcd().revision();
        Ok(Response::new(pb::DefragmentResponse { header: Some(self.front.header(revision)) }))
    }

    async fn hash(&self, _request: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        let (hash, _, revision) = self.hash_at(0)?;
        Ok(Response::new(pb::HashResponse { header: Some(self.front.header(revision)), hash }))
    }

    async fn hash_kv(&self, request: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        let (hash, compact_revision, revision) = self.hash_at(request.into_inner().revision)?;
        Ok(Response::new(pb::HashKvResponse { header: Some(self.front.header(revision)), hash, compact_revision }))
    }

    type SnapshotStream = ReceiverStream<Result<pb::SnapshotResponse, Status>>;

    async fn snapshot(&self, _request: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        // A consistent point: the tree's view and the keyspace's clone, taken together under
        // the tree's read lock (the write path applies under both write locks).
        let image = {
            let tree = self.front.shared.tree();
            StateImage::new(tree.view(), self.front.shared.etcd().clone())
        };
        let revision = image.etcd.revision();
        let header = self.front.header(revision);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // Written on a thread of its own (the image is as large as the state), then streamed.
        std::thread::Builder::new()
            .name("baton-etcd-snapshot".into())
            .spawn(move || {
                let mut bytes = Vec::new();
                if let Err(e) = image.write_image(&mut bytes) {
                    let _ = tx.blocking_send(Err(Status::internal(format!("snapshot: {e}"))));
                    return;
                }
                drop(image);
                // etcd's shape: 512-byte pages, then the SHA-256 of all of them.
                bytes.resize(bytes.len().div_ceil(SNAPSHOT_PAGE) * SNAPSHOT_PAGE, 0);
                let digest = sha2::Sha256::digest(&bytes);
                bytes.extend_from_slice(&digest);
                let total = bytes.len();
                let mut sent = 0;
                for chunk in bytes.chunks(SNAPSHOT_CHUNK) {
                    sent += chunk.len();
                    let answer = pb::SnapshotResponse {
                        header: Some(header),
                        remaining_bytes: (total - sent) as u64,
                        blob: chunk.to_vec(),
                    };
                    if tx.blocking_send(Ok(answer)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Status::internal(format!("snapshot: {e}")))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(
        &self,
        _request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(unsupported("MoveLeader"))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for MaintenanceService {
    async fn member_add(&self, _r: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(unsupported("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _r: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(unsupported("MemberRemove"))
    }

    async fn member_update(
        &self,
        _r: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(unsupported("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _r: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let c = &self.front.shared.config;
        let me = c.server_id;
        let scheme = c.etcd_scheme();
        let own_client_url = c.etcd_addr.0.map(|a| format!("{scheme}://{a}"));
        // A member's client URL: its own etcd address for this server, what the membership
        // names for the others (none when it names none).
        let mut members: Vec<pb::Member> = c
            .peers
            .iter()
            .map(|p| pb::Member {
                id: p.id,
                name: format!("baton-{}", p.id),
                peer_ur_ls: vec![format!("http://{}", p.addr)],
                client_ur_ls: if p.id == me {
                    own_client_url.clone().into_iter().collect()
                } else {
                    p.etcd.map(|a| format!("{scheme}://{a}")).into_iter().collect()
                },
                is_learner: p.observer,
            })
            .collect();
        if members.is_empty() {
            // A standalone server is its own one member.
            members.push(pb::Member {
                id: me,
                name: format!("baton-{me}"),
                peer_ur_ls: Vec::new(),
                client_ur_ls: own_client_url.into_iter().collect(),
                is_learner: false,
            });
        }
        let revision = self.front.shared.etcd().revision();
        Ok(Response::new(pb::MemberListResponse { header: Some(self.front.header(revision)), members }))
    }

    async fn member_promote(
        &self,
        _r: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(unsupported("MemberPromote"))
    }
}
