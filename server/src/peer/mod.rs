//! Replication between servers: peer links ([`transport`]) and the driver of the Zab core
//! ([`replica`]: WAL, epochs file, snapshots and SNAP transfer, a pluggable state machine).
//! Not yet wired into the client-serving runtime: the `baton` server still runs as a single
//! node (issue 4).

mod queue;
pub mod replica;
pub mod transport;

#[cfg(test)]
mod tests;
