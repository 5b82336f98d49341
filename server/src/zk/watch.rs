//! Watch registrations of the connections on this server, and what a change triggers
//! (ZooKeeper's server-side `WatchManager`: a data table and a child table, plus persistent
//! and persistent-recursive watches).

use std::collections::{HashMap, HashSet};

use baton_engine::tree::{Change, ChangeKind};

use super::proto::event;
use crate::runtime::ConnId;

/// All watches, by path.
#[derive(Debug, Default)]
pub struct WatchManager {
    /// One-shot watches set by getData and exists.
    data: HashMap<String, HashSet<ConnId>>,
    /// One-shot watches set by getChildren.
    child: HashMap<String, HashSet<ConnId>>,
    /// addWatch PERSISTENT.
    persistent: HashMap<String, HashSet<ConnId>>,
    /// addWatch PERSISTENT_RECURSIVE.
    recursive: HashMap<String, HashSet<ConnId>>,
    count: usize,
    /// Watches held by each connection that holds any.
    per_conn: HashMap<ConnId, usize>,
}

fn forget(per_conn: &mut HashMap<ConnId, usize>, conn: ConnId) {
    if let Some(n) = per_conn.get_mut(&conn) {
        *n -= 1;
        if *n == 0 {
            per_conn.remove(&conn);
        }
    }
}

/// Which table (removeWatches / checkWatches `type`, addWatch mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// Data (and exists) watches.
    Data,
    /// Child watches.
    Child,
    /// Persistent watches.
    Persistent,
    /// Persistent recursive watches.
    Recursive,
}

impl WatchManager {
    fn table(&mut self, kind: WatchKind) -> &mut HashMap<String, HashSet<ConnId>> {
        match kind {
            WatchKind::Data => &mut self.data,
            WatchKind::Child => &mut self.child,
            WatchKind::Persistent => &mut self.persistent,
            WatchKind::Recursive => &mut self.recursive,
        }
    }

    /// Every watch: (path, connection), of every kind.
    pub fn all(&self) -> impl Iterator<Item = (&str, ConnId)> + '_ {
        [&self.data, &self.child, &self.persistent, &self.recursive]
            .into_iter()
            .flat_map(|table| table.iter().flat_map(|(path, conns)| conns.iter().map(move |c| (path.as_str(), *c))))
    }

    /// Registers a watch.
    pub fn add(&mut self, kind: WatchKind, path: &str, conn: ConnId) {
        if self.table(kind).entry(path.to_string()).or_default().insert(conn) {
            self.count += 1;
            *self.per_conn.entry(conn).or_default() += 1;
        }
    }

    /// Whether `conn` holds a watch of `kind` on `path`.
    pub fn has(&self, kind: WatchKind, path: &str, conn: ConnId) -> bool {
        let table = match kind {
            WatchKind::Data => &self.data,
            WatchKind::Child => &self.child,
            WatchKind::Persistent => &self.persistent,
            WatchKind::Recursive => &self.recursive,
        };
        table.get(path).is_some_and(|s| s.contains(&conn))
    }

    /// Removes a watch; returns whether it existed.
    pub fn remove(&mut self, kind: WatchKind, path: &str, conn: ConnId) -> bool {
        let table = self.table(kind);
        let Some(set) = table.get_mut(path) else { return false };
        let removed = set.remove(&conn);
        if set.is_empty() {
            table.remove(path);
        }
        if removed {
            self.count -= 1;
            forget(&mut self.per_conn, conn);
        }
        removed
    }

    /// Drops every watch of a connection that went away.
    pub fn remove_conn(&mut self, conn: ConnId) {
        if self.per_conn.remove(&conn).is_none() {
            return;
        }
        let mut removed = 0;
        for table in [&mut self.data, &mut self.child, &mut self.persistent, &mut self.recursive] {
            table.retain(|_, set| {
                if set.remove(&conn) {
                    removed += 1;
                }
                !set.is_empty()
            });
        }
        self.count -= removed;
    }

    /// Number of watches (all kinds).
    pub fn count(&self) -> usize {
        self.count
    }

    /// Watches held by one connection.
    pub fn count_for(&self, conn: ConnId) -> usize {
        self.per_conn.get(&conn).copied().unwrap_or(0)
    }

    /// Connections holding at least one watch.
    pub fn watching_conns(&self) -> usize {
        self.per_conn.len()
    }

    /// (path, connections) for `wchs`-style reports.
    pub fn paths(&self) -> usize {
        self.data.len() + self.child.len() + self.persistent.len() + self.recursive.len()
    }

    /// The notifications a change triggers, removing the one-shot watches that fire.
    pub fn trigger(&mut self, change: &Change, out: &mut Vec<(ConnId, i32, String)>) {
        if self.count == 0 {
            return;
        }
        let path = change.path.as_str();
        let event_type = match change.kind {
            ChangeKind::Created => event::NODE_CREATED,
            ChangeKind::Deleted => event::NODE_DELETED,
            ChangeKind::DataChanged => event::NODE_DATA_CHANGED,
            ChangeKind::ChildrenChanged => event::NODE_CHILDREN_CHANGED,
        };
        let mut fired: HashSet<ConnId> = HashSet::new();
        let per_conn = &mut self.per_conn;
        let mut take = |table: &mut HashMap<String, HashSet<ConnId>>, count: &mut usize| {
            if let Some(set) = table.remove(path) {
                *count -= set.len();
                for &conn in &set {
                    forget(per_conn, conn);
                }
                fired.extend(set);
            }
        };
        match change.kind {
            ChangeKind::Created | ChangeKind::DataChanged => take(&mut self.data, &mut self.count),
            ChangeKind::Deleted => {
                take(&mut self.data, &mut self.count);
                take(&mut self.child, &mut self.count);
            }
            ChangeKind::ChildrenChanged => take(&mut self.child, &mut self.count),
        }
        if let Some(set) = self.persistent.get(path) {
            fired.extend(set.iter().copied());
        }
        if change.kind != ChangeKind::ChildrenChanged {
            // Recursive watches see every node event at or below them, but not child lists.
            let mut prefix = path;
            loop {
                if let Some(set) = self.recursive.get(prefix) {
                    fired.extend(set.iter().copied());
                }
                if prefix == "/" {
                    break;
                }
                prefix = baton_engine::tree::path::parent(prefix);
            }
        }
        let mut fired: Vec<ConnId> = fired.into_iter().collect();
        fired.sort_unstable();
        out.extend(fired.into_iter().map(|c| (c, event_type, path.to_string())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(path: &str, kind: ChangeKind) -> Change {
        Change { path: path.into(), kind, acl: baton_engine::tree::open_acl().into() }
    }

    fn fire(w: &mut WatchManager, c: Change) -> Vec<(ConnId, i32, String)> {
        let mut out = Vec::new();
        w.trigger(&c, &mut out);
        out
    }

    #[test]
    fn one_shot_watches_fire_once() {
        let mut w = WatchManager::default();
        w.add(WatchKind::Data, "/a", ConnId(1));
        w.add(WatchKind::Child, "/a", ConnId(2));
        assert_eq!(
            fire(&mut w, change("/a", ChangeKind::DataChanged)),
            vec![(ConnId(1), event::NODE_DATA_CHANGED, "/a".into())]
        );
        assert!(fire(&mut w, change("/a", ChangeKind::DataChanged)).is_empty());
        assert_eq!(
            fire(&mut w, change("/a", ChangeKind::Deleted)),
            vec![(ConnId(2), event::NODE_DELETED, "/a".into())]
        );
        assert_eq!(w.count(), 0);
        assert_eq!((w.count_for(ConnId(1)), w.count_for(ConnId(2)), w.watching_conns()), (0, 0, 0));
    }

    #[test]
    fn persistent_and_recursive_watches_stay() {
        let mut w = WatchManager::default();
        w.add(WatchKind::Persistent, "/p", ConnId(1));
        w.add(WatchKind::Recursive, "/r", ConnId(2));
        for _ in 0..2 {
            assert_eq!(fire(&mut w, change("/p", ChangeKind::ChildrenChanged)).len(), 1);
            assert_eq!(
                fire(&mut w, change("/r/x/y", ChangeKind::Created)),
                vec![(ConnId(2), event::NODE_CREATED, "/r/x/y".into())]
            );
        }
        assert!(
            fire(&mut w, change("/r", ChangeKind::ChildrenChanged)).is_empty(),
            "recursive watches skip child events"
        );
        assert_eq!(w.count(), 2);
        assert_eq!((w.count_for(ConnId(1)), w.count_for(ConnId(2)), w.watching_conns()), (1, 1, 2));
        w.remove_conn(ConnId(2));
        assert_eq!(w.count(), 1);
        assert_eq!((w.count_for(ConnId(2)), w.watching_conns()), (0, 1));
    }
}
