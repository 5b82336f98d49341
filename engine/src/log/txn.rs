use rkyv::{Archive, Deserialize, Serialize};

/// One access-control entry, as ZooKeeper's `ACL` record: a permission bit set
/// (READ=1, WRITE=2, CREATE=4, DELETE=8, ADMIN=16) granted to an identity `scheme:id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct Acl {
    /// Permission bits.
    pub perms: i32,
    /// Authentication scheme: `world`, `auth`, `digest`, `ip`, ...
    pub scheme: String,
    /// Identity within the scheme (`anyone`, `user:base64(sha1)`, an address...).
    pub id: String,
}

/// What kind of znode a create makes. Sequential names are resolved by the sequencer before
/// the txn is logged, so the path in the txn is final and `apply` stays deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum NodeKind {
    /// Lives until deleted.
    Persistent,
    /// Deleted when the owning session (the entry's `session_id`) ends.
    Ephemeral,
    /// Deleted by the container reaper once its last child is gone.
    Container,
    /// Deleted after `ttl_ms` without modification once it has no children.
    Ttl {
        /// Time to live in milliseconds.
        ttl_ms: i64,
    },
}

/// ZooKeeper's `CreateTxn` / `CreateContainerTxn` / `CreateTTLTxn`.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct CreateTxn {
    /// Full path of the new znode (sequential suffix already applied).
    pub path: String,
    /// Initial data.
    pub data: Vec<u8>,
    /// Initial ACL.
    pub acl: Vec<Acl>,
    /// Persistent, ephemeral, container or TTL.
    pub kind: NodeKind,
    /// The parent's cversion after this create, as ZooKeeper's `parentCVersion`.
    pub parent_cversion: i32,
}

/// One operation inside a [`Txn::Multi`]; ZooKeeper's multi cannot nest, and neither can this.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum MultiOp {
    /// A create.
    Create(CreateTxn),
    /// A delete.
    Delete {
        /// Path to delete.
        path: String,
    },
    /// A setData; `version` is the znode's new data version.
    SetData {
        /// Path to update.
        path: String,
        /// New data.
        data: Vec<u8>,
        /// New data version.
        version: i32,
    },
    /// A version check that passed.
    Check {
        /// Path checked.
        path: String,
        /// Version it had.
        version: i32,
    },
    /// An operation that failed; a multi with any error is logged with every op as an error
    /// so that followers apply nothing of it (ZooKeeper's `ErrorTxn` inside `MultiTxn`).
    Error {
        /// ZooKeeper error code (e.g. -101 NoNode).
        code: i32,
    },
    /// A create whose data is null (length -1 on the wire, distinct from empty); its
    /// `data` is empty. (Variants are only ever appended: logs written before keep their
    /// meaning.)
    CreateNull(CreateTxn),
    /// A setData to null data.
    SetNull {
        /// Path to update.
        path: String,
        /// New data version.
        version: i32,
    },
}

/// A transaction body: the deterministic change an entry makes to the data tree.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum Txn {
    /// Create a znode.
    Create(CreateTxn),
    /// Delete a znode.
    Delete {
        /// Path to delete.
        path: String,
    },
    /// Replace a znode's data; `version` is the new data version.
    SetData {
        /// Path to update.
        path: String,
        /// New data.
        data: Vec<u8>,
        /// New data version.
        version: i32,
    },
    /// Replace a znode's ACL; `version` is the new ACL version (aversion).
    SetAcl {
        /// Path to update.
        path: String,
        /// New ACL.
        acl: Vec<Acl>,
        /// New ACL version.
        version: i32,
    },
    /// A version check (only meaningful inside a multi, kept for parity with ZooKeeper).
    Check {
        /// Path checked.
        path: String,
        /// Version it had.
        version: i32,
    },
    /// Several operations applied atomically.
    Multi(Vec<MultiOp>),
    /// Open a session (the entry's `session_id`) with this negotiated timeout.
    CreateSession {
        /// Negotiated session timeout in milliseconds.
        timeout_ms: i32,
    },
    /// Close or expire the entry's session, deleting its ephemeral znodes.
    CloseSession,
    /// A request that failed validation but must still take a place in the order.
    Error {
        /// ZooKeeper error code.
        code: i32,
    },
    /// A create whose data is null (length -1 on the wire, distinct from empty); its
    /// `data` is empty. (Variants are only ever appended: logs written before keep their
    /// meaning.)
    CreateNull(CreateTxn),
    /// A setData to null data.
    SetNull {
        /// Path to update.
        path: String,
        /// New data version.
        version: i32,
    },
    /// A write to etcd's keyspace (`crate::mvcc`); the data tree only counts its zxid.
    Etcd(crate::mvcc::EtcdTxn),
}
