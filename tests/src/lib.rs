//! Shared helpers for Baton's cross-crate tests.

pub mod crash_payload;
pub mod etcd;
pub mod linearizability;

/// Entries behind the durable end that the WAL crash child never releases for reuse.
pub const CRASH_KEEP_ENTRIES: u64 = 4000;
pub mod clients;
pub mod cluster;
pub mod load;
pub mod nemesis;
pub mod proxy;
pub mod raw;
pub mod server;
pub mod sim;
pub mod storage_suite;

/// A temporary directory on the build's filesystem (O_DIRECT needs a disk filesystem; `/tmp`
/// may be tmpfs). `BATON_TEST_DIR` overrides the parent.
pub fn temp_dir() -> tempfile::TempDir {
    let parent = std::env::var_os("BATON_TEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-tmp"));
    std::fs::create_dir_all(&parent).expect("create test dir parent");
    tempfile::tempdir_in(parent).expect("create temp dir")
}
