//! The etcd target: the same workloads through the `etcd-client` crate (etcd's v3 gRPC API).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::{Client, DeleteOptions, GetOptions, LockOptions, PutOptions};

use crate::grpc;
use crate::load::{histogram, Load, Outcome, Window};

/// What the workers do.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum Workload {
    /// put of `value-bytes` on a key per client.
    Write,
    /// get of a key per client.
    Read,
    /// get or put, `--read-ratio` of them gets.
    Mixed,
    /// put with a lease, then delete (etcd's counterpart of an ephemeral znode).
    CreateDelete,
    /// Open a connection, grant a lease and revoke it (session storms).
    Sessions,
    /// Every worker takes and releases one lock (etcd's lock service), contending.
    Lock,
    /// One writer updates a key that every other client watches; latency from the write to
    /// each event.
    WatchFanout,
    /// Put `--count` distinct keys `fill/n000000000`… of `value-bytes` once each, then stop
    /// (the wire driver; for memory and restart figures).
    Fill,
}

/// `baton-bench etcd`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// host:port of the server's client URL (a cluster: several, comma-separated).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub target: String,
    #[arg(long, value_enum, default_value = "write")]
    pub workload: Workload,
    /// Reads served by the member without a quorum round (etcd's serializable reads);
    /// the default is linearizable.
    #[arg(long)]
    pub serializable: bool,
    /// `fill`: how many keys.
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    #[command(flatten)]
    pub load: Load,
}

async fn connect(target: &str) -> anyhow::Result<Client> {
    // A cluster is given as a comma-separated list of members.
    let endpoints: Vec<&str> = target.split(',').collect();
    Client::connect(endpoints, None).await.with_context(|| format!("connecting to etcd at {target}"))
}

/// Runs the workload and prints its result.
pub async fn run(args: Args) -> anyhow::Result<Option<Outcome>> {
    if args.workload == Workload::WatchFanout {
        return watch_fanout(&args).await.map(Some);
    }
    if args.workload == Workload::Fill {
        return fill(&args).await.map(Some);
    }
    let load = &args.load;
    let root = crate::load::run_root("bench");
    let mut admin = connect(&args.target).await?;
    let value = vec![b'v'; load.value_bytes];
    let window = Window::new()?.slow_log(load.slow_ms);
    let mut tasks = Vec::new();
    // The wire driver for what it speaks (see `grpc.rs`); the etcd-client crate otherwise.
    let wire = load.driver == crate::load::Driver::Wire
        && matches!(args.workload, Workload::Write | Workload::Read | Workload::Mixed);
    let members: Vec<&str> = args.target.split(',').collect();
    for c in 0..load.clients {
        let client = connect(&args.target).await?;
        let key = format!("{root}/k{c}");
        client.kv_client().put(key.as_str(), value.clone(), None).await.context("creating a key")?;
        if wire {
            // A connection per client, to the members in turn (as the crate's balancing).
            let addr = members[c % members.len()];
            let send = crate::grpc::connect(addr).await?;
            let calls = crate::grpc::Calls::new(addr)?;
            for d in 0..load.depth {
                let index = c * load.depth + d;
                let worker = crate::grpc::Worker {
                    send: send.clone(),
                    calls: calls.clone(),
                    key: key.clone().into_bytes(),
                    value: value.clone(),
                    serializable: args.serializable,
                };
                let (workload, pacer, mut mix) = (args.workload, load.pacer(index), load.mix(index));
                let read = move || match workload {
                    Workload::Read => true,
                    Workload::Mixed => mix.next_is_read(),
                    _ => false,
                };
                tasks.push(tokio::spawn(worker.run(window.clone(), pacer, read)));
            }
            continue;
        }
        let lease = match args.workload {
            Workload::CreateDelete => Some(client.lease_client().grant(60, None).await?.id()),
            _ => None,
        };
        for d in 0..load.depth {
            let index = c * load.depth + d;
            let (mut client, key, value, window, target) =
                (client.clone(), key.clone(), value.clone(), window.clone(), args.target.clone());
            let (workload, mut pacer, mut mix) = (args.workload, load.pacer(index), load.mix(index));
            let mine = format!("{key}-e{d}");
            let lock_name = format!("{root}/lock");
            let get = if args.serializable { Some(GetOptions::new().with_serializable()) } else { None };
            tasks.push(tokio::spawn(async move {
                let mut local = histogram()?;
                let mut n = 0u64;
                while !window.stop.load(Ordering::Relaxed) {
                    let start = pacer.start().await;
                    let read = match workload {
                        Workload::Read => true,
                        Workload::Mixed => mix.next_is_read(),
                        _ => false,
                    };
                    match workload {
                        Workload::Write | Workload::Read | Workload::Mixed if read => {
                            let got = client.get(key.as_str(), get.clone()).await?;
                            anyhow::ensure!(got.kvs().len() == 1, "key {key} missing");
                        }
                        Workload::Write | Workload::Read | Workload::Mixed => {
                            client.put(key.as_str(), value.clone(), None).await?;
                        }
                        Workload::CreateDelete => {
                            let leased = lease.map(|l| PutOptions::new().with_lease(l));
                            client.put(mine.as_str(), value.clone(), leased).await?;
                            client.delete(mine.as_str(), None).await?;
                        }
                        Workload::Sessions => {
                            let mut session = connect(&target).await?;
                            let id = session.lease_grant(10, None).await?.id();
                            session.lease_revoke(id).await?;
                        }
                        Workload::Lock => {
                            let lease = client.lease_grant(30, None).await?.id();
                            let held =
                                client.lock(lock_name.as_str(), Some(LockOptions::new().with_lease(lease))).await?;
                            client.unlock(held.key()).await?;
                            client.lease_revoke(lease).await?;
                        }
                        Workload::WatchFanout | Workload::Fill => anyhow::bail!("runs separately"),
                    }
                    window.record(&mut local, &mut n, start)?;
                }
                window.add(n, &local)
            }));
        }
    }
    let elapsed = window.run(load.seconds, &load.label).await;
    for t in tasks {
        t.await??;
    }
    // The counted operations really happened.
    match args.workload {
        Workload::Write | Workload::Mixed if load.read_ratio < 1.0 || args.workload == Workload::Write => {
            for c in 0..load.clients {
                let got = admin.get(format!("{root}/k{c}"), None).await?;
                let kv = got.kvs().first().with_context(|| format!("key {c} missing"))?;
                anyhow::ensure!(kv.value() == value.as_slice() && kv.version() > 1, "key {c} was not written");
            }
        }
        Workload::CreateDelete => {
            let left = admin.get(format!("{root}/"), Some(GetOptions::new().with_prefix().with_count_only())).await?;
            anyhow::ensure!(left.count() as usize == load.clients, "leased keys left behind: {}", left.count());
        }
        _ => {}
    }
    admin.delete(root.as_str(), Some(DeleteOptions::new().with_prefix())).await?;
    let consistency = match (args.workload, args.serializable) {
        (Workload::Read | Workload::Mixed, true) => " serializable",
        (Workload::Read | Workload::Mixed, false) => " linearizable",
        _ => "",
    };
    let driver = if wire { "grpc-wire" } else { "grpc" };
    window.report(load, "etcd", &format!("{:?}{consistency}", args.workload), driver, elapsed).map(Some)
}

/// `fill`: `count` distinct keys put once each by every worker in turn, as fast as the
/// server takes them; the outcome is the rate (no latencies).
async fn fill(args: &Args) -> anyhow::Result<Outcome> {
    let load = &args.load;
    let value = vec![b'v'; load.value_bytes];
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let members: Vec<&str> = args.target.split(',').collect();
    for c in 0..load.clients {
        let addr = members[c % members.len()];
        let send = crate::grpc::connect(addr).await?;
        let calls = crate::grpc::Calls::new(addr)?;
        for _ in 0..load.depth {
            let (mut send, calls, value, next, count) =
                (send.clone(), calls.clone(), value.clone(), next.clone(), args.count);
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let put = crate::grpc::frame(&baton_server::etcd::pb::etcdserverpb::PutRequest {
                        key: format!("fill/n{i:09}").into_bytes(),
                        value: value.clone(),
                        ..Default::default()
                    });
                    crate::grpc::unary(&mut send, calls.put(), put).await?;
                }
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("filled {} keys of {} B in {secs:.1} s ({:.0}/s)", args.count, load.value_bytes, args.count as f64 / secs);
    Ok(Outcome {
        ops_per_sec: args.count as f64 / secs,
        cdf: Vec::new(),
        p50: 0.0,
        p90: 0.0,
        p99: 0.0,
        p999: 0.0,
        max: 0.0,
        server_cpu_us: None,
    })
}

/// `baton-bench etcd-ready`: from now until a linearizable Range of `key` at `target`
/// answers with the key (no key: answers at all), retrying every 5 ms (a fresh connection
/// each time, so that no client library's back-off is measured); the seconds.
pub async fn ready(target: &str, key: Option<&str>, limit: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let calls = crate::grpc::Calls::new(target)?;
    let range = crate::grpc::frame(&baton_server::etcd::pb::etcdserverpb::RangeRequest {
        key: key.unwrap_or("ready-probe").as_bytes().to_vec(),
        ..Default::default()
    });
    while started.elapsed() < limit {
        if let Ok(mut send) = crate::grpc::connect(target).await {
            if let Ok(Ok(answer)) = tokio::time::timeout(
                Duration::from_secs(1),
                crate::grpc::unary(&mut send, calls.range(), range.clone()),
            )
            .await
            {
                use prost::Message;
                let r =
                    baton_server::etcd::pb::etcdserverpb::RangeResponse::decode(answer.get(5..).unwrap_or_default())?;
                if r.count == 1 || key.is_none() {
                    return Ok(started.elapsed().as_secs_f64());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    anyhow::bail!("{key:?} was not readable at {target} within {limit:?}")
}

/// What a fan-out's watchers and its writer share, whichever driver speaks for them.
#[derive(Clone)]
struct Fanout {
    window: Window,
    epoch: Instant,
    /// Watchers that have seen the latest write.
    seen: Arc<AtomicU64>,
    watchers: u64,
}

impl Fanout {
    fn new(window: Window, watchers: usize) -> Fanout {
        Fanout { window, epoch: Instant::now(), seen: Arc::new(AtomicU64::new(0)), watchers: watchers as u64 }
    }

    /// A watcher saw `value` (a write's send time, nanoseconds since `epoch`, as text).
    fn saw(&self, value: &[u8], local: &mut hdrhistogram::Histogram<u64>, n: &mut u64) -> anyhow::Result<()> {
        if let Some(nanos) = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok()) {
            self.window.record(local, n, self.epoch + Duration::from_nanos(nanos))?;
            self.seen.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Reads `streams` (one connection's) until the window stops, noting what each change
    /// took to arrive.
    async fn watch_all(self, streams: Vec<grpc::WatchStream>) -> anyhow::Result<()> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        async fn next_of(
            mut s: grpc::WatchStream,
        ) -> (grpc::WatchStream, anyhow::Result<Option<baton_server::etcd::pb::etcdserverpb::WatchResponse>>) {
            let message = s.next().await;
            (s, message)
        }
        let (mut local, mut n) = (histogram()?, 0u64);
        let mut pending: FuturesUnordered<_> = streams.into_iter().map(next_of).collect();
        // Wakes the loop now and then to notice the window's end while no change comes.
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        while !self.window.stop.load(Ordering::Relaxed) {
            tokio::select! {
                got = pending.next() => {
                    let Some((stream, message)) = got else { break };
                    // A stream that ended is not read again.
                    let Some(response) = message? else { continue };
                    for kv in response.events.iter().filter_map(|e| e.kv.as_ref()) {
                        self.saw(&kv.value, &mut local, &mut n)?;
                    }
                    pending.push(next_of(stream));
                }
                _ = tick.tick() => {}
            }
        }
        self.window.add(n, &local)
    }

    /// The writer: `put`s the send time, waits until every watcher has seen it, and again,
    /// until the window stops; returns how many writes went round.
    async fn write_rounds<F, Fut>(self, mut put: F) -> anyhow::Result<u64>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let mut rounds = 0u64;
        while !self.window.stop.load(Ordering::Relaxed) {
            rounds += 1;
            self.seen.store(0, Ordering::Release);
            put((self.epoch.elapsed().as_nanos() as u64).to_string()).await?;
            while self.seen.load(Ordering::Acquire) < self.watchers && !self.window.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        Ok(rounds)
    }
}

/// `watch-fanout` with the wire driver (`grpc.rs`): the same connections, watch streams and
/// writes as through the crate, each watch its own stream, the writer's puts unary calls.
async fn watch_fanout_wire(args: &Args, connections: usize, watchers: usize) -> anyhow::Result<Outcome> {
    use baton_server::etcd::pb::etcdserverpb::PutRequest;
    let load = &args.load;
    let addr = args.target.split(',').next().unwrap_or(&args.target).to_string();
    let calls = grpc::Calls::new(&addr)?;
    let mut sends = Vec::with_capacity(connections);
    for _ in 0..connections {
        sends.push(grpc::connect(&addr).await?);
    }
    let watched = crate::load::run_root("bench-watched");
    let key = watched.clone().into_bytes();
    let writer = grpc::connect(&addr).await?;
    let put_uri = calls.put().clone();
    let put = move |value: String| {
        let (mut writer, uri) = (writer.clone(), put_uri.clone());
        let request = grpc::frame(&PutRequest { key: key.clone(), value: value.into_bytes(), ..Default::default() });
        async move { grpc::unary(&mut writer, &uri, request).await.map(drop) }
    };
    put("0".into()).await?;
    let fanout = Fanout::new(Window::new()?.slow_log(load.slow_ms), watchers);
    let mut streams: Vec<Vec<grpc::WatchStream>> = (0..connections).map(|_| Vec::new()).collect();
    for w in 0..watchers {
        streams[w % connections]
            .push(grpc::WatchStream::open(&sends[w % connections], calls.watch(), watched.as_bytes()).await?);
    }
    // One task per connection reads all of its streams, into one histogram: a task and a
    // histogram per watcher cost the generator more than the server's whole work per event
    // (10,000 histograms of ~220 KB, their pages zeroed as first touched: 40% of the
    // generator's time in `clear_page_erms`; a task wake and a timer per event).
    let mut tasks = Vec::new();
    for streams in streams {
        tasks.push(tokio::spawn(fanout.clone().watch_all(streams)));
    }
    let driver = tokio::spawn(fanout.clone().write_rounds(put));
    let elapsed = fanout.window.run(load.seconds, &load.label).await;
    let rounds = driver.await??;
    for t in tasks {
        t.await??;
    }
    anyhow::ensure!(rounds > 1, "no write went around");
    fanout.window.report(load, "etcd", &format!("WatchFanout watchers={watchers}"), "grpc-wire", elapsed)
}

/// `watch-fanout`: `clients - 1` clients watch one key (with `--watchers`, that many watch
/// streams spread over them); one client writes it (the value is the send time), waits until
/// every watcher has seen the change, and writes again.
async fn watch_fanout(args: &Args) -> anyhow::Result<Outcome> {
    let load = &args.load;
    let connections = load.clients.saturating_sub(1).max(1);
    let watchers = if load.watchers > 0 { load.watchers } else { connections };
    if load.driver == crate::load::Driver::Wire {
        return watch_fanout_wire(args, connections, watchers).await;
    }
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(&args.target).await?);
    }
    let key = crate::load::run_root("bench-watched");
    let mut writer = connect(&args.target).await?;
    writer.put(key.as_str(), "0", None).await?;
    let fanout = Fanout::new(Window::new()?.slow_log(load.slow_ms), watchers);
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let mut client = clients[w % connections].clone();
        let fanout = fanout.clone();
        let (_watcher, mut stream) = client.watch(key.as_str(), None).await?;
        tasks.push(tokio::spawn(async move {
            let _keep = client;
            let (mut local, mut n) = (histogram()?, 0u64);
            while !fanout.window.stop.load(Ordering::Relaxed) {
                let Ok(message) = tokio::time::timeout(Duration::from_millis(200), stream.message()).await else {
                    continue;
                };
                let Some(response) = message? else { break };
                for kv in response.events().iter().filter_map(|e| e.kv()) {
                    fanout.saw(kv.value(), &mut local, &mut n)?;
                }
            }
            fanout.window.add(n, &local)
        }));
    }
    let driver = {
        let (writer, key) = (writer.clone(), key.clone());
        tokio::spawn(fanout.clone().write_rounds(move |value| {
            let (mut writer, key) = (writer.clone(), key.clone());
            async move { writer.put(key, value, None).await.map(drop).map_err(anyhow::Error::from) }
        }))
    };
    let elapsed = fanout.window.run(load.seconds, &load.label).await;
    let rounds = driver.await??;
    writer.delete(key.as_str(), None).await?;
    for t in tasks {
        t.await??;
    }
    anyhow::ensure!(rounds > 1, "no write went around");
    fanout.window.report(load, "etcd", &format!("WatchFanout watchers={watchers}"), "grpc", elapsed)
}
