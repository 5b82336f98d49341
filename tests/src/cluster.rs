//! A cluster of real `baton` processes on 127.0.0.1 for tests. Every peer link runs through
//! its own [`Proxy`] (server i reaches server j at the proxy for (i, j)), so that a test can
//! cut any server off from the others.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::proxy::Proxy;
use crate::raw::four_letter;
use crate::server::BatonProcess;

/// Running servers; server `i + 1` is `nodes[i]`.
pub struct Cluster {
    /// The processes.
    pub nodes: Vec<BatonProcess>,
    /// The first port of the range this cluster uses.
    base: u16,
    /// (from, to) → the proxy `from` reaches `to` through.
    proxies: BTreeMap<(usize, usize), Proxy>,
    /// Server i serves etcd clients on this port + i, when set.
    etcd_base: Option<u16>,
}

fn peer_addr(base: u16, id: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base + id as u16))
}

fn proxy_addr(base: u16, from: usize, to: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base + 10 * from as u16 + to as u16))
}

impl Cluster {
    /// Starts `n` voters with data under `dir`, peer ports from `base + 1` and proxies on
    /// `base + 11 ..= base + 99` (fixed ports below 32768, so that no outgoing connection
    /// takes them), each with the flags `extra`, and waits until each is up.
    pub fn start(bin: &str, dir: &Path, n: usize, base: u16, extra: &[&str]) -> Cluster {
        Cluster::with_observers(bin, dir, n, 0, base, extra)
    }

    /// As [`Cluster::start`], plus `observers` non-voting servers (ids after the voters; at
    /// most 9 servers in all).
    pub fn with_observers(
        bin: &str,
        dir: &Path,
        voters: usize,
        observers: usize,
        base: u16,
        extra: &[&str],
    ) -> Cluster {
        Cluster::build(bin, dir, voters, observers, base, None, extra)
    }

    /// As [`Cluster::start`], each server also serving etcd clients, server i on
    /// 127.0.0.1:`etcd_base + i` (a range no other test uses).
    pub fn start_with_etcd(bin: &str, dir: &Path, n: usize, base: u16, etcd_base: u16, extra: &[&str]) -> Cluster {
        Cluster::build(bin, dir, n, 0, base, Some(etcd_base), extra)
    }

    /// Server `i`'s etcd endpoint (`http://HOST:PORT`), if it serves etcd clients.
    pub fn etcd_endpoint(&self, i: usize) -> Option<String> {
        self.etcd_base.map(|b| format!("http://127.0.0.1:{}", b + i as u16))
    }

    fn build(
        bin: &str,
        dir: &Path,
        voters: usize,
        observers: usize,
        base: u16,
        etcd_base: Option<u16>,
        extra: &[&str],
    ) -> Cluster {
        let n = voters + observers;
        assert!(n <= 9, "at most 9 servers");
        let mut proxies = BTreeMap::new();
        for from in 1..=n {
            for to in (1..=n).filter(|&to| to != from) {
                let proxy = Proxy::start(proxy_addr(base, from, to), peer_addr(base, to)).expect("start a proxy");
                proxies.insert((from, to), proxy);
            }
        }
        let mut nodes = Vec::with_capacity(n);
        for id in 1..=n {
            let peers: Vec<String> = (1..=n)
                .map(|j| {
                    let addr = if j == id { peer_addr(base, j) } else { proxy_addr(base, id, j) };
                    let role = if j > voters { ":observer" } else { "" };
                    let etcd = etcd_base.map_or(String::new(), |b| format!(";127.0.0.1:{}", b + j as u16));
                    format!("{j}={addr}{role}{etcd}")
                })
                .collect();
            let mut flags: Vec<String> = vec!["--server-id".into(), id.to_string(), "--peer".into(), peers.join(",")];
            flags.extend(["--cores", "1", "--peer-tick-ms", "50", "--tick-ms", "500"].map(String::from));
            let etcd = etcd_base.map_or("off".to_string(), |b| format!("127.0.0.1:{}", b + id as u16));
            flags.extend(["--etcd-addr".to_string(), etcd]);
            flags.extend(extra.iter().map(|s| s.to_string()));
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            nodes.push(BatonProcess::start(bin, &dir.join(format!("n{id}")), &flags));
        }
        Cluster { nodes, base, proxies, etcd_base }
    }

    /// Server `i`'s own peer port (not through a proxy).
    pub fn peer_addr(&self, i: usize) -> SocketAddr {
        peer_addr(self.base, i)
    }

    /// Server `i`'s (1-based) `srvr` line `key: value`, if it answers.
    pub fn srvr(&self, i: usize, key: &str) -> Option<String> {
        let text = four_letter(self.nodes[i - 1].addr, b"srvr");
        text.lines().find_map(|l| l.strip_prefix(&format!("{key}: ")).map(str::to_string))
    }

    /// Server `i`'s mode ("leader", "follower", "looking"), if it answers.
    pub fn mode(&self, i: usize) -> Option<String> {
        self.srvr(i, "Mode")
    }

    /// Waits until exactly one of `members` leads and the rest follow it (or observe);
    /// returns the leader.
    pub fn wait_for_leader(&self, members: &[usize], limit: Duration) -> Option<usize> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            let modes: Vec<Option<String>> = members.iter().map(|&i| self.mode(i)).collect();
            let leaders: Vec<usize> =
                members.iter().zip(&modes).filter(|(_, m)| m.as_deref() == Some("leader")).map(|(&i, _)| i).collect();
            let following =
                modes.iter().filter(|m| matches!(m.as_deref(), Some("follower") | Some("observer"))).count();
            if leaders.len() == 1 && following + 1 == members.len() {
                return leaders.first().copied();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Cuts server `i` off from every other (both directions).
    pub fn isolate(&self, i: usize) {
        for ((from, to), proxy) in &self.proxies {
            if *from == i || *to == i {
                proxy.cut();
            }
        }
    }

    /// The proxy server `from` reaches server `to` through.
    pub fn link(&self, from: usize, to: usize) -> &Proxy {
        &self.proxies[&(from, to)]
    }

    /// Restores every link.
    pub fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.heal();
        }
    }

    /// A connect string of every server, starting with the one after server `first_not`
    /// (clients that try hosts in order start elsewhere than on it).
    pub fn connect_string_avoiding(&self, first_not: usize) -> String {
        let mut hosts: Vec<String> = self.addrs().iter().map(|a| a.to_string()).collect();
        let n = hosts.len();
        hosts.rotate_left(first_not % n);
        hosts.join(",")
    }

    /// Every server's client address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }
}
