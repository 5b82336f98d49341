//! The data tree: znodes with data, ACL and Stat; ephemerals by session; containers and TTL
//! nodes; and the deterministic `apply` of committed entries (ZooKeeper's `DataTree`).
//!
//! ## Layout
//!
//! Built to hold millions of znodes in as little memory as the data itself allows:
//!
//! - Znodes live in one slab (copy-on-write pages of `Node`s, 80 bytes each; see [`TreeView`])
//!   and are named by their index.
//!   A znode's name and data share one heap allocation; its path is not stored at all.
//! - A hash index maps (parent index, name) to a znode, so a path resolves one component at
//!   a time; children form a doubly linked list through their parent (insertion order, the
//!   same on every server), so create and delete are O(1) however many siblings there are.
//! - What only some znodes have lives beside the slab: child lists with the parent's
//!   `cversion` and `pzxid` (a znode that never had a child has cversion 0 and pzxid =
//!   czxid), and a non-zero `ephemeralOwner`.
//! - ACLs are interned and numbered; a znode holds the number.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use crate::log::{
    Acl, ArchivedAcl, ArchivedCreateTxn, ArchivedMultiOp, ArchivedNodeKind, ArchivedTransaction, ArchivedTxn,
    SessionId, Zxid,
};

use super::path::{name, parent};
use super::stat::{owner_kind, ttl_owner, OwnerKind, Stat, StatPersisted, CONTAINER_OWNER};
use super::ErrorCode;

mod quota;

pub use quota::{limit_path, QuotaLimits, QuotaUsage, LIMIT_NODE, QUOTA_PATH, STAT_NODE};

/// "No node" in links.
const NONE: u32 = u32::MAX;
/// `parent` of a free slab slot.
const FREE: u32 = u32::MAX - 1;
/// Flag in `name_len`: the znode has a non-zero `ephemeralOwner` (in `owners`).
const HAS_OWNER: u32 = 1 << 31;
/// Flag in `name_len`: the znode's data is null (ZooKeeper keeps null apart from empty).
const NULL_DATA: u32 = 1 << 30;
/// The root's index.
const ROOT: u32 = 0;

/// One znode in the slab.
#[derive(Debug, Clone)]
struct Node {
    /// Name, then data.
    bytes: Box<[u8]>,
    /// Length of the name in `bytes`, with the `HAS_OWNER` and `NULL_DATA` flags.
    name_len: u32,
    acl: u32,
    parent: u32,
    prev: u32,
    next: u32,
    /// Index into `families`, or NONE.
    family: u32,
    version: i32,
    aversion: i32,
    czxid: i64,
    mzxid: i64,
    ctime: i64,
    mtime: i64,
}

impl Node {
    fn name_len(&self) -> usize {
        (self.name_len & !(HAS_OWNER | NULL_DATA)) as usize
    }

    fn is_null(&self) -> bool {
        self.name_len & NULL_DATA != 0
    }

    fn set_null(&mut self, null: bool) {
        if null {
            self.name_len |= NULL_DATA;
        } else {
            self.name_len &= !NULL_DATA;
        }
    }

    fn name(&self) -> &[u8] {
        &self.bytes[..self.name_len()]
    }

    fn data(&self) -> &[u8] {
        &self.bytes[self.name_len()..]
    }

    fn has_owner(&self) -> bool {
        self.name_len & HAS_OWNER != 0
    }
}

/// The children of a znode that has (or had) any, and the Stat fields that change with them.
#[derive(Debug, Clone, Copy)]
struct Family {
    first: u32,
    last: u32,
    count: u32,
    cversion: i32,
    pzxid: i64,
}

#[derive(Debug, Clone)]
struct AclSlot {
    acl: Arc<[Acl]>,
    /// Znodes using it; 0 for a free slot.
    refs: u32,
}

/// A read-only view of one znode.
#[derive(Clone, Copy)]
pub struct Znode<'a> {
    tree: &'a DataTree,
    id: u32,
}

impl std::fmt::Debug for Znode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Znode").field("id", &self.id).field("stat", &self.stat()).finish()
    }
}

impl<'a> Znode<'a> {
    fn node(&self) -> &'a Node {
        &self.tree.nodes[self.id as usize]
    }

    /// Its data (empty when null).
    pub fn data(&self) -> &'a [u8] {
        self.node().data()
    }

    /// Its data, `None` when null (a create or setData with data of length -1).
    pub fn data_opt(&self) -> Option<&'a [u8]> {
        (!self.node().is_null()).then(|| self.node().data())
    }

    /// Its ACL (interned: znodes with equal ACLs share one allocation).
    pub fn acl(&self) -> &'a Arc<[Acl]> {
        &self.tree.acls[self.node().acl as usize].acl
    }

    /// The stored part of its Stat.
    pub fn stat(&self) -> StatPersisted {
        self.tree.persisted(self.id)
    }

    /// The full Stat.
    pub fn full_stat(&self) -> Stat {
        Stat::new(&self.stat(), self.data().len(), self.child_count())
    }

    /// Number of children.
    pub fn child_count(&self) -> usize {
        self.tree.family(self.id).map_or(0, |f| f.count as usize)
    }

    /// Child names, in the order they were created.
    pub fn children(&self) -> impl Iterator<Item = &'a str> + 'a {
        let tree = self.tree;
        let mut next = tree.family(self.id).map_or(NONE, |f| f.first);
        std::iter::from_fn(move || {
            if next == NONE {
                return None;
            }
            let node = &tree.nodes[next as usize];
            next = node.next;
            // Names are only ever stored from `&str`.
            Some(std::str::from_utf8(node.name()).unwrap_or(""))
        })
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
    /// The znode's ACL (before a delete): a watcher without READ on it is not told
    /// (ZooKeeper's `ServerCnxn.process` since CVE-2024-23944).
    pub acl: Arc<[Acl]>,
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
    pub session_id: SessionId,
    /// Its request id.
    pub cxid: i32,
    /// One result for a single operation, one per operation for a multi.
    pub results: Vec<OpResult>,
    /// The changes made, in order, for watch notifications.
    pub changes: Vec<Change>,
}

/// Items per copy-on-write page. A [`TreeView`] shares the pages of the tree it was taken
/// from; the tree's first write to a shared page copies that page alone (2.5 KiB of znodes and
/// their name/data allocations), so a snapshot costs a write at most one small copy, never a
/// pause proportional to the tree. Small pages keep that copy short: with pages of 1,024
/// znodes, the batches applied just after a view (each touching ~100 pages at random) took
/// 5-14 ms each for a quarter of a second, at a million znodes; with 128, the slowest write
/// of a 20 s run with snapshots was 29-43 ms, with 32, 13-21 ms (setData at random over 1M
/// znodes, three runs each). A page costs its slot in a directory and a reference count:
/// about 1 byte per znode at 32.
pub(super) const PAGE: usize = 32;

/// Pages per directory: a view copies one reference per directory (a million znodes: 123), and
/// the first write under a shared directory copies its 256 page references.
pub(super) const DIR: usize = 256;

type Page<T> = Arc<Vec<T>>;

/// A vector in fixed-size pages grouped in directories, each shared until written
/// (`Arc::make_mut`): a clone (a view) costs a reference per directory.
#[derive(Debug, Clone)]
struct Paged<T> {
    dirs: Vec<Arc<Vec<Page<T>>>>,
    len: usize,
}

impl<T: Clone> Paged<T> {
    fn new() -> Paged<T> {
        Paged { dirs: Vec::new(), len: 0 }
    }

    fn push(&mut self, item: T) {
        if self.len % (PAGE * DIR) == 0 {
            self.dirs.push(Arc::new(Vec::with_capacity(DIR)));
        }
        // Invariant: a directory with room was just ensured.
        if let Some(dir) = self.dirs.last_mut() {
            let dir = Arc::make_mut(dir);
            if self.len % PAGE == 0 {
                dir.push(Arc::new(Vec::with_capacity(PAGE)));
            }
            if let Some(page) = dir.last_mut() {
                Arc::make_mut(page).push(item);
            }
        }
        self.len += 1;
    }

    fn len(&self) -> usize {
        self.len
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.dirs.iter().flat_map(|d| d.iter()).flat_map(|p| p.iter())
    }
}

impl<T> std::ops::Index<usize> for Paged<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.dirs[i / (PAGE * DIR)][i / PAGE % DIR][i % PAGE]
    }
}

impl<T: Clone> std::ops::IndexMut<usize> for Paged<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        let dir = Arc::make_mut(&mut self.dirs[i / (PAGE * DIR)]);
        &mut Arc::make_mut(&mut dir[i / PAGE % DIR])[i % PAGE]
    }
}

/// Hash tables the (parent, name) index is split into, by bits of the hash that neither
/// hashbrown's control bytes (the top 7) nor its bucket index (the low bits) use. A table
/// grows by rehashing its own entries alone: one table of 7.3 million znodes took over a
/// second to grow, during which a follower's write path (and its replica) stood still and it
/// took its leader for dead. Split 256 ways, growing costs a 256th of that.
const INDEX_SHARDS: usize = 256;

/// (parent, name) → znode, in [`INDEX_SHARDS`] tables.
#[derive(Clone)]
struct Index {
    shards: Vec<HashTable<u32>>,
}

impl Index {
    fn new() -> Index {
        Index { shards: (0..INDEX_SHARDS).map(|_| HashTable::new()).collect() }
    }

    fn slot(h: u64) -> usize {
        (h >> 40) as usize % INDEX_SHARDS
    }

    fn shard(&self, h: u64) -> &HashTable<u32> {
        &self.shards[Self::slot(h)]
    }

    fn shard_mut(&mut self, h: u64) -> &mut HashTable<u32> {
        &mut self.shards[Self::slot(h)]
    }

    fn len(&self) -> usize {
        self.shards.iter().map(HashTable::len).sum()
    }

    /// Room for `n` entries in all, spread evenly (tables are empty when this is called).
    fn reserve(&mut self, n: usize) {
        for t in &mut self.shards {
            t.reserve(n / INDEX_SHARDS + 1, |_| 0);
        }
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("len", &self.len()).finish()
    }
}

/// Buckets of the non-zero `ephemeralOwner`s, by znode: shared with views like pages, so the
/// first ephemeral (or container, or TTL node) created or deleted after a view is taken
/// copies one bucket, not every owner.
const OWNER_BUCKETS: usize = 64;

/// The non-zero `ephemeralOwner`s by znode, in [`OWNER_BUCKETS`] copy-on-write buckets.
#[derive(Debug, Clone)]
struct Owners {
    buckets: Vec<Arc<HashMap<u32, i64>>>,
}

impl Default for Owners {
    fn default() -> Owners {
        Owners { buckets: (0..OWNER_BUCKETS).map(|_| Arc::default()).collect() }
    }
}

impl Owners {
    fn bucket(id: u32) -> usize {
        id as usize % OWNER_BUCKETS
    }

    /// The owner of `id`, or 0.
    fn get(&self, id: u32) -> i64 {
        self.buckets[Self::bucket(id)].get(&id).copied().unwrap_or(0)
    }

    fn insert(&mut self, id: u32, owner: i64) {
        Arc::make_mut(&mut self.buckets[Self::bucket(id)]).insert(id, owner);
    }

    fn remove(&mut self, id: u32) {
        Arc::make_mut(&mut self.buckets[Self::bucket(id)]).remove(&id);
    }
}

/// Storage with reusable slots.
trait Slots<T>: std::ops::IndexMut<usize, Output = T> {
    fn push_slot(&mut self, item: T);
    fn slot_count(&self) -> usize;
}

impl<T: Clone> Slots<T> for Paged<T> {
    fn push_slot(&mut self, item: T) {
        self.push(item);
    }
    fn slot_count(&self) -> usize {
        self.len()
    }
}

/// Puts `item` in a free slot if there is one, else at the end; returns its index.
fn place<T>(slots: &mut impl Slots<T>, free: &mut Vec<u32>, item: T) -> u32 {
    match free.pop() {
        Some(i) => {
            slots[i as usize] = item;
            i
        }
        None => {
            slots.push_slot(item);
            (slots.slot_count() - 1) as u32
        }
    }
}

/// Open sessions by id, in id order.
pub type Sessions = imbl::OrdMap<SessionId, SessionInfo>;

/// A session as the tree knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// Negotiated timeout.
    pub timeout_ms: i32,
}

/// The replicated state: znodes, sessions, and the last applied zxid.
#[derive(Debug, Clone)]
pub struct DataTree {
    nodes: Paged<Node>,
    free_nodes: Vec<u32>,
    families: Paged<Family>,
    free_families: Vec<u32>,
    /// (parent, name) → znode.
    index: Index,
    hasher: hashbrown::DefaultHashBuilder,
    /// Non-zero `ephemeralOwner`s.
    owners: Owners,
    acls: Paged<AclSlot>,
    acl_ids: HashMap<Arc<[Acl]>, u32>,
    free_acls: Vec<u32>,
    /// Open sessions: a persistent map, so that a view shares it and the first session
    /// change after one copies a path of its B-tree, not the whole table.
    sessions: Sessions,
    /// Ephemeral znodes by owner session. Invariant: each is a live znode owned by it.
    ephemerals: HashMap<i64, BTreeSet<u32>>,
    containers: BTreeSet<u32>,
    ttls: BTreeSet<u32>,
    /// Invariant: every applied entry had a zxid ≤ this.
    last_zxid: Zxid,
    data_bytes: u64,
    count: usize,
    /// Quota roots and their usage: derived from the tree (never in an image).
    quotas: quota::Quotas,
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

/// Splits "/a/b" into its components ("a", "b"); "/" has none.
fn components(path: &str) -> impl Iterator<Item = &str> {
    path.strip_prefix('/').unwrap_or(path).split('/').filter(|c| !c.is_empty())
}

impl DataTree {
    fn empty() -> DataTree {
        DataTree {
            nodes: Paged::new(),
            free_nodes: Vec::new(),
            families: Paged::new(),
            free_families: Vec::new(),
            index: Index::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            owners: Owners::default(),
            acls: Paged::new(),
            acl_ids: HashMap::new(),
            free_acls: Vec::new(),
            sessions: Sessions::new(),
            ephemerals: HashMap::new(),
            containers: BTreeSet::new(),
            ttls: BTreeSet::new(),
            last_zxid: Zxid::ZERO,
            data_bytes: 0,
            count: 0,
            quotas: quota::Quotas::default(),
        }
    }

    /// A tree with ZooKeeper's built-in nodes: `/`, `/zookeeper`, `/zookeeper/quota` and
    /// `/zookeeper/config` (world-readable only, as ZooKeeper's).
    pub fn new() -> DataTree {
        let mut tree = DataTree::empty();
        let acl = tree.intern(open_acl());
        let root = tree.alloc(b"", b"", acl, NONE, StatPersisted::default());
        debug_assert_eq!(root, ROOT);
        let zk = tree.insert_child(ROOT, "zookeeper", b"", acl, StatPersisted::default());
        tree.insert_child(zk, "quota", b"", acl, StatPersisted::default());
        // ZooKeeper's `addConfigNode`: readable by anyone, changed by no one (ZOOKEEPER-2014);
        // its ACL set with version -1 leaves aversion at -1.
        let read_only = tree.intern(vec![Acl { perms: 1, scheme: "world".into(), id: "anyone".into() }]);
        tree.insert_child(zk, "config", b"", read_only, StatPersisted { aversion: -1, ..StatPersisted::default() });
        tree
    }

    // ---- storage ----

    fn hash(&self, parent: u32, name: &[u8]) -> u64 {
        self.hasher.hash_one((parent, name))
    }

    fn child(&self, parent: u32, name: &[u8]) -> Option<u32> {
        let h = self.hash(parent, name);
        let nodes = &self.nodes;
        self.index
            .shard(h)
            .find(h, |&id| {
                let n = &nodes[id as usize];
                n.parent == parent && n.name() == name
            })
            .copied()
    }

    fn resolve(&self, path: &str) -> Option<u32> {
        if !path.starts_with('/') || (path.len() > 1 && (path.ends_with('/') || path.contains("//"))) {
            // "/a/" or "//a" name nothing, as in ZooKeeper.
            return None;
        }
        let mut id = ROOT;
        for component in components(path) {
            id = self.child(id, component.as_bytes())?;
        }
        Some(id)
    }

    fn parts(&self) -> Parts<'_> {
        Parts { nodes: &self.nodes, families: &self.families, owners: &self.owners }
    }

    fn family(&self, id: u32) -> Option<&Family> {
        self.parts().family(id)
    }

    fn family_mut(&mut self, id: u32) -> &mut Family {
        let node = &self.nodes[id as usize];
        if node.family == NONE {
            let fresh = Family { first: NONE, last: NONE, count: 0, cversion: 0, pzxid: node.czxid };
            let f = place(&mut self.families, &mut self.free_families, fresh);
            self.nodes[id as usize].family = f;
        }
        let f = self.nodes[id as usize].family;
        &mut self.families[f as usize]
    }

    fn persisted(&self, id: u32) -> StatPersisted {
        self.parts().persisted(id)
    }

    fn owner(&self, id: u32) -> i64 {
        self.parts().owner(id)
    }

    /// Puts a znode in the slab (not yet linked or indexed). `stat`'s cversion and pzxid are
    /// kept only if they differ from a fresh znode's.
    fn alloc(&mut self, name: &[u8], data: &[u8], acl: u32, parent: u32, stat: StatPersisted) -> u32 {
        let mut bytes = Vec::with_capacity(name.len() + data.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(data);
        let owner = stat.ephemeral_owner;
        let node = Node {
            bytes: bytes.into_boxed_slice(),
            name_len: (name.len() as u32 & !(HAS_OWNER | NULL_DATA)) | if owner != 0 { HAS_OWNER } else { 0 },
            acl,
            parent,
            prev: NONE,
            next: NONE,
            family: NONE,
            version: stat.version,
            aversion: stat.aversion,
            czxid: stat.czxid,
            mzxid: stat.mzxid,
            ctime: stat.ctime,
            mtime: stat.mtime,
        };
        let id = place(&mut self.nodes, &mut self.free_nodes, node);
        if stat.cversion != 0 || stat.pzxid != stat.czxid {
            let f = self.family_mut(id);
            f.cversion = stat.cversion;
            f.pzxid = stat.pzxid;
        }
        self.acls[acl as usize].refs += 1;
        self.data_bytes += data.len() as u64;
        self.count += 1;
        if owner != 0 {
            self.owners.insert(id, owner);
            self.index_owner(id, owner, true);
        }
        id
    }

    /// Adds `id` to (or removes it from) the set its owner kind puts it in: containers, TTL
    /// nodes, or its session's ephemerals.
    fn index_owner(&mut self, id: u32, owner: i64, add: bool) {
        let set = match owner_kind(owner) {
            OwnerKind::Persistent => return,
            OwnerKind::Container => &mut self.containers,
            OwnerKind::Ttl(_) => &mut self.ttls,
            OwnerKind::Ephemeral(session) => {
                if add {
                    self.ephemerals.entry(session).or_default().insert(id);
                } else if let Some(set) = self.ephemerals.get_mut(&session) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.ephemerals.remove(&session);
                    }
                }
                return;
            }
        };
        if add {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }

    /// Allocates a znode and links it as the last child of `parent`. The caller has checked
    /// that `parent` has no child of that name.
    fn insert_child(&mut self, parent: u32, name: &str, data: &[u8], acl: u32, stat: StatPersisted) -> u32 {
        let id = self.try_insert_child(parent, name, data, acl, stat);
        debug_assert!(id.is_some(), "duplicate child {name:?}");
        id.unwrap_or(NONE)
    }

    /// As `insert_child`, but `None` (and nothing changed but a leaked slab slot) if
    /// `parent` already has a child of that name: for loading images, which check rather
    /// than trust.
    fn try_insert_child(&mut self, parent: u32, name: &str, data: &[u8], acl: u32, stat: StatPersisted) -> Option<u32> {
        let h = self.hash(parent, name.as_bytes());
        let id = self.alloc(name.as_bytes(), data, acl, parent, stat);
        let (nodes, hasher) = (&self.nodes, &self.hasher);
        let entry = self.index.shard_mut(h).entry(
            h,
            |&i| {
                let n = &nodes[i as usize];
                n.parent == parent && n.name() == name.as_bytes()
            },
            |&i| {
                let n = &nodes[i as usize];
                hasher.hash_one((n.parent, n.name()))
            },
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(_) => return None,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(id);
            }
        }
        let last = {
            let f = self.family_mut(parent);
            let last = f.last;
            f.last = id;
            if f.first == NONE {
                f.first = id;
            }
            f.count += 1;
            last
        };
        if last != NONE {
            self.nodes[last as usize].next = id;
        }
        self.nodes[id as usize].prev = last;
        Some(id)
    }

    /// Unlinks, unindexes and frees a childless znode.
    fn remove(&mut self, id: u32) {
        let (parent, prev, next) = {
            let n = &self.nodes[id as usize];
            (n.parent, n.prev, n.next)
        };
        let h = self.hash(parent, self.nodes[id as usize].name());
        if let Ok(entry) = self.index.shard_mut(h).find_entry(h, |&i| i == id) {
            entry.remove();
        }
        if prev != NONE {
            self.nodes[prev as usize].next = next;
        }
        if next != NONE {
            self.nodes[next as usize].prev = prev;
        }
        {
            let f = self.family_mut(parent);
            if f.first == id {
                f.first = next;
            }
            if f.last == id {
                f.last = prev;
            }
            f.count -= 1;
        }
        let owner = self.owner(id);
        if owner != 0 {
            self.owners.remove(id);
            self.index_owner(id, owner, false);
        }
        let node = std::mem::replace(
            &mut self.nodes[id as usize],
            Node {
                bytes: Box::new([]),
                name_len: 0,
                acl: 0,
                parent: FREE,
                prev: NONE,
                next: NONE,
                family: NONE,
                version: 0,
                aversion: 0,
                czxid: 0,
                mzxid: 0,
                ctime: 0,
                mtime: 0,
            },
        );
        if node.family != NONE {
            self.free_families.push(node.family);
        }
        self.release_acl(node.acl);
        self.data_bytes -= node.data().len() as u64;
        self.count -= 1;
        self.free_nodes.push(id);
    }

    /// A znode's ACL (shared, not copied).
    fn acl_of(&self, id: u32) -> Arc<[Acl]> {
        self.acls[self.nodes[id as usize].acl as usize].acl.clone()
    }

    fn intern(&mut self, acl: Vec<Acl>) -> u32 {
        let arc: Arc<[Acl]> = acl.into();
        if let Some(&id) = self.acl_ids.get(&arc) {
            return id;
        }
        let id = place(&mut self.acls, &mut self.free_acls, AclSlot { acl: arc.clone(), refs: 0 });
        self.acl_ids.insert(arc, id);
        id
    }

    fn release_acl(&mut self, id: u32) {
        let slot = &mut self.acls[id as usize];
        slot.refs -= 1;
        if slot.refs == 0 {
            let acl = slot.acl.clone();
            self.acl_ids.remove(&acl);
            self.free_acls.push(id);
        }
    }

    /// The path of a live znode.
    fn path_of(&self, id: u32) -> String {
        let mut names = Vec::new();
        let mut at = id;
        while at != ROOT {
            let n = &self.nodes[at as usize];
            names.push(n.name());
            at = n.parent;
        }
        if names.is_empty() {
            return "/".into();
        }
        let mut path = String::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for n in names.iter().rev() {
            path.push('/');
            path.push_str(std::str::from_utf8(n).unwrap_or(""));
        }
        path
    }

    // ---- queries ----

    /// The znode at `path`.
    pub fn get(&self, path: &str) -> Option<Znode<'_>> {
        self.resolve(path).map(|id| Znode { tree: self, id })
    }

    /// The full Stat of `path`.
    pub fn stat(&self, path: &str) -> Option<Stat> {
        self.get(path).map(|z| z.full_stat())
    }

    /// Number of znodes (the root and `/zookeeper` nodes included, as ZooKeeper counts).
    pub fn node_count(&self) -> usize {
        self.count
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
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The ephemeral paths of a session, sorted.
    pub fn ephemerals_of(&self, session_id: SessionId) -> Vec<String> {
        let mut paths: Vec<String> =
            self.ephemerals.get(&session_id.as_i64()).into_iter().flatten().map(|&id| self.path_of(id)).collect();
        paths.sort_unstable();
        paths
    }

    /// Number of ephemeral znodes.
    pub fn ephemeral_count(&self) -> usize {
        self.ephemerals.values().map(BTreeSet::len).sum()
    }

    /// Number of znodes below `path` (not counting it), as `getAllChildrenNumber`.
    pub fn descendant_count(&self, path: &str) -> Option<usize> {
        let id = self.resolve(path)?;
        let mut count = 0;
        let mut stack = vec![id];
        while let Some(at) = stack.pop() {
            let mut child = self.family(at).map_or(NONE, |f| f.first);
            while child != NONE {
                count += 1;
                stack.push(child);
                child = self.nodes[child as usize].next;
            }
        }
        Some(count)
    }

    /// Containers that are empty and have had a child, and TTL nodes without children whose
    /// TTL has run out since their last modification at `now_ms` — what ZooKeeper's
    /// `ContainerManager` deletes. Sorted. The caller turns them into delete txns.
    pub fn reapable(&self, now_ms: i64) -> Vec<String> {
        let mut out = Vec::new();
        for &id in &self.containers {
            // A container that never had a child has no family (and cversion 0).
            if self.family(id).is_some_and(|f| f.count == 0 && f.cversion > 0) {
                out.push(self.path_of(id));
            }
        }
        for &id in &self.ttls {
            if let OwnerKind::Ttl(ttl) = owner_kind(self.owner(id)) {
                let empty = self.family(id).is_none_or(|f| f.count == 0);
                if empty && now_ms.saturating_sub(self.nodes[id as usize].mtime) > ttl {
                    out.push(self.path_of(id));
                }
            }
        }
        out.sort();
        out
    }

    /// Applies a committed entry. Deterministic: the same entries applied in the same order
    /// give the same tree on every server. Entries at or below the last applied zxid are
    /// refused (replay after a snapshot must skip them).
    pub fn apply(&mut self, entry: &ArchivedTransaction) -> Applied {
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
                    ops.iter()
                        .map(|op| self.apply_multi_op(op, zxid, time, session_id.as_i64(), &mut changes))
                        .collect()
                }
            }
            // etcd's keyspace applies these (`crate::mvcc`); the tree only takes the zxid.
            ArchivedTxn::Etcd(_) => Vec::new(),
            txn => vec![self.apply_txn(txn, zxid, time, session_id.as_i64(), &mut changes)],
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
            ArchivedMultiOp::Create(c) => self.create(c, false, zxid, time, session, changes),
            ArchivedMultiOp::Delete { path } => self.delete(path.as_str(), zxid, changes).map(|_| OpResult::Deleted),
            ArchivedMultiOp::SetData { path, data, version } => {
                self.set_data_opt(path.as_str(), Some(data.as_slice()), version.to_native(), zxid, time, changes)
            }
            ArchivedMultiOp::Check { path, .. } => self.check(path.as_str()),
            ArchivedMultiOp::Error { code } => {
                Err(ErrorCode::from_code(code.to_native()).unwrap_or(ErrorCode::SystemError))
            }
            ArchivedMultiOp::CreateNull(c) => self.create(c, true, zxid, time, session, changes),
            ArchivedMultiOp::SetNull { path, version } => {
                self.set_data_opt(path.as_str(), None, version.to_native(), zxid, time, changes)
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
            ArchivedTxn::Create(c) => self.create(c, false, zxid, time, session, changes),
            ArchivedTxn::Delete { path } => self.delete(path.as_str(), zxid, changes).map(|_| OpResult::Deleted),
            ArchivedTxn::SetData { path, data, version } => {
                self.set_data_opt(path.as_str(), Some(data.as_slice()), version.to_native(), zxid, time, changes)
            }
            ArchivedTxn::SetAcl { path, acl, version } => {
                self.set_acl(path.as_str(), acl.as_slice(), version.to_native())
            }
            ArchivedTxn::Check { path, .. } => self.check(path.as_str()),
            ArchivedTxn::Multi(_) => Err(ErrorCode::RuntimeInconsistency),
            ArchivedTxn::CreateSession { timeout_ms } => {
                self.sessions.insert(SessionId(session), SessionInfo { timeout_ms: timeout_ms.to_native() });
                Ok(OpResult::SessionCreated)
            }
            ArchivedTxn::CloseSession => {
                self.close_session(SessionId(session), zxid, changes);
                Ok(OpResult::SessionClosed)
            }
            ArchivedTxn::Error { code } => {
                Err(ErrorCode::from_code(code.to_native()).unwrap_or(ErrorCode::SystemError))
            }
            ArchivedTxn::CreateNull(c) => self.create(c, true, zxid, time, session, changes),
            ArchivedTxn::SetNull { path, version } => {
                self.set_data_opt(path.as_str(), None, version.to_native(), zxid, time, changes)
            }
            // Taken apart in `apply`; never a tree operation.
            ArchivedTxn::Etcd(_) => Err(ErrorCode::RuntimeInconsistency),
        };
        result.unwrap_or_else(OpResult::Error)
    }

    // ---- apply ----

    /// A create; `null` for null data (its `data` is then empty).
    fn create(
        &mut self,
        c: &ArchivedCreateTxn,
        null: bool,
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
        let Some(pid) = self.resolve(parent_path) else { return Err(ErrorCode::NoNode) };
        if matches!(owner_kind(self.owner(pid)), OwnerKind::Ephemeral(_)) {
            return Err(ErrorCode::NoChildrenForEphemerals);
        }
        let child_name = name(path);
        if self.child(pid, child_name.as_bytes()).is_some() {
            return Err(ErrorCode::NodeExists);
        }
        let owner = match &c.kind {
            ArchivedNodeKind::Persistent => 0,
            ArchivedNodeKind::Ephemeral => session,
            ArchivedNodeKind::Container => CONTAINER_OWNER,
            ArchivedNodeKind::Ttl { ttl_ms } => ttl_owner(ttl_ms.to_native()),
        };
        let acl = self.intern(c.acl.iter().map(acl_of).collect());
        let id = self.insert_child(pid, child_name, c.data.as_slice(), acl, StatPersisted::created(zxid, time, owner));
        self.nodes[id as usize].set_null(null);
        let stat = Znode { tree: self, id }.full_stat();
        self.quota_created(path, id, c.data.len());
        let f = self.family_mut(pid);
        // As ZooKeeper: only a create that advances the parent's cversion moves pzxid.
        if parent_cversion > f.cversion {
            f.cversion = parent_cversion;
            f.pzxid = zxid.0 as i64;
        }
        changes.push(Change { path: path.to_string(), kind: ChangeKind::Created, acl: self.acl_of(id) });
        let acl = self.acl_of(pid);
        changes.push(Change { path: parent_path.to_string(), kind: ChangeKind::ChildrenChanged, acl });
        Ok(OpResult::Created { path: path.to_string(), stat })
    }

    fn delete(&mut self, path: &str, zxid: Zxid, changes: &mut Vec<Change>) -> Result<(), ErrorCode> {
        if path == "/" {
            return Err(ErrorCode::BadArguments);
        }
        let Some(id) = self.resolve(path) else { return Err(ErrorCode::NoNode) };
        if self.family(id).is_some_and(|f| f.count > 0) {
            return Err(ErrorCode::NotEmpty);
        }
        let pid = self.nodes[id as usize].parent;
        let len = self.nodes[id as usize].data().len();
        let acl = self.acl_of(id);
        self.remove(id);
        self.quota_deleted(path, len);
        let f = self.family_mut(pid);
        if zxid.0 as i64 > f.pzxid {
            f.pzxid = zxid.0 as i64;
        }
        changes.push(Change { path: path.to_string(), kind: ChangeKind::Deleted, acl });
        let acl = self.acl_of(pid);
        changes.push(Change { path: parent(path).to_string(), kind: ChangeKind::ChildrenChanged, acl });
        Ok(())
    }

    /// setData with data, or null data (`None`).
    fn set_data_opt(
        &mut self,
        path: &str,
        data: Option<&[u8]>,
        version: i32,
        zxid: Zxid,
        time: i64,
        changes: &mut Vec<Change>,
    ) -> Result<OpResult, ErrorCode> {
        let Some(id) = self.resolve(path) else { return Err(ErrorCode::NoNode) };
        let old = self.replace_data(id, data);
        let node = &mut self.nodes[id as usize];
        node.mtime = time;
        node.mzxid = zxid.0 as i64;
        node.version = version;
        let stat = Znode { tree: self, id }.full_stat();
        self.quota_set(path, old, data.map_or(0, <[u8]>::len));
        changes.push(Change { path: path.to_string(), kind: ChangeKind::DataChanged, acl: self.acl_of(id) });
        Ok(OpResult::DataSet(stat))
    }

    /// Replaces a znode's data (`None`: null) and nothing else of it; returns the old length.
    fn replace_data(&mut self, id: u32, data: Option<&[u8]>) -> usize {
        let node = &mut self.nodes[id as usize];
        node.set_null(data.is_none());
        let data = data.unwrap_or_default();
        let old = node.data().len();
        let mut bytes = Vec::with_capacity(node.name_len() + data.len());
        bytes.extend_from_slice(node.name());
        bytes.extend_from_slice(data);
        node.bytes = bytes.into_boxed_slice();
        self.data_bytes = self.data_bytes - old as u64 + data.len() as u64;
        old
    }

    fn set_acl(&mut self, path: &str, acl: &[ArchivedAcl], version: i32) -> Result<OpResult, ErrorCode> {
        let Some(id) = self.resolve(path) else { return Err(ErrorCode::NoNode) };
        let new = self.intern(acl.iter().map(acl_of).collect());
        self.acls[new as usize].refs += 1;
        let node = &mut self.nodes[id as usize];
        let old = std::mem::replace(&mut node.acl, new);
        node.aversion = version;
        self.release_acl(old);
        Ok(OpResult::AclSet(Znode { tree: self, id }.full_stat()))
    }

    fn check(&self, path: &str) -> Result<OpResult, ErrorCode> {
        match self.resolve(path) {
            Some(_) => Ok(OpResult::Checked),
            None => Err(ErrorCode::NoNode),
        }
    }

    fn close_session(&mut self, session: SessionId, zxid: Zxid, changes: &mut Vec<Change>) {
        self.sessions.remove(&session);
        // Sorted paths keep the order of the changes deterministic (ephemerals have no
        // children, so any order would do for the tree).
        for path in self.ephemerals_of(session) {
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
        let mut live = 0usize;
        let mut acl_refs = vec![0u32; self.acls.len()];
        let free: std::collections::HashSet<u32> = self.free_nodes.iter().copied().collect();
        for (i, node) in self.nodes.iter().enumerate() {
            let id = i as u32;
            if node.parent == FREE {
                assert!(free.contains(&id), "slot {id} is neither live nor free");
                continue;
            }
            live += 1;
            data += node.data().len() as u64;
            acl_refs[node.acl as usize] += 1;
            if id != ROOT {
                assert_eq!(self.child(node.parent, node.name()), Some(id), "{} is not indexed", self.path_of(id));
                let parent = &self.nodes[node.parent as usize];
                assert!(parent.parent != FREE, "{} has a freed parent", self.path_of(id));
            }
            let mut count = 0;
            let mut prev = NONE;
            let mut child = self.family(id).map_or(NONE, |f| f.first);
            while child != NONE {
                let c = &self.nodes[child as usize];
                assert_eq!((c.parent, c.prev), (id, prev), "broken child list under {}", self.path_of(id));
                count += 1;
                prev = child;
                child = c.next;
            }
            if let Some(f) = self.family(id) {
                assert_eq!((f.count, f.last), (count, prev), "child count of {}", self.path_of(id));
            }
            let owner = self.owner(id);
            assert_eq!(node.has_owner(), owner != 0);
            if let OwnerKind::Ephemeral(session) = owner_kind(owner) {
                assert!(self.ephemerals.get(&session).is_some_and(|s| s.contains(&id)), "ephemeral not tracked");
                assert_eq!(count, 0, "ephemeral {} has children", self.path_of(id));
            }
        }
        assert_eq!(live, self.count, "znode count drifted");
        assert_eq!(live, self.index.len() + 1, "index size");
        assert_eq!(data, self.data_bytes, "data byte count drifted");
        for (i, slot) in self.acls.iter().enumerate() {
            assert_eq!(slot.refs, acl_refs[i], "ACL {i} reference count");
            if slot.refs > 0 {
                assert_eq!(self.acl_ids.get(&slot.acl), Some(&(i as u32)), "ACL {i} not interned");
            }
        }
        for (session, ids) in &self.ephemerals {
            assert!(!ids.is_empty());
            for &id in ids {
                assert_eq!(self.owner(id), *session, "stale ephemeral");
            }
        }
        self.validate_quotas();
    }

    /// Every znode path, sorted (for tests).
    pub fn sorted_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.preorder().map(|id| self.path_of(id)).collect();
        paths.sort_unstable();
        paths
    }

    /// Live znodes, parents before children, children in list order (deterministic).
    fn preorder(&self) -> impl Iterator<Item = u32> + '_ {
        self.parts().preorder()
    }

    /// The tree as it is now, frozen: see [`TreeView`].
    pub fn view(&self) -> TreeView {
        TreeView {
            nodes: self.nodes.clone(),
            families: self.families.clone(),
            acls: self.acls.clone(),
            owners: self.owners.clone(),
            sessions: self.sessions.clone(),
            last_zxid: self.last_zxid,
            count: self.count,
            data_bytes: self.data_bytes,
        }
    }
}

/// Read access to the storage a tree and its views share.
#[derive(Clone, Copy)]
struct Parts<'a> {
    nodes: &'a Paged<Node>,
    families: &'a Paged<Family>,
    owners: &'a Owners,
}

impl<'a> Parts<'a> {
    fn family(self, id: u32) -> Option<&'a Family> {
        let f = self.nodes[id as usize].family;
        (f != NONE).then(|| &self.families[f as usize])
    }

    fn owner(self, id: u32) -> i64 {
        if self.nodes[id as usize].has_owner() {
            self.owners.get(id)
        } else {
            0
        }
    }

    fn persisted(self, id: u32) -> StatPersisted {
        let n = &self.nodes[id as usize];
        let (cversion, pzxid) = self.family(id).map_or((0, n.czxid), |f| (f.cversion, f.pzxid));
        StatPersisted {
            czxid: n.czxid,
            mzxid: n.mzxid,
            pzxid,
            ctime: n.ctime,
            mtime: n.mtime,
            version: n.version,
            cversion,
            aversion: n.aversion,
            ephemeral_owner: self.owner(id),
        }
    }

    /// Live znodes, parents before children, children in list order, each with its parent's
    /// position in that order (`NONE` for the root). Memory grows with the depth only: the
    /// walk keeps, per level, the next sibling to visit.
    fn preorder_with_parents(self) -> impl Iterator<Item = (u32, u32)> + 'a {
        let mut position = 0u32;
        let mut levels: Vec<(u32, u32)> = Vec::new();
        let mut root = true;
        std::iter::from_fn(move || {
            if root {
                root = false;
                levels.push((self.family(ROOT).map_or(NONE, |f| f.first), 0));
                return Some((ROOT, NONE));
            }
            loop {
                let (next, parent) = *levels.last()?;
                if next == NONE {
                    levels.pop();
                    continue;
                }
                if let Some(level) = levels.last_mut() {
                    level.0 = self.nodes[next as usize].next;
                }
                position += 1;
                if let Some(first) = self.family(next).map(|f| f.first).filter(|&f| f != NONE) {
                    levels.push((first, position));
                }
                return Some((next, parent));
            }
        })
    }

    fn preorder(self) -> impl Iterator<Item = u32> + 'a {
        self.preorder_with_parents().map(|(id, _)| id)
    }
}

/// The tree frozen at one point ([`DataTree::view`]), for writing a snapshot image while the
/// tree goes on applying. It shares the tree's pages, so taking it costs one reference per
/// page (a few microseconds for millions of znodes); the tree copies a page only when it next
/// writes to one a view still holds, and the view's memory goes when it is dropped. It may be
/// sent to another thread.
#[derive(Debug, Clone)]
pub struct TreeView {
    nodes: Paged<Node>,
    families: Paged<Family>,
    acls: Paged<AclSlot>,
    owners: Owners,
    sessions: Sessions,
    last_zxid: Zxid,
    count: usize,
    data_bytes: u64,
}

impl TreeView {
    /// Frees one page directory of the view (8,192 znodes); false once none is left. What
    /// only the view still holds (pages the tree has copied since) is freed: called on the
    /// tree's thread a directory per step, the allocator's work comes in slices (see
    /// `replica::SnapshotImage::release_step`).
    pub fn release_step(&mut self) -> bool {
        self.nodes.dirs.pop();
        !self.nodes.dirs.is_empty()
    }

    fn parts(&self) -> Parts<'_> {
        Parts { nodes: &self.nodes, families: &self.families, owners: &self.owners }
    }

    /// The last zxid applied when the view was taken.
    pub fn last_zxid(&self) -> Zxid {
        self.last_zxid
    }

    /// Znodes in the view.
    pub fn node_count(&self) -> usize {
        self.count
    }

    /// Data bytes in the view.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Sessions in the view.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

/// What the snapshot image needs from the tree's storage.
pub(super) struct ImageNode<'a> {
    pub parent: u32,
    pub name: &'a [u8],
    /// `None`: null data.
    pub data: Option<&'a [u8]>,
    pub acl: u32,
    pub stat: StatPersisted,
}

impl TreeView {
    /// The ACL table of an image: ACLs numbered by first use in pre-order.
    pub(super) fn image_acls(&self) -> (Vec<&[Acl]>, Vec<u32>) {
        let mut number = vec![NONE; self.acls.len()];
        let mut acls = Vec::new();
        for id in self.parts().preorder() {
            let acl = self.nodes[id as usize].acl as usize;
            if number[acl] == NONE {
                number[acl] = acls.len() as u32;
                acls.push(&*self.acls[acl].acl);
            }
        }
        (acls, number)
    }

    /// Calls `visit` for every znode in pre-order with its parent's position in that order
    /// (`u32::MAX` for the root) and its ACL as numbered by [`TreeView::image_acls`].
    pub(super) fn for_each_image_node(&self, acl_numbers: &[u32], mut visit: impl FnMut(ImageNode<'_>)) {
        let parts = self.parts();
        for (id, parent) in parts.preorder_with_parents() {
            let n = &self.nodes[id as usize];
            visit(ImageNode {
                parent,
                name: n.name(),
                data: (!n.is_null()).then(|| n.data()),
                acl: acl_numbers[n.acl as usize],
                stat: parts.persisted(id),
            });
        }
    }
}

/// A tree rebuilt from an image's parts, one znode at a time in the image's order (see
/// `image.rs`): the ACL table first, then the znodes, then the sessions and the last zxid.
pub(super) struct ImageBuilder {
    tree: DataTree,
    /// The interned id of each of the image's ACLs.
    acl_ids: Vec<u32>,
    /// The node id of each znode read so far, by position.
    ids: Vec<u32>,
}

impl ImageBuilder {
    /// Starts a tree with the image's ACL table, with room for `expected` znodes.
    pub(super) fn new(acls: Vec<Vec<Acl>>, expected: usize) -> ImageBuilder {
        let mut tree = DataTree::empty();
        // Room for the log replayed after the snapshot too: growing the index later rehashes
        // every entry.
        tree.index.reserve(expected + expected / 2);
        let acl_ids: Vec<u32> = acls.into_iter().map(|a| tree.intern(a)).collect();
        ImageBuilder { tree, acl_ids, ids: Vec::with_capacity(expected) }
    }

    /// Znodes added so far.
    pub(super) fn count(&self) -> usize {
        self.ids.len()
    }

    /// Adds the next znode of the image.
    pub(super) fn push(&mut self, node: ImageNode<'_>) -> Result<(), String> {
        let (tree, i) = (&mut self.tree, self.ids.len());
        let acl = *self.acl_ids.get(node.acl as usize).ok_or_else(|| format!("node {i} names ACL {}", node.acl))?;
        let name = std::str::from_utf8(node.name).map_err(|_| format!("node {i} has a name that is not UTF-8"))?;
        if i == 0 {
            if node.parent != NONE || !name.is_empty() {
                return Err("the first node is not the root".into());
            }
            let id = tree.alloc(b"", node.data.unwrap_or_default(), acl, NONE, node.stat);
            tree.nodes[id as usize].set_null(node.data.is_none());
            self.ids.push(id);
            return Ok(());
        }
        let parent = *self.ids.get(node.parent as usize).ok_or_else(|| format!("node {i} comes before its parent"))?;
        if super::path::validate_name(name).is_err() {
            return Err(format!("node {i} has an invalid name {name:?}"));
        }
        let id = tree
            .try_insert_child(parent, name, node.data.unwrap_or_default(), acl, node.stat)
            .ok_or_else(|| format!("node {i}: {name:?} appears twice under one parent"))?;
        tree.nodes[id as usize].set_null(node.data.is_none());
        self.ids.push(id);
        Ok(())
    }

    /// The tree, once every znode was added.
    pub(super) fn finish(self, sessions: Sessions, last_zxid: Zxid) -> Result<DataTree, String> {
        let mut tree = self.tree;
        if self.ids.is_empty() {
            return Err("snapshot has no root".into());
        }
        // The interner may hold ACLs no node uses.
        for (i, slot) in tree.acls.iter().enumerate() {
            if slot.refs == 0 && !tree.free_acls.contains(&(i as u32)) {
                tree.free_acls.push(i as u32);
            }
        }
        let unused: Vec<Arc<[Acl]>> = tree.acls.iter().filter(|s| s.refs == 0).map(|s| s.acl.clone()).collect();
        for acl in unused {
            tree.acl_ids.remove(&acl);
        }
        tree.sessions = sessions;
        tree.last_zxid = last_zxid;
        tree.rebuild_quotas();
        Ok(tree)
    }
}

fn acl_of(a: &ArchivedAcl) -> Acl {
    Acl { perms: a.perms.to_native(), scheme: a.scheme.as_str().to_string(), id: a.id.as_str().to_string() }
}
