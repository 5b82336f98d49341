//! The data tree: znodes with data, ACL and Stat; ephemerals by session; containers and TTL
//! nodes; and the deterministic `apply` of committed entries (ZooKeeper's `DataTree`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::log::{
    Acl, ArchivedAcl, ArchivedCreateTxn, ArchivedEntry, ArchivedMultiOp, ArchivedNodeKind, ArchivedTxn, Zxid,
};

use super::path::{join, name, parent};
use super::stat::{owner_kind, ttl_owner, OwnerKind, Stat, StatPersisted, CONTAINER_OWNER};
use super::ErrorCode;

/// One znode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Znode {
    /// Its data.
    pub data: Box<[u8]>,
    /// Its ACL (interned: znodes with equal ACLs share one allocation).
    pub acl: Arc<[Acl]>,
    /// The stored Stat.
    pub stat: StatPersisted,
    /// Child names, sorted (so that iteration, snapshots and digests are deterministic).
    pub children: BTreeSet<Box<str>>,
}

impl Znode {
    /// The full Stat.
    pub fn full_stat(&self) -> Stat {
        Stat::new(&self.stat, self.data.len(), self.children.len())
    }
}

/// What a committed change did to the tree, for watches (ZooKeeper's `EventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    /// The znode was created.
    Created,
    /// The znode was deleted.
    Deleted,
    /// Its data changed.
    DataChanged,
    /// Its children changed.
    ChildrenChanged,
}

/// One change, in the order `apply` made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The znode changed.
    pub path: String,
    /// How.
    pub kind: ChangeKind,
}

/// The outcome of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// A create: the final path and the new znode's Stat.
    Created {
        /// Path created.
        path: String,
        /// Its Stat.
        stat: Stat,
    },
    /// A delete.
    Deleted,
    /// A setData: the new Stat.
    DataSet(Stat),
    /// A setACL: the new Stat.
    AclSet(Stat),
    /// A check that held.
    Checked,
    /// A session was opened.
    SessionCreated,
    /// A session was closed (its ephemerals deleted).
    SessionClosed,
    /// The operation failed with this code.
    Error(ErrorCode),
    /// In a failed multi, an operation before the failing one: not applied, reported by
    /// ZooKeeper as an error result with code 0.
    Aborted,
}

/// What `apply` did with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The entry's zxid.
    pub zxid: Zxid,
    /// Its session.
    pub session_id: i64,
    /// Its request id.
    pub cxid: i32,
    /// One result for a single operation, one per operation for a multi.
    pub results: Vec<OpResult>,
    /// The changes made, in order, for watch notifications.
    pub changes: Vec<Change>,
}

/// A session as the tree knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// Negotiated timeout.
    pub timeout_ms: i32,
}

/// The replicated state: znodes, sessions, and the last applied zxid.
#[derive(Debug, Clone)]
pub struct DataTree {
    nodes: HashMap<Box<str>, Znode>,
    sessions: BTreeMap<i64, SessionInfo>,
    /// Ephemeral paths by owner session. Invariant: every path here is a znode owned by it.
    ephemerals: BTreeMap<i64, BTreeSet<Box<str>>>,
    containers: BTreeSet<Box<str>>,
    ttls: BTreeSet<Box<str>>,
    acls: HashSet<Arc<[Acl]>>,
    /// Invariant: every applied entry had a zxid ≤ this.
    last_zxid: Zxid,
    data_bytes: u64,
}

impl Default for DataTree {
    fn default() -> Self {
        DataTree::new()
    }
}

/// The ACL ZooKeeper gives its own `/zookeeper` nodes and the root: world:anyone, all.
pub fn open_acl() -> Vec<Acl> {
    vec![Acl { perms: 31, scheme: "world".into(), id: "anyone".into() }]
}

impl DataTree {
    /// A tree with ZooKeeper's built-in nodes: `/`, `/zookeeper`, `/zookeeper/quota` and
    /// `/zookeeper/config`.
    pub fn new() -> DataTree {
        let mut tree = DataTree {
            nodes: HashMap::new(),
            sessions: BTreeMap::new(),
            ephemerals: BTreeMap::new(),
            containers: BTreeSet::new(),
            ttls: BTreeSet::new(),
            acls: HashSet::new(),
            last_zxid: Zxid::ZERO,
            data_bytes: 0,
        };
        let acl = tree.intern(open_acl());
        let root =
            Znode { data: Box::new([]), acl: acl.clone(), stat: StatPersisted::default(), children: BTreeSet::new() };
        tree.nodes.insert("/".into(), root);
        for path in ["/zookeeper", "/zookeeper/quota", "/zookeeper/config"] {
            let node = Znode {
                data: Box::new([]),
                acl: acl.clone(),
                stat: StatPersisted::default(),
                children: BTreeSet::new(),
            };
            tree.link(path, node);
        }
        tree
    }

    fn intern(&mut self, acl: Vec<Acl>) -> Arc<[Acl]> {
        let arc: Arc<[Acl]> = acl.into();
        if let Some(existing) = self.acls.get(&arc) {
            return existing.clone();
        }
        self.acls.insert(arc.clone());
        arc
    }

    fn release_acl(&mut self, acl: Arc<[Acl]>) {
        // One reference is `acl`, one the interner's: nobody else uses it.
        if Arc::strong_count(&acl) == 2 {
            self.acls.remove(&acl);
        }
    }

    /// Inserts `node` at `path` under its (existing) parent, without touching the parent's
    /// Stat. Returns false if the parent is missing.
    fn link(&mut self, path: &str, node: Znode) -> bool {
        let Some(p) = self.nodes.get_mut(parent(path)) else { return false };
        p.children.insert(name(path).into());
        self.data_bytes += node.data.len() as u64;
        match owner_kind(node.stat.ephemeral_owner) {
            OwnerKind::Persistent => {}
            OwnerKind::Container => {
                self.containers.insert(path.into());
            }
            OwnerKind::Ttl(_) => {
                self.ttls.insert(path.into());
            }
            OwnerKind::Ephemeral(owner) => {
                self.ephemerals.entry(owner).or_default().insert(path.into());
            }
        }
        self.nodes.insert(path.into(), node);
        true
    }

    /// The znode at `path`.
    pub fn get(&self, path: &str) -> Option<&Znode> {
        self.nodes.get(path)
    }

    /// The full Stat of `path`.
    pub fn stat(&self, path: &str) -> Option<Stat> {
        self.nodes.get(path).map(Znode::full_stat)
    }

    /// Number of znodes (the root and `/zookeeper` nodes included, as ZooKeeper counts).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Bytes of data stored (ZooKeeper's `approximate_data_size` counts paths too; this
    /// counts data only).
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// The last applied zxid.
    pub fn last_zxid(&self) -> Zxid {
        self.last_zxid
    }

    /// Open sessions.
    pub fn sessions(&self) -> &BTreeMap<i64, SessionInfo> {
        &self.sessions
    }

    /// The ephemeral paths of a session, sorted.
    pub fn ephemerals_of(&self, session_id: i64) -> impl Iterator<Item = &str> {
        self.ephemerals.get(&session_id).into_iter().flat_map(|s| s.iter().map(|p| &**p))
    }

    /// Number of ephemeral znodes.
    pub fn ephemeral_count(&self) -> usize {
        self.ephemerals.values().map(BTreeSet::len).sum()
    }

    /// Number of znodes below `path` (not counting it), as `getAllChildrenNumber`.
    pub fn descendant_count(&self, path: &str) -> Option<usize> {
        let node = self.nodes.get(path)?;
        let mut count = 0;
        let mut stack: Vec<String> = node.children.iter().map(|c| join(path, c)).collect();
        while let Some(p) = stack.pop() {
            count += 1;
            if let Some(n) = self.nodes.get(p.as_str()) {
                stack.extend(n.children.iter().map(|c| join(&p, c)));
            }
        }
        Some(count)
    }

    /// Containers that are empty and have had a child, and TTL nodes without children whose
    /// TTL has run out since their last modification at `now_ms` — what ZooKeeper's
    /// `ContainerManager` deletes. Sorted. The caller turns them into delete txns.
    pub fn reapable(&self, now_ms: i64) -> Vec<String> {
        let mut out = Vec::new();
        for path in &self.containers {
            if let Some(n) = self.nodes.get(path) {
                if n.children.is_empty() && n.stat.cversion > 0 {
                    out.push(path.to_string());
                }
            }
        }
        for path in &self.ttls {
            if let Some(n) = self.nodes.get(path) {
                if let OwnerKind::Ttl(ttl) = owner_kind(n.stat.ephemeral_owner) {
                    if n.children.is_empty() && now_ms.saturating_sub(n.stat.mtime) > ttl {
                        out.push(path.to_string());
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Applies a committed entry. Deterministic: the same entries applied in the same order
    /// give the same tree on every server. Entries at or below the last applied zxid are
    /// refused (replay after a snapshot must skip them).
    pub fn apply(&mut self, entry: &ArchivedEntry) -> Applied {
        let zxid = Zxid(entry.zxid.0.to_native());
        let session_id = entry.session_id.to_native();
        let time = entry.time_ms.to_native();
        let mut changes = Vec::new();
        assert!(zxid > self.last_zxid, "apply out of order: {zxid} after {}", self.last_zxid);
        self.last_zxid = zxid;
        let results = match &entry.txn {
            ArchivedTxn::Multi(ops) => {
                if let Some(failed) = ops.iter().position(|op| matches!(op, ArchivedMultiOp::Error { .. })) {
                    // As ZooKeeper's DataTree: 0 before the first failure, RuntimeInconsistency
                    // after it, and each error op's own code.
                    ops.iter()
                        .enumerate()
                        .map(|(i, op)| match op {
                            ArchivedMultiOp::Error { code } => OpResult::Error(
                                ErrorCode::from_code(code.to_native()).unwrap_or(ErrorCode::SystemError),
                            ),
                            _ if i < failed => OpResult::Aborted,
                            _ => OpResult::Error(ErrorCode::RuntimeInconsistency),
                        })
                        .collect()
                } else {
                    ops.iter().map(|op| self.apply_multi_op(op, zxid, time, session_id, &mut changes)).collect()
                }
            }
            txn => vec![self.apply_txn(txn, zxid, time, session_id, &mut changes)],
        };
        self.check_invariants();
        Applied { zxid, session_id, cxid: entry.cxid.to_native(), results, changes }
    }

    fn apply_multi_op(
        &mut self,
        op: &ArchivedMultiOp,
        zxid: Zxid,
        time: i64,
        session: i64,
        changes: &mut Vec<Change>,
    ) -> OpResult {
        let result = match op {
            ArchivedMultiOp::Create(c) => self.create(c, zxid, time, session, changes),
            ArchivedMultiOp::Delete { path } => self.delete(path.as_str(), zxid, changes).map(|_| OpResult::Deleted),
            ArchivedMultiOp::SetData { path, data, version } => {
                self.set_data(path.as_str(), data.as_slice(), version.to_native(), zxid, time, changes)
            }
            ArchivedMultiOp::Check { path, .. } => self.check(path.as_str()),
            ArchivedMultiOp::Error { code } => {
                Err(ErrorCode::from_code(code.to_native()).unwrap_or(ErrorCode::SystemError))
            }
        };
        result.unwrap_or_else(OpResult::Error)
    }

    fn apply_txn(
        &mut self,
        txn: &ArchivedTxn,
        zxid: Zxid,
        time: i64,
        session: i64,
        changes: &mut Vec<Change>,
    ) -> OpResult {
        let result = match txn {
            ArchivedTxn::Create(c) => self.create(c, zxid, time, session, changes),
            ArchivedTxn::Delete { path } => self.delete(path.as_str(), zxid, changes).map(|_| OpResult::Deleted),
            ArchivedTxn::SetData { path, data, version } => {
                self.set_data(path.as_str(), data.as_slice(), version.to_native(), zxid, time, changes)
            }
            ArchivedTxn::SetAcl { path, acl, version } => {
                self.set_acl(path.as_str(), acl.as_slice(), version.to_native())
            }
            ArchivedTxn::Check { path, .. } => self.check(path.as_str()),
            ArchivedTxn::Multi(_) => Err(ErrorCode::RuntimeInconsistency),
            ArchivedTxn::CreateSession { timeout_ms } => {
                self.sessions.insert(session, SessionInfo { timeout_ms: timeout_ms.to_native() });
                Ok(OpResult::SessionCreated)
            }
            ArchivedTxn::CloseSession => {
                self.close_session(session, zxid, changes);
                Ok(OpResult::SessionClosed)
            }
            ArchivedTxn::Error { code } => {
                Err(ErrorCode::from_code(code.to_native()).unwrap_or(ErrorCode::SystemError))
            }
        };
        result.unwrap_or_else(OpResult::Error)
    }

    fn create(
        &mut self,
        c: &ArchivedCreateTxn,
        zxid: Zxid,
        time: i64,
        session: i64,
        changes: &mut Vec<Change>,
    ) -> Result<OpResult, ErrorCode> {
        let path = c.path.as_str();
        if path == "/" {
            return Err(ErrorCode::NodeExists);
        }
        let parent_path = parent(path);
        let parent_cversion = c.parent_cversion.to_native();
        {
            let Some(p) = self.nodes.get(parent_path) else { return Err(ErrorCode::NoNode) };
            if matches!(owner_kind(p.stat.ephemeral_owner), OwnerKind::Ephemeral(_)) {
                return Err(ErrorCode::NoChildrenForEphemerals);
            }
        }
        if self.nodes.contains_key(path) {
            return Err(ErrorCode::NodeExists);
        }
        let owner = match &c.kind {
            ArchivedNodeKind::Persistent => 0,
            ArchivedNodeKind::Ephemeral => session,
            ArchivedNodeKind::Container => CONTAINER_OWNER,
            ArchivedNodeKind::Ttl { ttl_ms } => ttl_owner(ttl_ms.to_native()),
        };
        let acl = self.intern(c.acl.iter().map(acl_of).collect());
        let node = Znode {
            data: c.data.as_slice().into(),
            acl,
            stat: StatPersisted::created(zxid, time, owner),
            children: BTreeSet::new(),
        };
        let stat = node.full_stat();
        // Invariant: the parent exists (checked above).
        self.link(path, node);
        if let Some(p) = self.nodes.get_mut(parent_path) {
            // As ZooKeeper: only a create that advances the parent's cversion moves pzxid.
            if parent_cversion > p.stat.cversion {
                p.stat.cversion = parent_cversion;
                p.stat.pzxid = zxid.0 as i64;
            }
        }
        changes.push(Change { path: path.to_string(), kind: ChangeKind::Created });
        changes.push(Change { path: parent_path.to_string(), kind: ChangeKind::ChildrenChanged });
        Ok(OpResult::Created { path: path.to_string(), stat })
    }

    fn delete(&mut self, path: &str, zxid: Zxid, changes: &mut Vec<Change>) -> Result<(), ErrorCode> {
        if path == "/" {
            return Err(ErrorCode::BadArguments);
        }
        match self.nodes.get(path) {
            None => return Err(ErrorCode::NoNode),
            Some(n) if !n.children.is_empty() => return Err(ErrorCode::NotEmpty),
            Some(_) => {}
        }
        let parent_path = parent(path);
        if let Some(p) = self.nodes.get_mut(parent_path) {
            p.children.remove(name(path));
            if zxid.0 as i64 > p.stat.pzxid {
                p.stat.pzxid = zxid.0 as i64;
            }
        }
        let Some(node) = self.nodes.remove(path) else { return Err(ErrorCode::NoNode) };
        self.data_bytes -= node.data.len() as u64;
        match owner_kind(node.stat.ephemeral_owner) {
            OwnerKind::Persistent => {}
            OwnerKind::Container => {
                self.containers.remove(path);
            }
            OwnerKind::Ttl(_) => {
                self.ttls.remove(path);
            }
            OwnerKind::Ephemeral(owner) => {
                if let Some(set) = self.ephemerals.get_mut(&owner) {
                    set.remove(path);
                    if set.is_empty() {
                        self.ephemerals.remove(&owner);
                    }
                }
            }
        }
        self.release_acl(node.acl);
        changes.push(Change { path: path.to_string(), kind: ChangeKind::Deleted });
        changes.push(Change { path: parent_path.to_string(), kind: ChangeKind::ChildrenChanged });
        Ok(())
    }

    fn set_data(
        &mut self,
        path: &str,
        data: &[u8],
        version: i32,
        zxid: Zxid,
        time: i64,
        changes: &mut Vec<Change>,
    ) -> Result<OpResult, ErrorCode> {
        let Some(node) = self.nodes.get_mut(path) else { return Err(ErrorCode::NoNode) };
        self.data_bytes = self.data_bytes - node.data.len() as u64 + data.len() as u64;
        node.data = data.into();
        node.stat.mtime = time;
        node.stat.mzxid = zxid.0 as i64;
        node.stat.version = version;
        let stat = node.full_stat();
        changes.push(Change { path: path.to_string(), kind: ChangeKind::DataChanged });
        Ok(OpResult::DataSet(stat))
    }

    fn set_acl(&mut self, path: &str, acl: &[ArchivedAcl], version: i32) -> Result<OpResult, ErrorCode> {
        if !self.nodes.contains_key(path) {
            return Err(ErrorCode::NoNode);
        }
        let new = self.intern(acl.iter().map(acl_of).collect());
        let Some(node) = self.nodes.get_mut(path) else { return Err(ErrorCode::NoNode) };
        let old = std::mem::replace(&mut node.acl, new);
        node.stat.aversion = version;
        let stat = node.full_stat();
        self.release_acl(old);
        Ok(OpResult::AclSet(stat))
    }

    fn check(&self, path: &str) -> Result<OpResult, ErrorCode> {
        if self.nodes.contains_key(path) {
            Ok(OpResult::Checked)
        } else {
            Err(ErrorCode::NoNode)
        }
    }

    fn close_session(&mut self, session: i64, zxid: Zxid, changes: &mut Vec<Change>) {
        self.sessions.remove(&session);
        let paths: Vec<Box<str>> =
            self.ephemerals.remove(&session).map(|s| s.into_iter().collect()).unwrap_or_default();
        // Deepest first cannot matter (ephemerals have no children); sorted order keeps it
        // deterministic.
        for path in paths {
            let _ = self.delete(&path, zxid, changes);
        }
    }

    /// Checks the tree's structural invariants (debug builds after every apply; always in
    /// tests and the simulator).
    pub fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        self.validate();
    }

    /// The full invariant check, whatever the build.
    pub fn validate(&self) {
        let mut data = 0u64;
        for (path, node) in &self.nodes {
            data += node.data.len() as u64;
            if &**path != "/" {
                let p = self.nodes.get(parent(path)).unwrap_or_else(|| panic!("{path} has no parent"));
                assert!(p.children.contains(name(path)), "{path} missing from its parent's children");
            }
            for child in &node.children {
                assert!(self.nodes.contains_key(join(path, child).as_str()), "{path} lists missing child {child}");
            }
            assert!(self.acls.contains(&node.acl), "{path} has an uninterned ACL");
            if let OwnerKind::Ephemeral(owner) = owner_kind(node.stat.ephemeral_owner) {
                assert!(
                    self.ephemerals.get(&owner).is_some_and(|s| s.contains(&**path)),
                    "{path} not in its session's ephemerals"
                );
                assert!(node.children.is_empty(), "ephemeral {path} has children");
            }
        }
        assert_eq!(data, self.data_bytes, "data byte count drifted");
        for (owner, paths) in &self.ephemerals {
            assert!(!paths.is_empty());
            for p in paths {
                assert_eq!(self.nodes.get(&**p).map(|n| n.stat.ephemeral_owner), Some(*owner), "stale ephemeral {p}");
            }
        }
    }

    /// Every znode path, sorted (for snapshots, digests and tests).
    pub fn sorted_paths(&self) -> Vec<&str> {
        let mut paths: Vec<&str> = self.nodes.keys().map(|k| &**k).collect();
        paths.sort_unstable();
        paths
    }

    pub(super) fn parts(&self) -> (&HashMap<Box<str>, Znode>, &BTreeMap<i64, SessionInfo>) {
        (&self.nodes, &self.sessions)
    }

    /// Rebuilds a tree from its parts (snapshot loading). Parents must come before children.
    pub(super) fn from_parts(
        nodes: Vec<(String, Vec<u8>, Vec<Acl>, StatPersisted)>,
        sessions: BTreeMap<i64, SessionInfo>,
        last_zxid: Zxid,
    ) -> Result<DataTree, String> {
        let mut tree = DataTree {
            nodes: HashMap::with_capacity(nodes.len()),
            sessions,
            ephemerals: BTreeMap::new(),
            containers: BTreeSet::new(),
            ttls: BTreeSet::new(),
            acls: HashSet::new(),
            last_zxid,
            data_bytes: 0,
        };
        for (path, data, acl, stat) in nodes {
            let acl = tree.intern(acl);
            let node = Znode { data: data.into(), acl, stat, children: BTreeSet::new() };
            if path == "/" {
                tree.data_bytes += node.data.len() as u64;
                tree.nodes.insert(path.into(), node);
            } else if super::path::validate_path(&path, false).is_err() || !tree.link(&path, node) {
                return Err(format!("snapshot node {path:?} is invalid or comes before its parent"));
            }
        }
        if !tree.nodes.contains_key("/") {
            return Err("snapshot has no root".into());
        }
        Ok(tree)
    }
}

fn acl_of(a: &ArchivedAcl) -> Acl {
    Acl { perms: a.perms.to_native(), scheme: a.scheme.as_str().to_string(), id: a.id.as_str().to_string() }
}
