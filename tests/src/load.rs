//! Client load for process tests of an ensemble: writers that create unique znodes and note
//! every acknowledged one, and the check that after healing every server holds the same
//! znodes with every acknowledged write among them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::raw::RawClient;

/// Each test runs a cluster of debug-build servers; several clusters at once on a 2-core
/// machine starve them for seconds at a time (CI failed so: a reply past the client's 10 s
/// while a follower was stalled, a connect refused mid-election). One cluster at a time in
/// a test binary (cargo runs the binaries one after another).
pub fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that panicked while holding it leaves nothing behind that the next one uses.
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writers creating unique znodes under `/load` (which must exist), moving to the next server
/// whenever theirs closes the connection or stops answering.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `writers` threads, writer `t` beginning on server `t`.
    pub fn start(addrs: Vec<SocketAddr>, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..writers)
            .map(|t| {
                let (stop, acked, addrs) = (stop.clone(), acked.clone(), addrs.clone());
                std::thread::spawn(move || write(t, &addrs, &stop, &acked))
            })
            .collect();
        Load { stop, acked, threads }
    }

    /// Writes acknowledged so far.
    pub fn count(&self) -> usize {
        self.acked.lock().expect("acked lock").len()
    }

    /// Waits (at most `limit`) until `more` writes beyond the current count are acknowledged.
    pub fn progress(&self, cluster: &Cluster, more: usize, limit: Duration, what: &str) {
        let target = self.count() + more;
        let end = Instant::now() + limit;
        while self.count() < target {
            if Instant::now() > end {
                let modes: Vec<Option<String>> = (1..=cluster.nodes.len()).map(|i| cluster.mode(i)).collect();
                panic!("{what}: writes did not resume within {limit:?} (modes {modes:?})");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the writers; returns every acknowledged path.
    pub fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("a writer panicked");
        }
        Arc::try_unwrap(self.acked).expect("writers done").into_inner().expect("acked lock")
    }
}

fn write(t: usize, addrs: &[SocketAddr], stop: &AtomicBool, acked: &Mutex<Vec<String>>) {
    let mut server = t;
    let mut k = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let Some(mut c) = RawClient::connect(addrs[server % addrs.len()], 2000, None) else {
            server += 1;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = c.stream.set_read_timeout(Some(Duration::from_secs(3)));
        while !stop.load(Ordering::SeqCst) {
            let path = format!("/load/w{t}-{k:06}");
            k += 1;
            match c.create(&path, format!("value {k}").as_bytes(), 0) {
                Some(r) if r.err == 0 => acked.lock().expect("acked lock").push(path),
                Some(r) => panic!("create {path}: error {}", r.err),
                // No answer: the outcome is unknown (it may or may not be in).
                None => {
                    server += 1;
                    break;
                }
            }
        }
    }
}

/// Waits until the servers `members` agree on their last zxid and node count (the load
/// has stopped), then checks that each holds the same znodes under `/load` with the same data
/// and Stat and that every path in `acked` is among them. Returns how many znodes there are.
pub fn assert_converged(cluster: &Cluster, members: &[usize], acked: &[String], limit: Duration) -> usize {
    let summary = |i: usize| (cluster.srvr(i, "Zxid"), cluster.srvr(i, "Node count"));
    let end = Instant::now() + limit;
    loop {
        let all: Vec<_> = members.iter().map(|&i| summary(i)).collect();
        if all[0].0.is_some() && all.iter().all(|s| *s == all[0]) {
            break;
        }
        assert!(Instant::now() < end, "servers {members:?} disagree: {all:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut trees: Vec<BTreeMap<String, Vec<u8>>> = Vec::new();
    for &i in members {
        let addr = cluster.nodes[i - 1].addr;
        let mut c = RawClient::connect(addr, 4000, None).unwrap_or_else(|| panic!("connect to server {i}"));
        assert_eq!(c.sync("/load"), Some(0), "sync on server {i}");
        let children = c.children("/load").expect("children");
        let tree: BTreeMap<String, Vec<u8>> = children
            .into_iter()
            .map(|name| {
                let path = format!("/load/{name}");
                let body = c.data_and_stat(&path).unwrap_or_else(|| panic!("read {path} on server {i}"));
                (path, body)
            })
            .collect();
        trees.push(tree);
    }
    let missing: Vec<&String> = acked.iter().filter(|p| !trees[0].contains_key(*p)).collect();
    assert!(missing.is_empty(), "{} acknowledged writes lost, e.g. {:?}", missing.len(), missing.first());
    for (tree, &i) in trees.iter().zip(members).skip(1) {
        assert_eq!(tree.len(), trees[0].len(), "server {i} holds another set of znodes than server {}", members[0]);
        assert!(tree == &trees[0], "server {i}'s znodes differ from server {}'s in data or Stat", members[0]);
    }
    trees[0].len()
}
