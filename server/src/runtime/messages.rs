//! The messages between the shards (which own client connections) and the write path
//! (which owns sequencing, sessions and commits). They carry no protocol types: a front
//! (today the ZooKeeper one) decodes its requests into these and encodes the answers.

use std::sync::Arc;

use baton_engine::sequencer::{Rejected, WriteRequest};
use baton_engine::tree::{Change, OpResult};
use baton_engine::{SessionId, Zxid};

/// Index of a shard (shard 0 also runs the write path).
pub type ShardId = usize;

/// A connection's id on its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A client connection: the shard that owns it and its id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientRef {
    /// The shard.
    pub shard: ShardId,
    /// The connection.
    pub conn: ConnId,
}

/// A client asking for a session: a new one (`session_id` is [`SessionId::NONE`]) or one to
/// resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// The session to resume, or none.
    pub session_id: SessionId,
    /// Its password (when resuming).
    pub password: Vec<u8>,
    /// The timeout the client asks for.
    pub timeout_ms: i32,
    /// The last zxid the client saw: a server behind it must not serve it.
    pub last_zxid_seen: Zxid,
    /// The client accepts a read-only session (from a server cut off from its quorum).
    pub read_only: bool,
}

/// What a shard asks of the write path.
#[derive(Debug)]
pub enum ToWritePath {
    /// Open or resume a session for a connection.
    Connect {
        /// The connection.
        client: ClientRef,
        /// What it asked for.
        req: SessionRequest,
    },
    /// A write to sequence; answered with [`ToClient::Written`].
    Write {
        /// The connection.
        client: ClientRef,
        /// The request id the answer names.
        xid: i32,
        /// The write (its session, cxid and identities inside).
        req: WriteRequest,
    },
    /// A client's `sync`: answered with [`ToClient::Synced`] once this server has applied
    /// every write the ensemble accepted before it.
    Sync {
        /// The connection.
        client: ClientRef,
        /// The request id the answer names.
        xid: i32,
    },
    /// Sessions heard from since the last report (ZooKeeper's learner pings carry the same).
    Touch(Vec<SessionId>),
    /// etcd leases kept alive by their clients here (LeaseKeepAlive).
    KeepAlive(Vec<i64>),
}

/// What one committed entry changed, as every shard sees it (for watches).
#[derive(Debug)]
pub struct CommittedChanges {
    /// Its zxid.
    pub zxid: Zxid,
    /// The changes, in order.
    pub changes: Vec<Change>,
    /// What an etcd entry changed in etcd's keyspace, in order (for etcd's watchers).
    pub etcd_events: Vec<baton_engine::mvcc::Event>,
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed and applied at `zxid`; one result per operation (one for a single op).
    Applied {
        /// Its zxid.
        zxid: Zxid,
        /// The results.
        results: Vec<OpResult>,
    },
    /// An etcd write applied at `zxid`: etcd's answer, or its error (the same on every
    /// server: etcd checks writes where they apply).
    Etcd {
        /// Its zxid.
        zxid: Zxid,
        /// The answer.
        result: Result<baton_engine::mvcc::EtcdResponse, baton_engine::mvcc::MvccError>,
    },
    /// Refused before the log, decided against the state at `zxid`.
    Refused {
        /// The zxid the answer carries.
        zxid: Zxid,
        /// Why.
        rejected: Rejected,
    },
}

/// What the write path tells a shard to do with one of its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToClient {
    /// The answer to write `xid`.
    Written {
        /// The connection.
        conn: ConnId,
        /// The request it answers.
        xid: i32,
        /// How it ended.
        outcome: WriteOutcome,
    },
    /// The answer to sync `xid`: done once this server has applied every write accepted
    /// before it, at `zxid`; `None` when it lost its leader meanwhile.
    Synced {
        /// The connection.
        conn: ConnId,
        /// The request it answers.
        xid: i32,
        /// The commit point the sync waited for, if it completed.
        zxid: Option<Zxid>,
    },
    /// The connection's session is open (new or resumed).
    Connected {
        /// The connection.
        conn: ConnId,
        /// The session.
        session: SessionId,
        /// The negotiated timeout.
        timeout_ms: i32,
        /// The session's password (for resuming it elsewhere).
        password: Vec<u8>,
        /// A read-only session (read-only mode): reads only, writes get NotReadOnly.
        read_only: bool,
    },
    /// The session the client asked to resume is gone (expired, closed, or the password is
    /// wrong): say so, then close.
    SessionExpired {
        /// The connection.
        conn: ConnId,
    },
    /// Close the connection (the client retries, here or elsewhere).
    Close {
        /// The connection.
        conn: ConnId,
    },
}

/// What the write path sends a shard.
#[derive(Debug)]
pub enum ToShard {
    /// A committed batch (shared by all shards) and this shard's answers, each after the
    /// entry at its index.
    Committed {
        /// The batch, in zxid order.
        batch: Arc<Vec<CommittedChanges>>,
        /// (index into `batch`, answer), in order.
        answers: Vec<(usize, ToClient)>,
    },
    /// An answer not tied to a commit (a refused write, a resumed session).
    Client(ToClient),
    /// This server stopped serving (it lost its leader): close every connection.
    Disconnect,
    /// The admin server asks for the shard's ZooKeeper watches: (session id, path), one per
    /// watch, sent back on the channel.
    Watches(std::sync::mpsc::Sender<Vec<(i64, String)>>),
}
