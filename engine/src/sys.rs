//! Process-level setup that glommio needs.

/// Raises the soft `RLIMIT_MEMLOCK` to the hard limit, and both to unlimited when the
/// process may (root, or CAP_SYS_RESOURCE). glommio locks memory for its io_uring rings and
/// registered buffers; distributions default to 8 MiB or less, which is not enough for
/// several executors. Returns the soft limit in force afterwards, in bytes
/// (`u64::MAX` = unlimited). Never fails: a limit that cannot be raised is left as it is.
pub fn raise_memlock_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0 {
            return 0;
        }
        let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 {
            return u64::MAX;
        }
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
            return limit.rlim_max;
        }
    }
    limit.rlim_cur
}

/// Lowers the calling thread's CPU priority to nice 10 (on Linux a thread has its own): for
/// background work — writing a snapshot, making a SNAP's chunks — that must not take a core
/// from the write path and the shards when they need it. Never fails: without the right to,
/// the thread keeps its priority.
pub fn background_thread() {
    // SAFETY: setpriority with who = 0 touches only the calling thread's nice value.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Deletes a large file by cutting it down `step` bytes at a time, `pause` apart, then
/// unlinking it. On ext4 freeing tens of MiB in one unlink is one large journal transaction,
/// and the WAL's next fdatasync waits for it (measured: a 186 MB snapshot purged at once
/// stalled a WAL batch 71-76 ms; WAL segments of 64 MiB, p99.9 write latency 31-46 ms with
/// plain unlinks, 11-14 ms without any). Small steps keep each transaction short. Call it on
/// a file already out of sight (renamed): a crash part-way leaves it cut.
pub fn shrink_then_remove(path: &std::path::Path, step: u64, pause: std::time::Duration) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut len = file.metadata()?.len();
    while len > step {
        len -= step;
        file.set_len(len)?;
        std::thread::sleep(pause);
    }
    drop(file);
    std::fs::remove_file(path)
}

/// Runs `future` on the current glommio executor with a timer always armed beside it, so the
/// reactor never parks with only I/O to wake it. Seen once in CI: an engine test's executor
/// slept 14 minutes in `io_uring_enter` waiting for a completion, with no request left in
/// io_uring's workers or glommio's blocking pool, and went on at once when a debugger's
/// attach interrupted that wait — a missed wakeup. A server's shards always have periodic
/// timers (session ticks, heap trimming), which bound such a miss; an executor made for one
/// task, as the tests make them, has none.
pub async fn with_reactor_ticking<F: std::future::Future>(future: F) -> F::Output {
    let ticking = glommio::spawn_local(async {
        loop {
            glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    let out = future.await;
    drop(ticking);
    out
}
