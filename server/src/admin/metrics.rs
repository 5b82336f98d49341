//! `/metrics`: the server's counters, gauges and histograms in Prometheus's text format, read
//! from what the other layers publish in [`Shared`] at the moment of the scrape (nothing on
//! the request path waits for a scrape or takes a lock for it).
//!
//! Names and types follow ZooKeeper's Prometheus provider where it has the same thing
//! (`znode_count`, `watch_count`, `num_alive_connections`, `packets_received`, …: `mntr`'s
//! `zk_*` keys without the prefix, gauges as ZooKeeper registers them); Baton's own start
//! with `baton_`, counters end in `_total`, and the output passes `promtool check metrics` —
//! which refuses a `_count` suffix on a gauge, so ZooKeeper's `znode_count`, `watch_count`
//! and `ephemerals_count` are `znodes`, `watches` and `ephemerals` here.

use std::sync::atomic::Ordering::Relaxed;

use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::Encoder as _;

use baton_engine::stats::{Histogram as EngineHistogram, COUNT_BOUNDS, DURATION_BOUNDS_US};

use crate::runtime::{
    zk_result_name, Latency, LearnerLag, ReplicaMetrics, Shared, ETCD_RPCS, GRPC_CODES, ZK_OPERATIONS, ZK_RESULTS,
};

/// The text Prometheus scrapes, and its content type.
pub fn render(node: &Shared) -> (String, String) {
    let mut families = families(node);
    // A family with nothing in it yet (no etcd request so far, no learner) is left out: the
    // encoder refuses one, and would stop there.
    families.retain(|f| !f.get_metric().is_empty());
    let encoder = prometheus::TextEncoder::new();
    let mut out = Vec::new();
    // Encoding families built here cannot fail: every one has a name, a type and metrics of
    // that type (the encoder refuses only empty names and families, and mismatched types).
    if let Err(e) = encoder.encode(&families, &mut out) {
        tracing::error!(%e, "metrics could not be encoded");
    }
    (String::from_utf8_lossy(&out).into_owned(), encoder.format_type().to_string())
}

fn families(node: &Shared) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let stats = &node.write_stats;
    let role = node.role.get();
    let (nodes, ephemerals, data_bytes, last_zxid) = {
        let tree = node.tree();
        (tree.node_count(), tree.ephemeral_count(), tree.data_bytes(), tree.last_zxid())
    };
    let sum = |f: fn(&crate::runtime::ShardStats) -> usize| node.shard_stats.iter().map(|s| f(s)).sum::<usize>();
    let sent = super::fourlw::sent(node);

    out.push(gauge("znodes", "Znodes in the tree.", nodes as f64));
    out.push(gauge("ephemerals", "Ephemeral znodes.", ephemerals as f64));
    out.push(gauge("approximate_data_size", "Bytes of znode paths and data.", data_bytes as f64));
    out.push(gauge("watches", "Watches held by this server's connections.", sum(|s| s.watches.load(Relaxed)) as f64));
    out.push(gauge("num_alive_connections", "Open client connections.", node.open_connections.load(Relaxed) as f64));
    out.push(gauge("outstanding_requests", "Writes waiting to commit.", stats.outstanding.load(Relaxed) as f64));
    out.push(gauge("global_sessions", "Live sessions.", stats.sessions.load(Relaxed) as f64));
    // Gauges, as ZooKeeper registers them (its dashboards take rates of them all the same).
    out.push(gauge("packets_received", "Requests received from clients.", node.received() as f64));
    out.push(gauge("packets_sent", "Frames sent to clients.", sent as f64));
    out.push(gauge("uptime", "Milliseconds since the server started.", node.started.elapsed().as_millis() as f64));
    out.push(gauge("last_zxid", "The last applied zxid.", last_zxid.0 as f64));
    out.push(gauge("baton_epoch", "The Zab epoch.", role.epoch() as f64));
    out.push(labelled(
        "baton_server_state",
        "1 for the server's state (as mntr's zk_server_state), 0 for the others.",
        MetricType::GAUGE,
        ["leader", "follower", "observer", "standalone", "looking", "read-only"]
            .iter()
            .map(|state| (vec![("state", state.to_string())], f64::from(u8::from(node.mode() == *state)))),
    ));
    out.push(counter("baton_commits_total", "Log entries committed.", stats.committed.load(Relaxed) as f64));
    out.push(counter(
        "baton_rejected_writes_total",
        "Writes refused before the log.",
        stats.rejected.load(Relaxed) as f64,
    ));
    out.push(counter(
        "baton_wal_entries_durable_total",
        "Log entries written and fdatasync'ed.",
        stats.wal_entries_durable.load(Relaxed) as f64,
    ));
    out.push(counter(
        "baton_wal_flushes_total",
        "WAL batches written, one fdatasync each.",
        stats.wal_batches.load(Relaxed) as f64,
    ));
    out.push(labelled(
        "baton_zk_requests_total",
        "ZooKeeper requests received, by operation.",
        MetricType::COUNTER,
        ZK_OPERATIONS.iter().enumerate().map(|(i, (_, name))| {
            let n: u64 = node.shard_stats.iter().map(|s| s.requests_by_op.get(i).map_or(0, |c| c.load(Relaxed))).sum();
            (vec![("op", name.to_string())], n as f64)
        }),
    ));
    out.push(labelled(
        "baton_zk_replies_total",
        "Replies to ZooKeeper requests, by result (KeeperException.Code: OK, NONODE, NODEEXISTS, ...).",
        MetricType::COUNTER,
        ZK_RESULTS.iter().enumerate().map(|(i, &code)| {
            let n: u64 =
                node.shard_stats.iter().map(|s| s.replies_by_result.get(i).map_or(0, |c| c.load(Relaxed))).sum();
            (vec![("result", zk_result_name(code))], n as f64)
        }),
    ));
    out.push(labelled(
        "grpc_server_handled_total",
        "etcd requests answered, by RPC and gRPC status (a stream counts as it starts), as etcd names them.",
        MetricType::COUNTER,
        node.etcd_handled.counted().filter_map(|(rpc, code, n)| {
            let (service, method, kind) = ETCD_RPCS.get(rpc)?;
            let labels = [("grpc_service", service), ("grpc_method", method), ("grpc_type", kind)];
            let mut labels: Vec<(&str, String)> = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
            labels.push(("grpc_code", GRPC_CODES.get(code)?.to_string()));
            Some((labels, n as f64))
        }),
    ));
    out.push(labelled(
        "baton_shard_connections",
        "Open client connections, by shard.",
        MetricType::GAUGE,
        node.shard_stats
            .iter()
            .enumerate()
            .map(|(i, s)| (vec![("shard", i.to_string())], s.connections.load(Relaxed) as f64)),
    ));
    out.push(request_latency(node));
    out.push(counter(
        "baton_looking_total",
        "Times this server lost its leader (or its leadership) and looked for one (ZooKeeper's looking_count).",
        stats.looking_count.load(Relaxed) as f64,
    ));
    {
        let etcd = node.etcd();
        out.push(gauge("baton_etcd_revision", "The etcd keyspace's revision.", etcd.revision() as f64));
        out.push(gauge("baton_etcd_keys", "Keys in the etcd keyspace.", etcd.key_count() as f64));
        out.push(gauge(
            "baton_etcd_size_bytes",
            "The etcd keyspace's size, as its quota counts it.",
            etcd.size_bytes() as f64,
        ));
    }
    let commits = *stats.commit_us.lock().unwrap_or_else(|p| p.into_inner());
    out.push(histogram(
        "baton_commit_latency_seconds",
        "Client writes, from reaching the write path (sequenced here, or forwarded to the leader) to committed and applied here.",
        &commits,
        &DURATION_BOUNDS_US,
        1e6,
    ));
    let replica = stats.replica.lock().unwrap_or_else(|p| p.into_inner()).clone();
    out.extend(replica_families(&replica));
    out
}

/// The log, the snapshots and the learners.
fn replica_families(r: &ReplicaMetrics) -> Vec<MetricFamily> {
    let wal = &r.wal;
    vec![
        histogram(
            "baton_fdatasync_seconds",
            "How long each WAL batch's fdatasync took (ZooKeeper's fsynctime).",
            &wal.fdatasync_us,
            &DURATION_BOUNDS_US,
            1e6,
        ),
        histogram("baton_wal_batch_entries", "Log entries per WAL batch (one fdatasync each).", &wal.batch_entries, &COUNT_BOUNDS, 1.0),
        counter("baton_wal_written_bytes_total", "Bytes written to the WAL.", wal.bytes_written as f64),
        counter("baton_wal_segments_created_total", "WAL segment files begun.", wal.segments_created as f64),
        histogram(
            "baton_snapshot_duration_seconds",
            "Background snapshots, from the state frozen to the file synced.",
            &r.replica.snapshot_us,
            &DURATION_BOUNDS_US,
            1e6,
        ),
        counter("baton_snapshots_failed_total", "Background snapshots that failed.", r.replica.snapshots_failed as f64),
        histogram(
            "baton_log_purge_duration_seconds",
            "Releases of the log segments a snapshot made unneeded.",
            &r.replica.purge_us,
            &DURATION_BOUNDS_US,
            1e6,
        ),
        labelled(
            "baton_learner_entries_behind",
            "While leading: entries of this epoch each learner lacks (a follower: not acknowledged; an observer: not sent).",
            MetricType::GAUGE,
            r.learners.iter().map(|l| (learner_labels(l), l.entries_behind as f64)),
        ),
        labelled(
            "baton_learner_queued_bytes",
            "While leading: bytes queued for each learner and not yet written to its connection.",
            MetricType::GAUGE,
            r.learners.iter().map(|l| (learner_labels(l), l.bytes_queued as f64)),
        ),
    ]
}

fn learner_labels(l: &LearnerLag) -> Vec<(&'static str, String)> {
    vec![("server_id", l.id.to_string()), ("role", if l.observer { "observer" } else { "follower" }.to_string())]
}

/// A histogram from the engine's counts, values divided by `unit` (1e6: µs to seconds; a
/// division prints 50 µs as 0.00005, where a product by 1e-6 prints 0.000049999999999999996).
fn histogram(name: &str, help: &str, h: &EngineHistogram, bounds: &[u64; 15], unit: f64) -> MetricFamily {
    let mut cumulative = 0;
    let buckets = bounds.iter().zip(&h.counts).map(|(bound, n)| {
        cumulative += n;
        let mut b = Bucket::default();
        b.set_upper_bound(*bound as f64 / unit);
        b.set_cumulative_count(cumulative);
        b
    });
    let mut out = Histogram::default();
    out.set_bucket(buckets.collect());
    out.set_sample_count(h.count());
    out.set_sample_sum(h.sum as f64 / unit);
    let mut m = Metric::default();
    m.set_histogram(out);
    family(name, help, MetricType::HISTOGRAM, vec![m])
}

/// ZooKeeper requests' latency, received to answered, over every shard.
fn request_latency(node: &Shared) -> MetricFamily {
    let latency = Latency::histogram(node.shard_stats.iter().map(|s| &s.latency));
    histogram(
        "baton_request_latency_seconds",
        "ZooKeeper requests, received to answered.",
        &latency,
        &DURATION_BOUNDS_US,
        1e6,
    )
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn gauge(name: &str, help: &str, value: f64) -> MetricFamily {
    labelled(name, help, MetricType::GAUGE, [(Vec::new(), value)])
}

fn counter(name: &str, help: &str, value: f64) -> MetricFamily {
    labelled(name, help, MetricType::COUNTER, [(Vec::new(), value)])
}

/// A family of one metric per label set.
fn labelled(
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (Vec<(&'static str, String)>, f64)>,
) -> MetricFamily {
    let metrics = values
        .into_iter()
        .map(|(labels, value)| {
            let mut m = Metric::default();
            m.set_label(
                labels
                    .into_iter()
                    .map(|(k, v)| {
                        let mut l = LabelPair::default();
                        l.set_name(k.to_string());
                        l.set_value(v);
                        l
                    })
                    .collect(),
            );
            if kind == MetricType::COUNTER {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            } else {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
            m
        })
        .collect();
    family(name, help, kind, metrics)
}
