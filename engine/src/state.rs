//! The replicated state as one snapshot: the data tree and etcd's keyspace, both fed by the
//! same log, written into one image and loaded back from it (DESIGN.md: "one snapshot per
//! server that holds both").
//!
//! ```text
//! [ keyspace image ("BETCDIMG" …, see mvcc) ]   only when the keyspace holds anything
//!   tree image ("BTREEIMG" …, see tree)
//! ```
//!
//! The keyspace comes first because both images are written as they are produced and
//! neither knows its length in advance; each ends itself (counts of records), so the loader
//! hands the tree's loader whatever follows the keyspace's end. An image with no keyspace is
//! exactly a tree image, as written before the keyspace existed: old snapshots load, and a
//! server that never served etcd writes the same bytes as before.

use std::sync::Mutex;

use crate::mvcc::{Adopting, KeySpace, KeySpaceLoader, Value, IMAGE_MAGIC};
use crate::tree::{DataTree, TreeLoader, TreeView};

/// A frozen state, written in the background while the live one moves on.
pub struct StateImage {
    /// The tree's copy-on-write view.
    pub tree: TreeView,
    /// The keyspace's clone (persistent maps: a clone costs a reference).
    pub etcd: KeySpace,
    /// Whether writing notes where the keyspace's values go (a snapshot file's image, whose
    /// values the keyspace then adopts: [`StateImage::written`]).
    noting: bool,
    /// Where each of the keyspace's values went in the image written.
    offsets: Mutex<Vec<u64>>,
    /// The durable file's payload and the walk moving the values into it.
    adopting: Option<(Value, Adopting)>,
}

/// Values moved per [`StateImage::release_step`] (a step per batch applied, four per idle
/// tick): each is compared with the file's bytes and swapped, 100-150 ns, so a step holds a
/// batch up by about 0.3 ms, and a million values move in 500 batches (6 s when idle).
const ADOPT_STEP: usize = 2048;

impl StateImage {
    /// The image of `tree` and `etcd`.
    pub fn new(tree: TreeView, etcd: KeySpace) -> StateImage {
        StateImage { tree, etcd, noting: false, offsets: Mutex::default(), adopting: None }
    }

    /// The image is for a snapshot file: writing notes where the keyspace's values go, so
    /// that once the file is durable ([`StateImage::written`]) they become views of it.
    pub fn note_placement(&mut self) {
        self.noting = true;
        // On the snapshot thread too, before the image is written: the key map built again
        // with full leaves, for the live keyspace to take once it has caught up
        // (`KeySpace::repack`). Before, not after: the values' move into the file starts
        // once the image is back on the applying thread, and a repack of a million keys
        // held it up by half a second or more (a fill that ended meanwhile left its values
        // on the heap until they moved at the idle pace).
        self.etcd.repack();
    }

    /// Writes the image to `out` as it goes.
    pub fn write_image<W: std::io::Write + ?Sized>(&self, out: &mut W) -> std::io::Result<()> {
        if !self.etcd.is_pristine() {
            // The keyspace's image is the payload's first part: its offsets are the payload's.
            let mut offsets = self.offsets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            offsets.clear();
            self.etcd.write_image_noting(out, self.noting.then_some(&mut *offsets))?;
        }
        self.tree.write_image(out)
    }

    /// The image written is durable, and `payload` is it (mapped): the keyspace's values
    /// move into it a step at a time on the applying thread ([`StateImage::release_step`]).
    pub fn written(&mut self, payload: Value) {
        if self.noting && !self.etcd.is_pristine() {
            self.adopting = Some((payload, Adopting::default()));
        }
    }

    /// A step of moving values into the file (see [`StateImage::written`]), then of freeing
    /// the image on the calling thread (see `TreeView::release_step`); false when nothing is
    /// left. The keyspace's clone goes once its values have moved.
    pub fn release_step(&mut self) -> bool {
        if let Some((payload, at)) = self.adopting.as_mut() {
            let offsets = self.offsets.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
            // The values replaced (on the heap, allocated by this thread) are freed here.
            let (_replaced, done) = self.etcd.adopt_step(payload, offsets, at, ADOPT_STEP);
            if let Some(value) = at.differs() {
                tracing::error!(
                    value,
                    "a snapshot file does not hold the value written at its place; the keyspace keeps its own copies"
                );
            }
            if done {
                tracing::info!(moved = at.moved(), "the snapshot's values moved into its file");
                self.adopting = None;
                // Their heap copies, freed on this thread, go back to the system now rather
                // than seconds later (up to a snapshot's worth of values: most of the heap).
                crate::alloc::return_freed_now();
                *offsets = Vec::new();
            }
            return true;
        }
        if !self.etcd.is_pristine() {
            self.etcd = KeySpace::new();
        }
        self.tree.release_step()
    }
}

/// Writes the image of a whole state in memory.
pub fn to_image(tree: &DataTree, etcd: &KeySpace) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail (short of memory, which aborts).
    let written = StateImage::new(tree.view(), etcd.clone()).write_image(&mut out);
    debug_assert!(written.is_ok());
    out
}

/// Loads a whole image.
pub fn from_image(bytes: &[u8]) -> Result<(DataTree, KeySpace), String> {
    let mut loader = StateLoader::new();
    loader.push(bytes)?;
    loader.finish()
}

/// Loads a whole image that stays where it is (a mapped snapshot file): the keyspace's
/// values are left in it, as views ([`KeySpaceLoader::backed_by`]).
pub fn from_shared_image(image: &Value) -> Result<(DataTree, KeySpace), String> {
    let mut loader = StateLoader::backed_by(image.clone());
    loader.push(image)?;
    loader.finish()
}

enum Phase {
    /// Fewer than 8 bytes seen: which image comes first is not known yet.
    Sniff(Vec<u8>),
    Etcd(KeySpaceLoader),
    Tree(KeySpace),
    Failed(String),
}

/// The state rebuilt as its image arrives in pieces of any size (a SNAP, a file).
pub struct StateLoader {
    phase: Phase,
    tree: TreeLoader,
    backing: Option<Value>,
}

impl Default for StateLoader {
    fn default() -> StateLoader {
        StateLoader::new()
    }
}

impl StateLoader {
    /// A loader waiting for an image's first bytes.
    pub fn new() -> StateLoader {
        StateLoader { phase: Phase::Sniff(Vec::new()), tree: TreeLoader::new(), backing: None }
    }

    /// A loader for pieces of `image`, which stays in memory (see
    /// [`KeySpaceLoader::backed_by`]).
    pub fn backed_by(image: Value) -> StateLoader {
        StateLoader { backing: Some(image), ..StateLoader::new() }
    }

    /// Takes the next piece. An error is final: the image is not valid.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        let result = self.push_inner(bytes);
        if let Err(why) = &result {
            self.phase = Phase::Failed(why.clone());
        }
        result
    }

    fn push_inner(&mut self, bytes: &[u8]) -> Result<(), String> {
        if let Phase::Sniff(seen) = &mut self.phase {
            // Only the magic's bytes are collected (not the piece: a whole snapshot comes as
            // one, and copying it cost a fresh page per 4 KiB of image at every start).
            let wanted = IMAGE_MAGIC.len().saturating_sub(seen.len()).min(bytes.len());
            let (head, rest) = bytes.split_at(wanted);
            seen.extend_from_slice(head);
            if seen.len() < IMAGE_MAGIC.len() {
                return Ok(());
            }
            let sniffed = std::mem::take(seen);
            self.phase = if sniffed.starts_with(IMAGE_MAGIC) {
                let loader = match &self.backing {
                    Some(image) => KeySpaceLoader::backed_by(image.clone()),
                    None => KeySpaceLoader::new(),
                };
                Phase::Etcd(loader)
            } else {
                Phase::Tree(KeySpace::new())
            };
            if head.len() == sniffed.len() {
                // The magic came whole in this piece: the piece goes on in place.
                return self.push_after_sniff(bytes);
            }
            self.push_after_sniff(&sniffed)?;
            return self.push_after_sniff(rest);
        }
        self.push_after_sniff(bytes)
    }

    fn push_after_sniff(&mut self, bytes: &[u8]) -> Result<(), String> {
        match &mut self.phase {
            Phase::Failed(why) => Err(why.clone()),
            Phase::Sniff(_) => Ok(()),
            Phase::Etcd(loader) => {
                let used = loader.push(bytes).map_err(|e| e.to_string())?;
                if loader.done() {
                    let Phase::Etcd(loader) = std::mem::replace(&mut self.phase, Phase::Tree(KeySpace::new())) else {
                        return Err("loader state changed under it".into());
                    };
                    self.phase = Phase::Tree(loader.finish().map_err(|e| e.to_string())?);
                    let rest = bytes.get(used..).unwrap_or_default();
                    self.tree.push(rest).map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Phase::Tree(_) => self.tree.push(bytes).map_err(|e| e.to_string()),
        }
    }

    /// The tree and the keyspace, once the whole image has been pushed.
    pub fn finish(self) -> Result<(DataTree, KeySpace), String> {
        match self.phase {
            Phase::Tree(etcd) => Ok((self.tree.finish().map_err(|e| e.to_string())?, etcd)),
            Phase::Failed(why) => Err(why),
            Phase::Sniff(_) => Err("the image ended before its first 8 bytes".into()),
            Phase::Etcd(_) => Err("the image ended inside the etcd keyspace".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{CreateTxn, NodeKind, Transaction, Txn};
    use crate::log::{SessionId, Zxid};
    use crate::mvcc::{PutRequest, RangeRequest};
    use crate::tree::open_acl;

    fn tree_with(n: u32) -> DataTree {
        let mut tree = DataTree::new();
        for i in 1..=n {
            let txn = Txn::Create(CreateTxn {
                path: format!("/n{i}"),
                data: vec![i as u8; 3],
                acl: open_acl(),
                kind: NodeKind::Persistent,
                parent_cversion: i as i32,
            });
            let t = Transaction { zxid: Zxid::new(1, i), session_id: SessionId(0), cxid: 0, time_ms: 5, txn };
            let bytes = t.encode();
            tree.apply(Transaction::access(&bytes).expect("valid"));
        }
        tree
    }

    fn all() -> RangeRequest {
        RangeRequest { key: vec![0], range_end: vec![0], ..RangeRequest::default() }
    }

    #[test]
    fn a_state_without_etcd_writes_is_exactly_the_trees_image_and_old_images_load() {
        let tree = tree_with(5);
        let image = to_image(&tree, &KeySpace::new());
        assert_eq!(image, tree.to_image());
        let (back, etcd) = from_image(&image).expect("loads");
        assert_eq!(back.to_image(), tree.to_image());
        assert!(etcd.is_pristine());
    }

    #[test]
    fn both_state_machines_come_back_from_one_image_cut_anywhere() {
        let tree = tree_with(20);
        let mut etcd = KeySpace::new();
        for i in 0..30u8 {
            let p = PutRequest { key: vec![b'k', i % 7], value: vec![i; 5], ..PutRequest::default() };
            etcd.put(&p).expect("put");
        }
        let image = to_image(&tree, &etcd);
        assert!(image.starts_with(IMAGE_MAGIC));
        for cut in [1, 3, 8, 9, 64, 333, image.len()] {
            let mut loader = StateLoader::new();
            for piece in image.chunks(cut) {
                loader.push(piece).expect("a valid image");
            }
            let (t, e) = loader.finish().expect("complete");
            assert_eq!(t.to_image(), tree.to_image(), "cut {cut}");
            assert_eq!(e.range(&all()), etcd.range(&all()), "cut {cut}");
            assert_eq!(e.revision(), 31);
        }
        for len in [0, 5, 20, image.len() / 2, image.len() - 1] {
            assert!(from_image(&image[..len]).is_err(), "cut short at {len}");
        }
        let mut long = image.clone();
        long.push(7);
        assert!(from_image(&long).is_err(), "a byte after the tree");
    }
}
