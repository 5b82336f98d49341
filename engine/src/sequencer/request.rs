//! The requests the sequencer takes. Archivable with rkyv: a follower forwards them to its
//! leader as they are.

use super::AuthId;
use crate::log::Acl;
use crate::log::SessionId;

/// ZooKeeper's `CreateMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[allow(missing_docs)]
pub enum CreateMode {
    Persistent,
    Ephemeral,
    PersistentSequential,
    EphemeralSequential,
    Container,
    PersistentWithTtl,
    PersistentSequentialWithTtl,
}

impl CreateMode {
    /// The mode for a create request's `flags`.
    pub fn from_flags(flags: i32) -> Option<CreateMode> {
        Some(match flags {
            0 => CreateMode::Persistent,
            1 => CreateMode::Ephemeral,
            2 => CreateMode::PersistentSequential,
            3 => CreateMode::EphemeralSequential,
            4 => CreateMode::Container,
            5 => CreateMode::PersistentWithTtl,
            6 => CreateMode::PersistentSequentialWithTtl,
            _ => return None,
        })
    }

    pub(super) fn sequential(self) -> bool {
        matches!(
            self,
            CreateMode::PersistentSequential
                | CreateMode::EphemeralSequential
                | CreateMode::PersistentSequentialWithTtl
        )
    }

    /// Whether it is a TTL mode (needs the createTTL opcode and a TTL).
    pub fn is_ttl(self) -> bool {
        matches!(self, CreateMode::PersistentWithTtl | CreateMode::PersistentSequentialWithTtl)
    }
}

/// A create as the client asked for it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CreateOp {
    /// Path; a sequential create gets the parent's counter appended.
    pub path: String,
    /// Data; `None` is null data (length -1 on the wire), which ZooKeeper keeps apart from
    /// empty data.
    pub data: Option<Vec<u8>>,
    /// ACL (before fix-up).
    pub acl: Vec<Acl>,
    /// Mode.
    pub mode: CreateMode,
    /// TTL for TTL modes (ms), else ignored.
    pub ttl_ms: i64,
    /// A container create (opcode createContainer; mode must be Container).
    pub container: bool,
}

/// A state-changing request. Archivable: a follower forwards it to its leader as is.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(serialize_bounds(__S: rkyv::ser::Writer + rkyv::ser::Allocator, __S::Error: rkyv::rancor::Source))]
#[rkyv(deserialize_bounds(__D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(__C: rkyv::validation::ArchiveContext, __C::Error: rkyv::rancor::Source)))]
pub enum WriteOp {
    /// create, create2, createContainer, createTTL.
    Create(
        /// The create.
        CreateOp,
    ),
    /// delete.
    Delete {
        /// The node.
        path: String,
        /// Expected version (-1: any).
        version: i32,
    },
    /// setData.
    SetData {
        /// The node.
        path: String,
        /// New data; `None` is null data.
        data: Option<Vec<u8>>,
        /// Expected version (-1: any).
        version: i32,
    },
    /// setACL.
    SetAcl {
        /// The node.
        path: String,
        /// New ACL.
        acl: Vec<Acl>,
        /// Expected ACL version (-1: any).
        version: i32,
    },
    /// check (inside a multi).
    Check {
        /// The node.
        path: String,
        /// Expected version.
        version: i32,
    },
    /// multi: all or nothing.
    Multi(
        /// The operations, in order.
        #[rkyv(omit_bounds)]
        Vec<WriteOp>,
    ),
    /// A new session (connect).
    CreateSession {
        /// Negotiated timeout.
        timeout_ms: i32,
    },
    /// closeSession, or expiry.
    CloseSession,
    /// A write to etcd's keyspace. It is checked where it applies, deterministically on
    /// every server (as etcd checks at apply): sequencing only gives it its zxid.
    Etcd(
        /// The write.
        crate::mvcc::EtcdTxn,
    ),
}

/// A write with who sent it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WriteRequest {
    /// The session.
    pub session_id: SessionId,
    /// The client's request id.
    pub cxid: i32,
    /// The session's proven identities, for ACL checks.
    pub auth: Vec<AuthId>,
    /// The operation.
    pub op: WriteOp,
}
