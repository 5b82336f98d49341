//! What a [`super::Replica`] runs its actions against: the log, the epochs, the snapshots,
//! the links to its peers and the state machine it applies committed entries to. Production
//! implements them on glommio DMA files and TCP ([`super::WalLog`], [`super::EpochFile`],
//! [`super::SnapshotDir`], the server's transport); the simulator in `tests/` implements them
//! with seeded faults. One conformance suite (`tests/src/storage_suite.rs`) runs against both.
//!
//! The async methods return futures the driver awaits in place: a store whose work is done
//! when the call returns (the simulator's) returns ready futures, so a simulated step never
//! waits. Every method runs on the replica's own thread (glommio executors are
//! single-threaded), so no future needs to be `Send`.

use super::StorageError;
use crate::log::{SessionId, Zxid};
use crate::zab::{LogEntry, Message, Payload, Role, ServerId};

/// The durable log of one server.
///
/// Durability is reported out of band: once the entries of an [`Log::append`] are durable,
/// whoever owns the store delivers [`super::Input::Durable`] with the last of their zxids to
/// the driver (production from a task awaiting the WAL's flush, the simulator from a
/// scheduled fsync). A report covers every entry appended before it.
#[allow(async_fn_in_trait, reason = "single-threaded executors: no future here needs to be Send")]
pub trait Log {
    /// Appends `entries` (consecutive, above the last entry) after everything appended
    /// before. May wait for room in the store's queue. An error is fatal: the store refuses
    /// everything after it (a failed fsync is never retried).
    async fn append(&mut self, entries: &[LogEntry]) -> Result<(), StorageError>;

    /// Drops every entry above `after`, appended or durable, and returns once the cut is
    /// durable. Durability reports for dropped entries that arrive later must be ignored by
    /// whoever delivers them.
    async fn truncate_after(&mut self, after: Zxid) -> Result<(), StorageError>;

    /// A kept snapshot covers everything up to `zxid`: the store may drop those entries
    /// (production recycles whole WAL segments). Entries above `zxid` stay.
    fn release_through(&mut self, zxid: Zxid) -> Result<(), StorageError>;

    /// The last zxid known durable.
    fn durable(&self) -> Zxid;

    /// The error that stopped the store, if one did: a failed fsync must stop the replica
    /// even when no further append would find it (an idle follower must not go on looking
    /// healthy with a dead log).
    fn failed(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Whether the disk has no room for what the log must prepare next (production: the
    /// WAL's next segment). A server in an ensemble then withdraws from it until there is.
    fn out_of_space(&self) -> bool {
        false
    }
}

/// The two epochs a server must never forget (ZooKeeper's `acceptedEpoch` and
/// `currentEpoch` files).
pub trait Epochs {
    /// (accepted, current) as last saved; (0, 0) for a fresh server. A damaged record is an
    /// error, never (0, 0).
    fn load(&mut self) -> Result<(u32, u32), StorageError>;

    /// Makes both durable before returning.
    fn save(&mut self, accepted: u32, current: u32) -> Result<(), StorageError>;
}

/// A state machine's image frozen at one point and written out later, on another thread,
/// while entries go on being applied ([`StateMachine::freeze`]).
pub trait SnapshotImage: Send {
    /// Writes the image: the bytes [`StateMachine::install`] takes back.
    fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()>;
}

impl SnapshotImage for Vec<u8> {
    fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(self)
    }
}

/// Point-in-time images of the state machine.
pub trait Snapshots {
    /// A loaded snapshot's bytes.
    type Image: AsRef<[u8]>;

    /// The newest snapshot that verifies (damaged newer ones are passed over and logged),
    /// with the zxid it covers.
    fn load_newest(&mut self) -> Result<Option<(Zxid, Self::Image)>, StorageError>;

    /// Starts writing `data` as the snapshot at `zxid` in the background, then deleting the
    /// snapshots beyond the number kept. At most one runs at a time ([`Snapshots::busy`]).
    fn start(&mut self, zxid: Zxid, data: Vec<u8>);

    /// As [`Snapshots::start`], for an image written as it is produced; a store that can
    /// stream it (the snapshot directory) holds only a buffer of it at a time. By default,
    /// its bytes through `start`.
    fn start_image(&mut self, zxid: Zxid, image: Box<dyn SnapshotImage>) {
        let mut data = Vec::new();
        match image.write_to(&mut data) {
            Ok(()) => self.start(zxid, data),
            Err(e) => tracing::error!(error = %e, %zxid, "a snapshot image could not be made"),
        }
    }

    /// Whether a background write is running.
    fn busy(&self) -> bool;

    /// The background write that finished since the last call: the zxid it covers and,
    /// once written and the old ones deleted, the zxid of the oldest snapshot kept.
    fn finished(&mut self) -> Option<(Zxid, Result<Option<Zxid>, StorageError>)>;

    /// Writes the snapshot at `zxid` durably before returning (a SNAP from the leader,
    /// which must be on disk before anything logged after it).
    fn write(&mut self, zxid: Zxid, data: &[u8]) -> Result<(), StorageError>;
}

/// The FIFO links to the other servers.
pub trait Peers {
    /// Queues `msg` for `to`. A message that cannot be delivered is reported later as
    /// [`super::Input::Disconnected`] for that peer, and nothing after it on the link is
    /// delivered (the receiver never sees a gap).
    fn send(&mut self, to: ServerId, msg: Message);
}

/// What a replica applies committed entries to, and hears the protocol's other news on.
/// Calls come as the driver carries out the core's actions, in their order, and never while
/// the driver awaits a store (so a state machine shared with other tasks of the executor is
/// never borrowed across an await).
pub trait StateMachine {
    /// Applies committed entries: consecutive, zxids strictly increasing across calls.
    fn apply(&mut self, entries: &[LogEntry]);

    /// Replays entries of a lone server's own log at start, before it serves anyone (it is
    /// its own quorum, so its whole log is committed). Nothing waits for them.
    fn replay(&mut self, entries: &[LogEntry]) {
        self.apply(entries);
    }

    /// The whole applied state, as bytes [`StateMachine::install`] takes back.
    fn snapshot(&self) -> Vec<u8>;

    /// The applied state frozen now, for a background snapshot written while entries go on
    /// being applied. A state machine that can freeze itself cheaply (the data tree's
    /// copy-on-write view) keeps the pause this costs the replica constant; by default it is
    /// [`StateMachine::snapshot`]'s bytes, made now.
    fn freeze(&self) -> Box<dyn SnapshotImage> {
        Box::new(self.snapshot())
    }

    /// Replaces the whole state with a snapshot covering everything up to `zxid`.
    fn install(&mut self, zxid: Zxid, data: &[u8]);

    /// Sync `id` is done: the entries applied so far include every write proposed before
    /// it. `None`: this server has no leader to sync with.
    fn synced(&mut self, _id: u64, _zxid: Option<Zxid>) {}

    /// (Leader only.) These sessions were seen alive somewhere in the ensemble.
    fn touched(&mut self, _sessions: Vec<SessionId>) {}

    /// The role changed; `last_logged` is the log's last zxid at that moment (for a leader
    /// that just got established: where its proposals continue).
    fn role_changed(&mut self, _role: Role, _last_logged: Zxid) {}

    /// A peer's state machine sent `data` (carried as [`Message::Forward`] on the link that
    /// carries the protocol, so it is ordered with the syncs and touches sent after it).
    fn message(&mut self, _from: ServerId, _data: &Payload) {}
}
