//! Replication between servers: the TCP peer links ([`transport`]) and the replica
//! ([`replica`]): the engine's shared driver of the Zab core run on glommio over the WAL,
//! the epochs file, the snapshot directory and those links, with a pluggable state machine
//! (in the server, the write path's). Tested with real sockets and WALs in
//! `tests/tests/replicas.rs`, and as whole servers in `tests/tests/cluster.rs`.

pub mod hello;
pub mod replica;
pub mod resync;
pub mod transport;
