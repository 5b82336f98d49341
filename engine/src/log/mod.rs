//! Log entries: what the sequencer produces, the WAL stores and Zab replicates.
//!
//! An [`Entry`] is ZooKeeper's `TxnHeader` (session, cxid, zxid, time, type) plus the
//! transaction body ([`Txn`]). Entries are serialized with rkyv so that a record read from a
//! memory-mapped WAL segment (or received from the leader) is used in place: [`Entry::access`]
//! validates the archive and returns a reference into the original bytes.

mod entry;
mod txn;
mod zxid;

pub use entry::{ArchivedEntry, Entry, LogError};
pub use txn::{
    Acl, ArchivedAcl, ArchivedCreateTxn, ArchivedMultiOp, ArchivedNodeKind, ArchivedTxn, CreateTxn, MultiOp, NodeKind,
    Txn,
};
pub use zxid::{ArchivedZxid, Zxid};
