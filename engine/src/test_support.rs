//! Helpers for the engine's unit tests.

use std::future::Future;

/// Runs `future` to completion on a fresh glommio executor (with a small io_uring buffer
/// pool, the memlock limit raised, and a timer always armed: `sys::with_reactor_ticking`)
/// and returns its output.
pub fn run<F, T>(future: F) -> T
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    crate::sys::raise_memlock_limit();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("glommio executor (is io_uring available and RLIMIT_MEMLOCK sufficient?)");
    executor.run(crate::sys::with_reactor_ticking(future))
}

/// A temporary directory on the same filesystem as the build (O_DIRECT needs a real disk
/// filesystem; `/tmp` may be tmpfs). `BATON_TEST_DIR` overrides the parent.
pub fn temp_dir() -> tempfile::TempDir {
    let parent = std::env::var_os("BATON_TEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-tmp"));
    std::fs::create_dir_all(&parent).expect("create test dir parent");
    tempfile::tempdir_in(parent).expect("create temp dir")
}
