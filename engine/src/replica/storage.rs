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

    /// Frees a part of the image (in the tree's, a page directory: 8,192 znodes); false
    /// once nothing is left that is worth freeing in parts. The default frees nothing.
    ///
    /// An image's memory was allocated by the thread that applies entries. Freed on another
    /// thread, the allocator hands every block back to that thread at once, in its next
    /// collection: a million blocks cost the write path a 30-75 ms stall at the end of each
    /// snapshot of a 1M-znode tree. So a snapshot's image comes back to the applying thread
    /// ([`Snapshots::release_step`]), which frees it a part per step.
    fn release_step(&mut self) -> bool {
        false
    }

    /// The image is about to be written to a snapshot file: note what [`SnapshotImage::written`]
    /// will need (where the keyspace's values go). By default, nothing.
    fn note_placement(&mut self) {}

    /// The image was written to a snapshot file, now durable, whose payload is `payload`
    /// (mapped): the state may keep views of it instead of its own copies (the keyspace's
    /// values, moved in [`SnapshotImage::release_step`]s). By default, nothing.
    fn written(&mut self, _payload: bytes::Bytes) {}
}

impl SnapshotImage for Vec<u8> {
    fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(self)
    }
}

/// Both state machines' image (`crate::state`): written by the snapshot thread, freed a
/// part at a time on the applying thread.
impl SnapshotImage for crate::state::StateImage {
    fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.write_image(out)
    }

    fn release_step(&mut self) -> bool {
        crate::state::StateImage::release_step(self)
    }

    fn note_placement(&mut self) {
        crate::state::StateImage::note_placement(self)
    }

    fn written(&mut self, payload: bytes::Bytes) {
        crate::state::StateImage::written(self, payload)
    }
}

/// Where a snapshot arriving in pieces (a SNAP from the leader) goes as it arrives: a state
/// machine rebuilding its state, a store writing its file. `Vec<u8>` collects the pieces (what
/// both do by default).
pub trait ImageSink: std::any::Any {
    /// The next piece, in order. An error: what arrived is not (a prefix of) an image this
    /// sink can take.
    fn push(&mut self, bytes: &[u8]) -> Result<(), String>;
}

impl ImageSink for Vec<u8> {
    fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// The data tree rebuilt as its image arrives.
impl ImageSink for crate::tree::TreeLoader {
    fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        crate::tree::TreeLoader::push(self, bytes).map_err(|e| e.to_string())
    }
}

/// The tree a [`crate::tree::TreeLoader`] sink rebuilt (what a state machine on the data tree
/// returns from [`StateMachine::receive`] gets back in [`StateMachine::install_received`]).
pub fn loaded_tree(sink: Box<dyn ImageSink>) -> Result<crate::tree::DataTree, String> {
    let sink: Box<dyn std::any::Any> = sink;
    let loader = sink.downcast::<crate::tree::TreeLoader>().map_err(|_| "not the tree's loader".to_string())?;
    loader.finish().map_err(|e| e.to_string())
}

/// Both state machines rebuilt as their image arrives.
impl ImageSink for crate::state::StateLoader {
    fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        crate::state::StateLoader::push(self, bytes)
    }
}

/// The tree and the keyspace a [`crate::state::StateLoader`] sink rebuilt.
pub fn loaded_state(sink: Box<dyn ImageSink>) -> Result<(crate::tree::DataTree, crate::mvcc::KeySpace), String> {
    let sink: Box<dyn std::any::Any> = sink;
    let loader = sink.downcast::<crate::state::StateLoader>().map_err(|_| "not the state's loader".to_string())?;
    loader.finish()
}

/// The bytes a default [`ImageSink`] collected.
fn collected(sink: Box<dyn ImageSink>) -> Result<Vec<u8>, String> {
    let sink: Box<dyn std::any::Any> = sink;
    sink.downcast::<Vec<u8>>().map(|bytes| *bytes).map_err(|_| "not the sink this store made".to_string())
}

/// Bytes of one [`Message::SnapChunk`].
pub const SNAP_CHUNK_BYTES: usize = 1 << 20;

/// An image cut into a SNAP's messages as it is written: [`Message::Snap`] first, a
/// [`Message::SnapChunk`] per `chunk` bytes, and [`SnapChunker::finish`]'s
/// [`Message::SnapEnd`] with the length and xxh3 of everything. `emit` gets each message; an
/// error from it (the link is gone) ends the writing.
pub struct SnapChunker<F: FnMut(Message) -> std::io::Result<()>> {
    epoch: u32,
    chunk: usize,
    buf: Vec<u8>,
    bytes: u64,
    hash: Box<xxhash_rust::xxh3::Xxh3>,
    emit: F,
}

impl<F: FnMut(Message) -> std::io::Result<()>> SnapChunker<F> {
    /// Starts the SNAP of the state at `zxid` for `epoch`, in pieces of `chunk` bytes.
    pub fn new(epoch: u32, zxid: Zxid, chunk: usize, mut emit: F) -> std::io::Result<Self> {
        emit(Message::Snap { epoch, zxid })?;
        let chunk = chunk.max(1);
        Ok(SnapChunker { epoch, chunk, buf: Vec::with_capacity(chunk), bytes: 0, hash: Box::default(), emit })
    }

    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data: Payload = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk)).into();
        self.hash.update(&data);
        self.bytes += data.len() as u64;
        (self.emit)(Message::SnapChunk { epoch: self.epoch, data })
    }

    /// Sends what is buffered, then the SNAP's end.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.flush_chunk()?;
        let end = Message::SnapEnd { epoch: self.epoch, bytes: self.bytes, checksum: self.hash.digest() };
        (self.emit)(end)
    }
}

impl<F: FnMut(Message) -> std::io::Result<()>> std::io::Write for SnapChunker<F> {
    fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len();
        while !bytes.is_empty() {
            let room = self.chunk - self.buf.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(now);
            bytes = rest;
            if self.buf.len() == self.chunk {
                self.flush_chunk()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The SNAP of `image` (the state at `zxid`) for `epoch` as messages of `chunk` bytes: what
/// [`Peers::send_snapshot`] sends by default.
pub fn snapshot_messages(epoch: u32, zxid: Zxid, image: &dyn SnapshotImage, chunk: usize) -> Vec<Message> {
    let mut out = Vec::new();
    let push = |m: Message| {
        out.push(m);
        Ok(())
    };
    // Writing into memory cannot fail (short of memory, which aborts).
    let written = SnapChunker::new(epoch, zxid, chunk, push).and_then(|mut w| {
        image.write_to(&mut w)?;
        w.finish()
    });
    debug_assert!(written.is_ok());
    out
}

/// Point-in-time images of the state machine.
pub trait Snapshots {
    /// A loaded snapshot's bytes (shared: a state machine may keep parts of a mapped file
    /// rather than copy them, see [`StateMachine::install_shared`]).
    type Image: AsRef<[u8]> + Into<bytes::Bytes>;

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

    /// Whether a background write is running (or its image is still being freed).
    fn busy(&self) -> bool;

    /// The snapshot [`Snapshots::load_newest`] gave was installed: what the store still holds
    /// of it for reading can go (a mapped file's pages, from resident memory). By default,
    /// nothing.
    fn installed(&mut self) {}

    /// Frees a part of the image of the last background write, if it is still held (see
    /// [`SnapshotImage::release_step`]); the driver calls it once per batch applied.
    fn release_step(&mut self) {}

    /// The size in bytes of the newest snapshot written or loaded (0: none, or a store that
    /// does not say). The driver waits for the log to grow by half of it between snapshots.
    fn newest_bytes(&self) -> u64 {
        0
    }

    /// The background write that finished since the last call: the zxid it covers and,
    /// once written and the old ones deleted, the zxid of the oldest snapshot kept.
    fn finished(&mut self) -> Option<(Zxid, Result<Option<Zxid>, StorageError>)>;

    /// Writes the snapshot at `zxid` durably before returning.
    fn write(&mut self, zxid: Zxid, data: &[u8]) -> Result<(), StorageError>;

    /// Starts writing a snapshot at `zxid` that arrives in pieces (a SNAP from the leader);
    /// [`Snapshots::received`] gets the sink back once all have arrived. A store that can
    /// (the snapshot directory) writes each piece as it comes; by default they are collected.
    fn receive(&mut self, _zxid: Zxid) -> Result<Box<dyn ImageSink>, StorageError> {
        Ok(Box::new(Vec::new()))
    }

    /// Makes the snapshot received through `sink` durable before returning (it must be on
    /// disk before anything logged after it).
    fn received(&mut self, zxid: Zxid, sink: Box<dyn ImageSink>) -> Result<(), StorageError> {
        let bytes = collected(sink).map_err(|reason| StorageError::Received { zxid, reason })?;
        self.write(zxid, &bytes)
    }
}

/// The FIFO links to the other servers.
pub trait Peers {
    /// Queues `msg` for `to`. A message that cannot be delivered is reported later as
    /// [`super::Input::Disconnected`] for that peer, and nothing after it on the link is
    /// delivered (the receiver never sees a gap).
    fn send(&mut self, to: ServerId, msg: Message);

    /// Queues the SNAP of `image`, the state at `zxid`, for `to`: its messages (see
    /// [`SnapChunker`]) ahead of anything sent to `to` after this call. A transport that can
    /// (the server's) makes the image as the link drains, holding a bounded part of it; by
    /// default it is made now and sent in [`SNAP_CHUNK_BYTES`] pieces.
    fn send_snapshot(&mut self, to: ServerId, epoch: u32, zxid: Zxid, image: Box<dyn SnapshotImage>) {
        for msg in snapshot_messages(epoch, zxid, &*image, SNAP_CHUNK_BYTES) {
            self.send(to, msg);
        }
    }
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

    /// As [`StateMachine::install`], from an image the state may keep views of instead of
    /// copying (a snapshot file stays mapped while its views live). By default, `install`.
    fn install_shared(&mut self, zxid: Zxid, image: bytes::Bytes) {
        self.install(zxid, &image);
    }

    /// Starts receiving a snapshot covering `zxid` in pieces (a SNAP from the leader);
    /// [`StateMachine::install_received`] gets the sink back once all have arrived. A state
    /// machine that can (the data tree) rebuilds its state as the pieces come; by default
    /// they are collected for [`StateMachine::install`].
    fn receive(&mut self, _zxid: Zxid) -> Box<dyn ImageSink> {
        Box::new(Vec::new())
    }

    /// Replaces the whole state with the snapshot received through `sink`.
    fn install_received(&mut self, zxid: Zxid, sink: Box<dyn ImageSink>) -> Result<(), String> {
        let bytes = collected(sink)?;
        self.install(zxid, &bytes);
        Ok(())
    }

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
