//! The ZooKeeper replies to the write path's answers ([`ToClient`]): the write path speaks
//! no protocol, so the shape of a reply — create or create2, a multi's per-operation
//! records — comes from the request, which the connection's slot remembers.

use baton_engine::sequencer::Rejected;
use baton_engine::tree::{ErrorCode, OpResult};
use baton_engine::{SessionId, Zxid};

use super::proto::{encode_reply, op, ConnectResponse, OpReply, Response};
use crate::runtime::WriteOutcome;

/// What a write's reply looks like: the opcode the client used and, for a multi, each
/// operation's opcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyShape {
    /// The request's opcode.
    pub op_code: i32,
    /// A multi's opcodes, in order.
    pub multi_ops: Vec<i32>,
}

/// The reply frame for write `xid`.
pub fn written(xid: i32, shape: &ReplyShape, outcome: &WriteOutcome) -> Vec<u8> {
    match outcome {
        WriteOutcome::Applied { zxid, results } => applied(xid, zxid_field(*zxid), shape, results),
        WriteOutcome::Refused { zxid, rejected: Rejected::Op(code) } => {
            encode_reply(xid, zxid_field(*zxid), code.code(), None)
        }
        WriteOutcome::Refused { zxid, rejected: Rejected::Multi(codes) } => {
            let results = codes.iter().map(|&c| OpReply::Error(c)).collect();
            encode_reply(xid, zxid_field(*zxid), 0, Some(&Response::Multi(results)))
        }
        // A ZooKeeper connection never sends an etcd write (the etcd front answers its own).
        WriteOutcome::Etcd { zxid, .. } => encode_reply(xid, zxid_field(*zxid), ErrorCode::SystemError.code(), None),
    }
}

/// The reply to a sync of `path`: done, or ConnectionLoss when the server lost its leader.
pub fn synced(xid: i32, zxid: Zxid, path: String, ok: bool) -> Vec<u8> {
    if ok {
        encode_reply(xid, zxid_field(zxid), 0, Some(&Response::Path(path)))
    } else {
        encode_reply(xid, zxid_field(zxid), ErrorCode::ConnectionLoss.code(), None)
    }
}

/// The connect response for an open session (`read_only`: granted by a server in read-only
/// mode, the response's trailing byte).
pub fn connected(session: SessionId, timeout_ms: i32, password: Vec<u8>, read_only: bool) -> Vec<u8> {
    ConnectResponse { protocol_version: 0, timeout_ms, session_id: session.as_i64(), passwd: password, read_only }
        .encode()
}

/// The connect response that tells a client its session expired (timeout 0, session 0).
pub fn session_expired() -> Vec<u8> {
    ConnectResponse { protocol_version: 0, timeout_ms: 0, session_id: 0, passwd: vec![0; 16], read_only: false }
        .encode()
}

/// A zxid as a reply header carries it.
pub fn zxid_field(zxid: Zxid) -> i64 {
    zxid.0 as i64
}

/// The reply frame for a committed write, shaped by the opcode the client used.
fn applied(xid: i32, zxid: i64, shape: &ReplyShape, results: &[OpResult]) -> Vec<u8> {
    if shape.op_code == op::MULTI {
        let results = results
            .iter()
            .zip(shape.multi_ops.iter().copied().chain(std::iter::repeat(op::ERROR)))
            .map(|(r, code)| op_reply(r, code))
            .collect();
        return encode_reply(xid, zxid, 0, Some(&Response::Multi(results)));
    }
    match results.first() {
        Some(OpResult::Error(e)) => encode_reply(xid, zxid, e.code(), None),
        Some(OpResult::Created { path, stat }) => {
            let body = if shape.op_code == op::CREATE {
                Response::Create { path: path.clone() }
            } else {
                Response::Create2 { path: path.clone(), stat: *stat }
            };
            encode_reply(xid, zxid, 0, Some(&body))
        }
        Some(OpResult::DataSet(stat)) | Some(OpResult::AclSet(stat)) => {
            encode_reply(xid, zxid, 0, Some(&Response::Stat(*stat)))
        }
        _ => encode_reply(xid, zxid, 0, Some(&Response::Empty)),
    }
}

fn op_reply(result: &OpResult, op_code: i32) -> OpReply {
    match result {
        OpResult::Created { path, stat } => {
            if op_code == op::CREATE {
                OpReply::Create { path: path.clone() }
            } else {
                OpReply::Create2 { path: path.clone(), stat: *stat }
            }
        }
        OpResult::Deleted => OpReply::Delete,
        OpResult::DataSet(stat) => OpReply::SetData(*stat),
        OpResult::Checked => OpReply::Check,
        OpResult::Aborted => OpReply::Error(0),
        OpResult::Error(e) => OpReply::Error(e.code()),
        OpResult::AclSet(_) | OpResult::SessionCreated | OpResult::SessionClosed => {
            OpReply::Error(ErrorCode::RuntimeInconsistency.code())
        }
    }
}
