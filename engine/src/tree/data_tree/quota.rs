//! Quotas as ZooKeeper's `DataTree` keeps them: a `zookeeper_limits` znode at
//! `/zookeeper/quota<R>/zookeeper_limits` makes `R` a **quota root**, and the
//! `zookeeper_stats` beside it holds `R`'s usage, `count=<N>,bytes=<M>`: the znodes of `R`'s
//! subtree, `R` included, and the sum of their data lengths (null data counts 0).
//!
//! The tree rewrites the stats znode's data itself whenever a create, delete or setData
//! changes a root's usage: no version bump, no mzxid, no watch (ZooKeeper's
//! `updateQuotaStat`). Everything here is a function of the tree, so every replica agrees,
//! and a tree loaded from an image recomputes it (`setupQuota`).
//!
//! Where Baton and ZooKeeper 3.8 part (each where ZooKeeper's own numbers drift from the
//! subtree's until a restart recomputes them; Baton keeps them equal to a recount always):
//!
//! - a usage counts every enclosing root: with roots `/a` and `/a/b`, a create under `/a/b`
//!   counts in both (ZooKeeper updates the innermost only; zkCli refuses nested quotas);
//! - a `zookeeper_limits` created after its `zookeeper_stats`, and a client's setData on a
//!   root's `zookeeper_stats`, leave the stats at the recount (ZooKeeper keeps stale or client
//!   data until it restarts);
//! - roots at or under `/zookeeper` are not tracked: their subtrees hold stats znodes, whose
//!   data the tree changes without a write, so no count of them stays true;
//! - a `zookeeper_limits` with children still names a root after a restart (ZooKeeper's
//!   reload looks at leaves only).

use std::collections::HashMap;

use super::{DataTree, NONE};
use crate::tree::path::{name, parent};

/// Where quota znodes live.
pub const QUOTA_PATH: &str = "/zookeeper/quota";
/// The znode whose creation makes its parent's path (less [`QUOTA_PATH`]) a quota root.
pub const LIMIT_NODE: &str = "zookeeper_limits";
/// The znode holding a root's usage.
pub const STAT_NODE: &str = "zookeeper_stats";

/// A quota root's usage: znodes in its subtree (itself included) and their data bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaUsage {
    /// Znodes.
    pub count: i64,
    /// Data bytes (null data counts 0).
    pub bytes: i64,
}

impl QuotaUsage {
    /// ZooKeeper's `StatsTrack.toString` for a usage: `count=<N>,bytes=<M>`.
    pub fn render(&self) -> String {
        format!("count={},bytes={}", self.count, self.bytes)
    }

    /// [`QuotaUsage::render`] into `buf`, without allocating (two i64s take at most 53 bytes).
    fn render_into<'b>(&self, buf: &'b mut [u8; 64]) -> &'b [u8] {
        use std::io::Write as _;
        let len = {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "count={},bytes={}", self.count, self.bytes);
            cursor.position() as usize
        };
        &buf[..len]
    }
}

/// A root's limits as `StatsTrack` reads `zookeeper_limits`; -1 where none is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Soft count (`setquota -n`): exceeding it is only logged.
    pub count: i64,
    /// Soft bytes (`setquota -b`).
    pub bytes: i64,
    /// Hard count (`setquota -N`): a create past it fails with QuotaExceeded when enforced.
    pub count_hard: i64,
    /// Hard bytes (`setquota -B`).
    pub bytes_hard: i64,
}

impl QuotaLimits {
    /// Parses `count=10,bytes=-1=;byteHardLimit=-1;countHardLimit=5` as `StatsTrack(String)`
    /// does: pairs split on runs of `,` and `;`, each `key=value` (an empty value is -1).
    /// Where ZooKeeper would throw on a malformed pair, that pair is ignored.
    pub fn parse(data: &[u8]) -> QuotaLimits {
        let mut limits = QuotaLimits { count: -1, bytes: -1, count_hard: -1, bytes_hard: -1 };
        let text = String::from_utf8_lossy(data);
        for pair in text.split([',', ';']).filter(|p| !p.is_empty()) {
            let mut kv = pair.split('=');
            let (Some(key), value) = (kv.next(), kv.next()) else { continue };
            let value = match value {
                None | Some("") => -1,
                Some(v) => match v.parse::<i64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            match key {
                "count" => limits.count = value,
                "bytes" => limits.bytes = value,
                "countHardLimit" => limits.count_hard = value,
                "byteHardLimit" => limits.bytes_hard = value,
                _ => {}
            }
        }
        limits
    }
}

/// The quota roots and their usage. Invariant (checked by `validate`): the roots are exactly
/// the tracked `zookeeper_limits` znodes' roots, each usage equals a recount of its subtree,
/// and each root's `zookeeper_stats`, where it exists, holds the usage rendered.
#[derive(Debug, Clone, Default)]
pub(in crate::tree) struct Quotas {
    roots: HashMap<String, Root>,
}

#[derive(Debug, Clone, Copy)]
struct Root {
    usage: QuotaUsage,
    /// Its `zookeeper_stats` znode, or NONE. Invariant: the znode at its stats path.
    stats: u32,
}

/// For a `zookeeper_limits` or `zookeeper_stats` path, the quota root it belongs to and
/// whether it is the limits znode; `None` for any other path and for roots not tracked.
fn special(path: &str) -> Option<(&str, bool)> {
    let limit = match name(path) {
        LIMIT_NODE => true,
        STAT_NODE => false,
        _ => return None,
    };
    let root = parent(path).strip_prefix(QUOTA_PATH)?;
    tracked(root).then_some((root, limit))
}

/// Whether `root` can be a quota root: a path below `/` outside `/zookeeper`. A limits znode
/// right under `/zookeeper/quota` names no root (ZooKeeper ignores it too).
fn tracked(root: &str) -> bool {
    root.len() > 1 && root.starts_with('/') && root != "/zookeeper" && !root.starts_with("/zookeeper/")
}

/// `/a`, `/a/b`, `/a/b/c` for `/a/b/c`: the paths a root must equal to hold it.
fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').skip(1).map(|(i, _)| &path[..i]).chain(std::iter::once(path))
}

fn stat_path(root: &str) -> String {
    format!("{QUOTA_PATH}{root}/{STAT_NODE}")
}

/// The `zookeeper_limits` path of a root.
pub fn limit_path(root: &str) -> String {
    format!("{QUOTA_PATH}{root}/{LIMIT_NODE}")
}

impl DataTree {
    /// Whether any quota root exists (a write elsewhere costs only this check).
    pub fn has_quotas(&self) -> bool {
        !self.quotas.roots.is_empty()
    }

    /// The quota roots holding `path` (the path itself included), shortest first, with their
    /// committed usage.
    pub fn quota_roots_of<'a>(&'a self, path: &'a str) -> impl Iterator<Item = (&'a str, QuotaUsage)> + 'a {
        let roots = &self.quotas.roots;
        // No root: one lookup of "" in an empty map, no walk along the path.
        let path = if roots.is_empty() { "" } else { path };
        prefixes(path).filter_map(move |p| roots.get(p).map(|r| (p, r.usage)))
    }

    /// The usage of a quota root, if it is one.
    pub fn quota_usage(&self, root: &str) -> Option<QuotaUsage> {
        self.quotas.roots.get(root).map(|r| r.usage)
    }

    /// The limits of a quota root, read from its `zookeeper_limits` now.
    pub fn quota_limits(&self, root: &str) -> Option<QuotaLimits> {
        self.get(&limit_path(root)).map(|z| QuotaLimits::parse(z.data()))
    }

    /// After a create of `path` (znode `id`) with `len` bytes of data.
    pub(super) fn quota_created(&mut self, path: &str, id: u32, len: usize) {
        if let Some((root, limit)) = special(path) {
            if limit {
                let usage = self.recount(root);
                let stats = self.resolve(&stat_path(root)).unwrap_or(NONE);
                self.quotas.roots.insert(root.to_string(), Root { usage, stats });
                self.write_stats(stats, usage);
            } else if let Some(r) = self.quotas.roots.get_mut(root) {
                r.stats = id;
                let usage = r.usage;
                self.write_stats(id, usage);
            } else {
                // ZooKeeper's `updateQuotaForPath`: a stats znode gets the recount at creation,
                // and keeps it while its root is not tracked.
                let usage = self.recount(root);
                self.write_stats(id, usage);
            }
        }
        self.quota_add(path, 1, len as i64);
    }

    /// After a delete of `path`, which held `len` bytes.
    pub(super) fn quota_deleted(&mut self, path: &str, len: usize) {
        match special(path) {
            // Its stats znode keeps its last data (as ZooKeeper).
            Some((root, true)) => _ = self.quotas.roots.remove(root),
            Some((root, false)) => {
                if let Some(r) = self.quotas.roots.get_mut(root) {
                    r.stats = NONE;
                }
            }
            None => {}
        }
        self.quota_add(path, -1, -(len as i64));
    }

    /// After a setData of `path` from `old` to `new` bytes.
    pub(super) fn quota_set(&mut self, path: &str, old: usize, new: usize) {
        if !self.has_quotas() {
            return;
        }
        if let Some((root, false)) = special(path) {
            if let Some(r) = self.quotas.roots.get(root).copied() {
                self.write_stats(r.stats, r.usage);
            }
        }
        self.quota_add(path, 0, new as i64 - old as i64);
    }

    fn quota_add(&mut self, path: &str, count: i64, bytes: i64) {
        if !self.has_quotas() {
            return;
        }
        for p in prefixes(path) {
            if let Some(r) = self.quotas.roots.get_mut(p) {
                r.usage.count += count;
                r.usage.bytes += bytes;
                let r = *r;
                self.write_stats(r.stats, r.usage);
            }
        }
    }

    /// Puts the usage in a stats znode (NONE: none) — data only: no version, no mzxid, no
    /// watch.
    fn write_stats(&mut self, stats: u32, usage: QuotaUsage) {
        if stats != NONE {
            let mut buf = [0u8; 64];
            self.replace_data(stats, Some(usage.render_into(&mut buf)));
        }
    }

    /// The usage of `root`'s subtree, counted znode by znode (`getCounts`): 0 if it is missing.
    fn recount(&self, root: &str) -> QuotaUsage {
        let mut usage = QuotaUsage::default();
        let Some(id) = self.resolve(root) else { return usage };
        let mut stack = vec![id];
        while let Some(at) = stack.pop() {
            usage.count += 1;
            usage.bytes += self.nodes[at as usize].data().len() as i64;
            let mut child = self.family(at).map_or(NONE, |f| f.first);
            while child != NONE {
                stack.push(child);
                child = self.nodes[child as usize].next;
            }
        }
        usage
    }

    /// The `zookeeper_limits` znodes that name a tracked root, by root (in tree order).
    fn limit_roots(&self) -> Vec<String> {
        let Some(top) = self.resolve(QUOTA_PATH) else { return Vec::new() };
        let mut roots = Vec::new();
        let mut stack = vec![top];
        while let Some(at) = stack.pop() {
            let mut child = self.family(at).map_or(NONE, |f| f.first);
            while child != NONE {
                if self.nodes[child as usize].name() == LIMIT_NODE.as_bytes() {
                    let path = self.path_of(child);
                    if let Some((root, true)) = special(&path) {
                        roots.push(root.to_string());
                    }
                }
                stack.push(child);
                child = self.nodes[child as usize].next;
            }
        }
        roots
    }

    /// Finds the quota roots and recomputes their stats, as ZooKeeper does after loading a
    /// snapshot (`setupQuota`).
    pub(super) fn rebuild_quotas(&mut self) {
        self.quotas.roots.clear();
        for root in self.limit_roots() {
            let usage = self.recount(&root);
            let stats = self.resolve(&stat_path(&root)).unwrap_or(NONE);
            self.write_stats(stats, usage);
            self.quotas.roots.insert(root, Root { usage, stats });
        }
    }

    /// The quota invariant (see [`Quotas`]).
    pub(super) fn validate_quotas(&self) {
        let mut roots = self.limit_roots();
        roots.sort_unstable();
        let mut known: Vec<&String> = self.quotas.roots.keys().collect();
        known.sort_unstable();
        assert_eq!(roots.iter().collect::<Vec<_>>(), known, "quota roots drifted from the limits znodes");
        for (root, r) in &self.quotas.roots {
            assert_eq!(r.usage, self.recount(root), "usage of quota root {root} drifted");
            assert_eq!(self.resolve(&stat_path(root)).unwrap_or(NONE), r.stats, "stats znode of {root} moved");
            if let Some(stats) = self.get(&stat_path(root)) {
                assert_eq!(stats.data_opt(), Some(r.usage.render().as_bytes()), "stats znode of {root}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_as_stats_track_does() {
        let l = QuotaLimits::parse(b"count=10,bytes=-1=;byteHardLimit=-1;countHardLimit=5");
        assert_eq!(l, QuotaLimits { count: 10, bytes: -1, count_hard: 5, bytes_hard: -1 });
        let l = QuotaLimits::parse(b"count=10,bytes=100");
        assert_eq!(l, QuotaLimits { count: 10, bytes: 100, count_hard: -1, bytes_hard: -1 });
        let l = QuotaLimits::parse(b"count=,bytes=x;;byteHardLimit=7,junk");
        assert_eq!(l, QuotaLimits { count: -1, bytes: -1, count_hard: -1, bytes_hard: 7 });
        assert_eq!(QuotaLimits::parse(b""), QuotaLimits { count: -1, bytes: -1, count_hard: -1, bytes_hard: -1 });
    }

    #[test]
    fn roots_are_paths_below_root_outside_zookeeper() {
        assert_eq!(special("/zookeeper/quota/a/b/zookeeper_limits"), Some(("/a/b", true)));
        assert_eq!(special("/zookeeper/quota/a/zookeeper_stats"), Some(("/a", false)));
        assert_eq!(special("/zookeeper/quota/zookeeper_limits"), None);
        assert_eq!(special("/zookeeper/quota/zookeeper/zookeeper_limits"), None);
        assert_eq!(special("/zookeeper/quotax/a/zookeeper_limits"), None);
        assert_eq!(special("/a/zookeeper_limits"), None);
        assert_eq!(prefixes("/a/bc/d").collect::<Vec<_>>(), vec!["/a", "/a/bc", "/a/bc/d"]);
        assert_eq!(prefixes("/a").collect::<Vec<_>>(), vec!["/a"]);
    }
}
