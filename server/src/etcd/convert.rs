//! etcd's protobuf messages to and from the keyspace's own types (`baton_engine::mvcc`),
//! with etcd's reading of oddities: an unknown enum value is its default, a compare whose
//! `target_union` does not match its `target` compares against 0 (or empty for VALUE), and a
//! transaction operation with nothing in it is etcd's "key not found".

use baton_engine::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, KeyValue, MvccError, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};

use super::pb::etcdserverpb as pb;
use super::pb::mvccpb;

/// A RangeRequest (its `serializable` decides where it is read, not what).
pub fn range(r: pb::RangeRequest) -> RangeRequest {
    RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order: match r.sort_order {
            1 => SortOrder::Ascend,
            2 => SortOrder::Descend,
            _ => SortOrder::None,
        },
        sort_target: match r.sort_target {
            1 => SortTarget::Version,
            2 => SortTarget::Create,
            3 => SortTarget::Mod,
            4 => SortTarget::Value,
            _ => SortTarget::Key,
        },
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

/// A PutRequest.
pub fn put(p: pb::PutRequest) -> PutRequest {
    PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

/// A DeleteRangeRequest.
pub fn delete_range(d: pb::DeleteRangeRequest) -> DeleteRangeRequest {
    DeleteRangeRequest { key: d.key, range_end: d.range_end, prev_kv: d.prev_kv }
}

fn compare(c: pb::Compare) -> Compare {
    use pb::compare::TargetUnion as U;
    let result = match c.result {
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        _ => CompareResult::Equal,
    };
    let u = c.target_union;
    let target = match c.target {
        1 => CompareTarget::Create(if let Some(U::CreateRevision(v)) = u { v } else { 0 }),
        2 => CompareTarget::Mod(if let Some(U::ModRevision(v)) = u { v } else { 0 }),
        3 => CompareTarget::Value(if let Some(U::Value(v)) = u { v } else { Vec::new() }),
        4 => CompareTarget::Lease(if let Some(U::Lease(v)) = u { v } else { 0 }),
        _ => CompareTarget::Version(if let Some(U::Version(v)) = u { v } else { 0 }),
    };
    Compare { result, target, key: c.key, range_end: c.range_end }
}

fn request_op(op: pb::RequestOp) -> Result<RequestOp, MvccError> {
    use pb::request_op::Request as R;
    match op.request {
        Some(R::RequestRange(r)) => Ok(RequestOp::Range(range(r))),
        Some(R::RequestPut(p)) => Ok(RequestOp::Put(put(p))),
        Some(R::RequestDeleteRange(d)) => Ok(RequestOp::DeleteRange(delete_range(d))),
        Some(R::RequestTxn(t)) => Ok(RequestOp::Txn(txn(t)?)),
        // etcd's checkRequestOp answers an empty operation with ErrGRPCKeyNotFound.
        None => Err(MvccError::KeyNotFound),
    }
}

/// A TxnRequest; an empty operation inside is etcd's "key not found".
pub fn txn(t: pb::TxnRequest) -> Result<TxnRequest, MvccError> {
    Ok(TxnRequest {
        compare: t.compare.into_iter().map(compare).collect(),
        success: t.success.into_iter().map(request_op).collect::<Result<_, _>>()?,
        failure: t.failure.into_iter().map(request_op).collect::<Result<_, _>>()?,
    })
}

/// Whether every operation of both branches is a read (etcd serves such a txn without
/// proposing it; nested txns count as writes).
pub fn read_only(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).all(|op| matches!(op, RequestOp::Range(_)))
}

/// A key as etcd sends it.
pub fn kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: bytes::Bytes::copy_from_slice(&kv.key),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// As [`kv`], for a message sent to many (a watched key's change): the key shared rather
/// than copied too, so that each watcher's copy of the message is reference counts. (For an
/// answer sent once, copying a small key costs less than sharing it. Values are always the
/// keyspace's own bytes: they may be a view of a mapped snapshot.)
pub fn kv_shared(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: bytes::Bytes::from_owner(kv.key),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A header holding only a revision (what etcd puts in a txn's inner answers).
fn bare(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader { revision, ..pb::ResponseHeader::default() })
}

/// A Range answer (its header's other fields are the caller's to fill).
pub fn range_response(r: RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: bare(r.revision),
        kvs: r.kvs.into_iter().map(kv).collect(),
        more: r.more,
        count: r.count,
    }
}

/// A Put answer.
pub fn put_response(r: PutResponse) -> pb::PutResponse {
    pb::PutResponse { header: bare(r.revision), prev_kv: r.prev_kv.map(kv) }
}

/// A DeleteRange answer.
pub fn delete_response(r: DeleteRangeResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: bare(r.revision),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv).collect(),
    }
}

/// A Txn answer; a nested one's header is all zeros, as etcd's.
pub fn txn_response(r: TxnResponse) -> pb::TxnResponse {
    use pb::response_op::Response as R;
    let responses = r
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                ResponseOp::Range(x) => R::ResponseRange(range_response(x)),
                ResponseOp::Put(x) => R::ResponsePut(put_response(x)),
                ResponseOp::DeleteRange(x) => R::ResponseDeleteRange(delete_response(x)),
                ResponseOp::Txn(x) => {
                    let mut t = txn_response(x);
                    t.header = Some(pb::ResponseHeader::default());
                    R::ResponseTxn(t)
                }
            }),
        })
        .collect();
    pb::TxnResponse { header: bare(r.revision), succeeded: r.succeeded, responses }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::compare::TargetUnion as U;

    #[test]
    fn a_compare_whose_value_does_not_match_its_target_compares_against_zero() {
        let c = pb::Compare {
            result: 3,
            target: 0,
            key: b"k".to_vec(),
            range_end: Vec::new(),
            target_union: Some(U::Value(b"x".to_vec())),
        };
        assert_eq!(compare(c).target, CompareTarget::Version(0));
        let c = pb::Compare { result: 9, target: 3, key: b"k".to_vec(), range_end: Vec::new(), target_union: None };
        let c = compare(c);
        assert_eq!((c.result, c.target), (CompareResult::Equal, CompareTarget::Value(Vec::new())));
    }

    #[test]
    fn an_empty_operation_in_a_txn_is_key_not_found() {
        let t = pb::TxnRequest { success: vec![pb::RequestOp { request: None }], ..pb::TxnRequest::default() };
        assert_eq!(txn(t), Err(MvccError::KeyNotFound));
    }
}
