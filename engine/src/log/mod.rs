//! What the log holds: the sequencer produces transactions, the WAL stores them and Zab
//! replicates them.
//!
//! The words, each used for one thing:
//!
//! - a [`Transaction`] is ZooKeeper's `TxnHeader` (session, cxid, zxid, time) plus the
//!   transaction body, a [`Txn`];
//! - its rkyv archive is a log entry's *payload* (`zab::Payload`), used in place: a payload
//!   read from a memory-mapped WAL segment or received from the leader is validated by
//!   [`Transaction::access`] and read without copying;
//! - a *log entry* (`zab::LogEntry`) is a payload with its [`Zxid`], the unit the WAL
//!   appends and Zab replicates (`wal::LogEntryRef` is one borrowed from a WAL segment);
//! - a [`SessionId`] names a client session.

mod session_id;
mod transaction;
mod txn;
mod zxid;

pub use session_id::{ArchivedSessionId, SessionId};
pub use transaction::{ArchivedTransaction, LogError, Transaction};
pub use txn::{
    Acl, ArchivedAcl, ArchivedCreateTxn, ArchivedMultiOp, ArchivedNodeKind, ArchivedTxn, CreateTxn, MultiOp, NodeKind,
    Txn,
};
pub use zxid::{ArchivedZxid, Zxid};
