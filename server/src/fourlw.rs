//! ZooKeeper's four-letter words on the client port.

use std::fmt::Write as _;

use crate::node::Node;

/// The words Baton knows.
pub const KNOWN: [&str; 9] = ["ruok", "srvr", "stat", "mntr", "conf", "cons", "wchs", "envi", "isro"];

/// Version string reported where ZooKeeper reports its own.
pub const VERSION: &str = concat!("3.8.0-baton-", env!("CARGO_PKG_VERSION"));

/// The answer to a four-letter word (`None` if it is not one Baton knows).
pub fn answer(node: &Node, word: &str) -> Option<String> {
    let mut out = String::new();
    match word {
        "ruok" => out.push_str("imok"),
        "isro" => out.push_str("rw"),
        "srvr" => srvr(node, &mut out),
        "stat" => {
            srvr_header(node, &mut out);
            out.push_str("Clients:\n");
            for c in node.conns.values() {
                let _ = writeln!(out, " /{}[1](queued=0,recved={},sent={})", c.peer, c.received.get(), c.sent.get());
            }
            out.push('\n');
            srvr_body(node, &mut out);
        }
        "cons" => {
            for c in node.conns.values() {
                let _ = writeln!(
                    out,
                    " /{}[1](queued=0,recved={},sent={},sid=0x{:x},to={})",
                    c.peer,
                    c.received.get(),
                    c.sent.get(),
                    c.session_id.get(),
                    c.timeout_ms.get()
                );
            }
            out.push('\n');
        }
        "conf" => {
            let c = &node.config;
            let _ = writeln!(out, "clientPort={}", c.client_addr.port());
            let _ = writeln!(out, "clientPortAddress={}", c.client_addr.ip());
            let _ = writeln!(out, "dataDir={}", c.data_dir.display());
            let _ = writeln!(out, "tickTime={}", c.tick_ms);
            let _ = writeln!(out, "maxClientCnxns={}", c.max_connections);
            let _ = writeln!(out, "minSessionTimeout={}", c.min_session_timeout_ms());
            let _ = writeln!(out, "maxSessionTimeout={}", c.max_session_timeout_ms());
            let _ = writeln!(out, "jute.maxbuffer={}", c.max_frame_bytes);
            out.push_str("serverId=0\n");
        }
        "wchs" => {
            let conns = node.conns.values().filter(|c| node.watches.count_for(c.id) > 0).count();
            let _ = writeln!(out, "{} connections watching {} paths", conns, node.watches.paths());
            let _ = writeln!(out, "Total watches:{}", node.watches.count());
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

fn srvr_header(node: &Node, out: &mut String) {
    let _ = writeln!(out, "Zookeeper version: {VERSION}, built by Baton");
    let _ = node;
}

fn srvr_body(node: &Node, out: &mut String) {
    out.push_str("Latency min/avg/max: 0/0.0/0\n");
    let _ = writeln!(out, "Received: {}", node.stats.received);
    let _ = writeln!(out, "Sent: {}", node.conns.values().map(|c| c.sent.get()).sum::<u64>());
    let _ = writeln!(out, "Connections: {}", node.conns.len());
    let _ = writeln!(out, "Outstanding: {}", node.outstanding());
    let _ = writeln!(out, "Zxid: 0x{:x}", node.tree.last_zxid().0);
    out.push_str("Mode: standalone\n");
    let _ = writeln!(out, "Node count: {}", node.tree.node_count());
}

fn srvr(node: &Node, out: &mut String) {
    srvr_header(node, out);
    srvr_body(node, out);
}

fn mntr(node: &Node, out: &mut String) {
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{k}\t{v}");
    };
    kv("zk_version", VERSION.to_string());
    kv("zk_server_state", "standalone".into());
    kv("zk_znode_count", node.tree.node_count().to_string());
    kv("zk_watch_count", node.watches.count().to_string());
    kv("zk_ephemerals_count", node.tree.ephemeral_count().to_string());
    kv("zk_approximate_data_size", node.tree.data_bytes().to_string());
    kv("zk_num_alive_connections", node.conns.len().to_string());
    kv("zk_outstanding_requests", node.outstanding().to_string());
    kv("zk_packets_received", node.stats.received.to_string());
    kv("zk_packets_sent", node.conns.values().map(|c| c.sent.get()).sum::<u64>().to_string());
    kv("zk_global_sessions", node.sessions.len().to_string());
    kv("zk_last_zxid", format!("0x{:x}", node.tree.last_zxid().0));
    kv("zk_uptime", node.started.elapsed().as_millis().to_string());
    let wal = node.wal().stats();
    kv("baton_wal_entries_durable", wal.entries_durable.to_string());
    kv("baton_wal_batches", wal.batches.to_string());
    kv("baton_commits", node.stats.committed.to_string());
    kv("baton_rejected_writes", node.stats.rejected.to_string());
}
