use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use super::{SessionId, Txn, Zxid};

/// A logged transaction: ZooKeeper's `TxnHeader` and the transaction body.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct Transaction {
    /// Position of this entry in the total order.
    pub zxid: Zxid,
    /// Session that issued the request ([`SessionId::NONE`] for server-issued entries).
    pub session_id: SessionId,
    /// The client's request id within its session.
    pub cxid: i32,
    /// Leader's wall-clock time in milliseconds when it created the txn (becomes ctime/mtime).
    /// It is an input to the engine, never read from a clock here.
    pub time_ms: i64,
    /// The change itself.
    pub txn: Txn,
}

/// A byte string that is not a valid archived [`Transaction`].
#[derive(Debug, thiserror::Error)]
#[error("invalid entry archive: {0}")]
pub struct LogError(String);

impl Transaction {
    /// Serializes the entry, replacing the contents of `out` (reused to avoid allocation).
    pub fn encode_into(&self, out: &mut AlignedVec) {
        out.clear();
        let taken = std::mem::take(out);
        // Serializing owned, finite data into a growable buffer cannot fail: the only error
        // sources in rkyv's high-level API are allocation and shared-pointer validation.
        #[allow(clippy::expect_used)]
        let filled = rkyv::api::high::to_bytes_in::<_, rancor::Error>(self, taken)
            .expect("serializing a Transaction into an AlignedVec cannot fail");
        *out = filled;
    }

    /// Serializes the entry into a fresh buffer.
    pub fn encode(&self) -> AlignedVec {
        let mut out = AlignedVec::new();
        self.encode_into(&mut out);
        out
    }

    /// Validates `bytes` as an archived entry and returns it in place, without copying.
    /// `bytes` must start at a 16-byte aligned address (WAL records guarantee it).
    pub fn access(bytes: &[u8]) -> Result<&ArchivedTransaction, LogError> {
        rkyv::access::<ArchivedTransaction, rancor::Error>(bytes).map_err(|e| LogError(e.to_string()))
    }

    /// Validates and copies an archived entry into an owned one.
    pub fn decode(bytes: &[u8]) -> Result<Transaction, LogError> {
        let archived = Transaction::access(bytes)?;
        rkyv::deserialize::<Transaction, rancor::Error>(archived).map_err(|e| LogError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Acl, CreateTxn, MultiOp, NodeKind, SessionId};

    fn sample() -> Transaction {
        Transaction {
            zxid: Zxid::new(2, 9),
            session_id: SessionId(0x1234),
            cxid: 17,
            time_ms: 1_700_000_000_000,
            txn: Txn::Multi(vec![
                MultiOp::Create(CreateTxn {
                    path: "/a/b-0000000001".into(),
                    data: b"hello".to_vec(),
                    acl: vec![Acl { perms: 31, scheme: "world".into(), id: "anyone".into() }],
                    kind: NodeKind::Ttl { ttl_ms: 5000 },
                    parent_cversion: 3,
                }),
                MultiOp::SetData { path: "/a".into(), data: vec![0; 300], version: 4 },
                MultiOp::Delete { path: "/c".into() },
            ]),
        }
    }

    #[test]
    fn entry_round_trips_through_archive() {
        let entry = sample();
        let bytes = entry.encode();
        assert_eq!(Transaction::decode(&bytes).expect("valid"), entry);
        let archived = Transaction::access(&bytes).expect("valid");
        assert_eq!(archived.zxid.0, Zxid::new(2, 9).0);
        assert_eq!(archived.cxid, 17);
    }

    #[test]
    fn encode_into_reuses_buffer_and_replaces_contents() {
        let mut buf = AlignedVec::new();
        sample().encode_into(&mut buf);
        let first = buf.to_vec();
        sample().encode_into(&mut buf);
        assert_eq!(buf.as_slice(), first.as_slice());
    }

    #[test]
    fn garbage_is_rejected_not_panicked_on() {
        let good = sample().encode();
        let mut bytes = good.clone();
        bytes.as_mut_slice().fill(0xff);
        assert!(Transaction::access(&bytes).is_err());
        assert!(Transaction::access(&[]).is_err());
        // Every truncation of a valid archive is refused or decodes; none panics.
        for cut in 0..good.len() {
            let mut prefix = rkyv::util::AlignedVec::<16>::new();
            prefix.extend_from_slice(&good[..cut]);
            let _ = Transaction::decode(&prefix);
        }
    }
}
