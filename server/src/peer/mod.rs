//! Replication between servers: peer links ([`transport`]) and the driver of the Zab core
//! ([`replica`]: WAL, epochs file, snapshots and SNAP transfer, a pluggable state machine,
//! which in the server is [`crate::core::Core`]). Tested with real sockets and WALs in
//! `tests/tests/replicas.rs`, and as whole servers in `tests/tests/cluster.rs`.

mod queue;
pub mod replica;
pub mod transport;
