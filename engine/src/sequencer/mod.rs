//! The sequencer's prep step (ZooKeeper's `PrepRequestProcessor`), pure and deterministic.
//!
//! ```text
//!  WriteRequest ──prepare(tree, time)──▶ Ok(Transaction with the next zxid) ──▶ WAL ─▶ commit ─▶ apply
//!                                    └─▶ Err(Rejected)  (answered at once, never logged)
//!  committed(zxid) ──▶ forget in-flight records the tree now reflects
//! ```
//!
//! A write is validated against the tree **plus the changes still in flight** (entries
//! prepared but not yet applied), so pipelined writes see each other: two creates of the same
//! path in one batch give one `NodeExists`, and sequential names never repeat. The in-flight
//! records are ZooKeeper's `outstandingChanges`: per path, the node as the last prepared
//! change left it (or deleted), with that change's zxid.
//!
//! Checks run in ZooKeeper's order, so clients see the same error codes: e.g. a create checks
//! CREATE permission on the parent before NodeExists, a delete checks DELETE on the parent,
//! then the version, then NotEmpty.
//!
//! With [`SequencerConfig::enforce_quota`], creates and setData are also checked against the
//! quota of the longest quota root holding their path (see `quota.rs`).

mod acl;
mod quota;
// rkyv's derive emits undocumented items for the archived forms of these types.
#[allow(missing_docs)]
mod request;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

pub use acl::{check as check_acl, fixup as fixup_acl, ip_matches, perms, AuthId};
pub use request::{CreateMode, CreateOp, WriteOp, WriteRequest};

use crate::log::{Acl, CreateTxn, MultiOp, NodeKind, SessionId, Transaction, Txn, Zxid};
use crate::tree::path::{parent, validate_path};
use crate::tree::{owner_kind, DataTree, ErrorCode, OwnerKind, QuotaUsage, StatPersisted, CONTAINER_OWNER, TTL_MAX_MS};

/// Why a write was refused before reaching the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// A single operation failed with this code.
    Op(ErrorCode),
    /// A multi failed: one code per operation, as ZooKeeper reports them (0 for operations
    /// before the failing one, its code, RuntimeInconsistency after it).
    Multi(Vec<i32>),
}

/// Sequencer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencerConfig {
    /// Allow TTL nodes (ZooKeeper's `zookeeper.extendedTypesEnabled`); Unimplemented when off.
    pub ttl_enabled: bool,
    /// Refuse a create or setData past a quota's hard limit with QuotaExceeded, and log one
    /// past a soft limit (ZooKeeper's `zookeeper.enforceQuota`); when off, quotas are only
    /// counted.
    pub enforce_quota: bool,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig { ttl_enabled: true, enforce_quota: false }
    }
}

#[derive(Debug, Clone)]
struct NodeRecord {
    stat: StatPersisted,
    child_count: i32,
    acl: Arc<[Acl]>,
    /// Its data's length (null: 0), for quotas.
    data_len: i64,
}

/// The in-flight state of one path.
#[derive(Debug, Clone)]
struct Record {
    /// Zxid of the last prepared change to it. Invariant: > the tree's last applied zxid.
    zxid: Zxid,
    /// `None`: deleted by that change.
    node: Option<NodeRecord>,
}

/// Turns write requests into entries with consecutive zxids.
#[derive(Debug)]
pub struct Sequencer {
    config: SequencerConfig,
    /// Invariant: > every zxid handed out.
    next_zxid: Zxid,
    pending: HashMap<String, Record>,
    /// Sessions opened (`true`) or closed (`false`) by in-flight entries.
    pending_sessions: HashMap<SessionId, (Zxid, bool)>,
    /// How in-flight entries change quota roots' usage (kept only when enforcing).
    quota_in_flight: quota::InFlightUsage,
    quota_log: quota::LogPace,
}

impl Sequencer {
    /// A sequencer whose first zxid follows `last_zxid` within `epoch` (a new epoch starts
    /// its counter at 1, as Zab).
    pub fn new(config: SequencerConfig, epoch: u32, last_zxid: Zxid) -> Sequencer {
        let next_zxid = if last_zxid.epoch() == epoch {
            last_zxid.next().unwrap_or(Zxid::new(epoch, u32::MAX))
        } else {
            Zxid::new(epoch, 1)
        };
        Sequencer {
            config,
            next_zxid,
            pending: HashMap::new(),
            pending_sessions: HashMap::new(),
            quota_in_flight: quota::InFlightUsage::default(),
            quota_log: quota::LogPace::default(),
        }
    }

    /// The zxid the next entry will get.
    pub fn next_zxid(&self) -> Zxid {
        self.next_zxid
    }

    /// Number of paths with in-flight changes.
    pub fn in_flight_paths(&self) -> usize {
        self.pending.len()
    }

    /// Validates `req` against `tree` and the in-flight changes and, if it holds, returns the
    /// entry to log (with the next zxid and `time_ms`) and records its effects as in flight.
    /// A refusal changes nothing.
    pub fn prepare(&mut self, tree: &DataTree, req: &WriteRequest, time_ms: i64) -> Result<Transaction, Rejected> {
        let zxid = self.next_zxid;
        if zxid.counter() == u32::MAX {
            // Zab needs a new epoch here (ZooKeeper forces an election); refuse until then.
            return Err(Rejected::Op(ErrorCode::SystemError));
        }
        let txn = match &req.op {
            WriteOp::Multi(ops) => self.prepare_multi(tree, req, ops, zxid, time_ms)?,
            op => self.prepare_op(tree, req, op, zxid, time_ms).map_err(Rejected::Op)?,
        };
        self.next_zxid = zxid.next().unwrap_or(Zxid::new(zxid.epoch(), u32::MAX));
        Ok(Transaction { zxid, session_id: req.session_id, cxid: req.cxid, time_ms, txn })
    }

    /// Forgets in-flight records that the tree reflects once `zxid` is applied.
    pub fn committed(&mut self, zxid: Zxid) {
        self.pending.retain(|_, r| r.zxid > zxid);
        self.pending_sessions.retain(|_, (z, _)| *z > zxid);
        if !self.quota_in_flight.is_empty() {
            self.quota_in_flight.committed(zxid);
        }
    }

    fn prepare_multi(
        &mut self,
        tree: &DataTree,
        req: &WriteRequest,
        ops: &[WriteOp],
        zxid: Zxid,
        time: i64,
    ) -> Result<Txn, Rejected> {
        let saved = (self.pending.clone(), self.pending_sessions.clone(), self.quota_in_flight.clone());
        let mut out = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let prepared = match op {
                WriteOp::Create(_) | WriteOp::Delete { .. } | WriteOp::SetData { .. } | WriteOp::Check { .. } => {
                    self.prepare_op(tree, req, op, zxid, time)
                }
                _ => Err(ErrorCode::BadArguments),
            };
            match prepared {
                Ok(txn) => out.push(multi_op(txn)),
                Err(code) => {
                    (self.pending, self.pending_sessions, self.quota_in_flight) = saved;
                    let codes = (0..ops.len())
                        .map(|j| match j.cmp(&i) {
                            std::cmp::Ordering::Less => 0,
                            std::cmp::Ordering::Equal => code.code(),
                            std::cmp::Ordering::Greater => ErrorCode::RuntimeInconsistency.code(),
                        })
                        .collect();
                    return Err(Rejected::Multi(codes));
                }
            }
        }
        Ok(Txn::Multi(out))
    }

    fn lookup(&self, tree: &DataTree, path: &str) -> Option<NodeRecord> {
        match self.pending.get(path) {
            Some(record) => record.node.clone(),
            None => tree.get(path).map(|z| NodeRecord {
                stat: z.stat(),
                child_count: z.child_count() as i32,
                acl: z.acl().clone(),
                data_len: z.data().len() as i64,
            }),
        }
    }

    fn set(&mut self, path: &str, zxid: Zxid, node: Option<NodeRecord>) {
        self.pending.insert(path.to_string(), Record { zxid, node });
    }

    fn session_alive(&self, tree: &DataTree, session: SessionId) -> bool {
        match self.pending_sessions.get(&session) {
            Some((_, alive)) => *alive,
            None => tree.sessions().contains_key(&session),
        }
    }

    fn prepare_op(
        &mut self,
        tree: &DataTree,
        req: &WriteRequest,
        op: &WriteOp,
        zxid: Zxid,
        time: i64,
    ) -> Result<Txn, ErrorCode> {
        match op {
            WriteOp::Create(c) => self.create(tree, req, c, zxid, time),
            WriteOp::Delete { path, version } => self.delete(tree, req, path, *version, zxid),
            WriteOp::SetData { path, data, version } => {
                validate_path(path, false)?;
                let mut node = self.lookup(tree, path).ok_or(ErrorCode::NoNode)?;
                check_acl(&node.acl, perms::WRITE, &req.auth)?;
                let bytes = data.as_ref().map_or(0, |d| d.len() as i64) - node.data_len;
                self.check_quota(tree, path, (0, bytes), time)?;
                let new_version = next_version(node.stat.version, *version)?;
                self.count_quota(tree, path, (0, bytes), zxid);
                node.data_len += bytes;
                node.stat.version = new_version;
                node.stat.mzxid = zxid.0 as i64;
                node.stat.mtime = time;
                self.set(path, zxid, Some(node));
                Ok(match data {
                    Some(data) => Txn::SetData { path: path.clone(), data: data.clone(), version: new_version },
                    None => Txn::SetNull { path: path.clone(), version: new_version },
                })
            }
            WriteOp::SetAcl { path, acl, version } => {
                validate_path(path, false)?;
                // ZooKeeper fixes the ACL up (InvalidACL) before it looks the znode up.
                let acl = fixup_acl(acl, &req.auth)?;
                let mut node = self.lookup(tree, path).ok_or(ErrorCode::NoNode)?;
                check_acl(&node.acl, perms::ADMIN, &req.auth)?;
                let new_version = next_version(node.stat.aversion, *version)?;
                node.stat.aversion = new_version;
                node.acl = acl.clone().into();
                self.set(path, zxid, Some(node));
                Ok(Txn::SetAcl { path: path.clone(), acl, version: new_version })
            }
            WriteOp::Check { path, version } => {
                validate_path(path, false)?;
                let node = self.lookup(tree, path).ok_or(ErrorCode::NoNode)?;
                check_acl(&node.acl, perms::READ, &req.auth)?;
                if *version != -1 && *version != node.stat.version {
                    return Err(ErrorCode::BadVersion);
                }
                Ok(Txn::Check { path: path.clone(), version: node.stat.version })
            }
            WriteOp::CreateSession { timeout_ms } => {
                self.pending_sessions.insert(req.session_id, (zxid, true));
                Ok(Txn::CreateSession { timeout_ms: *timeout_ms })
            }
            WriteOp::CloseSession => {
                self.close_session(tree, req.session_id, zxid);
                Ok(Txn::CloseSession)
            }
            WriteOp::Multi(_) => Err(ErrorCode::BadArguments),
            WriteOp::Etcd(t) => Ok(Txn::Etcd(t.clone())),
        }
    }

    fn create(
        &mut self,
        tree: &DataTree,
        req: &WriteRequest,
        c: &CreateOp,
        zxid: Zxid,
        time: i64,
    ) -> Result<Txn, ErrorCode> {
        // ZooKeeper 3.8's order (`PrepRequestProcessor.pRequest2TxnCreate`): the TTL, the
        // session, a path with a slash and no NUL, the ACL, the parent, CREATE on it, the
        // sequence suffix, and only then the whole path's syntax, existence and an
        // ephemeral parent. So `/a//b` is NoNode (its parent `/a/` does not exist) and `/`
        // is NodeExists (its parent is the root, and it is valid and there).
        if c.mode.is_ttl() && !self.config.ttl_enabled {
            return Err(ErrorCode::Unimplemented);
        }
        // `ttl_ms` is the request's TTL for createTTL and -1 for the other opcodes (whose TTL
        // mode therefore fails here, as in ZooKeeper); the front refuses createTTL with a
        // mode without TTL.
        let ttl_ok = !c.mode.is_ttl() || (c.ttl_ms > 0 && c.ttl_ms <= TTL_MAX_MS);
        if !ttl_ok {
            return Err(ErrorCode::BadArguments);
        }
        // createContainer makes a container whatever its flags say (a sequential one for the
        // sequential flags); the container flag on create or create2 makes a plain node.
        let kind = match c.mode {
            _ if c.container => NodeKind::Container,
            m if m.is_ttl() => NodeKind::Ttl { ttl_ms: c.ttl_ms },
            CreateMode::Ephemeral | CreateMode::EphemeralSequential => NodeKind::Ephemeral,
            _ => NodeKind::Persistent,
        };
        let ephemeral_flag = matches!(c.mode, CreateMode::Ephemeral | CreateMode::EphemeralSequential);
        if ephemeral_flag && !self.session_alive(tree, req.session_id) {
            return Err(ErrorCode::SessionExpired);
        }
        let Some(last_slash) = c.path.rfind('/') else { return Err(ErrorCode::BadArguments) };
        if c.path.contains('\0') {
            return Err(ErrorCode::BadArguments);
        }
        // `/x` → the root; `/a/` → `/a`; `/a//b` → `/a/` (which never exists).
        let parent_path = if last_slash == 0 { "/" } else { &c.path[..last_slash] };
        let acl = fixup_acl(&c.acl, &req.auth)?;
        let mut parent_node = self.lookup(tree, parent_path).ok_or(ErrorCode::NoNode)?;
        check_acl(&parent_node.acl, perms::CREATE, &req.auth)?;
        let path =
            if c.mode.sequential() { format!("{}{:010}", c.path, parent_node.stat.cversion) } else { c.path.clone() };
        validate_path(&path, false)?;
        if self.lookup(tree, &path).is_some() {
            return Err(ErrorCode::NodeExists);
        }
        if matches!(owner_kind(parent_node.stat.ephemeral_owner), OwnerKind::Ephemeral(_)) {
            return Err(ErrorCode::NoChildrenForEphemerals);
        }
        let data_len = c.data.as_ref().map_or(0, |d| d.len() as i64);
        self.check_quota(tree, &path, (1, data_len), time)?;
        self.count_quota(tree, &path, (1, data_len), zxid);
        let parent_cversion = parent_node.stat.cversion.wrapping_add(1);
        parent_node.stat.cversion = parent_cversion;
        parent_node.stat.pzxid = zxid.0 as i64;
        parent_node.child_count += 1;
        self.set(parent_path, zxid, Some(parent_node));
        let owner = match kind {
            NodeKind::Persistent => 0,
            NodeKind::Ephemeral => req.session_id.as_i64(),
            NodeKind::Container => CONTAINER_OWNER,
            NodeKind::Ttl { ttl_ms } => crate::tree::ttl_owner(ttl_ms),
        };
        let node = NodeRecord {
            stat: StatPersisted::created(zxid, time, owner),
            child_count: 0,
            acl: acl.clone().into(),
            data_len,
        };
        self.set(&path, zxid, Some(node));
        Ok(match &c.data {
            Some(data) => Txn::Create(CreateTxn { path, data: data.clone(), acl, kind, parent_cversion }),
            None => Txn::CreateNull(CreateTxn { path, data: Vec::new(), acl, kind, parent_cversion }),
        })
    }

    fn delete(
        &mut self,
        tree: &DataTree,
        req: &WriteRequest,
        path: &str,
        version: i32,
        zxid: Zxid,
    ) -> Result<Txn, ErrorCode> {
        // ZooKeeper's `getParentPathAndValidate`: a path without a slash, with a NUL, or one
        // of the tree's own (`/`, `/zookeeper`, its quota and config nodes) is BadArguments;
        // nothing else is checked, so any other malformed path names no znode (NoNode).
        let Some(last_slash) = path.rfind('/') else { return Err(ErrorCode::BadArguments) };
        if path.contains('\0') || matches!(path, "/" | "/zookeeper" | "/zookeeper/quota" | "/zookeeper/config") {
            return Err(ErrorCode::BadArguments);
        }
        let parent_path = if last_slash == 0 { "/" } else { &path[..last_slash] };
        let exact = |p: &str| validate_path(p, false).is_ok();
        let parent_found = exact(parent_path).then(|| self.lookup(tree, parent_path)).flatten();
        let mut parent_node = parent_found.ok_or(ErrorCode::NoNode)?;
        check_acl(&parent_node.acl, perms::DELETE, &req.auth)?;
        let node = exact(path).then(|| self.lookup(tree, path)).flatten().ok_or(ErrorCode::NoNode)?;
        next_version(node.stat.version, version)?;
        if node.child_count > 0 {
            return Err(ErrorCode::NotEmpty);
        }
        self.count_quota(tree, path, (-1, -node.data_len), zxid);
        parent_node.child_count -= 1;
        parent_node.stat.pzxid = zxid.0 as i64;
        self.set(parent_path, zxid, Some(parent_node));
        self.set(path, zxid, None);
        Ok(Txn::Delete { path: path.to_string() })
    }

    fn close_session(&mut self, tree: &DataTree, session: SessionId, zxid: Zxid) {
        self.pending_sessions.insert(session, (zxid, false));
        // The session's ephemerals: those applied, plus in-flight creates, minus in-flight
        // deletes (ZooKeeper walks its outstanding changes the same way).
        let mut paths: Vec<String> = tree.ephemerals_of(session);
        for (path, record) in &self.pending {
            if record.node.as_ref().is_some_and(|n| n.stat.ephemeral_owner == session.as_i64()) && !paths.contains(path)
            {
                paths.push(path.clone());
            }
        }
        paths.retain(|p| self.lookup(tree, p).is_some_and(|n| n.stat.ephemeral_owner == session.as_i64()));
        paths.sort();
        for path in paths {
            if self.tracks_quotas(tree) {
                if let Some(node) = self.lookup(tree, &path) {
                    self.count_quota(tree, &path, (-1, -node.data_len), zxid);
                }
            }
            let parent_path = parent(&path).to_string();
            if let Some(mut p) = self.lookup(tree, &parent_path) {
                p.child_count -= 1;
                p.stat.pzxid = zxid.0 as i64;
                self.set(&parent_path, zxid, Some(p));
            }
            self.set(&path, zxid, None);
        }
    }
}

impl Sequencer {
    /// Whether writes are checked against quotas (enforcement is on and a quota root exists).
    fn tracks_quotas(&self, tree: &DataTree) -> bool {
        self.config.enforce_quota && tree.has_quotas()
    }

    /// ZooKeeper's `checkQuota` for a write at `path` that changes (znodes, bytes): the
    /// longest quota root's limits against its committed plus in-flight usage.
    fn check_quota(&mut self, tree: &DataTree, path: &str, change: (i64, i64), time: i64) -> Result<(), ErrorCode> {
        if !self.tracks_quotas(tree) {
            return Ok(());
        }
        let Some((root, committed)) = tree.quota_roots_of(path).last() else { return Ok(()) };
        let Some(limits) = tree.quota_limits(root) else { return Ok(()) };
        let in_flight = self.quota_in_flight.of(root);
        let usage = QuotaUsage { count: committed.count + in_flight.count, bytes: committed.bytes + in_flight.bytes };
        quota::enforce(&mut self.quota_log, root, limits, usage, change, time)
    }

    /// Records an accepted write's change to the usage of every quota root holding `path`.
    fn count_quota(&mut self, tree: &DataTree, path: &str, change: (i64, i64), zxid: Zxid) {
        if !self.tracks_quotas(tree) {
            return;
        }
        for (root, _) in tree.quota_roots_of(path) {
            self.quota_in_flight.add(zxid, root, change.0, change.1);
        }
    }
}

/// ZooKeeper's `checkAndIncVersion`: -1 matches any version.
fn next_version(current: i32, expected: i32) -> Result<i32, ErrorCode> {
    if expected != -1 && expected != current {
        return Err(ErrorCode::BadVersion);
    }
    Ok(current.wrapping_add(1))
}

fn multi_op(txn: Txn) -> MultiOp {
    match txn {
        Txn::Create(c) => MultiOp::Create(c),
        Txn::Delete { path } => MultiOp::Delete { path },
        Txn::SetData { path, data, version } => MultiOp::SetData { path, data, version },
        Txn::Check { path, version } => MultiOp::Check { path, version },
        Txn::CreateNull(c) => MultiOp::CreateNull(c),
        Txn::SetNull { path, version } => MultiOp::SetNull { path, version },
        // Only the kinds above are prepared inside a multi.
        _ => MultiOp::Error { code: ErrorCode::BadArguments.code() },
    }
}
