//! etcd's keyspace: MVCC revisions, key history until compaction, transactions, leases —
//! the second state machine on the same log as the data tree (issue "etcd v3 API"). The
//! etcd front decodes requests into these types, checks them with [`validate`] as etcd's gRPC
//! layer does, and the keyspace applies them deterministically ([`KeySpace`]).
//!
//! The semantics are etcd 3.5's, case by case, as `engine/ETCD-MVCC.md` records them from
//! its source.

mod image;
mod keyspace;
mod types;
mod validate;

#[cfg(test)]
mod tests;

pub use image::{KeySpaceImageError, KeySpaceLoader, MAGIC as IMAGE_MAGIC};
pub use keyspace::{Adopting, KeySpace, LEASE_OVERHEAD, MAX_LEASE_TTL, RECORD_OVERHEAD};
pub use types::{
    ArchivedEtcdTxn, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, EtcdApplied,
    EtcdResponse, EtcdTxn, Event, EventKind, GrpcCode, Key, KeyValue, LeaseInfo, MvccError, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse, Value,
    ALARM_CORRUPT, ALARM_NOSPACE,
};
pub use validate::{check_key, check_put, check_txn, DEFAULT_MAX_TXN_OPS};
