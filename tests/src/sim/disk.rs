//! The simulator's side of the replica's stores: one server's disk (what survives a crash)
//! and the [`Log`], [`Epochs`] and [`Snapshots`] stores the shared driver
//! (`baton_engine::replica::Replica`) runs against. They never wait: fsyncs are scheduled by
//! the simulator (`Observations::fsync` asks for one), so is the end of a background
//! snapshot; a crash keeps any prefix of what was not yet fsync'ed.

use std::cell::RefCell;
use std::rc::Rc;

use baton_engine::replica::{Epochs, Log, SnapshotImage, Snapshots, StorageError};
use baton_engine::zab::{LogEntry, Message, Payload, Role, ServerId};
use baton_engine::Zxid;

/// What survives a crash.
#[derive(Debug, Default, Clone)]
pub struct Disk {
    /// The accepted epoch.
    pub accepted_epoch: u32,
    /// The current epoch.
    pub current_epoch: u32,
    /// Snapshots written, in zxid order: the zxid each covers and the encoded state.
    pub snapshots: Vec<(Zxid, Payload)>,
    /// The log after what the snapshots cover: appended entries, the first `durable` of
    /// them fsync'ed.
    pub log: Vec<LogEntry>,
    /// Invariant: durable <= log.len().
    pub durable: usize,
    /// Bumped when the log is cut or shifted: fsync completions of before are void.
    pub generation: u64,
    /// The log and snapshots were discarded (`--resync`): the server votes for no one until
    /// a leader has synchronised it (the marker file in production).
    pub resync_pending: bool,
    /// No room left since this virtual time: nothing appended becomes durable until it is
    /// freed, and the log says it is out of space (the server withdraws from its ensemble
    /// meanwhile).
    pub full_since: Option<u64>,
}

impl Disk {
    /// The zxid the newest snapshot covers.
    pub fn snapshot_zxid(&self) -> Zxid {
        self.snapshots.last().map_or(Zxid::ZERO, |(z, _)| *z)
    }

    /// Adds a snapshot, keeping them in zxid order (as files named by zxid list).
    pub fn add_snapshot(&mut self, zxid: Zxid, data: Payload) {
        self.snapshots.retain(|(z, _)| *z != zxid);
        let at = self.snapshots.partition_point(|(z, _)| *z < zxid);
        self.snapshots.insert(at, (zxid, data));
    }

    /// A crash: of what was appended but not fsync'ed, any prefix may have reached the
    /// disk. Returns (durable, appended, kept) entry counts.
    pub fn crash(&mut self, rng: &mut rand::rngs::StdRng) -> (usize, usize, usize) {
        use rand::Rng;
        let (durable, len) = (self.durable, self.log.len());
        let keep = rng.random_range(durable..=len);
        self.log.truncate(keep);
        self.durable = keep;
        self.generation += 1;
        (durable, len, keep)
    }

    /// The last durable zxid.
    pub fn durable_zxid(&self) -> Zxid {
        match self.durable.checked_sub(1).and_then(|i| self.log.get(i)) {
            Some(e) => e.zxid,
            None => self.snapshot_zxid(),
        }
    }
}

/// One applied batch, as the state machine saw it.
#[derive(Debug, Clone)]
pub struct AppliedBatch {
    /// Index of its first entry in the applied list.
    pub from: usize,
    /// The entries.
    pub entries: Vec<LogEntry>,
    /// The epoch this server led (established) when it applied them, if it did.
    pub leading: Option<u32>,
}

/// A read after a sync, as the state machine answered it.
#[derive(Debug, Clone)]
pub struct SyncedRead {
    /// The sync's id.
    pub id: u64,
    /// The zxid the sync waited for (`None`: no leader to sync with).
    pub zxid: Option<Zxid>,
    /// The last zxid applied when it was answered.
    pub read: Zxid,
    /// Each register's value then.
    pub values: Vec<Option<u64>>,
}

/// What the state machine saw, in the order it saw it.
#[derive(Debug, Clone)]
pub enum Observed {
    /// A batch applied.
    Applied(AppliedBatch),
    /// A snapshot installed: its zxid and the state it holds.
    Installed(Zxid, Vec<LogEntry>),
    /// A sync done, and the read after it.
    Synced(SyncedRead),
    /// Sessions renewed: how many, and whether this server led then.
    Touched(usize, bool),
    /// The role changed.
    Role(Role),
}

/// What one server's replica did during a step, for the simulator to check and act on
/// after it: the network sends, the fsyncs to schedule, and what the state machine saw.
#[derive(Debug, Default)]
pub struct Observations {
    /// Messages sent, in order.
    pub sent: Vec<(ServerId, Message)>,
    /// The log changed: schedule an fsync of all of it.
    pub fsync: bool,
    /// A background snapshot started: schedule its end.
    pub snapshot_started: bool,
    /// What the state machine saw, in order.
    pub events: Vec<Observed>,
    /// The snapshot installed during this step, if any (its log is then emptied).
    pub installed: Option<Zxid>,
    /// Guarantees broken inside a store (reported by the simulator after the step).
    pub violations: Vec<String>,
}

/// What a server's stores share with the simulator.
pub type Seen = Rc<RefCell<Observations>>;

/// The log store on a simulated disk.
pub struct SimLog {
    /// The disk.
    pub disk: Rc<RefCell<Disk>>,
    /// The state machine's applied entries (a truncation must never cut one).
    pub applied: Rc<RefCell<Vec<LogEntry>>>,
    /// Observations.
    pub seen: Seen,
}

impl Log for SimLog {
    async fn append(&mut self, entries: &[LogEntry]) -> Result<(), StorageError> {
        self.disk.borrow_mut().log.extend_from_slice(entries);
        self.seen.borrow_mut().fsync = true;
        Ok(())
    }

    async fn truncate_after(&mut self, after: Zxid) -> Result<(), StorageError> {
        let mut disk = self.disk.borrow_mut();
        // No truncation cuts an applied entry, but the one that empties the log after a SNAP
        // replaced the state.
        let applied = self.applied.borrow().last().map_or(Zxid::ZERO, |e| e.zxid);
        let after_install = after == Zxid::ZERO && self.seen.borrow().installed == Some(applied);
        if applied > after && !after_install {
            self.seen.borrow_mut().violations.push(format!("truncation after {after} cuts applied {applied}"));
        }
        disk.log.retain(|e| e.zxid <= after);
        disk.durable = disk.durable.min(disk.log.len());
        disk.generation += 1;
        self.seen.borrow_mut().fsync = true;
        Ok(())
    }

    fn release_through(&mut self, zxid: Zxid) -> Result<(), StorageError> {
        let mut disk = self.disk.borrow_mut();
        let before = disk.log.len();
        disk.log.retain(|e| e.zxid > zxid);
        let dropped = before - disk.log.len();
        disk.durable = disk.durable.saturating_sub(dropped);
        disk.generation += 1;
        self.seen.borrow_mut().fsync = true;
        Ok(())
    }

    fn durable(&self) -> Zxid {
        self.disk.borrow().durable_zxid()
    }

    fn out_of_space(&self) -> bool {
        self.disk.borrow().full_since.is_some()
    }
}

/// The epochs on a simulated disk (saved at once: a save is synchronous).
pub struct SimEpochs(pub Rc<RefCell<Disk>>);

impl Epochs for SimEpochs {
    fn load(&mut self) -> Result<(u32, u32), StorageError> {
        let disk = self.0.borrow();
        Ok((disk.accepted_epoch, disk.current_epoch))
    }

    fn save(&mut self, accepted: u32, current: u32) -> Result<(), StorageError> {
        let mut disk = self.0.borrow_mut();
        disk.accepted_epoch = accepted;
        disk.current_epoch = current;
        Ok(())
    }
}

/// A background snapshot: what it covers, and whether the simulator has written it.
pub struct SnapshotJob {
    /// The zxid it covers.
    pub zxid: Zxid,
    /// The encoded state.
    pub data: Payload,
    /// A frozen image still to be written (`start_image`): made into `data` when the job is
    /// written, later in simulated time, after the state machine applied more — as the
    /// snapshot thread writes a view of the tree while the write path goes on.
    pub image: Option<Box<dyn SnapshotImage>>,
    /// Written (and older ones purged): the oldest snapshot kept.
    pub written: Option<Zxid>,
    /// The image once written, told so (its keyspace's values move into the written bytes as
    /// into a snapshot file), to be released a step at a time as the snapshot directory does.
    pub done: Option<Box<dyn SnapshotImage>>,
}

impl std::fmt::Debug for SnapshotJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotJob")
            .field("zxid", &self.zxid)
            .field("bytes", &self.data.len())
            .field("image pending", &self.image.is_some())
            .field("written", &self.written)
            .finish()
    }
}

/// A running background snapshot, shared with the simulator (which ends it).
pub type Job = Rc<RefCell<Option<SnapshotJob>>>;

/// The snapshot store on a simulated disk.
pub struct SimSnapshots {
    /// The disk.
    pub disk: Rc<RefCell<Disk>>,
    /// The background snapshot, if one runs.
    pub job: Job,
    /// Observations.
    pub seen: Seen,
    /// The last snapshot's image, released a step at a time.
    pub releasing: Option<Box<dyn SnapshotImage>>,
}

/// Writes the job's snapshot to the disk and deletes all but the newest `keep`: what a
/// background snapshot does when it is done.
pub fn finish_job(disk: &mut Disk, job: &mut SnapshotJob, keep: usize) {
    if let Some(mut image) = job.image.take() {
        let mut data = Vec::new();
        image.note_placement();
        image.write_to(&mut data).expect("an image writes into memory");
        job.data = data.into();
        image.written(bytes::Bytes::from_owner(job.data.clone()));
        job.done = Some(image);
    }
    disk.add_snapshot(job.zxid, job.data.clone());
    let cut = disk.snapshots.len().saturating_sub(keep.max(1));
    disk.snapshots.drain(..cut);
    job.written = Some(disk.snapshots.first().map_or(job.zxid, |(z, _)| *z));
}

impl Snapshots for SimSnapshots {
    type Image = Vec<u8>;

    fn load_newest(&mut self) -> Result<Option<(Zxid, Vec<u8>)>, StorageError> {
        Ok(self.disk.borrow().snapshots.last().map(|(zxid, image)| (*zxid, image.to_vec())))
    }

    fn start(&mut self, zxid: Zxid, data: Vec<u8>) {
        let mut job = self.job.borrow_mut();
        if job.is_none() {
            *job = Some(SnapshotJob { zxid, data: data.into(), image: None, written: None, done: None });
            self.seen.borrow_mut().snapshot_started = true;
        }
    }

    fn start_image(&mut self, zxid: Zxid, image: Box<dyn SnapshotImage>) {
        let mut job = self.job.borrow_mut();
        if job.is_none() {
            *job = Some(SnapshotJob { zxid, data: Vec::new().into(), image: Some(image), written: None, done: None });
            self.seen.borrow_mut().snapshot_started = true;
        }
    }

    fn busy(&self) -> bool {
        self.job.borrow().is_some() || self.releasing.is_some()
    }

    fn release_step(&mut self) {
        if let Some(image) = self.releasing.as_mut() {
            if !image.release_step() {
                self.releasing = None;
            }
        }
    }

    fn finished(&mut self) -> Option<(Zxid, Result<Option<Zxid>, StorageError>)> {
        let mut job = self.job.borrow_mut();
        let oldest = job.as_ref()?.written?;
        let done = job.take()?;
        self.releasing = done.done;
        Some((done.zxid, Ok(Some(oldest))))
    }

    fn write(&mut self, zxid: Zxid, data: &[u8]) -> Result<(), StorageError> {
        self.disk.borrow_mut().add_snapshot(zxid, data.into());
        Ok(())
    }
}
