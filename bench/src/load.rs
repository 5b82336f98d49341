//! What every target shares: the load options, the measured window (warm-up, progress,
//! histogram), open-loop pacing, and the report (text and JSON).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Options of the load itself, the same for every target.
#[derive(clap::Args, Clone, Debug)]
pub struct Load {
    /// Sessions (ZooKeeper) or gRPC connections (etcd).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Requests in flight per client (closed loop), or workers per client (open loop).
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Seconds measured (after a warm-up of a fifth of that).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Open loop: total requests per second, sent on a fixed schedule whatever the replies
    /// do; latency counts from each request's intended send time, so queueing shows.
    /// Without it: closed loop (each worker sends when its previous reply arrives).
    #[arg(long)]
    pub rate: Option<f64>,
    /// `mixed`: fraction of operations that are reads.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Label printed with the result (for example "baton" or "zookeeper").
    #[arg(long, default_value = "target")]
    pub label: String,
    /// Load-generator threads (1: a single-threaded runtime, which costs the least CPU per
    /// request on a small machine shared with the server).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// How ZooKeeper-protocol workloads talk to the server: `wire` speaks the protocol
    /// directly (write, read, mixed, create-delete; closed loop), `crate` goes through the
    /// `zookeeper-client` crate (every workload). The load is the same — sessions, requests in
    /// flight, values — but the crate costs the load generator over three times the CPU per
    /// request (3.5 µs against 1.05 µs, reads, this machine), which on a machine shared with
    /// the server is CPU the server does not get.
    #[arg(long, value_enum, default_value = "wire")]
    pub driver: Driver,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// `write` (wire driver): each setData goes to a znode of an earlier `fill` drawn at
    /// random among the first N (`/fill/n000000000`…) instead of the session's own key, so
    /// that writes land all over a large tree (what a snapshot's copy-on-write pays for).
    /// 0: the session's own key.
    #[arg(long, default_value_t = 0)]
    pub spread: u64,
    /// etcd `watch-fanout`: watchers in all, spread over the `clients - 1` watching
    /// connections, each its own watch stream (0: one per connection).
    #[arg(long, default_value_t = 0)]
    pub watchers: usize,
    /// ZooKeeper protocol, wire driver: connect over TLS (a secure client port), trusting the
    /// CA certificates in this PEM file; the server's certificate must name its IP address.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Print every measured operation slower than this many milliseconds to stderr, with
    /// the Unix time it completed, to line stalls up with the server's log.
    #[arg(long)]
    pub slow_ms: Option<f64>,
}

/// How a ZooKeeper-protocol workload reaches the server (see [`Load::driver`]).
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum Driver {
    /// The client protocol spoken directly, replies answered in batches (`wire.rs`).
    Wire,
    /// The `zookeeper-client` crate, one task per request in flight.
    Crate,
}

impl Load {
    /// Workers in all.
    pub fn workers(&self) -> usize {
        self.clients.max(1) * self.depth.max(1)
    }

    /// The pacing of worker `index`.
    pub fn pacer(&self, index: usize) -> Pacer {
        match self.rate {
            Some(rate) if rate > 0.0 => {
                let interval = Duration::from_secs_f64(self.workers() as f64 / rate);
                // Spread the workers' first sends over one interval.
                let offset = interval.mul_f64(index as f64 / self.workers() as f64);
                Pacer { next: Some(Instant::now() + offset), interval }
            }
            _ => Pacer { next: None, interval: Duration::ZERO },
        }
    }

    /// The mix of worker `index`: which of its operations are reads.
    pub fn mix(&self, index: usize) -> Mix {
        // Offsetting workers keeps them from all reading (or writing) at once.
        Mix { ratio: self.read_ratio.clamp(0.0, 1.0), acc: (index as f64 * 0.37) % 1.0 }
    }
}

/// When a worker sends next.
pub struct Pacer {
    next: Option<Instant>,
    interval: Duration,
}

impl Pacer {
    /// Waits for the next send time (open loop) and returns the instant latency counts from:
    /// the intended send time, or now in a closed loop.
    pub async fn start(&mut self) -> Instant {
        match self.next {
            None => Instant::now(),
            Some(at) => {
                if at > Instant::now() {
                    tokio::time::sleep_until(at.into()).await;
                }
                self.next = Some(at + self.interval);
                at
            }
        }
    }
}

/// A deterministic interleaving of reads and writes at a given ratio.
pub struct Mix {
    ratio: f64,
    acc: f64,
}

impl Mix {
    /// Whether the next operation is a read.
    pub fn next_is_read(&mut self) -> bool {
        self.acc += self.ratio;
        if self.acc >= 1.0 {
            self.acc -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A name for this run's keys, unique within the process and across processes.
pub fn run_root(prefix: &str) -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    format!("/{prefix}-{}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed))
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Operations per second in the measured window.
    pub ops_per_sec: f64,
    /// (quantile, milliseconds), from 0 to 1, for latency plots.
    pub cdf: Vec<(f64, f64)>,
    /// p50, p90, p99, p99.9, max in milliseconds.
    pub p50: f64,
    #[allow(missing_docs)]
    pub p90: f64,
    #[allow(missing_docs)]
    pub p99: f64,
    #[allow(missing_docs)]
    pub p999: f64,
    #[allow(missing_docs)]
    pub max: f64,
    /// The servers' CPU time per operation in microseconds (`compare` fills it in).
    pub server_cpu_us: Option<f64>,
}

/// One run's shared state: whether to record, whether to stop, and the totals.
#[derive(Clone)]
pub struct Window {
    /// Record results (after the warm-up).
    pub measuring: Arc<AtomicBool>,
    /// Workers stop.
    pub stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    live_ops: Arc<AtomicU64>,
    hist: Arc<Mutex<Histogram<u64>>>,
    slow: Option<Duration>,
}

/// A histogram for one worker (1 ns to 60 s, 3 significant digits).
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?)
}

impl Window {
    /// A window nobody has started measuring.
    pub fn new() -> anyhow::Result<Window> {
        Ok(Window {
            measuring: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            ops: Arc::new(AtomicU64::new(0)),
            live_ops: Arc::new(AtomicU64::new(0)),
            hist: Arc::new(Mutex::new(histogram()?)),
            slow: None,
        })
    }

    /// Prints operations slower than `ms` (see [`Load::slow_ms`]).
    pub fn slow_log(mut self, ms: Option<f64>) -> Window {
        self.slow = ms.map(|ms| Duration::from_secs_f64(ms / 1000.0));
        self
    }

    /// Records one operation that started (or was meant to start) at `start`.
    pub fn record(&self, local: &mut Histogram<u64>, n: &mut u64, start: Instant) -> anyhow::Result<()> {
        if self.measuring.load(Ordering::Relaxed) {
            let took = start.elapsed();
            local.record(took.as_nanos().max(1) as u64)?;
            if self.slow.is_some_and(|slow| took > slow) {
                let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                eprintln!("slow: {:.3} ms, done at {:.3}", took.as_secs_f64() * 1000.0, at.as_secs_f64());
            }
            *n += 1;
            self.live_ops.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Warm-up (a fifth of `seconds`), then the measured window with a progress bar on a
    /// terminal; returns the window's length.
    pub async fn run(&self, seconds: f64, label: &str) -> Duration {
        let measure = Duration::from_secs_f64(seconds);
        tokio::time::sleep(measure / 5).await;
        let ticks = (seconds * 10.0).ceil().max(1.0) as u64;
        let bar = indicatif::ProgressBar::new(ticks);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        self.measuring.store(true, Ordering::Relaxed);
        let start = Instant::now();
        let end = start + measure;
        while Instant::now() < end {
            tokio::time::sleep((end - Instant::now()).min(Duration::from_millis(100))).await;
            let rate = self.live_ops.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
            bar.set_position((start.elapsed().as_secs_f64() * 10.0) as u64);
            bar.set_message(format!("{rate:.0} ops/s"));
        }
        self.measuring.store(false, Ordering::Relaxed);
        let elapsed = start.elapsed();
        self.stop.store(true, Ordering::Relaxed);
        bar.finish_and_clear();
        elapsed
    }

    /// Adds one worker's results.
    pub fn add(&self, n: u64, local: &Histogram<u64>) -> anyhow::Result<()> {
        self.ops.fetch_add(n, Ordering::Relaxed);
        self.hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.add(local)?;
        Ok(())
    }

    /// Prints the result line (and appends JSON when asked). `driver` names what talked to
    /// the server: `wire` or `crate` (see [`Load::driver`]), or `grpc` for etcd.
    pub fn report(
        &self,
        load: &Load,
        target: &str,
        workload: &str,
        driver: &str,
        elapsed: Duration,
    ) -> anyhow::Result<Outcome> {
        let h = self.hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let n = self.ops.load(Ordering::Relaxed);
        let rate = n as f64 / elapsed.as_secs_f64();
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
        let mode = match load.rate {
            Some(r) => format!(" open-loop rate={r}"),
            None => String::new(),
        };
        println!(
            "{:<10} {workload} clients={} depth={} value={}B{mode} driver={}: {:>9.0} ops/s  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
            load.label,
            load.clients,
            load.depth,
            load.value_bytes,
            driver,
            rate,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1e6,
        );
        if let Some(path) = &load.json {
            use std::io::Write as _;
            let record = serde_json::json!({
                "label": load.label, "target": target, "workload": workload,
                "clients": load.clients, "depth": load.depth, "value_bytes": load.value_bytes,
                "open_loop_rate": load.rate, "driver": driver, "seconds": elapsed.as_secs_f64(), "operations": n,
                "ops_per_sec": rate, "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99),
                "p999_ms": ms(0.999), "max_ms": h.max() as f64 / 1e6,
            });
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(file, "{record}")?;
        }
        let cdf = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0]
            .into_iter()
            .map(|q| (q, if q >= 1.0 { h.max() as f64 / 1e6 } else { ms(q) }))
            .collect();
        Ok(Outcome {
            ops_per_sec: rate,
            cdf,
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1e6,
            server_cpu_us: None,
        })
    }
}
