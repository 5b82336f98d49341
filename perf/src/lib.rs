//! Shared pieces of Baton's benchmarks: executor setup, latency summaries, and an allocator
//! that counts what is asked of it (`counting`).

pub mod counting;

use std::time::Duration;

use hdrhistogram::Histogram;

/// Runs `future` on a glommio executor pinned to nothing, with memlock raised.
pub fn run<F, T>(future: F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    baton_engine::sys::raise_memlock_limit();
    let executor =
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().map_err(std::io::Error::from)?;
    Ok(executor.run(future))
}

/// A latency histogram in nanoseconds (1 ns .. 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts.
    #[allow(clippy::unwrap_used)]
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

/// Formats nanoseconds as milliseconds with three decimals.
pub fn ms(nanos: u64) -> String {
    format!("{:.3} ms", nanos as f64 / 1e6)
}

/// Throughput in MB/s (10^6 bytes).
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}
