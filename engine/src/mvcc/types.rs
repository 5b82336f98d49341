//! The requests, answers and errors of etcd's keyspace, in engine terms: what the etcd front
//! decodes from protobuf and hands to the write path, and what [`super::KeySpace`] answers.
//! Field names and meanings are etcd's `rpc.proto` and `kv.proto` (see `engine/ETCD-MVCC.md`).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use rkyv::{Archive, Deserialize, Serialize};
use triomphe::ThinArc;

/// A key: shared, so that a read, a watch event and the history hold one copy, behind a
/// thin pointer (8 bytes; the length lives with the bytes), since the key map and the
/// revision queue hold one per record: a fat `Arc<[u8]>` cost 8 bytes more in each, 24
/// bytes a key with the key map's half-filled leaves. Compared, ordered and hashed as its
/// bytes.
#[derive(Clone)]
pub struct Key(ThinArc<(), u8>);

impl Key {
    /// A shared copy of `bytes`.
    pub fn new(bytes: &[u8]) -> Key {
        Key(ThinArc::from_header_and_slice((), bytes))
    }
}

impl Deref for Key {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0.slice
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Key {
        Key::new(bytes)
    }
}

impl Default for Key {
    fn default() -> Key {
        Key::new(&[])
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        **self == **other
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        (**self).cmp(&**other)
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// Values: shared as keys are, and either on the heap (written since the state was loaded)
/// or a view of the mapped snapshot file the state was loaded from (`bytes::Bytes` holds
/// either, and the etcd front hands it to protobuf without a copy).
pub type Value = bytes::Bytes;

/// One key at one revision (etcd's `mvccpb.KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Key,
    /// The revision of the put that created this generation of the key.
    pub create_revision: i64,
    /// The revision of the key's latest change.
    pub mod_revision: i64,
    /// Puts since the key was created (1 on create).
    pub version: i64,
    /// The value (empty for a tombstone).
    pub value: Value,
    /// The lease the key is attached to, or 0.
    pub lease: i64,
}

/// What happened to a key at a revision (etcd's `mvccpb.Event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// A put or a delete.
    pub kind: EventKind,
    /// The key after the change; for a delete only `key` and `mod_revision` are set.
    pub kv: KeyValue,
    /// The key before the change, when it existed and is still held (not compacted).
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `Event.EventType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// PUT (0).
    Put,
    /// DELETE (1).
    Delete,
}

/// `RangeRequest.SortOrder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum SortOrder {
    /// NONE (0).
    #[default]
    None,
    /// ASCEND (1).
    Ascend,
    /// DESCEND (2).
    Descend,
}

/// `RangeRequest.SortTarget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum SortTarget {
    /// KEY (0).
    #[default]
    Key,
    /// VERSION (1).
    Version,
    /// CREATE (2).
    Create,
    /// MOD (3).
    Mod,
    /// VALUE (4).
    Value,
}

/// `RangeRequest` (without `serializable`, which only decides where the read is served).
#[derive(Debug, Clone, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct RangeRequest {
    /// First key (not empty).
    pub key: Vec<u8>,
    /// End of the range: empty for `key` alone, `[0]` for every key from `key`.
    pub range_end: Vec<u8>,
    /// At most this many keys; 0 or less for no limit.
    pub limit: i64,
    /// Read at this revision; 0 or less for the current one.
    pub revision: i64,
    /// Order of the answer.
    pub sort_order: SortOrder,
    /// What it is sorted by.
    pub sort_target: SortTarget,
    /// Values left out.
    pub keys_only: bool,
    /// Only the count.
    pub count_only: bool,
    /// Keys with a smaller mod revision left out (0: no filter).
    pub min_mod_revision: i64,
    /// Keys with a greater mod revision left out (0: no filter).
    pub max_mod_revision: i64,
    /// Keys with a smaller create revision left out (0: no filter).
    pub min_create_revision: i64,
    /// Keys with a greater create revision left out (0: no filter).
    pub max_create_revision: i64,
}

/// `RangeResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// The header's revision.
    pub revision: i64,
    /// The keys.
    pub kvs: Vec<KeyValue>,
    /// More keys passed the filters than `limit`.
    pub more: bool,
    /// Keys live in the range at the read revision (filters and limit aside).
    pub count: i64,
}

/// `PutRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct PutRequest {
    /// The key (not empty).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Attach to this lease (0: none).
    pub lease: i64,
    /// Answer with the key before the put.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// `PutResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutResponse {
    /// The header's revision.
    pub revision: i64,
    /// The key before the put, if asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// `DeleteRangeRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct DeleteRangeRequest {
    /// First key (not empty).
    pub key: Vec<u8>,
    /// End of the range, as in [`RangeRequest::range_end`].
    pub range_end: Vec<u8>,
    /// Answer with the deleted keys.
    pub prev_kv: bool,
}

/// `DeleteRangeResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeResponse {
    /// The header's revision.
    pub revision: i64,
    /// Keys deleted.
    pub deleted: i64,
    /// The deleted keys, if asked for, in key order.
    pub prev_kvs: Vec<KeyValue>,
}

/// `Compare.CompareResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum CompareResult {
    /// EQUAL (0).
    Equal,
    /// GREATER (1): the key's field is greater than the given value.
    Greater,
    /// LESS (2).
    Less,
    /// NOT_EQUAL (3).
    NotEqual,
}

/// `Compare.target` with its value. The front resolves etcd's quirk of a `target_union` that
/// does not match `target` (the value is then 0, or empty for VALUE).
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum CompareTarget {
    /// VERSION.
    Version(i64),
    /// CREATE.
    Create(i64),
    /// MOD.
    Mod(i64),
    /// VALUE.
    Value(Vec<u8>),
    /// LEASE.
    Lease(i64),
}

/// `Compare`.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct Compare {
    /// How the key's field must relate to the value.
    pub result: CompareResult,
    /// The field and the value.
    pub target: CompareTarget,
    /// The key (not empty).
    pub key: Vec<u8>,
    /// A range of keys, every one of which must pass (as [`RangeRequest::range_end`]).
    pub range_end: Vec<u8>,
}

/// `RequestOp`.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// `TxnRequest`. It nests through [`RequestOp::Txn`], so its archive's bounds are spelled
/// out (rkyv's way for recursive types) and the recursive fields omit the derived ones.
#[derive(Debug, Clone, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
#[rkyv(serialize_bounds(__S: rkyv::ser::Writer + rkyv::ser::Allocator, __S::Error: rkyv::rancor::Source))]
#[rkyv(deserialize_bounds(__D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(__C: rkyv::validation::ArchiveContext, __C::Error: rkyv::rancor::Source)))]
#[rkyv(derive(Debug))]
pub struct TxnRequest {
    /// All must hold for `success` to run; else `failure` runs.
    pub compare: Vec<Compare>,
    /// Operations run when the compares hold.
    #[rkyv(omit_bounds)]
    pub success: Vec<RequestOp>,
    /// Operations run otherwise.
    #[rkyv(omit_bounds)]
    pub failure: Vec<RequestOp>,
}

/// `ResponseOp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseOp {
    /// A read's answer.
    Range(RangeResponse),
    /// A put's answer.
    Put(PutResponse),
    /// A delete's answer.
    DeleteRange(DeleteRangeResponse),
    /// A nested transaction's answer (its header revision is 0, as etcd's).
    Txn(TxnResponse),
}

/// `TxnResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResponse {
    /// The header's revision.
    pub revision: i64,
    /// The compares held.
    pub succeeded: bool,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// `LeaseTimeToLiveResponse`'s deterministic part: what every server knows of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease.
    pub id: i64,
    /// Its granted TTL in seconds (after the minimum is applied).
    pub ttl: i64,
    /// The keys attached to it, in key order.
    pub keys: Vec<Key>,
}

/// The errors of the keyspace and of request validation, with etcd's messages word for word
/// (clients match on them); [`MvccError::code`] gives the gRPC status code etcd sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// ErrGRPCCompacted.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// ErrGRPCFutureRev.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    /// ErrGRPCLeaseNotFound.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// ErrGRPCLeaseExist.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// ErrGRPCLeaseTTLTooLarge.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// ErrGRPCKeyNotFound.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// ErrGRPCEmptyKey.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// ErrGRPCValueProvided.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// ErrGRPCLeaseProvided.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// ErrGRPCTooManyOps.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// ErrGRPCDuplicateKey.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// ErrGRPCNoSpace: the space quota is exceeded, or the NOSPACE alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// ErrGRPCCorrupt: the CORRUPT alarm is raised (etcd's corrupt applier refuses every KV
    /// request, compactions and lease grants and revokes until it is cleared).
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
}

/// gRPC status codes the keyspace's errors carry (the numbers of `google.rpc.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GrpcCode {
    /// INVALID_ARGUMENT (3).
    InvalidArgument = 3,
    /// NOT_FOUND (5).
    NotFound = 5,
    /// FAILED_PRECONDITION (9).
    FailedPrecondition = 9,
    /// RESOURCE_EXHAUSTED (8).
    ResourceExhausted = 8,
    /// OUT_OF_RANGE (11).
    OutOfRange = 11,
    /// DATA_LOSS (15).
    DataLoss = 15,
}

impl MvccError {
    /// The gRPC status code etcd answers this error with.
    pub fn code(self) -> GrpcCode {
        match self {
            MvccError::Compacted | MvccError::FutureRev | MvccError::LeaseTtlTooLarge => GrpcCode::OutOfRange,
            MvccError::LeaseNotFound => GrpcCode::NotFound,
            MvccError::LeaseExists => GrpcCode::FailedPrecondition,
            MvccError::KeyNotFound
            | MvccError::EmptyKey
            | MvccError::ValueProvided
            | MvccError::LeaseProvided
            | MvccError::TooManyOps
            | MvccError::DuplicateKey => GrpcCode::InvalidArgument,
            MvccError::NoSpace => GrpcCode::ResourceExhausted,
            MvccError::Corrupt => GrpcCode::DataLoss,
        }
    }
}

/// An etcd write as the log carries it (`log::Txn::Etcd`): what every server applies to its
/// keyspace, in the same order, with the same result. Reads never reach the log.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum EtcdTxn {
    /// KV.Put.
    Put(PutRequest),
    /// KV.DeleteRange.
    DeleteRange(DeleteRangeRequest),
    /// KV.Txn.
    Txn(TxnRequest),
    /// KV.Compact.
    Compact {
        /// Compact the history before this revision.
        revision: i64,
    },
    /// Lease.LeaseGrant, its ID chosen by the leader when the client left it 0.
    LeaseGrant {
        /// The lease.
        id: i64,
        /// The TTL asked for, in seconds.
        ttl: i64,
        /// The server's minimum TTL (etcd: 1.5 election timeouts), decided with the entry.
        min_ttl: i64,
    },
    /// Lease.LeaseRevoke, asked by a client or decided by the leader at expiry.
    LeaseRevoke {
        /// The lease.
        id: i64,
    },
    /// Maintenance.Alarm's ACTIVATE or DEACTIVATE, asked by a client or raised by a server
    /// whose keyspace went over its space quota (NOSPACE).
    Alarm {
        /// Raise (true) or clear it.
        activate: bool,
        /// The member it is about.
        member: u64,
        /// etcd's `AlarmType` (1: NOSPACE, 2: CORRUPT).
        alarm: i32,
    },
}

/// etcd's `AlarmType` NOSPACE: writes that add data are refused until it is cleared.
pub const ALARM_NOSPACE: i32 = 1;

/// etcd's `AlarmType` CORRUPT: KV requests, compactions and lease grants and revokes are
/// refused until it is cleared.
pub const ALARM_CORRUPT: i32 = 2;

/// What an [`EtcdTxn`] answers, on every server alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdResponse {
    /// KV.Put's answer.
    Put(PutResponse),
    /// KV.DeleteRange's answer.
    DeleteRange(DeleteRangeResponse),
    /// KV.Txn's answer.
    Txn(TxnResponse),
    /// KV.Compact's answer.
    Compact {
        /// The header's revision (the current one).
        revision: i64,
    },
    /// Lease.LeaseGrant's answer.
    LeaseGrant {
        /// The lease.
        id: i64,
        /// The TTL granted.
        ttl: i64,
        /// The header's revision.
        revision: i64,
    },
    /// Lease.LeaseRevoke's answer.
    LeaseRevoke {
        /// The header's revision (after the keys' deletion).
        revision: i64,
    },
    /// Maintenance.Alarm's answer to ACTIVATE or DEACTIVATE: the (member, alarm) raised, or
    /// those cleared (none if it was not raised).
    Alarm {
        /// The alarms it changed.
        alarms: Vec<(u64, i32)>,
        /// The header's revision.
        revision: i64,
    },
}

/// One applied [`EtcdTxn`]: its answer (or etcd's error) and the events it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdApplied {
    /// The answer for the client that asked (if it is connected to this server).
    pub result: Result<EtcdResponse, MvccError>,
    /// The changes, in order, for watchers.
    pub events: Vec<Event>,
}
