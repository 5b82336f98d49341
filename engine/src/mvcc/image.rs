//! The keyspace's snapshot image: a flat little-endian format written record by record from
//! a frozen keyspace, and read back by a push loader as it arrives (a SNAP), like the data
//! tree's (`tree/image.rs`). Two servers with the same keyspace write the same bytes.
//!
//! ```text
//! "BETCDIMG" version:u32 revision:i64 compact_revision:i64
//! leases:u64 { id:i64 ttl:i64 }
//! (version 2 only) alarms:u64 { member:u64 alarm:i32 }
//! keys:u64   { key_len:u32 key records:u32
//!              { main:i64 sub:i64 create:i64 version:i64 lease:i64 value_len:u32 value } }
//!            (value_len u32::MAX: a tombstone, no bytes)
//! ```
//!
//! A keyspace with no alarm raised is written as version 1, which has no alarm list (so the
//! image of such a keyspace is what it was before alarms existed); one with alarms as
//! version 2. Every length, order and reference is checked: a damaged image is an error,
//! never a panic.

use std::io::Write;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use super::keyspace::{record_bytes, History, KeySpace, Lease, Record, Records, Revision, Slot, LEASE_OVERHEAD};
use super::types::{Key, Value};
use crate::le::Cursor;

/// The image's first bytes.
pub const MAGIC: &[u8; 8] = b"BETCDIMG";
/// Without alarms.
const VERSION: u32 = 1;
/// With alarms.
const VERSION_ALARMS: u32 = 2;
const TOMBSTONE: u32 = u32::MAX;

/// Bytes that are not a valid keyspace image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid etcd keyspace image: {0}")]
pub struct KeySpaceImageError(String);

impl KeySpace {
    /// Writes the keyspace's image to `out` as it goes (the keyspace is a cheap clone, so a
    /// snapshot writes a frozen one while the live one moves on).
    pub fn write_image<W: Write + ?Sized>(&self, out: &mut W) -> std::io::Result<()> {
        self.write_image_noting(out, None)
    }

    /// As [`KeySpace::write_image`], noting in `offsets` where in the image each value's
    /// bytes are, in the order [`KeySpace::adopt_step`] walks them (keys, then records, in
    /// order; tombstones have none).
    pub fn write_image_noting<W: Write + ?Sized>(
        &self,
        out: &mut W,
        mut offsets: Option<&mut Vec<u64>>,
    ) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(4096);
        // Bytes of the image already handed to `out`.
        let mut flushed = 0u64;
        buf.extend_from_slice(MAGIC);
        let version = if self.alarms.is_empty() { VERSION } else { VERSION_ALARMS };
        buf.extend_from_slice(&version.to_le_bytes());
        buf.extend_from_slice(&self.rev.to_le_bytes());
        buf.extend_from_slice(&self.compact_rev.to_le_bytes());
        buf.extend_from_slice(&(self.leases.len() as u64).to_le_bytes());
        for (id, l) in self.leases.iter() {
            buf.extend_from_slice(&id.to_le_bytes());
            buf.extend_from_slice(&l.ttl.to_le_bytes());
        }
        if version == VERSION_ALARMS {
            buf.extend_from_slice(&(self.alarms.len() as u64).to_le_bytes());
            for (member, alarm) in self.alarms.iter() {
                buf.extend_from_slice(&member.to_le_bytes());
                buf.extend_from_slice(&alarm.to_le_bytes());
            }
        }
        buf.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        for (key, h) in self.keys.iter() {
            if buf.len() >= 1 << 16 {
                out.write_all(&buf)?;
                flushed += buf.len() as u64;
                buf.clear();
            }
            buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
            buf.extend_from_slice(key);
            buf.extend_from_slice(&(h.records.len() as u32).to_le_bytes());
            for r in h.records.iter() {
                for v in [r.main, r.sub, r.create, r.version, r.lease] {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                r.value.with(|value| match value {
                    Some(v) => {
                        buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
                        if let Some(offsets) = offsets.as_deref_mut() {
                            offsets.push(flushed + buf.len() as u64);
                        }
                        buf.extend_from_slice(v);
                    }
                    None => buf.extend_from_slice(&TOMBSTONE.to_le_bytes()),
                });
            }
        }
        out.write_all(&buf)
    }

    /// The image of the keyspace in memory.
    pub fn to_image(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail (short of memory, which aborts).
        let written = self.write_image(&mut out);
        debug_assert!(written.is_ok());
        out
    }

    /// Rebuilds a keyspace from a whole image.
    pub fn from_image(bytes: &[u8]) -> Result<KeySpace, KeySpaceImageError> {
        let mut loader = KeySpaceLoader::new();
        let used = loader.push(bytes)?;
        if used != bytes.len() {
            return Err(KeySpaceImageError(format!("{} bytes after the image", bytes.len() - used)));
        }
        loader.finish()
    }
}

enum Stage {
    Header,
    Leases { left: u64 },
    AlarmCount,
    Alarms { left: u64 },
    KeyCount,
    Keys { left: u64 },
    Done,
    Failed(String),
}

/// A keyspace rebuilt from its image as the image arrives in pieces of any size: each whole
/// record is taken at once, so what is held beyond the keyspace being built is one key's
/// records and the piece being read.
pub struct KeySpaceLoader {
    pending: Vec<u8>,
    stage: Stage,
    ks: KeySpace,
    last_key: Option<Key>,
    version: u32,
    /// The whole image, when it is a mapped file: values read from it are views of it, not
    /// copies (see [`KeySpaceLoader::backed_by`]).
    backing: Option<Value>,
    /// Every record's revision and key, as read.
    revisions: Vec<Revision>,
    /// Every key and its history, as read (in key order): the key map is built from them
    /// once all are read ([`full_map`]).
    entries: Vec<Option<(Key, Arc<History>)>>,
}

/// Records from which a loaded keyspace's revision queue is built on a thread of its own.
const QUEUE_ON_A_THREAD: usize = 1 << 16;

/// The revision queue of records read in key order: sorted by revision, and refused if two
/// records have the same one.
fn revision_queue(mut revisions: Vec<Revision>) -> Result<imbl::Vector<Revision>, String> {
    revisions.sort_unstable_by_key(|(main, sub, _)| (*main, *sub));
    if let Some(w) = revisions.windows(2).find(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1)) {
        return Err(format!("revision ({}, {}) given to two records", w[0].0, w[0].1));
    }
    Ok(revisions.into_iter().collect())
}

/// The fewest bytes a key takes in an image: its length, one byte, its record count and one
/// tombstone record.
const MIN_KEY_BYTES: usize = 4 + 1 + 4 + 5 * 8 + 4;

/// The key map of `entries` (in key order), its leaves full. The map's nodes split in half
/// when full, so inserting keys in order leaves every leaf but the last half empty: 33 bytes
/// a key instead of 16. Inserting every other key first gives leaves of 32 keys each, each
/// spanning the 32 keys left out, which the second pass then adds: every leaf but the last
/// ends full, without a node split in the second pass.
pub(super) fn full_map(mut entries: Vec<Option<(Key, Arc<History>)>>) -> OrdMap<Key, Arc<History>> {
    let mut map = OrdMap::new();
    for first in [0, 1] {
        for (k, h) in entries.iter_mut().skip(first).step_by(2).filter_map(Option::take) {
            map.insert(k, h);
        }
    }
    map
}

impl Default for KeySpaceLoader {
    fn default() -> KeySpaceLoader {
        KeySpaceLoader::new()
    }
}

/// Whether `part` is a part of `whole`'s memory.
pub(super) fn within(whole: &[u8], part: &[u8]) -> bool {
    let (start, end) = (whole.as_ptr() as usize, whole.as_ptr() as usize + whole.len());
    let (p, q) = (part.as_ptr() as usize, part.as_ptr() as usize + part.len());
    start <= p && q <= end
}

impl KeySpaceLoader {
    /// A loader waiting for an image's first bytes.
    pub fn new() -> KeySpaceLoader {
        KeySpaceLoader {
            pending: Vec::new(),
            stage: Stage::Header,
            ks: KeySpace::new(),
            last_key: None,
            version: 0,
            backing: None,
            revisions: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// A loader for pieces of `image` (a snapshot file, mapped): the values it reads in
    /// place are left there, the keyspace holds views of them (no heap copy, nothing read
    /// until asked for). Pieces from anywhere else are copied as with [`KeySpaceLoader::new`].
    pub fn backed_by(image: Value) -> KeySpaceLoader {
        KeySpaceLoader { backing: Some(image), ..KeySpaceLoader::new() }
    }

    /// A value read from `raw`: a view of the backing image when `raw` lies in it, else a
    /// copy.
    fn value(&self, raw: &[u8]) -> Value {
        match &self.backing {
            Some(image) if within(image, raw) => image.slice_ref(raw),
            _ => Value::copy_from_slice(raw),
        }
    }

    /// Whether the whole image has been read.
    pub fn done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Takes the next piece; returns how many of its bytes belong to the image (all of them
    /// until the image ends: the rest is what follows it). An error is final.
    pub fn push(&mut self, bytes: &[u8]) -> Result<usize, KeySpaceImageError> {
        match &self.stage {
            Stage::Failed(why) => return Err(KeySpaceImageError(why.clone())),
            Stage::Done => return Ok(0),
            _ => {}
        }
        if self.pending.is_empty() {
            // Whole records are read straight from `bytes` (a snapshot loads as one piece
            // from its mapped file: copying it first cost a fresh page per 4 KiB of image,
            // 2.3 s for a million keys); only a cut record's start is kept for the next piece.
            return self.push_in_place(bytes);
        }
        self.pending.extend_from_slice(bytes);
        match self.read_pending() {
            Ok(()) if self.done() => {
                // `pending` now holds only what follows the image, all of it from this piece
                // (the image's end is found in the piece that completes its last record).
                let after = std::mem::take(&mut self.pending).len();
                Ok(bytes.len().saturating_sub(after))
            }
            Ok(()) => Ok(bytes.len()),
            Err(why) => {
                self.stage = Stage::Failed(why.clone());
                self.pending = Vec::new();
                Err(KeySpaceImageError(why))
            }
        }
    }

    /// [`KeySpaceLoader::push`] with nothing pending.
    fn push_in_place(&mut self, bytes: &[u8]) -> Result<usize, KeySpaceImageError> {
        let mut c = Cursor::new(bytes);
        let result = self.read(&mut c);
        let (read, short) = (c.at, c.short);
        match result {
            Err(why) if !short => {
                self.stage = Stage::Failed(why.clone());
                return Err(KeySpaceImageError(why));
            }
            _ if self.done() => return Ok(read),
            _ => {}
        }
        self.pending.extend_from_slice(bytes.get(read..).unwrap_or_default());
        Ok(bytes.len())
    }

    #[deny(clippy::indexing_slicing, reason = "decodes bytes from the disk or a leader")]
    fn read_pending(&mut self) -> Result<(), String> {
        let pending = std::mem::take(&mut self.pending);
        let mut c = Cursor::new(&pending);
        let result = self.read(&mut c);
        let read = c.at;
        let short = c.short;
        self.pending = pending;
        match result {
            Err(_) if short => {}
            Err(why) => return Err(why),
            Ok(()) => {}
        }
        self.pending.drain(..read);
        Ok(())
    }

    /// Reads whole records from `c`, leaving `c.at` after the last one read.
    fn read(&mut self, c: &mut Cursor<'_>) -> Result<(), String> {
        loop {
            let start = c.at;
            let step = self.step(c);
            if step.is_err() {
                c.at = start;
            }
            match step {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(why) => return Err(why),
            }
        }
    }

    /// Reads one record; Ok(false) when the image is complete.
    fn step(&mut self, c: &mut Cursor<'_>) -> Result<bool, String> {
        match self.stage {
            Stage::Header => {
                if c.take(8, "magic")? != MAGIC {
                    return Err("not a Baton etcd keyspace image (bad magic)".into());
                }
                let version = c.u32("version")?;
                if version != VERSION && version != VERSION_ALARMS {
                    return Err(format!(
                        "keyspace image format {version}; this build reads {VERSION} and {VERSION_ALARMS}"
                    ));
                }
                self.version = version;
                let rev = c.i64("revision")?;
                let compact_rev = c.i64("compact revision")?;
                if rev < 1 || compact_rev < -1 || compact_rev > rev {
                    return Err(format!("revision {rev} with compaction at {compact_rev}"));
                }
                let left = c.u64("lease count")?;
                self.ks.rev = rev;
                self.ks.compact_rev = compact_rev;
                self.stage = Stage::Leases { left };
            }
            Stage::Leases { left: 0 } if self.version == VERSION_ALARMS => self.stage = Stage::AlarmCount,
            Stage::Leases { left: 0 } => self.stage = Stage::KeyCount,
            Stage::Leases { left } => {
                let id = c.i64("lease id")?;
                let ttl = c.i64("lease ttl")?;
                if self.ks.leases.get_max().is_some_and(|(last, _)| *last >= id) {
                    return Err(format!("lease {id} out of order"));
                }
                self.ks.leases.insert(id, Lease { ttl, keys: OrdSet::new() });
                self.ks.bytes += LEASE_OVERHEAD;
                self.stage = Stage::Leases { left: left - 1 };
            }
            Stage::AlarmCount => {
                let left = c.u64("alarm count")?;
                self.stage = Stage::Alarms { left };
            }
            Stage::Alarms { left: 0 } => self.stage = Stage::KeyCount,
            Stage::Alarms { left } => {
                let member = c.u64("alarm member")?;
                let alarm = c.i32("alarm type")?;
                if self.ks.alarms.get_max().is_some_and(|last| *last >= (member, alarm)) {
                    return Err(format!("alarm ({member}, {alarm}) out of order"));
                }
                self.ks.alarms.insert((member, alarm));
                self.stage = Stage::Alarms { left: left - 1 };
            }
            Stage::KeyCount => {
                let left = c.u64("key count")?;
                // At least a record per key, bounded by what the image could hold (a key
                // takes at least MIN_KEY_BYTES of it), so that a damaged count cannot reserve
                // much; a vector grown by doubling instead copies itself as it goes.
                let bound = match &self.backing {
                    Some(image) => image.len() / MIN_KEY_BYTES,
                    None => 1 << 16,
                };
                let reserve = usize::try_from(left).unwrap_or(0).min(bound);
                self.revisions.reserve(reserve);
                self.entries.reserve(reserve);
                self.stage = Stage::Keys { left };
            }
            Stage::Keys { left: 0 } => {
                let revisions = std::mem::take(&mut self.revisions);
                let entries = std::mem::take(&mut self.entries);
                // A large image's revision queue is built on a second thread while this one
                // builds the key map: each is a tenth of a restart or more, most of it the
                // kernel zeroing fresh pages, which two cores do twice as fast.
                let (keys, by_rev) = if revisions.len() >= QUEUE_ON_A_THREAD {
                    std::thread::scope(|s| {
                        let queue = std::thread::Builder::new()
                            .name("baton-load".into())
                            .spawn_scoped(s, || revision_queue(revisions));
                        let keys = full_map(entries);
                        let by_rev = match queue {
                            Ok(thread) => {
                                thread.join().unwrap_or_else(|_| Err("building the revision queue failed".into()))
                            }
                            // No thread to be had: the queue is built here after all (the
                            // revisions went to the closure that was never run; read them
                            // again from the map).
                            Err(_) => revision_queue(
                                keys.iter()
                                    .flat_map(|(k, h)| h.records.iter().map(|r| (r.main, r.sub, k.clone())))
                                    .collect(),
                            ),
                        };
                        (keys, by_rev)
                    })
                } else {
                    let by_rev = revision_queue(revisions);
                    (full_map(entries), by_rev)
                };
                self.ks.by_rev = by_rev?;
                self.ks.packed_keys = keys.len();
                self.ks.keys = keys;
                self.stage = Stage::Done;
                return Ok(false);
            }
            Stage::Keys { left } => {
                let len = c.u32("key length")? as usize;
                let key = Key::new(c.take(len, "key")?);
                if key.is_empty() || self.last_key.as_ref().is_some_and(|last| *last >= key) {
                    return Err("keys empty or out of order".into());
                }
                let count = c.u32("record count")? as usize;
                if count == 0 {
                    return Err("a key with no record".into());
                }
                let mut records = Records::default();
                let mut value_bytes = 0;
                for _ in 0..count {
                    let main = c.i64("main revision")?;
                    let sub = c.i64("sub revision")?;
                    let create = c.i64("create revision")?;
                    let version = c.i64("version")?;
                    let lease = c.i64("lease")?;
                    let value_len = c.u32("value length")?;
                    let value = if value_len == TOMBSTONE {
                        None
                    } else {
                        value_bytes += value_len as usize;
                        Some(self.value(c.take(value_len as usize, "value")?))
                    };
                    if main > self.ks.rev || records.last().is_some_and(|p| (p.main, p.sub) >= (main, sub)) {
                        return Err(format!("record ({main}, {sub}) out of order"));
                    }
                    records.push_back(Record { main, sub, create, version, lease, value: Slot::new(value) });
                }
                let h = History { records };
                self.ks.bytes += record_bytes(&key, h.records.len(), value_bytes);
                if let Some(live) = h.latest() {
                    if live.lease != 0 {
                        if let Some(l) = self.ks.leases.get_mut(&live.lease) {
                            l.keys.insert(key.clone());
                        }
                    }
                }
                for r in h.records.iter() {
                    self.revisions.push((r.main, r.sub, key.clone()));
                }
                self.entries.push(Some((key.clone(), Arc::new(h))));
                self.last_key = Some(key);
                self.stage = Stage::Keys { left: left - 1 };
            }
            Stage::Done => return Ok(false),
            Stage::Failed(ref why) => return Err(why.clone()),
        }
        Ok(true)
    }

    /// The keyspace, once its whole image has been pushed.
    pub fn finish(self) -> Result<KeySpace, KeySpaceImageError> {
        match self.stage {
            Stage::Done => Ok(self.ks),
            Stage::Failed(why) => Err(KeySpaceImageError(why)),
            _ => Err(KeySpaceImageError("the image ended early".into())),
        }
    }
}
