//! The ZooKeeper-protocol workloads, shared by both drivers (`zk`, the crate's client, and
//! `wire`, the protocol spoken directly).

/// What the workers do.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum Workload {
    /// setData of `value-bytes` on a key per session.
    Write,
    /// getData of a key per session.
    Read,
    /// getData or setData on a key per session, `--read-ratio` of them reads.
    Mixed,
    /// create + delete of ephemeral znodes.
    CreateDelete,
    /// Open a session and close it again (connect/close storms).
    Sessions,
    /// Every worker takes and releases one lock (the lock recipe), contending.
    Lock,
    /// One writer updates a key that every other session watches; latency from the write
    /// to each notification.
    WatchFanout,
    /// Create `--count` persistent znodes of `value-bytes` (for memory and restart tests).
    Fill,
}
