//! The tree's snapshot image: a flat little-endian byte format, written and read
//! sequentially. Znodes come in pre-order (a parent before its children, children in their
//! list order), each naming its parent by position, so loading needs no path parsing and
//! rebuilds the same child order. ACLs are numbered by first use. Two servers with the same
//! tree produce the same bytes, so the image's hash is the tree's digest.
//!
//! ```text
//! "BTREEIMG" version:u32 flags:u32 last_zxid:u64
//! acls:u32 { entries:u32 { perms:i32 scheme:str id:str } }
//! sessions:u32 { id:i64 timeout_ms:i32 }
//! nodes:u64 { parent:u32 name_len:u32 data_len:u32 acl:u32
//!             czxid mzxid pzxid ctime mtime:i64 version cversion aversion:i32 owner:i64
//!             name data }            (data_len u32::MAX: null data, no bytes)
//! str = len:u32 bytes
//! ```
//!
//! The snapshot file around it carries the checksum; this layer still checks every length
//! and reference, so a damaged image is an error, never a panic.

use xxhash_rust::xxh3::xxh3_64;

use std::io::Write;

use super::data_tree::{DataTree, ImageBuilder, ImageNode, SessionInfo, Sessions, TreeView};
use super::stat::StatPersisted;
use crate::le::Cursor;
use crate::log::{Acl, SessionId, Zxid};

const MAGIC: &[u8; 8] = b"BTREEIMG";
const VERSION: u32 = 1;
/// A node record's data length for null data.
const NULL_LEN: u32 = u32::MAX;

/// Fixed bytes of a node record before its name and data.
const NODE_FIXED: usize = 4 * 4 + 5 * 8 + 3 * 4 + 8;

/// A snapshot payload that is not a valid tree image.
#[derive(Debug, thiserror::Error)]
#[error("invalid tree snapshot: {0}")]
pub struct ImageError(String);

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// An image's header: everything before the znodes.
struct Header {
    last_zxid: Zxid,
    acls: Vec<Vec<Acl>>,
    sessions: Sessions,
    nodes: u64,
}

impl Header {
    #[deny(clippy::indexing_slicing, reason = "decodes bytes from the disk or a leader")]
    fn read(c: &mut Cursor<'_>) -> Result<Header, String> {
        if c.take(8, "magic")? != MAGIC {
            return Err("not a Baton tree image (bad magic)".into());
        }
        let version = c.u32("version")?;
        if version != VERSION {
            return Err(format!("image format {version}; this build reads {VERSION}"));
        }
        let _flags = c.u32("flags")?;
        let last_zxid = Zxid(c.u64("last zxid")?);
        let acl_count = c.u32("ACL count")? as usize;
        let mut acls = Vec::with_capacity(acl_count.min(c.remaining() / 4));
        for _ in 0..acl_count {
            let entries = c.u32("ACL size")? as usize;
            let mut list = Vec::with_capacity(entries.min(c.remaining() / 12));
            for _ in 0..entries {
                let perms = c.i32("perms")?;
                let scheme = c.str("scheme")?.to_string();
                let id = c.str("id")?.to_string();
                list.push(Acl { perms, scheme, id });
            }
            acls.push(list);
        }
        let session_count = c.u32("session count")? as usize;
        let mut sessions = Sessions::new();
        for _ in 0..session_count {
            let id = c.i64("session id")?;
            let timeout_ms = c.i32("session timeout")?;
            sessions.insert(SessionId(id), SessionInfo { timeout_ms });
        }
        let nodes = c.u64("node count")?;
        Ok(Header { last_zxid, acls, sessions, nodes })
    }
}

/// The next znode record.
#[deny(clippy::indexing_slicing, reason = "decodes bytes from the disk or a leader")]
fn read_node<'a>(c: &mut Cursor<'a>) -> Result<ImageNode<'a>, String> {
    let parent = c.u32("parent")?;
    let name_len = c.u32("name length")? as usize;
    let data_len = c.u32("data length")?;
    let acl = c.u32("acl")?;
    let stat = StatPersisted {
        czxid: c.i64("czxid")?,
        mzxid: c.i64("mzxid")?,
        pzxid: c.i64("pzxid")?,
        ctime: c.i64("ctime")?,
        mtime: c.i64("mtime")?,
        version: c.i32("version")?,
        cversion: c.i32("cversion")?,
        aversion: c.i32("aversion")?,
        ephemeral_owner: c.i64("owner")?,
    };
    let name = c.take(name_len, "name")?;
    let data = if data_len == NULL_LEN { None } else { Some(c.take(data_len as usize, "data")?) };
    Ok(ImageNode { parent, name, data, acl, stat })
}

/// A tree rebuilt from its image as the image arrives in pieces of any size (a SNAP from
/// the leader): each complete znode record is added at once, so the memory beyond the tree
/// being built is one record and the piece being read.
pub struct TreeLoader {
    /// Bytes received and not yet read: less than one record (or the header) after a push.
    pending: Vec<u8>,
    state: LoaderState,
}

enum LoaderState {
    Header,
    Nodes { builder: Box<ImageBuilder>, sessions: Sessions, last_zxid: Zxid, nodes: u64 },
    Failed(String),
}

impl Default for TreeLoader {
    fn default() -> Self {
        TreeLoader::new()
    }
}

impl TreeLoader {
    /// A loader waiting for an image's first bytes.
    pub fn new() -> TreeLoader {
        TreeLoader { pending: Vec::new(), state: LoaderState::Header }
    }

    /// Takes the next piece of the image. An error is final: the image is not valid.
    #[deny(clippy::indexing_slicing, reason = "decodes bytes from a leader")]
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        if let LoaderState::Failed(why) = &self.state {
            return Err(ImageError(why.clone()));
        }
        // Whole records are read straight from `bytes` when nothing is pending (a snapshot
        // loads as one piece from its mapped file: copying it first cost a fresh page per
        // 4 KiB of image); only a cut record's start is kept for the next piece.
        let result = if self.pending.is_empty() {
            self.read(bytes).map(|read| self.pending.extend_from_slice(bytes.get(read..).unwrap_or_default()))
        } else {
            self.pending.extend_from_slice(bytes);
            let pending = std::mem::take(&mut self.pending);
            let result = self.read(&pending);
            self.pending = pending;
            result.map(|read| {
                self.pending.drain(..read);
            })
        };
        if let Err(why) = &result {
            self.state = LoaderState::Failed(why.clone());
            self.pending = Vec::new();
        }
        result.map_err(ImageError)
    }

    /// Reads the whole records at the start of `buf`; returns how many bytes they took.
    fn read(&mut self, buf: &[u8]) -> Result<usize, String> {
        let mut c = Cursor::new(buf);
        if let LoaderState::Header = self.state {
            let header = match Header::read(&mut c) {
                Ok(header) => header,
                Err(_) if c.short => return Ok(0), // the rest of the header is on its way
                Err(why) => return Err(why),
            };
            // The node count sizes the index; a lying count costs no more than the nodes sent.
            let expected = (header.nodes as usize).min(1 << 24);
            let builder = Box::new(ImageBuilder::new(header.acls, expected));
            let (sessions, last_zxid, nodes) = (header.sessions, header.last_zxid, header.nodes);
            self.state = LoaderState::Nodes { builder, sessions, last_zxid, nodes };
        }
        if let LoaderState::Nodes { builder, nodes, .. } = &mut self.state {
            while (builder.count() as u64) < *nodes {
                let start = c.at;
                match read_node(&mut c) {
                    Ok(node) => builder.push(node)?,
                    Err(_) if c.short => {
                        c.at = start; // the rest of this record is on its way
                        break;
                    }
                    Err(why) => return Err(why),
                }
            }
            if builder.count() as u64 == *nodes && c.at < buf.len() {
                return Err(format!("{} bytes after the last znode", buf.len() - c.at));
            }
        }
        Ok(c.at)
    }

    /// The tree, once the whole image has been pushed.
    pub fn finish(self) -> Result<DataTree, ImageError> {
        match self.state {
            LoaderState::Failed(why) => Err(ImageError(why)),
            LoaderState::Header => Err(ImageError("the image ended inside its header".into())),
            LoaderState::Nodes { builder, nodes, .. } if (builder.count() as u64) < nodes => {
                Err(ImageError(format!("the image ended after {} of its {nodes} znodes", builder.count())))
            }
            LoaderState::Nodes { builder, sessions, last_zxid, .. } => {
                (*builder).finish(sessions, last_zxid).map_err(ImageError)
            }
        }
    }
}

impl TreeView {
    /// Writes the image of the view (znodes, ACLs, sessions, last zxid) to `out` as it goes:
    /// no copy of the whole image is made, and the memory beyond the view is a stack as deep
    /// as the tree and the ACL numbering. Two passes over the znodes: ACLs are numbered by
    /// first use before the znodes that name them.
    pub fn write_image<W: Write + ?Sized>(&self, out: &mut W) -> std::io::Result<()> {
        let (acls, acl_numbers) = self.image_acls();
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&self.last_zxid().0.to_le_bytes());
        head.extend_from_slice(&(acls.len() as u32).to_le_bytes());
        for list in &acls {
            head.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for a in list.iter() {
                head.extend_from_slice(&a.perms.to_le_bytes());
                put_str(&mut head, &a.scheme);
                put_str(&mut head, &a.id);
            }
        }
        head.extend_from_slice(&(self.sessions().len() as u32).to_le_bytes());
        for (&id, s) in self.sessions() {
            head.extend_from_slice(&id.as_i64().to_le_bytes());
            head.extend_from_slice(&s.timeout_ms.to_le_bytes());
        }
        head.extend_from_slice(&(self.node_count() as u64).to_le_bytes());
        out.write_all(&head)?;
        let mut failed = Ok(());
        let mut record = Vec::with_capacity(NODE_FIXED + 64);
        self.for_each_image_node(&acl_numbers, |n| {
            if failed.is_err() {
                return;
            }
            record.clear();
            let s = &n.stat;
            // Null data is written as the length u32::MAX (no bytes follow).
            let data_len = n.data.map_or(NULL_LEN, |d| d.len() as u32);
            for v in [n.parent, n.name.len() as u32, data_len, n.acl] {
                record.extend_from_slice(&v.to_le_bytes());
            }
            for v in [s.czxid, s.mzxid, s.pzxid, s.ctime, s.mtime] {
                record.extend_from_slice(&v.to_le_bytes());
            }
            for v in [s.version, s.cversion, s.aversion] {
                record.extend_from_slice(&v.to_le_bytes());
            }
            record.extend_from_slice(&s.ephemeral_owner.to_le_bytes());
            record.extend_from_slice(n.name);
            failed = out.write_all(&record).and_then(|()| out.write_all(n.data.unwrap_or_default()));
        });
        failed
    }
}

impl DataTree {
    /// Serializes the whole tree (znodes, ACLs, sessions, last zxid) for a snapshot, in
    /// memory: [`TreeView::write_image`] of a view taken now.
    pub fn to_image(&self) -> Vec<u8> {
        // Names are at most a few dozen bytes; a close estimate avoids regrowing a buffer the
        // size of the whole tree.
        let size = 64 + self.node_count() * (NODE_FIXED + 16) + self.data_bytes() as usize;
        let mut out = Vec::with_capacity(size);
        // Writing into a Vec cannot fail (short of memory, which aborts).
        let written = self.view().write_image(&mut out);
        debug_assert!(written.is_ok());
        out
    }

    /// Rebuilds a tree from [`DataTree::to_image`] bytes, validating them as it goes.
    pub fn from_image(bytes: &[u8]) -> Result<DataTree, ImageError> {
        let mut c = Cursor::new(bytes);
        let header = Header::read(&mut c).map_err(ImageError)?;
        let expected = (header.nodes as usize).min(c.remaining() / NODE_FIXED);
        let mut builder = ImageBuilder::new(header.acls, expected);
        for _ in 0..header.nodes {
            builder.push(read_node(&mut c).map_err(ImageError)?).map_err(ImageError)?;
        }
        if c.remaining() != 0 {
            return Err(ImageError(format!("{} bytes after the last znode", c.remaining())));
        }
        builder.finish(header.sessions, header.last_zxid).map_err(ImageError)
    }

    /// A hash of the whole tree: equal on two servers exactly when their trees are equal.
    pub fn digest(&self) -> u64 {
        xxh3_64(&self.to_image())
    }
}
