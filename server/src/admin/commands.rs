//! ZooKeeper's admin commands (`org.apache.zookeeper.server.admin.Commands`) as the
//! AdminServer serves them under `/commands/NAME`: a JSON object of the command's keys, then
//! `command` (the primary name, whichever alias was asked) and `error` (null when it worked).
//! Keys and their types are ZooKeeper 3.8's, in the order of its reference answers in
//! `tests/zookeeper-3.8-admin/` (ZooKeeper's own order varies between its runs); a key Baton
//! has nothing true to put in is left out rather than filled with a made-up value.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Map, Value};

use super::fourlw::{absolute, dir_size, sent, VERSION};
use crate::runtime::{Latency, Shared};

/// The commands: (primary name, aliases).
pub const COMMANDS: [(&str, &[&str]); 23] = [
    ("configuration", &["conf", "config"]),
    ("connection_stat_reset", &["crst"]),
    ("connections", &["cons"]),
    ("dirs", &[]),
    ("dump", &[]),
    ("environment", &["env", "envi"]),
    ("get_trace_mask", &["gtmk"]),
    ("is_read_only", &["isro"]),
    ("last_snapshot", &["lsnp"]),
    ("leader", &["lead"]),
    ("monitor", &["mntr"]),
    ("observers", &["obsr"]),
    ("ruok", &[]),
    ("server_stats", &["srvr"]),
    ("set_trace_mask", &["stmk"]),
    ("stat_reset", &["srst"]),
    ("stats", &["stat"]),
    ("system_properties", &["sysp"]),
    ("voting_view", &[]),
    ("watch_summary", &["wchs"]),
    ("watches", &["wchc"]),
    ("watches_by_path", &["wchp"]),
    ("zabstate", &[]),
];

/// `/commands`: a link per command, as ZooKeeper's AdminServer lists them.
pub fn index() -> String {
    COMMANDS.iter().map(|(name, _)| format!("<a href=\"/commands/{name}\">{name}</a>\n<br/>\n")).collect()
}

/// The answer to `/commands/NAME` (NAME a primary name or an alias, as ZooKeeper matches
/// them: exactly, case included), with the request's query parameters.
pub fn run(node: &Shared, asked: &str, params: &std::collections::HashMap<String, String>) -> Value {
    let Some((name, _)) = COMMANDS.iter().find(|(name, aliases)| *name == asked || aliases.contains(&asked)) else {
        return json!({ "command": asked, "error": format!("Unknown command: {asked}") });
    };
    let mut out = Map::new();
    let error = match *name {
        "configuration" => configuration(node, &mut out),
        "connection_stat_reset" => {
            for c in node.conns.lock().unwrap_or_else(|p| p.into_inner()).values() {
                c.reset();
            }
            None
        }
        "get_trace_mask" => {
            out.insert("tracemask".into(), node.trace_mask.load(Relaxed).into());
            None
        }
        "set_trace_mask" => set_trace_mask(node, params, &mut out),
        "last_snapshot" => last_snapshot(node, &mut out),
        "observers" => observers(node, &mut out),
        "stat_reset" => {
            node.reset_server_stats();
            None
        }
        "system_properties" => {
            environment(&mut out);
            out.remove("zookeeper.version");
            out.remove("host.name");
            out.insert("file.separator".into(), "/".into());
            out.insert("line.separator".into(), "\n".into());
            out.insert("path.separator".into(), ":".into());
            out.sort_keys();
            None
        }
        "voting_view" => voting_view(node, &mut out),
        "watches" | "watches_by_path" => watches(node, *name == "watches", &mut out),
        "zabstate" => zabstate(node, &mut out),
        "connections" => connections(node, &mut out, true),
        "dirs" => {
            out.insert("datadir_size".into(), dir_size(&node.config.data_dir.join("snapshots")).into());
            out.insert("logdir_size".into(), dir_size(&node.config.data_dir.join("wal")).into());
            None
        }
        "dump" => dump(node, &mut out),
        "environment" => environment(&mut out),
        "is_read_only" => {
            out.insert("read_only".into(), node.read_only.load(Relaxed).into());
            None
        }
        "leader" => leader(node, &mut out),
        "monitor" => monitor(node, &mut out),
        "ruok" => None,
        "server_stats" => server_stats(node, &mut out),
        "stats" => {
            server_stats(node, &mut out);
            connections(node, &mut out, false)
        }
        "watch_summary" => {
            let sum =
                |f: fn(&crate::runtime::ShardStats) -> usize| node.shard_stats.iter().map(|s| f(s)).sum::<usize>();
            out.insert("num_connections".into(), sum(|s| s.watching_conns.load(Relaxed)).into());
            out.insert("num_paths".into(), sum(|s| s.watched_paths.load(Relaxed)).into());
            out.insert("num_total_watches".into(), sum(|s| s.watches.load(Relaxed)).into());
            None
        }
        _ => Some(format!("Unknown command: {asked}")),
    };
    // ZooKeeper's order: `command` then a null `error`; a command that failed set its error
    // first, so there `error` comes before `command`.
    match error {
        None => {
            out.insert("command".into(), (*name).into());
            out.insert("error".into(), Value::Null);
        }
        Some(why) => {
            out.insert("error".into(), why.into());
            out.insert("command".into(), (*name).into());
        }
    }
    Value::Object(out)
}

type Outcome = Option<String>;

fn latency(node: &Shared) -> (Value, u64, u64) {
    let (min, max, total, count) = Latency::sum(node.shard_stats.iter().map(|s| &s.latency));
    let avg = if count == 0 { 0.0 } else { total as f64 / count as f64 / 1000.0 };
    // Milliseconds, rounded to four decimals as ZooKeeper's `AvgMinMaxCounter` rounds them.
    let avg = (avg * 10_000.0).round() / 10_000.0;
    (avg.into(), min / 1000, max / 1000)
}

fn server_stats(node: &Shared, out: &mut Map<String, Value>) -> Outcome {
    let (avg, min, max) = latency(node);
    let (nodes, last_zxid) = {
        let tree = node.tree();
        (tree.node_count(), tree.last_zxid())
    };
    out.insert("version".into(), VERSION.into());
    out.insert("read_only".into(), node.read_only.load(Relaxed).into());
    out.insert(
        "server_stats".into(),
        json!({
            "packets_sent": sent(node),
            "packets_received": node.received(),
            "data_dir_size": dir_size(&node.config.data_dir.join("snapshots")),
            "log_dir_size": dir_size(&node.config.data_dir.join("wal")),
            "server_state": node.mode(),
            "last_processed_zxid": last_zxid.0,
            "outstanding_requests": node.write_stats.outstanding.load(Relaxed),
            "avg_latency": avg,
            "max_latency": max,
            "min_latency": min,
            "num_alive_client_connections": node.open_connections.load(Relaxed),
            "uptime": node.started.elapsed().as_millis() as u64,
        }),
    );
    out.insert("node_count".into(), nodes.into());
    None
}

/// The connections: with their sessions for `connections`, without for `stats` (as ZooKeeper
/// lists them in each).
/// The connections of the plain port, then the secure port's, as ZooKeeper lists them.
fn connections(node: &Shared, out: &mut Map<String, Value>, sessions: bool) -> Outcome {
    let (plain, secure): (Vec<_>, Vec<_>) =
        node.conns.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().partition(|c| !c.secure.load(Relaxed));
    let list = |conns: Vec<std::sync::Arc<crate::runtime::ConnInfo>>| -> Vec<Value> {
        conns
            .iter()
            .map(|c| {
                let (received, sent) = c.packets();
                let mut one = json!({
                    "remote_socket_address": c.peer.to_string(),
                    "packets_received": received,
                    "packets_sent": sent,
                });
                if sessions {
                    one["session_id"] = c.session_id.load(Relaxed).into();
                    one["session_timeout"] = c.timeout_ms.load(Relaxed).into();
                }
                one
            })
            .collect()
    };
    out.insert("connections".into(), list(plain).into());
    out.insert("secure_connections".into(), list(secure).into());
    None
}

/// ZooKeeper's `ZooTrace` mask: which requests are logged at trace level (Baton logs each
/// ZooKeeper request, with `RUST_LOG=baton_server::zk=trace`, while bit 2 is set).
fn set_trace_mask(
    node: &Shared,
    params: &std::collections::HashMap<String, String>,
    out: &mut Map<String, Value>,
) -> Outcome {
    let Some(asked) = params.get("traceMask") else {
        return Some("setTraceMask requires long traceMask argument".into());
    };
    let Ok(mask) = asked.parse::<i64>() else {
        return Some(format!("setTraceMask requires long traceMask argument, got {asked}"));
    };
    node.trace_mask.store(mask, Relaxed);
    out.insert("tracemask".into(), mask.into());
    None
}

/// The newest snapshot file's zxid (hex, as `Long.toHexString`) and modification time (Unix
/// seconds); "ffffffffffffffff" and -1 before the first, as ZooKeeper.
fn last_snapshot(node: &Shared, out: &mut Map<String, Value>) -> Outcome {
    let newest = std::fs::read_dir(node.config.data_dir.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let zxid = u64::from_str_radix(name.strip_prefix("snap-")?.strip_suffix(".snap")?, 16).ok()?;
            let modified = entry.metadata().ok()?.modified().ok()?;
            Some((zxid, modified))
        })
        .max_by_key(|(zxid, _)| *zxid);
    let (zxid, at) = match newest {
        Some((zxid, at)) => {
            let secs = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            (format!("{zxid:x}"), secs)
        }
        None => (format!("{:x}", -1i64), -1),
    };
    out.insert("zxid".into(), zxid.into());
    out.insert("timestamp".into(), at.into());
    None
}

/// On the leader, the observers it feeds and how many bytes are queued for each (ZooKeeper's
/// `queued_packets_size`); elsewhere none, as ZooKeeper answers from a server that feeds none.
fn observers(node: &Shared, out: &mut Map<String, Value>) -> Outcome {
    use baton_engine::zab::Role;
    let learners = match node.role.get() {
        Role::Leading { .. } => node.write_stats.replica.lock().unwrap_or_else(|p| p.into_inner()).learners.clone(),
        _ => Vec::new(),
    };
    let list: Vec<Value> = learners
        .iter()
        .filter(|l| l.observer)
        .map(|l| json!({ "sid": l.id, "queued_packets_size": l.bytes_queued }))
        .collect();
    out.insert("synced_observers".into(), list.len().into());
    out.insert("observers".into(), list.into());
    None
}

/// The voting members, as ZooKeeper's `QuorumServerView`: Baton elects and replicates on one
/// peer address, so it is both the server and the election address; a member's client
/// address is known for this server only ("" for the others, as ZooKeeper without one).
fn voting_view(node: &Shared, out: &mut Map<String, Value>) -> Outcome {
    let c = &node.config;
    let mut view = Map::new();
    if !node.standalone() {
        for p in c.peers.iter().filter(|p| !p.observer) {
            let client = match (p.id == c.server_id, c.client_addr.0) {
                (true, Some(a)) => a.to_string(),
                _ => String::new(),
            };
            view.insert(
                p.id.to_string(),
                json!({
                    "serverAddresses": [p.addr.to_string()],
                    "electionAddresses": [p.addr.to_string()],
                    "clientAddress": client,
                    "learnerType": "participant",
                }),
            );
        }
    }
    out.insert("current_config".into(), view.into());
    None
}

/// Every watch of every shard, by session (`watches`) or by path (`watches_by_path`): each
/// shard lists its own when asked through its inbox.
fn watches(node: &Shared, by_session: bool, out: &mut Map<String, Value>) -> Outcome {
    let mut all = Vec::new();
    for (i, shard) in node.to_shard.iter().enumerate() {
        let (reply, answer) = std::sync::mpsc::channel();
        if !shard.send(crate::runtime::ToShard::Watches(reply)) {
            continue;
        }
        match answer.recv_timeout(std::time::Duration::from_secs(2)) {
            Ok(list) => all.extend(list),
            Err(_) => return Some(format!("shard {i} did not list its watches within 2 s")),
        }
    }
    // Sorted, each path or session once (a session can watch a path in several ways).
    all.sort();
    all.dedup();
    let mut map = Map::new();
    for (session, path) in all {
        let (key, value) = if by_session { (session.to_string(), Value::from(path)) } else { (path, session.into()) };
        if let Value::Array(list) = map.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
            list.push(value);
        }
    }
    map.sort_keys();
    let key = if by_session { "session_id_to_watched_paths" } else { "path_to_session_ids" };
    out.insert(key.into(), map.into());
    None
}

/// The phase of Zab this server is in (ELECTION, DISCOVERY, SYNCHRONIZATION, BROADCAST,
/// lowercased as ZooKeeper writes them) and whether it votes; `""` standalone.
fn zabstate(node: &Shared, out: &mut Map<String, Value>) -> Outcome {
    use baton_engine::zab::Role;
    if node.standalone() {
        out.insert("voting".into(), false.into());
        out.insert("zabstate".into(), "".into());
        return None;
    }
    let c = &node.config;
    let role = node.role.get();
    let state = match role {
        Role::Looking => "election",
        r if r.serving() => "broadcast",
        Role::Leading { epoch: 0, .. } | Role::Following { epoch: 0, .. } => "discovery",
        _ => "synchronization",
    };
    let last = node.tree().last_zxid().0;
    out.insert("myid".into(), c.server_id.into());
    out.insert("is_leader".into(), matches!(role, Role::Leading { .. }).into());
    if let Some(own) = c.peers.iter().find(|p| p.id == c.server_id) {
        out.insert("quorum_address".into(), own.addr.to_string().into());
        out.insert("election_address".into(), own.addr.to_string().into());
    }
    if let Some(client) = c.client_addr.0 {
        out.insert("client_address".into(), client.to_string().into());
    }
    out.insert("voting".into(), (!c.is_observer()).into());
    out.insert("last_zxid".into(), format!("0x{last:x}").into());
    out.insert("zab_epoch".into(), (last >> 32).into());
    out.insert("zab_counter".into(), (last & 0xffff_ffff).into());
    out.insert("zabstate".into(), state.into());
    None
}

fn configuration(node: &Shared, out: &mut Map<String, Value>) -> Outcome {
    let c = &node.config;
    // As ZooKeeper, -1 for a port that is off.
    out.insert("client_port".into(), c.client_addr.0.map_or(-1, |a| i32::from(a.port())).into());
    out.insert("data_dir".into(), absolute(&c.data_dir.join("snapshots")).display().to_string().into());
    out.insert("data_log_dir".into(), absolute(&c.data_dir.join("wal")).display().to_string().into());
    out.insert("tick_time".into(), c.tick_ms.into());
    out.insert("max_client_cnxns".into(), c.max_client_cnxns.into());
    out.insert("min_session_timeout".into(), c.min_session_timeout_ms().into());
    out.insert("max_session_timeout".into(), c.max_session_timeout_ms().into());
    out.insert("server_id".into(), (if node.standalone() { 0 } else { c.server_id }).into());
    out.insert("client_port_listen_backlog".into(), (-1).into());
    None
}

/// Sessions and their ephemerals, from the replicated tree (the same on every server). The
/// expiry times ZooKeeper lists are the leader's alone, and not kept as times: left out.
fn dump(node: &Shared, out: &mut Map<String, Value>) -> Outcome {
    let tree = node.tree();
    let mut ephemerals = Map::new();
    for id in tree.sessions().keys() {
        let paths = tree.ephemerals_of(*id);
        if !paths.is_empty() {
            ephemerals.insert(id.as_i64().to_string(), paths.into());
        }
    }
    out.insert("session_id_to_ephemeral_paths".into(), Value::Object(ephemerals));
    None
}

fn environment(out: &mut Map<String, Value>) -> Outcome {
    out.insert("zookeeper.version".into(), VERSION.into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    out.insert("host.name".into(), host.trim().into());
    out.insert("os.name".into(), std::env::consts::OS.into());
    out.insert("os.arch".into(), std::env::consts::ARCH.into());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    out.insert("os.version".into(), release.trim().into());
    let dir = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
    out.insert("user.dir".into(), dir.into());
    None
}

/// ZooKeeper answers "server is not initialized" from a standalone server (it is not a
/// quorum peer) and from one without a leader.
fn leader(node: &Shared, out: &mut Map<String, Value>) -> Outcome {
    use baton_engine::zab::Role;
    let role = node.role.get();
    if node.standalone() || !role.serving() {
        return Some("server is not initialized".into());
    }
    let id = match role {
        Role::Leading { .. } => node.config.server_id,
        Role::Following { leader, .. } => leader,
        Role::Looking => return Some("server is not initialized".into()),
    };
    out.insert("is_leader".into(), matches!(role, Role::Leading { .. }).into());
    out.insert("leader_id".into(), id.into());
    if let Some(peer) = node.config.peers.iter().find(|p| p.id == id) {
        out.insert("leader_ip".into(), peer.addr.ip().to_string().into());
    }
    None
}

/// `mntr`'s values under ZooKeeper's JSON keys (its `zk_` keys without the prefix).
fn monitor(node: &Shared, out: &mut Map<String, Value>) -> Outcome {
    let (avg, min, max) = latency(node);
    let (nodes, ephemerals, data_bytes) = {
        let tree = node.tree();
        (tree.node_count(), tree.ephemeral_count(), tree.data_bytes())
    };
    let watches: usize = node.shard_stats.iter().map(|s| s.watches.load(Relaxed)).sum();
    let stats = &node.write_stats;
    out.insert("version".into(), VERSION.into());
    out.insert("server_state".into(), node.mode().into());
    out.insert("ephemerals_count".into(), ephemerals.into());
    out.insert("num_alive_connections".into(), node.open_connections.load(Relaxed).into());
    out.insert("avg_latency".into(), avg);
    out.insert("outstanding_requests".into(), stats.outstanding.load(Relaxed).into());
    out.insert("znode_count".into(), nodes.into());
    out.insert("global_sessions".into(), stats.sessions.load(Relaxed).into());
    out.insert("packets_sent".into(), sent(node).into());
    out.insert("packets_received".into(), node.received().into());
    out.insert("watch_count".into(), watches.into());
    out.insert("min_latency".into(), min.into());
    let descriptors = file_descriptors();
    if let Some((_, most)) = descriptors {
        out.insert("max_file_descriptor_count".into(), most.into());
    }
    out.insert("approximate_data_size".into(), data_bytes.into());
    if let Some((open, _)) = descriptors {
        out.insert("open_file_descriptor_count".into(), open.into());
    }
    out.insert("uptime".into(), (node.started.elapsed().as_millis() as u64).into());
    out.insert("max_latency".into(), max.into());
    out.insert("commit_count".into(), stats.committed.load(Relaxed).into());
    None
}

/// (open, limit) of this process's file descriptors, as ZooKeeper's `*_file_descriptor_count`.
fn file_descriptors() -> Option<(u64, u64)> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?.parse().ok()?;
    Some((open, soft))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use crate::runtime::inbox::inbox;

    fn node() -> Shared {
        let config = ServerConfig::for_test("127.0.0.1:2181".parse().expect("addr"), "d".into());
        let (to_write_path, _inbox) = inbox();
        let (to_shard, _shard_inbox) = inbox();
        Shared::new(config, to_write_path, vec![to_shard])
    }

    fn ask(node: &Shared, name: &str) -> Value {
        run(node, name, &Default::default())
    }

    #[test]
    fn the_trace_mask_is_set_with_a_parameter_as_zookeepers() {
        let node = node();
        assert_eq!(ask(&node, "gtmk")["tracemask"], 306, "ZooTrace's default");
        let missing = ask(&node, "stmk");
        assert_eq!(missing["error"], "setTraceMask requires long traceMask argument");
        let params = |v: &str| [("traceMask".to_string(), v.to_string())].into_iter().collect();
        assert_eq!(run(&node, "stmk", &params("x"))["error"], "setTraceMask requires long traceMask argument, got x");
        assert_eq!(run(&node, "set_trace_mask", &params("2"))["tracemask"], 2);
        assert_eq!(ask(&node, "get_trace_mask")["tracemask"], 2);
    }

    #[test]
    fn stat_reset_starts_latency_and_packets_over_but_not_the_histogram() {
        let node = node();
        let stats = &node.shard_stats[0];
        stats.latency.record(std::time::Duration::from_millis(7));
        stats.received.fetch_add(5, Relaxed);
        assert_eq!(ask(&node, "srvr")["server_stats"]["max_latency"], 7);
        assert_eq!(node.received(), 5);
        ask(&node, "srst");
        assert_eq!(ask(&node, "srvr")["server_stats"]["max_latency"], 0);
        assert_eq!(ask(&node, "srvr")["server_stats"]["packets_received"], 0);
        stats.latency.record(std::time::Duration::from_millis(3));
        assert_eq!(ask(&node, "srvr")["server_stats"]["avg_latency"], 3.0);
        let histogram = Latency::histogram(node.shard_stats.iter().map(|s| &s.latency));
        assert_eq!(histogram.counts.iter().sum::<u64>(), 2, "Prometheus's histogram keeps both");
    }

    #[test]
    fn aliases_answer_under_the_primary_name_and_unknown_names_say_so() {
        let node = node();
        let by_alias = ask(&node, "mntr");
        assert_eq!(by_alias["command"], "monitor");
        assert_eq!(by_alias["error"], Value::Null);
        assert_eq!(by_alias["server_state"], "looking");
        // As ZooKeeper: names match exactly, case included.
        let unknown = ask(&node, "RUOK");
        assert_eq!(unknown, json!({ "command": "RUOK", "error": "Unknown command: RUOK" }));
        assert_eq!(ask(&node, "lead")["error"], "server is not initialized", "standalone");
    }

    #[test]
    fn every_command_answers_with_its_keys_then_command_and_error() {
        let node = node();
        for (name, _) in COMMANDS {
            let answer = ask(&node, name);
            let keys: Vec<&String> = answer.as_object().expect("an object").keys().collect();
            let n = keys.len();
            let last = if answer["error"].is_null() { ["command", "error"] } else { ["error", "command"] };
            assert_eq!(&keys[n - 2..], last, "{name}: {keys:?}");
        }
    }
}
