//! ZooKeeper's four-letter words on the client port.

use std::fmt::Write as _;

use std::sync::atomic::Ordering::Relaxed;

use baton_engine::zab::{Role, ServerId};

use crate::runtime::{Latency, ShardStats, Shared};

/// The words Baton knows.
pub const KNOWN: [&str; 12] =
    ["ruok", "srvr", "stat", "mntr", "conf", "cons", "wchs", "envi", "isro", "dump", "srst", "crst"];

/// Version string reported where ZooKeeper reports its own.
pub const VERSION: &str = concat!("3.8.0-baton-", env!("CARGO_PKG_VERSION"));

/// The answer to a four-letter word (`None` if it is not one Baton knows).
pub fn answer(node: &Shared, word: &str) -> Option<String> {
    let mut out = String::new();
    match word {
        "ruok" => out.push_str("imok"),
        // ZooKeeper: `ro` from a read-only server, `rw` from one that serves, `null` from one
        // that does not serve at all (a client in read-only mode looks for `rw` to move to).
        "isro" => out.push_str(match (node.read_only.load(Relaxed), node.role.get().serving()) {
            (true, _) => "ro",
            (false, true) => "rw",
            (false, false) => "null",
        }),
        "srvr" => srvr(node, &mut out),
        // ZooKeeper's words for both.
        "srst" => {
            node.reset_server_stats();
            out.push_str("Server stats reset.\n");
        }
        "crst" => {
            for c in node.conns.lock().unwrap_or_else(|p| p.into_inner()).values() {
                c.reset();
            }
            out.push_str("Connection stats reset.\n");
        }
        "stat" => {
            srvr_header(node, &mut out);
            out.push_str("Clients:\n");
            for c in node.conns.lock().unwrap_or_else(|p| p.into_inner()).values() {
                let (received, sent) = c.packets();
                let _ = writeln!(out, " /{}[1](queued=0,recved={received},sent={sent})", c.peer);
            }
            out.push('\n');
            srvr_body(node, &mut out);
        }
        "cons" => {
            for c in node.conns.lock().unwrap_or_else(|p| p.into_inner()).values() {
                let (received, sent) = c.packets();
                let _ = writeln!(
                    out,
                    " /{}[1](queued=0,recved={received},sent={sent},sid=0x{:x},to={})",
                    c.peer,
                    c.session_id.load(Relaxed),
                    c.timeout_ms.load(Relaxed)
                );
            }
            out.push('\n');
        }
        "conf" => conf(node, &mut out),
        "dump" => dump(node, &mut out),
        "wchs" => {
            let sum = |f: fn(&ShardStats) -> usize| node.shard_stats.iter().map(|s| f(s)).sum::<usize>();
            let conns = sum(|s| s.watching_conns.load(Relaxed));
            let _ = writeln!(out, "{} connections watching {} paths", conns, sum(|s| s.watched_paths.load(Relaxed)));
            let _ = writeln!(out, "Total watches:{}", sum(|s| s.watches.load(Relaxed)));
        }
        "envi" => {
            out.push_str("Environment:\n");
            let _ = writeln!(out, "zookeeper.version={VERSION}");
            let _ = writeln!(out, "os.name={}", std::env::consts::OS);
            let _ = writeln!(out, "os.arch={}", std::env::consts::ARCH);
            let _ = writeln!(
                out,
                "user.dir={}",
                std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default()
            );
        }
        "mntr" => mntr(node, &mut out),
        _ => return None,
    }
    Some(out)
}

fn srvr_header(node: &Shared, out: &mut String) {
    let _ = writeln!(out, "Zookeeper version: {VERSION}, built by Baton");
    if node.read_only.load(Relaxed) {
        out.push_str("READ-ONLY mode; serving only read-only clients\n");
    }
}

fn srvr_body(node: &Shared, out: &mut String) {
    let tree = node.tree();
    let (min, max, total, count) = Latency::sum(node.shard_stats.iter().map(|s| &s.latency));
    let avg = if count == 0 { 0.0 } else { total as f64 / count as f64 / 1000.0 };
    let _ = writeln!(out, "Latency min/avg/max: {}/{}/{}", min / 1000, java_double(avg), max / 1000);
    let _ = writeln!(out, "Received: {}", node.received());
    let _ = writeln!(out, "Sent: {}", sent(node));
    let _ = writeln!(out, "Connections: {}", node.open_connections.load(Relaxed));
    let _ = writeln!(out, "Outstanding: {}", node.write_stats.outstanding.load(Relaxed));
    let _ = writeln!(out, "Zxid: 0x{:x}", tree.last_zxid().0);
    let _ = writeln!(out, "Mode: {}", node.mode());
    let _ = writeln!(out, "Node count: {}", tree.node_count());
    let _ = writeln!(out, "Server id: {}", node.config.server_id);
    let role = node.role.get();
    let _ = writeln!(out, "Epoch: {}", role.epoch());
    let _ = writeln!(out, "Leader: {}", leader_of(node, role));
}

fn srvr(node: &Shared, out: &mut String) {
    srvr_header(node, out);
    srvr_body(node, out);
}

/// Frames sent to every open connection.
pub(super) fn sent(node: &Shared) -> u64 {
    node.sent()
}

fn mntr(node: &Shared, out: &mut String) {
    let (nodes, ephemerals, data_bytes, last_zxid) = {
        let tree = node.tree();
        (tree.node_count(), tree.ephemeral_count(), tree.data_bytes(), tree.last_zxid())
    };
    let sent = sent(node);
    let watches: usize = node.shard_stats.iter().map(|s| s.watches.load(Relaxed)).sum();
    let stats = &node.write_stats;
    let role = node.role.get();
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{k}\t{v}");
    };
    kv("zk_version", VERSION.to_string());
    let (min, max, total, count) = Latency::sum(node.shard_stats.iter().map(|s| &s.latency));
    let avg = if count == 0 { 0.0 } else { total as f64 / count as f64 / 1000.0 };
    kv("zk_avg_latency", java_double(avg));
    kv("zk_max_latency", (max / 1000).to_string());
    kv("zk_min_latency", (min / 1000).to_string());
    kv("zk_server_state", node.mode().into());
    kv("zk_znode_count", nodes.to_string());
    kv("zk_watch_count", watches.to_string());
    kv("zk_ephemerals_count", ephemerals.to_string());
    kv("zk_approximate_data_size", data_bytes.to_string());
    kv("zk_num_alive_connections", node.open_connections.load(Relaxed).to_string());
    kv("zk_outstanding_requests", stats.outstanding.load(Relaxed).to_string());
    kv("zk_packets_received", node.received().to_string());
    kv("zk_packets_sent", sent.to_string());
    kv("zk_global_sessions", stats.sessions.load(Relaxed).to_string());
    kv("zk_last_zxid", format!("0x{:x}", last_zxid.0));
    kv("zk_uptime", node.started.elapsed().as_millis().to_string());
    kv("baton_shards", node.shard_stats.len().to_string());
    for (i, shard) in node.shard_stats.iter().enumerate() {
        kv(&format!("baton_shard_{i}_connections"), shard.connections.load(Relaxed).to_string());
        kv(&format!("baton_shard_{i}_received"), shard.received.load(Relaxed).to_string());
    }
    kv("baton_wal_entries_durable", stats.wal_entries_durable.load(Relaxed).to_string());
    kv("baton_wal_batches", stats.wal_batches.load(Relaxed).to_string());
    kv("baton_commits", stats.committed.load(Relaxed).to_string());
    kv("baton_rejected_writes", stats.rejected.load(Relaxed).to_string());
    kv("baton_server_id", node.config.server_id.to_string());
    kv("baton_epoch", role.epoch().to_string());
    kv("baton_leader", leader_of(node, role).to_string());
    kv("baton_serving", u8::from(role.serving()).to_string());
}

/// `conf`, ZooKeeper's keys in its order (`ZooKeeperServer.dumpConf`, and
/// `QuorumZooKeeperServer.dumpConf` in an ensemble), then Baton's own.
fn conf(node: &Shared, out: &mut String) {
    let c = &node.config;
    let snapshots = c.data_dir.join("snapshots");
    let wal = c.data_dir.join("wal");
    // As ZooKeeper, -1 for a port that is off.
    let port = |a: &crate::config::ListenAddr| a.0.map_or(-1, |a| i32::from(a.port()));
    let _ = writeln!(out, "clientPort={}", port(&c.client_addr));
    let _ = writeln!(out, "secureClientPort={}", port(&c.secure_client_addr));
    let _ = writeln!(out, "dataDir={}", absolute(&snapshots).display());
    let _ = writeln!(out, "dataDirSize={}", dir_size(&snapshots));
    let _ = writeln!(out, "dataLogDir={}", absolute(&wal).display());
    let _ = writeln!(out, "dataLogSize={}", dir_size(&wal));
    let _ = writeln!(out, "tickTime={}", c.tick_ms);
    let _ = writeln!(out, "maxClientCnxns={}", c.max_client_cnxns);
    let _ = writeln!(out, "minSessionTimeout={}", c.min_session_timeout_ms());
    let _ = writeln!(out, "maxSessionTimeout={}", c.max_session_timeout_ms());
    out.push_str("clientPortListenBacklog=-1\n");
    let standalone = node.standalone();
    let _ = writeln!(out, "serverId={}", if standalone { 0 } else { c.server_id });
    if !standalone {
        let _ = writeln!(out, "initLimit={}", c.init_limit);
        let _ = writeln!(out, "syncLimit={}", c.sync_limit);
        out.push_str("electionAlg=3\n");
        let own = c.peers.iter().find(|p| p.id == c.server_id);
        let port = own.map_or(0, |p| p.addr.port());
        // Baton elects and replicates on one peer port.
        let _ = writeln!(out, "electionPort={port}");
        let _ = writeln!(out, "quorumPort={port}");
        let _ = writeln!(out, "peerType={}", u8::from(c.is_observer()));
        out.push_str("membership: \n");
        for p in &c.peers {
            let kind = if p.observer { "observer" } else { "participant" };
            let _ = writeln!(out, "server.{}={}:{}:{}:{kind}", p.id, p.addr.ip(), p.addr.port(), p.addr.port());
        }
        out.push_str("version=0\n");
    }
    if let Some(addr) = c.client_addr.0.or(c.secure_client_addr.0) {
        let _ = writeln!(out, "baton.clientPortAddress={}", addr.ip());
    }
    let _ = writeln!(out, "baton.jute.maxbuffer={}", c.max_frame_bytes);
    let _ = writeln!(out, "baton.shards={}", node.shard_stats.len());
    let _ = writeln!(out, "baton.maxConnections={}", c.max_connections);
}

pub(super) fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Bytes of the files directly in `dir` (0 if it cannot be read).
pub(super) fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// `dump`: sessions and their ephemerals, in the format a ZooKeeper follower prints
/// (`LearnerSessionTracker.dumpSessions`, `DataTree.dumpEphemerals`), from the replicated
/// tree — the same on every server.
fn dump(node: &Shared, out: &mut String) {
    let tree = node.tree();
    out.push_str("SessionTracker dump:\n");
    let sessions = tree.sessions();
    let _ = writeln!(out, "Global Sessions({}):", sessions.len());
    for (id, info) in sessions {
        let _ = writeln!(out, "0x{:x}\t{}ms", id.as_i64(), info.timeout_ms);
    }
    out.push_str("ephemeral nodes dump:\n");
    let with: Vec<(baton_engine::SessionId, Vec<String>)> =
        sessions.keys().map(|id| (*id, tree.ephemerals_of(*id))).filter(|(_, paths)| !paths.is_empty()).collect();
    let _ = writeln!(out, "Sessions with Ephemerals ({}):", with.len());
    for (id, paths) in with {
        let _ = writeln!(out, "0x{:x}:", id.as_i64());
        for p in paths {
            let _ = writeln!(out, "\t{p}");
        }
    }
    out.push_str("Connections dump:\n");
}

/// A double as Java's `Double.toString` prints ZooKeeper's average latency, rounded to four
/// decimals first (`AvgMinMaxCounter`): `0.0`, `1.5`, `0.3333`, `5.0E-4`.
pub fn java_double(v: f64) -> String {
    let rounded = (v * 10_000.0).round() / 10_000.0;
    if rounded != 0.0 && rounded.abs() < 1e-3 {
        // Below 10^-3 Java switches to computerized scientific notation; after the rounding
        // only 1..9 × 10^-4 are left.
        return format!("{:.1}E-4", rounded * 10_000.0);
    }
    let mut s = format!("{rounded:.4}");
    while s.ends_with('0') && !s.ends_with(".0") {
        s.pop();
    }
    s
}

/// The leader this server follows, or its own id when leading (0 while it does not serve).
fn leader_of(node: &Shared, role: Role) -> ServerId {
    match role {
        _ if !role.serving() => 0,
        Role::Leading { .. } => node.config.server_id,
        Role::Following { leader, .. } => leader,
        Role::Looking => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use crate::runtime::inbox::inbox;

    #[test]
    fn averages_print_as_java_prints_zookeepers() {
        for (v, s) in
            [(0.0, "0.0"), (1.5, "1.5"), (1.0 / 3.0, "0.3333"), (12.0, "12.0"), (0.0005, "5.0E-4"), (2.34567, "2.3457")]
        {
            assert_eq!(java_double(v), s, "{v}");
        }
    }

    #[test]
    fn isro_and_srvr_tell_read_write_read_only_and_not_serving_apart() {
        let config = ServerConfig::for_test("127.0.0.1:2181".parse().expect("addr"), "d".into());
        let (to_write_path, _inbox) = inbox();
        let (to_shard, _shard_inbox) = inbox();
        let node = Shared::new(config, to_write_path, vec![to_shard]);
        assert_eq!(answer(&node, "isro").as_deref(), Some("null"), "looking, not read-only");
        node.read_only.store(true, Relaxed);
        assert_eq!(answer(&node, "isro").as_deref(), Some("ro"));
        let srvr = answer(&node, "srvr").expect("srvr");
        let lines: Vec<&str> = srvr.lines().collect();
        assert_eq!(lines[1], "READ-ONLY mode; serving only read-only clients", "{srvr}");
        assert!(lines.contains(&"Mode: read-only"), "{srvr}");
        node.read_only.store(false, Relaxed);
        node.role.set(Role::Leading { epoch: 1, established: true });
        assert_eq!(answer(&node, "isro").as_deref(), Some("rw"));
        assert!(!answer(&node, "srvr").expect("srvr").contains("READ-ONLY"));
    }
}
