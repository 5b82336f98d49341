//! The tree's snapshot image: rkyv, nodes in sorted path order (a parent always precedes its
//! children), ACLs numbered by first use. Two servers with the same tree produce the same
//! bytes, so the image's hash is the tree's digest.

use std::collections::{BTreeMap, HashMap};

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::data_tree::{DataTree, SessionInfo};
use super::stat::StatPersisted;
use crate::log::{Acl, Zxid};

#[derive(Archive, Serialize, Deserialize)]
struct TreeImage {
    last_zxid: u64,
    acls: Vec<Vec<Acl>>,
    nodes: Vec<NodeImage>,
    sessions: Vec<SessionImage>,
}

#[derive(Archive, Serialize, Deserialize)]
struct NodeImage {
    path: String,
    data: Vec<u8>,
    acl: u32,
    stat: StatPersisted,
}

#[derive(Archive, Serialize, Deserialize)]
struct SessionImage {
    id: i64,
    timeout_ms: i32,
}

/// A snapshot payload that is not a valid tree image.
#[derive(Debug, thiserror::Error)]
#[error("invalid tree snapshot: {0}")]
pub struct ImageError(String);

impl DataTree {
    /// Serializes the whole tree (znodes, ACLs, sessions, last zxid) for a snapshot.
    pub fn to_image(&self) -> AlignedVec {
        let (nodes, sessions) = self.parts();
        let mut acl_ids: HashMap<*const [Acl], u32> = HashMap::new();
        let mut acls = Vec::new();
        let mut images = Vec::with_capacity(nodes.len());
        for path in self.sorted_paths() {
            // Invariant: sorted_paths lists existing znodes.
            let Some(node) = nodes.get(path) else { continue };
            let key = std::sync::Arc::as_ptr(&node.acl);
            let id = *acl_ids.entry(key).or_insert_with(|| {
                acls.push(node.acl.to_vec());
                (acls.len() - 1) as u32
            });
            images.push(NodeImage { path: path.to_string(), data: node.data.to_vec(), acl: id, stat: node.stat });
        }
        let image = TreeImage {
            last_zxid: self.last_zxid().0,
            acls,
            nodes: images,
            sessions: sessions.iter().map(|(&id, s)| SessionImage { id, timeout_ms: s.timeout_ms }).collect(),
        };
        // Serializing owned data into a growable buffer cannot fail.
        #[allow(clippy::expect_used)]
        rkyv::to_bytes::<rancor::Error>(&image).expect("serializing a tree image cannot fail")
    }

    /// Rebuilds a tree from [`DataTree::to_image`] bytes, validating them first.
    pub fn from_image(bytes: &[u8]) -> Result<DataTree, ImageError> {
        let image = rkyv::access::<ArchivedTreeImage, rancor::Error>(bytes).map_err(|e| ImageError(e.to_string()))?;
        let acls: Vec<Vec<Acl>> = image
            .acls
            .iter()
            .map(|list| {
                list.iter()
                    .map(|a| Acl { perms: a.perms.to_native(), scheme: a.scheme.to_string(), id: a.id.to_string() })
                    .collect()
            })
            .collect();
        let mut nodes = Vec::with_capacity(image.nodes.len());
        for n in image.nodes.iter() {
            let acl = acls
                .get(n.acl.to_native() as usize)
                .cloned()
                .ok_or_else(|| ImageError(format!("node {} names ACL {} of {}", n.path, n.acl, acls.len())))?;
            let stat =
                rkyv::deserialize::<StatPersisted, rancor::Error>(&n.stat).map_err(|e| ImageError(e.to_string()))?;
            nodes.push((n.path.to_string(), n.data.to_vec(), acl, stat));
        }
        let sessions: BTreeMap<i64, SessionInfo> = image
            .sessions
            .iter()
            .map(|s| (s.id.to_native(), SessionInfo { timeout_ms: s.timeout_ms.to_native() }))
            .collect();
        let tree = DataTree::from_parts(nodes, sessions, Zxid(image.last_zxid.to_native())).map_err(ImageError)?;
        Ok(tree)
    }

    /// A hash of the whole tree: equal on two servers exactly when their trees are equal.
    pub fn digest(&self) -> u64 {
        xxh3_64(&self.to_image())
    }
}
