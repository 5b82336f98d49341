//! etcd's MVCC keyspace as a deterministic state machine: every key's history until
//! compaction, a revision that each write transaction raises once, leases and the keys
//! attached to them. The semantics are etcd 3.5's, case by case (`engine/ETCD-MVCC.md`; its
//! section numbers are cited below).
//!
//! ## Layout
//!
//! - `keys`: key → its history, the records (revision, create revision, version, lease,
//!   value or tombstone) in revision order. A read at revision r takes the last record at or
//!   before r; a tombstone there means "no key".
//! - `by_rev`: every record's (main, sub) revision and key, in revision order, for the
//!   events of a revision range (a watch that starts in the past) and for pruning. Records
//!   are only ever added at the newest revision and dropped from the oldest (a compaction
//!   prunes from the front), so it is a queue: a persistent vector, packed 64 to a chunk
//!   (24 bytes a record; a map's half-filled nodes cost about twice that).
//! - `leases`: lease → granted TTL and attached keys.
//! - `alarms`: the (member, alarm type) raised; with NOSPACE raised, writes that add data
//!   are refused at apply, on every server alike (etcd's capped applier).
//! - `bytes`: what the keyspace holds, counted as it changes (every record's key and value
//!   plus [`RECORD_OVERHEAD`], every lease [`LEASE_OVERHEAD`]): the size `--etcd-quota-bytes`
//!   bounds and Status reports. Not part of the image: it is recounted as an image loads.
//!
//! All three are persistent maps (`imbl`): cloning the keyspace for a snapshot costs a
//! reference, and the first change after it copies one path, as the data tree's pages do.
//!
//! ## Compaction
//!
//! `compact(R)` takes effect at once (reads before R fail with `Compacted`); the records no
//! read at R or later can reach are dropped afterwards, a bounded number per
//! [`KeySpace::prune_step`], so that a compaction of a large history never stalls the write
//! path (etcd compacts in the background too, and then needs a defragmentation that stops
//! the world; nothing here needs one). A key's own superseded records also go whenever it is
//! written.

use std::cell::UnsafeCell;
use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use imbl::{OrdMap, OrdSet};

use super::types::{
    ArchivedEtcdTxn, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, EtcdApplied,
    EtcdResponse, EtcdTxn, Event, EventKind, Key, KeyValue, LeaseInfo, MvccError, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse, Value,
    ALARM_CORRUPT, ALARM_NOSPACE,
};

/// etcd's `MaxLeaseTTL`: 9,000,000,000 seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// What a record costs beyond its key and value: the record (48 bytes), its revision index
/// entry and the maps' nodes, rounded.
pub const RECORD_OVERHEAD: u64 = 96;

/// What a lease costs (etcd's quota counts 64 bytes per lease too).
pub const LEASE_OVERHEAD: u64 = 64;

/// What `n` records of `key` holding `values` value bytes cost.
pub(super) fn record_bytes(key: &[u8], n: usize, values: usize) -> u64 {
    n as u64 * (key.len() as u64 + RECORD_OVERHEAD) + values as u64
}

/// One change of a key.
#[derive(Debug, Clone)]
pub(super) struct Record {
    pub(super) main: i64,
    pub(super) sub: i64,
    pub(super) create: i64,
    pub(super) version: i64,
    pub(super) lease: i64,
    pub(super) value: Slot,
}

/// A record's value, or none for a tombstone, behind a lock because a snapshot moves it: a
/// value on the heap becomes a view of the snapshot file that holds it once that file is
/// durable ([`KeySpace::adopt_step`]), in every keyspace that shares the record, while other
/// threads read it. The bytes never change, only where they are. A copy (a history copied on
/// write) is a slot of its own, moved by the next snapshot that holds it.
///
/// The lock is one of [`SLOT_LOCKS`], chosen by the slot's address: a lock word in every
/// record cost 8 bytes, 16 with the allocator's size classes (a key's one record inline grew
/// from 96 to 112 bytes). A slot is locked only to copy its `Bytes` out or swap it, so two
/// records sharing a lock hold each other up for a few nanoseconds at most.
pub(super) struct Slot(UnsafeCell<Option<Value>>);

// SAFETY: the cell is only reached through `Slot::with`, which holds the slot's lock for the
// whole access: no two threads touch it at once. A slot cannot move while it is shared (a
// move needs it owned), so every access to one slot picks the same lock.
unsafe impl Sync for Slot {}

/// A lock on its own cache line.
#[repr(align(64))]
struct Padded(Mutex<()>);

/// The locks of every [`Slot`] (256: two slots share one only by their addresses).
static SLOT_LOCKS: [Padded; 256] = [const { Padded(Mutex::new(())) }; 256];

impl Slot {
    pub(super) fn new(value: Option<Value>) -> Slot {
        Slot(UnsafeCell::new(value))
    }

    /// Runs `f` on the value with the slot's lock held. `f` must not reach another slot (it
    /// might share the lock).
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut Option<Value>) -> R) -> R {
        // Records are at least 72 bytes apart: the bits above the 64 that a record spans
        // spread neighbours over the locks.
        let i = (self as *const Slot as usize >> 6) % SLOT_LOCKS.len();
        // Nothing panics while holding a lock; were one poisoned, the values are still whole.
        let _held = SLOT_LOCKS[i].0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: the slot's lock is held until `f` returns: this is the only reference to
        // the cell's contents meanwhile (see `unsafe impl Sync for Slot`).
        f(unsafe { &mut *self.0.get() })
    }

    /// The value (a reference count, not a copy); None for a tombstone.
    pub(super) fn get(&self) -> Option<Value> {
        self.with(|v| v.clone())
    }

    pub(super) fn is_tomb(&self) -> bool {
        self.with(|v| v.is_none())
    }

    /// Value bytes (0 for a tombstone).
    pub(super) fn len(&self) -> usize {
        self.value_len().unwrap_or(0)
    }

    /// Value bytes; None for a tombstone.
    fn value_len(&self) -> Option<usize> {
        self.with(|v| v.as_ref().map(|v| v.len()))
    }

    /// Puts `view` in place of the value if it holds the same bytes (compared: a view of a
    /// file is only as good as the offsets noted and the file's pages); otherwise nothing
    /// changes.
    fn relocate(&self, view: Value) -> Relocated {
        self.with(|held| match held.as_mut() {
            None => Relocated::Tomb,
            Some(v) if *v == view => Relocated::Moved(std::mem::replace(v, view)),
            Some(_) => Relocated::Differs,
        })
    }
}

/// What [`Slot::relocate`] did.
enum Relocated {
    /// The value it replaced.
    Moved(Value),
    /// Nothing: a tombstone.
    Tomb,
    /// Nothing: the view holds other bytes.
    Differs,
}

impl Clone for Slot {
    fn clone(&self) -> Slot {
        Slot::new(self.get())
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl Record {
    fn kv(&self, key: &Key) -> KeyValue {
        KeyValue {
            key: key.clone(),
            create_revision: self.create,
            mod_revision: self.main,
            version: self.version,
            value: self.value.get().unwrap_or_else(empty),
            lease: self.lease,
        }
    }
}

fn empty() -> Value {
    Value::new()
}

/// A key's records, in (main, sub) order.
#[derive(Debug, Clone, Default)]
pub(super) struct History {
    pub(super) records: Records,
}

/// Records up to which a key's history is a plain vector.
const SMALL_RECORDS: usize = 32;

/// A key's records: the one record inline (most keys, in the common case of a key written
/// once between compactions: one allocation per key, not two), a plain vector while there are
/// few (a handful between compactions; a copy after a snapshot costs at most 32 records), a
/// persistent vector once there are more, so that the first write to a key after a snapshot
/// copies a chunk of its history, not all of it (with a `Vec` alone, a key written 10,000
/// times since its last compaction copied 10,000 records: a 50-120 ms stall after each
/// snapshot under a put load). Not the persistent vector alone: it keeps its records in
/// chunks of 64, 3.6 KB for a key of one record (4.7 KB per key at a million keys).
#[derive(Debug, Clone)]
pub(super) enum Records {
    One(Record),
    Small(Vec<Record>),
    Large(Box<imbl::Vector<Record>>),
}

impl Default for Records {
    fn default() -> Records {
        Records::Small(Vec::new())
    }
}

impl Records {
    /// The records as one slice (one record, or a plain vector), or the persistent vector.
    fn parts(&self) -> Result<&[Record], &imbl::Vector<Record>> {
        match self {
            Records::One(r) => Ok(std::slice::from_ref(r)),
            Records::Small(v) => Ok(v),
            Records::Large(v) => Err(v),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self.parts() {
            Ok(s) => s.len(),
            Err(v) => v.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn get(&self, i: usize) -> Option<&Record> {
        match self.parts() {
            Ok(s) => s.get(i),
            Err(v) => v.get(i),
        }
    }

    pub(super) fn last(&self) -> Option<&Record> {
        match self.parts() {
            Ok(s) => s.last(),
            Err(v) => v.last(),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Record> + '_ {
        let (slice, large) = match self.parts() {
            Ok(s) => (Some(s.iter()), None),
            Err(v) => (None, Some(v.iter())),
        };
        slice.into_iter().flatten().chain(large.into_iter().flatten())
    }

    pub(super) fn binary_search_by(&self, f: impl FnMut(&Record) -> Ordering) -> Result<usize, usize> {
        match self.parts() {
            Ok(s) => s.binary_search_by(f),
            Err(v) => v.binary_search_by(f),
        }
    }

    pub(super) fn push_back(&mut self, rec: Record) {
        match std::mem::take(self) {
            Records::Small(v) if v.is_empty() => *self = Records::One(rec),
            Records::One(first) => *self = Records::Small(vec![first, rec]),
            Records::Small(mut v) if v.len() < SMALL_RECORDS => {
                v.push(rec);
                *self = Records::Small(v);
            }
            Records::Small(v) => {
                let mut large: imbl::Vector<Record> = v.into_iter().collect();
                large.push_back(rec);
                *self = Records::Large(Box::new(large));
            }
            Records::Large(mut v) => {
                v.push_back(rec);
                *self = Records::Large(v);
            }
        }
    }

    /// Drops the first `n` records.
    pub(super) fn skip(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        match std::mem::take(self) {
            Records::One(_) => {}
            Records::Small(mut v) => {
                v.drain(..n.min(v.len()));
                *self = match v.len() {
                    1 => Records::One(v.remove(0)),
                    _ => Records::Small(v),
                };
            }
            Records::Large(v) => {
                let rest = v.skip(n);
                *self = if rest.len() <= SMALL_RECORDS / 2 {
                    rest.into_iter().collect()
                } else {
                    Records::Large(Box::new(rest))
                };
            }
        }
    }
}

impl FromIterator<Record> for Records {
    fn from_iter<I: IntoIterator<Item = Record>>(iter: I) -> Records {
        let mut records = Records::default();
        for r in iter {
            records.push_back(r);
        }
        records
    }
}

/// The number of leading `records` for which `pred` holds (they are ordered so that it holds
/// for a prefix), as `slice::partition_point`.
fn partition_point(records: &Records, pred: impl Fn(&Record) -> bool) -> usize {
    records.binary_search_by(|r| if pred(r) { Ordering::Less } else { Ordering::Greater }).unwrap_or_else(|i| i)
}

impl History {
    /// The key as of revision `rev`, if it was live then.
    fn at(&self, rev: i64) -> Option<&Record> {
        let i = partition_point(&self.records, |r| r.main <= rev);
        let r = self.records.get(i.checked_sub(1)?)?;
        (!r.value.is_tomb()).then_some(r)
    }

    /// The key now, if live.
    pub(super) fn latest(&self) -> Option<&Record> {
        self.records.last().filter(|r| !r.value.is_tomb())
    }

    /// Drops what no read at `compact` or later, and no event at `compact` or later, needs;
    /// returns whether nothing is left, and how many records with how many value bytes went.
    fn prune(&mut self, compact: i64) -> (bool, usize, usize) {
        let j = partition_point(&self.records, |r| r.main < compact);
        let (mut cut, mut values) = (0, 0);
        if j > 0 {
            let at_compact = self.records.get(j).is_some_and(|r| r.main == compact);
            let tomb = self.records.get(j - 1).is_some_and(|r| r.value.is_tomb());
            cut = if at_compact || tomb { j } else { j - 1 };
            if cut > 0 {
                values = self.records.iter().take(cut).map(|r| r.value.len()).sum();
                self.records.skip(cut);
            }
        }
        (self.records.is_empty(), cut, values)
    }

    /// The value bytes of every record.
    pub(super) fn value_bytes(&self) -> usize {
        self.records.iter().map(|r| r.value.len()).sum()
    }
}

/// Where a walk of [`KeySpace::adopt_step`] is: after this key, at this offset.
#[derive(Debug, Default)]
pub struct Adopting {
    last_key: Option<Key>,
    next: usize,
    differs: Option<usize>,
    moved: usize,
}

impl Adopting {
    /// The values moved so far.
    pub fn moved(&self) -> usize {
        self.moved
    }

    /// The value at which the walk stopped because the image held other bytes there.
    pub fn differs(&self) -> Option<usize> {
        self.differs
    }
}

/// A record's place in revision order: (main, sub) and its key.
pub(super) type Revision = (i64, i64, Key);

/// A lease as every server knows it.
#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) ttl: i64,
    pub(super) keys: OrdSet<Key>,
}

/// The etcd keyspace. Cloning it is cheap (see the module's documentation).
#[derive(Debug, Clone)]
pub struct KeySpace {
    pub(super) rev: i64,
    pub(super) compact_rev: i64,
    pub(super) keys: OrdMap<Key, Arc<History>>,
    pub(super) by_rev: imbl::Vector<Revision>,
    pub(super) leases: OrdMap<i64, Lease>,
    pub(super) alarms: OrdSet<(u64, i32)>,
    pub(super) bytes: u64,
    /// Records dropped from the front of `by_rev` by compactions, ever (a repack is good only
    /// if none went since its clone was frozen: see [`KeySpace::repack`]).
    pub(super) pops: u64,
    /// How many keys the key map held when it was last built with full leaves.
    pub(super) packed_keys: usize,
    /// Where a frozen clone hands the live keyspace a repacked key map (shared by clones).
    repacks: Arc<RepackCell>,
    /// The repacked key map being caught up (this keyspace's own: not cloned).
    repacking: Catching,
}

/// Keys below which a key map has nothing to repack (a repack costs in proportion to the
/// keys, so a small map's is cheap: the write-path simulator's few keys are repacked at
/// every snapshot, which has it check the catching up under faults).
const REPACK_MIN_KEYS: usize = 2;

/// A key map built again with full leaves from a frozen clone ([`KeySpace::repack`]), and
/// how far the live keyspace has carried its later changes into it.
#[derive(Debug)]
struct Repack {
    keys: OrdMap<Key, Arc<History>>,
    /// The clone's revision: every change after it is in the revision queue's tail.
    rev: i64,
    /// The clone's `pops`.
    pops: u64,
    /// The last change carried in.
    at: Option<(i64, i64)>,
}

/// A frozen clone's repacked key map, waiting for the live keyspace to take it.
#[derive(Debug, Default)]
struct RepackCell {
    ready: std::sync::atomic::AtomicBool,
    map: Mutex<Option<Box<Repack>>>,
}

/// The repack a keyspace is catching up; a clone has none (a clone for a read, or a frozen
/// one, never takes it).
#[derive(Debug, Default)]
struct Catching(Option<Box<Repack>>);

impl Clone for Catching {
    fn clone(&self) -> Catching {
        Catching(None)
    }
}

impl Default for KeySpace {
    fn default() -> KeySpace {
        KeySpace::new()
    }
}

/// Which keys a request names: `key` alone, `[key, end)`, or every key from `key`.
#[derive(Debug, Clone, Copy)]
enum Span<'a> {
    One(&'a [u8]),
    From(&'a [u8]),
    Between(&'a [u8], &'a [u8]),
}

impl<'a> Span<'a> {
    fn new(key: &'a [u8], range_end: &'a [u8]) -> Span<'a> {
        match range_end {
            [] => Span::One(key),
            [0] => Span::From(key),
            end => Span::Between(key, end),
        }
    }

    fn contains(self, k: &[u8]) -> bool {
        match self {
            Span::One(key) => k == key,
            Span::From(key) => k >= key,
            Span::Between(key, end) => k >= key && k < end,
        }
    }
}

/// The state of one write transaction: changes get (begin + 1, sub), sub counting up.
struct Write {
    begin: i64,
    sub: i64,
    events: Vec<Event>,
}

impl Write {
    fn main(&self) -> i64 {
        self.begin + 1
    }

    /// The revision reads inside the transaction see (etcd's `storeTxnWrite.Rev` + changes).
    fn read_rev(&self) -> i64 {
        if self.sub > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }
}

impl KeySpace {
    /// An empty keyspace at revision 1, never compacted (etcd's `NewStore`).
    pub fn new() -> KeySpace {
        KeySpace {
            rev: 1,
            compact_rev: -1,
            keys: OrdMap::new(),
            by_rev: imbl::Vector::new(),
            leases: OrdMap::new(),
            alarms: OrdSet::new(),
            bytes: 0,
            pops: 0,
            packed_keys: 0,
            repacks: Arc::default(),
            repacking: Catching::default(),
        }
    }

    /// What the keyspace holds, in bytes (see the module's documentation): the size the
    /// space quota bounds.
    pub fn size_bytes(&self) -> u64 {
        self.bytes
    }

    /// The raised alarms: (member, etcd `AlarmType`), in order.
    pub fn alarms(&self) -> impl Iterator<Item = (u64, i32)> + '_ {
        self.alarms.iter().copied()
    }

    /// Whether NOSPACE is raised (writes that add data are refused).
    pub fn out_of_space(&self) -> bool {
        self.alarms.iter().any(|(_, a)| *a == ALARM_NOSPACE)
    }

    /// Whether the CORRUPT alarm is raised (by any member): etcd's corrupt applier then
    /// refuses every KV request (reads too), compactions and lease grants and revokes.
    pub fn corrupt(&self) -> bool {
        self.alarms.iter().any(|(_, a)| *a == ALARM_CORRUPT)
    }

    /// `bytes` counted from scratch (what loading an image does; tests check the running
    /// count against it).
    pub fn recount_bytes(&self) -> u64 {
        let records: u64 = self.keys.iter().map(|(k, h)| record_bytes(k, h.records.len(), h.value_bytes())).sum();
        records + self.leases.len() as u64 * LEASE_OVERHEAD
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// The revision of the last compaction (-1 if none).
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    /// Whether nothing was ever written (revision 1, no compaction, no key, no lease): such a
    /// keyspace is left out of snapshots.
    pub fn is_pristine(&self) -> bool {
        self.rev == 1
            && self.compact_rev == -1
            && self.keys.is_empty()
            && self.leases.is_empty()
            && self.alarms.is_empty()
    }

    /// Keys live now.
    pub fn key_count(&self) -> usize {
        self.keys.values().filter(|h| h.latest().is_some()).count()
    }

    fn span(&self, span: Span<'_>) -> Box<dyn Iterator<Item = (&Key, &Arc<History>)> + '_> {
        match span {
            Span::One(key) => Box::new(self.keys.get_key_value(key).into_iter()),
            Span::From(key) => Box::new(self.keys.range::<_, [u8]>((Bound::Included(key), Bound::Unbounded))),
            Span::Between(key, end) if end > key => {
                Box::new(self.keys.range::<_, [u8]>((Bound::Included(key), Bound::Excluded(end))))
            }
            Span::Between(..) => Box::new(std::iter::empty()),
        }
    }

    /// KV.Range (§3), at the current revision `cur` (inside a write transaction: what it
    /// has written so far).
    fn range_at(&self, r: &RangeRequest, cur: i64) -> Result<RangeResponse, MvccError> {
        if r.revision > cur {
            return Err(MvccError::FutureRev);
        }
        let rev = if r.revision <= 0 { cur } else { r.revision };
        if rev < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        // As etcd: a sort order or a filter fetches every key, then sorts and cuts; a sort
        // target alone (sorted ascending, below) sorts only the first `limit + 1` keys.
        let filtered = r.sort_order != SortOrder::None
            || r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        let fetch = if r.limit > 0 && !filtered { r.limit.saturating_add(1) as usize } else { usize::MAX };
        let mut count = 0i64;
        let mut kvs = Vec::new();
        for (key, h) in self.span(Span::new(&r.key, &r.range_end)) {
            if let Some(rec) = h.at(rev) {
                count += 1;
                if !r.count_only && kvs.len() < fetch {
                    kvs.push(rec.kv(key));
                }
            }
        }
        kvs.retain(|kv| {
            !((r.max_mod_revision != 0 && kv.mod_revision > r.max_mod_revision)
                || (r.min_mod_revision != 0 && kv.mod_revision < r.min_mod_revision)
                || (r.max_create_revision != 0 && kv.create_revision > r.max_create_revision)
                || (r.min_create_revision != 0 && kv.create_revision < r.min_create_revision))
        });
        let order = match (r.sort_order, r.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        if order != SortOrder::None {
            let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
                match r.sort_target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                }
            };
            // Stable, ties in key order either way (what etcd's sort gives small answers).
            if order == SortOrder::Descend {
                kvs.sort_by(|a, b| by(b, a));
            } else {
                kvs.sort_by(by);
            }
        }
        let mut more = false;
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value = empty();
            }
        }
        Ok(RangeResponse { revision: cur, kvs, more, count })
    }

    /// KV.Range on its own (a read: no change).
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.range_at(r, self.rev)
    }

    fn begin(&self) -> Write {
        Write { begin: self.rev, sub: 0, events: Vec::new() }
    }

    /// Ends a write transaction: the revision rises once if anything changed.
    fn end(&mut self, w: Write) -> Vec<Event> {
        if w.sub > 0 {
            self.rev = w.begin + 1;
        }
        w.events
    }

    /// Adds `rec` to `key`'s history (dropping what the last compaction left of it first).
    fn push_record(&mut self, key: &Key, rec: Record) {
        let compact = self.compact_rev;
        let h = Arc::make_mut(self.keys.entry(key.clone()).or_default());
        let mut gone = 0;
        if compact > 0 {
            let (_, n, values) = h.prune(compact);
            gone = record_bytes(key, n, values);
        }
        let added = record_bytes(key, 1, rec.value.len());
        h.records.push_back(rec);
        self.bytes = self.bytes.saturating_sub(gone) + added;
    }

    fn detach(&mut self, lease: i64, key: &Key) {
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.remove(key);
            }
        }
    }

    /// Writes `key` (the lease is known to exist, or 0).
    fn put_key(&mut self, w: &mut Write, key: &[u8], value: Option<Vec<u8>>, lease: Option<i64>) -> Option<KeyValue> {
        let key = Key::new(key);
        let prev = self.keys.get(&key).and_then(|h| h.latest().cloned());
        let value = match (value, &prev) {
            (Some(v), _) => Value::from(v),
            (None, Some(p)) => p.value.get().unwrap_or_else(empty),
            // ignore_value on a key deleted earlier in the same transaction (etcd panics).
            (None, None) => empty(),
        };
        let lease = match (lease, &prev) {
            (Some(l), _) => l,
            (None, Some(p)) => p.lease,
            (None, None) => 0,
        };
        let main = w.main();
        let rec = Record {
            main,
            sub: w.sub,
            create: prev.as_ref().map_or(main, |p| p.create),
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
            value: Slot::new(Some(value)),
        };
        let prev_kv = prev.as_ref().map(|p| p.kv(&key));
        if let Some(p) = &prev {
            self.detach(p.lease, &key);
        }
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(key.clone());
            }
        }
        let kv = rec.kv(&key);
        self.push_record(&key, rec);
        self.by_rev.push_back((main, w.sub, key));
        w.sub += 1;
        w.events.push(Event { kind: EventKind::Put, kv, prev_kv: prev_kv.clone() });
        prev_kv
    }

    /// Deletes the live keys in `span`, in key order; returns them as they were.
    fn delete_keys(&mut self, w: &mut Write, span: Span<'_>) -> Vec<KeyValue> {
        let live: Vec<(Key, Record)> =
            self.span(span).filter_map(|(k, h)| h.latest().map(|r| (k.clone(), r.clone()))).collect();
        let mut prevs = Vec::with_capacity(live.len());
        for (key, prev) in live {
            let main = w.main();
            self.detach(prev.lease, &key);
            let tomb = Record { main, sub: w.sub, create: 0, version: 0, lease: 0, value: Slot::new(None) };
            self.push_record(&key, tomb);
            self.by_rev.push_back((main, w.sub, key.clone()));
            w.sub += 1;
            let prev_kv = prev.kv(&key);
            let kv = KeyValue { key: key.clone(), mod_revision: main, value: empty(), ..KeyValue::default() };
            w.events.push(Event { kind: EventKind::Delete, kv, prev_kv: Some(prev_kv.clone()) });
            prevs.push(prev_kv);
        }
        prevs
    }

    /// KV.Put (§4). Requests are checked first with [`super::check_put`].
    pub fn put(&mut self, p: &PutRequest) -> Result<(PutResponse, Vec<Event>), MvccError> {
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        self.check_ignores(p)?;
        let mut w = self.begin();
        let resp = self.put_op(&mut w, p);
        Ok((resp, self.end(w)))
    }

    fn check_ignores(&self, p: &PutRequest) -> Result<(), MvccError> {
        if (p.ignore_value || p.ignore_lease) && self.keys.get(p.key.as_slice()).and_then(|h| h.latest()).is_none() {
            return Err(MvccError::KeyNotFound);
        }
        Ok(())
    }

    fn put_op(&mut self, w: &mut Write, p: &PutRequest) -> PutResponse {
        let value = (!p.ignore_value).then(|| p.value.clone());
        let lease = (!p.ignore_lease).then_some(p.lease);
        let prev = self.put_key(w, &p.key, value, lease);
        PutResponse { revision: w.main(), prev_kv: if p.prev_kv { prev } else { None } }
    }

    fn delete_op(&mut self, w: &mut Write, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let prevs = self.delete_keys(w, Span::new(&d.key, &d.range_end));
        DeleteRangeResponse {
            revision: w.read_rev(),
            deleted: prevs.len() as i64,
            prev_kvs: if d.prev_kv { prevs } else { Vec::new() },
        }
    }

    /// KV.DeleteRange (§5).
    pub fn delete_range(&mut self, d: &DeleteRangeRequest) -> (DeleteRangeResponse, Vec<Event>) {
        let mut w = self.begin();
        let resp = self.delete_op(&mut w, d);
        (resp, self.end(w))
    }

    /// One compare against the keyspace as it is (§6.2).
    fn compare(&self, c: &Compare) -> bool {
        let live: Vec<KeyValue> =
            self.span(Span::new(&c.key, &c.range_end)).filter_map(|(k, h)| h.latest().map(|r| r.kv(k))).collect();
        if live.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            return compare_kv(c, &KeyValue::default());
        }
        live.iter().all(|kv| compare_kv(c, kv))
    }

    /// The branch each transaction on the chosen path takes, depth first, all decided
    /// against the state before the transaction (etcd's `compareToPath`).
    fn choose(&self, t: &TxnRequest, path: &mut Vec<bool>) {
        let ok = t.compare.iter().all(|c| self.compare(c));
        path.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let RequestOp::Txn(n) = op {
                self.choose(n, path);
            }
        }
    }

    /// etcd's `checkRequests` on the chosen path: puts first, then ranges.
    fn check_path(&self, t: &TxnRequest, path: &[bool]) -> Result<(), MvccError> {
        let mut puts = Vec::new();
        let mut ranges = Vec::new();
        let mut i = 0;
        collect_path(t, path, &mut i, &mut puts, &mut ranges);
        for p in puts {
            self.check_ignores(p)?;
            if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                return Err(MvccError::LeaseNotFound);
            }
        }
        for r in ranges {
            if r.revision != 0 {
                if r.revision > self.rev {
                    return Err(MvccError::FutureRev);
                }
                if r.revision < self.compact_rev {
                    return Err(MvccError::Compacted);
                }
            }
        }
        Ok(())
    }

    /// KV.Txn (§6). Requests are checked first with [`super::check_txn`]. An error leaves
    /// the keyspace unchanged.
    pub fn txn(&mut self, t: &TxnRequest) -> Result<(TxnResponse, Vec<Event>), MvccError> {
        let mut path = Vec::new();
        self.choose(t, &mut path);
        self.check_path(t, &path)?;
        let mut w = self.begin();
        let mut at = 0;
        let mut resp = self.run(&mut w, t, &path, &mut at);
        resp.revision = w.read_rev();
        Ok((resp, self.end(w)))
    }

    fn run(&mut self, w: &mut Write, t: &TxnRequest, path: &[bool], at: &mut usize) -> TxnResponse {
        let ok = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        let mut responses = Vec::new();
        for op in if ok { &t.success } else { &t.failure } {
            responses.push(match op {
                RequestOp::Range(r) => {
                    // Checked against the state before the transaction (check_path), so
                    // only an impossible revision could fail here; answer empty then.
                    let cur = w.read_rev();
                    ResponseOp::Range(
                        self.range_at(r, cur).unwrap_or(RangeResponse { revision: cur, ..RangeResponse::default() }),
                    )
                }
                RequestOp::Put(p) => ResponseOp::Put(self.put_op(w, p)),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_op(w, d)),
                RequestOp::Txn(n) => ResponseOp::Txn(self.run(w, n, path, at)),
            });
        }
        TxnResponse { revision: 0, succeeded: ok, responses }
    }

    /// KV.Compact (§7): reads before `rev` fail from now on; the records only they could
    /// reach go in [`KeySpace::prune_step`]s.
    pub fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.rev {
            return Err(MvccError::FutureRev);
        }
        self.compact_rev = rev;
        Ok(())
    }

    /// Drops up to `budget` records (revisions) that the last compaction made unreachable;
    /// true when none are left (etcd's `physical` compaction is then done).
    pub fn prune_step(&mut self, budget: usize) -> bool {
        for _ in 0..budget {
            if self.pruned() {
                return true;
            }
            let Some((_, _, key)) = self.by_rev.pop_front() else {
                return true;
            };
            self.pops += 1;
            let compact = self.compact_rev;
            let (gone, n, values) = match self.keys.get_mut(&key) {
                Some(h) => Arc::make_mut(h).prune(compact),
                None => (false, 0, 0),
            };
            self.bytes = self.bytes.saturating_sub(record_bytes(&key, n, values));
            if gone {
                self.keys.remove(&key);
            }
        }
        self.pruned()
    }

    /// Moves values into `image`, a durable snapshot's payload written from this keyspace
    /// (a frozen clone) by [`KeySpace::write_image_noting`] with `offsets`: up to `budget`
    /// values from `at` on become views of their bytes there, in this keyspace and in every
    /// keyspace sharing the record (the live one), so that the heap no longer holds them and
    /// an older file they were views of can go. Each view is compared with the value first;
    /// at the first that differs the walk stops ([`Adopting::differs`]). Returns the values
    /// replaced (to be dropped on the caller's thread) and whether the walk is done.
    pub fn adopt_step(&self, image: &Value, offsets: &[u64], at: &mut Adopting, budget: usize) -> (Vec<Value>, bool) {
        let mut replaced = Vec::with_capacity(budget.min(offsets.len()));
        let from = match &at.last_key {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Unbounded,
        };
        let mut visited = 0;
        for (key, h) in self.keys.range((from, Bound::Unbounded)) {
            if visited >= budget {
                return (replaced, false);
            }
            for r in h.records.iter() {
                visited += 1;
                let Some(len) = r.value.value_len() else { continue };
                let start = offsets.get(at.next).and_then(|&o| usize::try_from(o).ok());
                at.next += 1;
                let Some(view) = start.and_then(|s| image.get(s..s.checked_add(len)?).map(|b| image.slice_ref(b)))
                else {
                    continue;
                };
                match r.value.relocate(view) {
                    Relocated::Moved(old) => {
                        at.moved += 1;
                        replaced.push(old);
                    }
                    Relocated::Tomb => {}
                    Relocated::Differs => {
                        // Offsets that do not match the file, or a file that does not hold
                        // what was written: nothing more moves (what moved was compared).
                        at.differs = Some(at.next - 1);
                        return (replaced, true);
                    }
                }
            }
            at.last_key = Some(key.clone());
        }
        (replaced, true)
    }

    /// On a frozen clone (a snapshot's, on the snapshot thread): builds its key map again
    /// with full leaves and hands it to the live keyspace it was cloned from, which carries
    /// the changes made since into it and takes it ([`KeySpace::repack_step`]). Keys put in
    /// order (new keys after the others) leave the map's leaves half empty, as the map splits
    /// a full leaf in half: 16.5 bytes a key more. Done only once the map has grown by an
    /// eighth since it was last built full, so that a growing keyspace is rebuilt a bounded
    /// number of times over.
    pub fn repack(&self) {
        let n = self.keys.len();
        if n < REPACK_MIN_KEYS || n < self.packed_keys.saturating_add(self.packed_keys / 8) {
            return;
        }
        let entries = self.keys.iter().map(|(k, h)| Some((k.clone(), h.clone()))).collect();
        let repack = Repack { keys: super::image::full_map(entries), rev: self.rev, pops: self.pops, at: None };
        *self.repacks.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::new(repack));
        self.repacks.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a repacked key map waits to be caught up and taken.
    pub fn repack_pending(&self) -> bool {
        self.repacking.0.is_some() || self.repacks.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A step of taking a repacked key map ([`KeySpace::repack`]): up to `budget` changes
    /// made since its clone was frozen are carried into it (every change to a key is in the
    /// revision queue, but for a compaction's pruning: after one, the repack is dropped);
    /// once it has them all, it becomes the key map. Returns whether one is still pending.
    pub fn repack_step(&mut self, budget: usize) -> bool {
        if self.repacking.0.is_none() {
            if !self.repacks.ready.swap(false, std::sync::atomic::Ordering::AcqRel) {
                return false;
            }
            self.repacking.0 = self.repacks.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        }
        let Some(mut r) = self.repacking.0.take() else { return false };
        if r.pops != self.pops {
            return false;
        }
        // The first change after the last carried in (or after the clone's revision).
        let after = r.at.unwrap_or((r.rev, i64::MAX));
        let first = self
            .by_rev
            .binary_search_by(|(main, sub, _)| if (*main, *sub) <= after { Ordering::Less } else { Ordering::Greater })
            .unwrap_or_else(|i| i);
        for (n, (main, sub, key)) in self.by_rev.focus().narrow(first..).into_iter().enumerate() {
            if n == budget {
                self.repacking.0 = Some(r);
                return true;
            }
            match self.keys.get(key) {
                Some(h) => r.keys.insert(key.clone(), h.clone()),
                None => r.keys.remove(key),
            };
            r.at = Some((*main, *sub));
        }
        self.packed_keys = r.keys.len();
        self.keys = r.keys;
        false
    }

    /// Whether the last compaction's records are all dropped.
    pub fn pruned(&self) -> bool {
        self.by_rev.front().is_none_or(|(main, _, _)| *main >= self.compact_rev)
    }

    /// Every change at revisions `from..=to` to keys in `key`/`range_end` (as a Range names
    /// them), in revision order, each with the key before it when that is still held. Err
    /// with the compaction's revision when `from` is before it (a watch is then canceled).
    pub fn events(&self, from: i64, to: i64, key: &[u8], range_end: &[u8]) -> Result<Vec<Event>, i64> {
        if from < self.compact_rev {
            return Err(self.compact_rev);
        }
        let span = Span::new(key, range_end);
        let mut out = Vec::new();
        // The first record at `from` or later (revisions are unique: `Err` is where it goes).
        let first =
            self.by_rev.binary_search_by(|(main, _, _)| main.cmp(&from).then(Ordering::Greater)).unwrap_or_else(|i| i);
        for (main, sub, k) in self.by_rev.focus().narrow(first..) {
            let (main, sub) = (*main, *sub);
            if main > to {
                break;
            }
            if !span.contains(k) {
                continue;
            }
            let Some(h) = self.keys.get(k) else { continue };
            let Ok(i) = h.records.binary_search_by(|r| (r.main, r.sub).cmp(&(main, sub))) else { continue };
            let Some(rec) = h.records.get(i) else { continue };
            let prev_kv =
                i.checked_sub(1).and_then(|j| h.records.get(j)).filter(|p| !p.value.is_tomb()).map(|p| p.kv(k));
            let (kind, kv) = match rec.value.get() {
                Some(_) => (EventKind::Put, rec.kv(k)),
                None => (
                    EventKind::Delete,
                    KeyValue { key: k.clone(), mod_revision: main, value: empty(), ..KeyValue::default() },
                ),
            };
            out.push(Event { kind, kv, prev_kv });
        }
        Ok(out)
    }

    /// LeaseGrant (§8.1): `id` is not 0 (the leader chose one before proposing); the TTL is
    /// raised to `min_ttl`. Returns the TTL granted.
    pub fn lease_grant(&mut self, id: i64, ttl: i64, min_ttl: i64) -> Result<i64, MvccError> {
        if id == 0 {
            return Err(MvccError::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(MvccError::LeaseExists);
        }
        let ttl = ttl.max(min_ttl);
        self.leases.insert(id, Lease { ttl, keys: OrdSet::new() });
        self.bytes += LEASE_OVERHEAD;
        Ok(ttl)
    }

    /// LeaseRevoke (§8.2): deletes the lease's keys in one revision, in key order.
    pub fn lease_revoke(&mut self, id: i64) -> Result<(i64, Vec<Event>), MvccError> {
        let lease = self.leases.remove(&id).ok_or(MvccError::LeaseNotFound)?;
        self.bytes = self.bytes.saturating_sub(LEASE_OVERHEAD);
        let mut w = self.begin();
        for key in lease.keys.iter() {
            self.delete_keys(&mut w, Span::One(key));
        }
        let events = self.end(w);
        Ok((self.rev, events))
    }

    /// Maintenance.Alarm: raises or clears (member, alarm); returns what changed.
    pub fn alarm(&mut self, activate: bool, member: u64, alarm: i32) -> Vec<(u64, i32)> {
        // As etcd: NONE is no alarm to raise or clear.
        if alarm == 0 {
            return Vec::new();
        }
        let changed = if activate {
            self.alarms.insert((member, alarm)).is_none()
        } else {
            self.alarms.remove(&(member, alarm)).is_some()
        };
        // etcd answers an activation with the alarm even when it was already raised.
        if changed || activate {
            vec![(member, alarm)]
        } else {
            Vec::new()
        }
    }

    /// Whether NOSPACE refuses `txn` (etcd's capped applier: puts, transactions with a put
    /// in either branch's top level, lease grants).
    fn capped(&self, txn: &EtcdTxn) -> bool {
        let put = |ops: &[RequestOp]| ops.iter().any(|op| matches!(op, RequestOp::Put(_)));
        self.out_of_space()
            && match txn {
                EtcdTxn::Put(_) | EtcdTxn::LeaseGrant { .. } => true,
                EtcdTxn::Txn(t) => put(&t.success) || put(&t.failure),
                _ => false,
            }
    }

    /// Applies a write from the log: the one entry point of the replicated state machine.
    pub fn apply(&mut self, txn: &EtcdTxn) -> EtcdApplied {
        if self.corrupt() && !matches!(txn, EtcdTxn::Alarm { .. }) {
            return EtcdApplied { result: Err(MvccError::Corrupt), events: Vec::new() };
        }
        if self.capped(txn) {
            return EtcdApplied { result: Err(MvccError::NoSpace), events: Vec::new() };
        }
        let (result, events) = match txn {
            EtcdTxn::Put(p) => match self.put(p) {
                Ok((r, ev)) => (Ok(EtcdResponse::Put(r)), ev),
                Err(e) => (Err(e), Vec::new()),
            },
            EtcdTxn::DeleteRange(d) => {
                let (r, ev) = self.delete_range(d);
                (Ok(EtcdResponse::DeleteRange(r)), ev)
            }
            EtcdTxn::Txn(t) => match self.txn(t) {
                Ok((r, ev)) => (Ok(EtcdResponse::Txn(r)), ev),
                Err(e) => (Err(e), Vec::new()),
            },
            EtcdTxn::Compact { revision } => {
                (self.compact(*revision).map(|()| EtcdResponse::Compact { revision: self.rev }), Vec::new())
            }
            EtcdTxn::LeaseGrant { id, ttl, min_ttl } => (
                self.lease_grant(*id, *ttl, *min_ttl).map(|ttl| EtcdResponse::LeaseGrant {
                    id: *id,
                    ttl,
                    revision: self.rev,
                }),
                Vec::new(),
            ),
            EtcdTxn::LeaseRevoke { id } => match self.lease_revoke(*id) {
                Ok((revision, ev)) => (Ok(EtcdResponse::LeaseRevoke { revision }), ev),
                Err(e) => (Err(e), Vec::new()),
            },
            EtcdTxn::Alarm { activate, member, alarm } => {
                let alarms = self.alarm(*activate, *member, *alarm);
                (Ok(EtcdResponse::Alarm { alarms, revision: self.rev }), Vec::new())
            }
        };
        EtcdApplied { result, events }
    }

    /// Applies a write as the log holds it (validated in place by `Transaction::access`).
    /// Copying it out of the archive cannot fail for a validated one; if it ever did, every
    /// server would fail alike, and the error says why.
    pub fn apply_archived(&mut self, txn: &ArchivedEtcdTxn) -> Result<EtcdApplied, String> {
        let owned = rkyv::deserialize::<EtcdTxn, rkyv::rancor::Error>(txn).map_err(|e| e.to_string())?;
        Ok(self.apply(&owned))
    }

    /// A lease's TTL and keys, if it exists.
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.leases.get(&id).map(|l| LeaseInfo { id, ttl: l.ttl, keys: l.keys.iter().cloned().collect() })
    }

    /// Every lease, in ID order, with its granted TTL.
    pub fn leases(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.leases.iter().map(|(id, l)| (*id, l.ttl))
    }
}

/// The puts and ranges of the chosen path, depth first.
fn collect_path<'a>(
    t: &'a TxnRequest,
    path: &[bool],
    at: &mut usize,
    puts: &mut Vec<&'a PutRequest>,
    ranges: &mut Vec<&'a RangeRequest>,
) {
    let ok = path.get(*at).copied().unwrap_or(false);
    *at += 1;
    for op in if ok { &t.success } else { &t.failure } {
        match op {
            RequestOp::Put(p) => puts.push(p),
            RequestOp::Range(r) => ranges.push(r),
            RequestOp::DeleteRange(_) => {}
            RequestOp::Txn(n) => collect_path(n, path, at, puts, ranges),
        }
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.as_ref().cmp(v.as_slice()),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}
