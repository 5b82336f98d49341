//! Client writes between servers: a follower (or observer) forwards each write its clients
//! send to the leader, whose sequencer alone validates and orders writes; a write the leader
//! refuses comes back as [`Forwarded::Refused`], one it accepts comes back as a committed
//! entry the follower matches to its client by (session, cxid), as ZooKeeper's
//! `CommitProcessor` does. Carried as opaque bytes on the peer links (`Message::Forward`).

use baton_engine::sequencer::Rejected;
use baton_engine::tree::ErrorCode;
use baton_engine::{SessionId, Zxid};
use rkyv::rancor;
use rkyv::util::AlignedVec;

pub use message::Forwarded;

#[allow(missing_docs, reason = "rkyv's derived resolver for Forwarded has undocumented fields")]
mod message {
    use baton_engine::sequencer::WriteRequest;
    use baton_engine::zab::ServerId;
    use baton_engine::{SessionId, Zxid};

    /// One forwarded message.
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub enum Forwarded {
        /// A client's write, from the server its client is connected to (relayed by observers
        /// that follow other observers).
        Write {
            /// The server whose client sent it (answers go straight back to it).
            origin: ServerId,
            /// The write.
            req: WriteRequest,
        },
        /// The leader refused the write `(session, cxid)` before the log.
        Refused {
            /// The client's session.
            session: SessionId,
            /// Its request id.
            cxid: i32,
            /// The zxid the refusal was decided at (the reply's zxid).
            zxid: Zxid,
            /// The error code of a single operation.
            code: i32,
            /// For a multi: one code per operation (then `code` is 0).
            multi: Option<Vec<i32>>,
        },
        /// etcd leases kept alive by clients of a follower (or of observers below it), for
        /// the leader, which alone expires leases.
        KeepAlive {
            /// The leases.
            leases: Vec<i64>,
        },
    }
}

/// A forwarded message that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed forwarded message: {0}")]
pub struct ForwardError(String);

impl Forwarded {
    /// The leader's answer to write `(session, cxid)`, refused as `rejected`.
    pub fn refusal(session: SessionId, cxid: i32, zxid: Zxid, rejected: Rejected) -> Forwarded {
        let (code, multi) = match rejected {
            Rejected::Op(code) => (code.code(), None),
            Rejected::Multi(codes) => (0, Some(codes)),
        };
        Forwarded::Refused { session, cxid, zxid, code, multi }
    }

    /// The refusal a [`Forwarded::Refused`]'s `code` and `multi` stand for.
    pub fn rejected(code: i32, multi: Option<Vec<i32>>) -> Rejected {
        match multi {
            Some(codes) => Rejected::Multi(codes),
            None => Rejected::Op(ErrorCode::from_code(code).unwrap_or(ErrorCode::SystemError)),
        }
    }

    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing owned, finite data into a growable buffer cannot fail (rkyv's only
        // error sources here are allocation and shared-pointer validation).
        #[allow(clippy::expect_used)]
        let bytes = rkyv::to_bytes::<rancor::Error>(self).expect("serializing a Forwarded cannot fail");
        bytes.to_vec()
    }

    /// Validates and decodes bytes from a peer (copied to an aligned buffer first).
    #[deny(clippy::indexing_slicing, reason = "decodes bytes from a peer")]
    pub fn decode(bytes: &[u8]) -> Result<Forwarded, ForwardError> {
        let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<Forwarded, rancor::Error>(&aligned).map_err(|e| ForwardError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_engine::sequencer::{AuthId, CreateMode, CreateOp, WriteOp, WriteRequest};

    #[test]
    fn forwarded_messages_round_trip_and_garbage_is_refused() {
        let write = Forwarded::Write {
            origin: 3,
            req: WriteRequest {
                session_id: SessionId(0x0300_0000_0000_0001),
                cxid: 7,
                auth: vec![AuthId::new("digest", "bob:xyz")],
                op: WriteOp::Multi(vec![
                    WriteOp::Create(CreateOp {
                        path: "/a".into(),
                        data: Some(b"x".to_vec()),
                        acl: Vec::new(),
                        mode: CreateMode::EphemeralSequential,
                        ttl_ms: 0,
                        container: false,
                    }),
                    WriteOp::Delete { path: "/b".into(), version: 3 },
                ]),
            },
        };
        let refused = Forwarded::Refused {
            session: SessionId(1),
            cxid: 2,
            zxid: Zxid(3),
            code: 0,
            multi: Some(vec![0, -101, -2]),
        };
        for m in [write, refused] {
            let bytes = m.encode();
            assert_eq!(Forwarded::decode(&bytes).expect("decodes"), m);
            for cut in 0..bytes.len() {
                let _ = Forwarded::decode(&bytes[..cut]);
            }
        }
        assert!(Forwarded::decode(&[0xff; 64]).is_err());
    }
}
