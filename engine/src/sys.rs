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
