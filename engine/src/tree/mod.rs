//! The data tree: ZooKeeper's data model, applied deterministically from committed entries.
//!
//! - [`DataTree`]: znodes with data, ACL (interned) and Stat; sessions and their ephemerals;
//!   containers and TTL nodes; `apply` returns each operation's result and the changes made
//!   (for watches).
//! - Quotas: a `zookeeper_limits` znode under `/zookeeper/quota` makes a quota root whose
//!   usage the tree keeps in the `zookeeper_stats` beside it ([`DataTree::quota_roots_of`]).
//! - [`path`]: ZooKeeper's path rules.
//! - Snapshots: [`DataTree::to_image`] / [`DataTree::from_image`], byte-identical across
//!   servers with equal trees ([`DataTree::digest`]).

mod data_tree;
mod error;
mod image;
pub mod path;
mod stat;
#[cfg(test)]
mod tests;

pub use data_tree::{
    limit_path, open_acl, Applied, Change, ChangeKind, DataTree, OpResult, QuotaLimits, QuotaUsage, SessionInfo,
    Sessions, TreeView, Znode, LIMIT_NODE, QUOTA_PATH, STAT_NODE,
};
pub use error::ErrorCode;
pub use image::{ImageError, TreeLoader};
pub use stat::{owner_kind, ttl_of_owner, ttl_owner, OwnerKind, Stat, StatPersisted, CONTAINER_OWNER, TTL_MAX_MS};
