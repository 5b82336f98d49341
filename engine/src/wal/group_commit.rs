//! The write-ahead log writer: pipelined group commit on glommio DMA files.
//!
//! ```text
//!  appenders ──submit()──▶ open batch ──seal──▶ sealed queue ──▶ writer task
//!     ▲                     (filling)                         write_at + fdatasync
//!     └──── Durable future resolves ◀── durable_seq advances ◀──────┘
//! ```
//!
//! - [`Wal::submit`] encodes the record straight into the open batch's DMA buffer and
//!   returns a [`Durable`] future at once; submission order is log order.
//! - The writer task takes the open batch as soon as the previous flush finishes, so while
//!   one batch is being written and fdatasync'ed the next one fills: one flush covers every
//!   appender that arrived during the previous flush, and the disk is never idle under load.
//!   A batch's write is issued only after the previous batch's fdatasync returned.
//! - The writer runs in a task queue of its own that glommio schedules ahead of the
//!   appenders, and the appenders a flush made durable are woken one reactor pass after the
//!   next batch's write was queued, so that write reaches the kernel before they run.
//! - Batches are written with O_DIRECT at block-aligned offsets. A batch that continues a
//!   partly filled block starts with a copy of that block's earlier bytes (rewriting them
//!   identically), so no write ever covers a block with different durable content.
//! - Ordering contract: a `Durable` resolves `Ok` only after the `fdatasync` that covered its
//!   record returned success, and in submission order. Any write or fsync error poisons the
//!   WAL (see [`WalError`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use glommio::Task;

use super::files::{self, DirLock};
use super::reader::WalReader;
use super::record::{self, align_down, align_up};
use super::segment::{new_salt, segment_path, SegmentHeader, IO_ALIGN, SEGMENT_HEADER_BYTES};
use super::spare::{prepare_spare, Pace, ZERO_CHUNK_BYTES};
use super::{WalConfig, WalError};
use crate::faults;
use crate::log::Zxid;
use crate::stats::{Histogram, COUNT_BOUNDS, DURATION_BOUNDS_US};

/// Counters of the writer's work, for metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WalStats {
    /// Records accepted by `submit`.
    pub entries_submitted: u64,
    /// Records made durable.
    pub entries_durable: u64,
    /// Batches written (one `fdatasync` each).
    pub batches: u64,
    /// Bytes handed to `write` (aligned blocks, including rewritten tail blocks).
    pub bytes_written: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Of those, segments that reused a released file instead of a new zero-filled one.
    pub segments_recycled: u64,
    /// How long each batch's fdatasync took, in microseconds (by [`super::WalConfig::clock`]).
    pub fdatasync_us: Histogram,
    /// Entries per batch.
    pub batch_entries: Histogram,
}

/// One segment as the writer tracks it.
#[derive(Debug, Clone)]
struct SegmentMeta {
    first_zxid: Zxid,
    path: PathBuf,
    /// Last durable zxid in it (`None` while empty).
    last_zxid: Option<Zxid>,
}

/// Records being gathered for one write + fdatasync.
struct Batch {
    /// The segment the batch goes to; `new_segment` means it must be created first.
    segment: Zxid,
    new_segment: bool,
    /// The segment's checksum salt.
    salt: u64,
    /// For a new segment: where the previous segment's log ends (offset, last zxid).
    prev: Option<(u64, Zxid)>,
    /// Block-aligned file offset of `buf[0]`.
    file_offset: u64,
    /// File offset of the first record of this batch (stored in every record's header).
    batch_start: u64,
    buf: DmaBuffer,
    /// Bytes of `buf` in use (copied tail block + records).
    len: usize,
    entries: u64,
    record_bytes: usize,
    /// Submissions with seq < `end_seq` are in this or an earlier batch.
    end_seq: u64,
    last_zxid: Zxid,
}

impl Batch {
    /// Whether one more record fits. The buffer was sized from `batch_bytes_max` (or for a
    /// single larger record), so its length is the byte bound.
    fn fits(&self, rec_len: usize, config: &WalConfig) -> bool {
        self.entries < config.batch_entries_max as u64 && self.len + rec_len <= self.buf.len()
    }
}

struct WalState {
    config: WalConfig,
    /// Set once by the first fatal error; every later operation reports it.
    fatal: Option<Arc<WalError>>,
    closing: bool,
    /// Truncation in progress: submissions are refused with `Busy`.
    maintenance: bool,

    open: Option<Batch>,
    sealed: VecDeque<Batch>,
    /// Record bytes submitted but not yet durable. Invariant: ≤ `config.queued_bytes_max`.
    queued_bytes: usize,
    /// Invariant: durable_seq <= next_seq.
    next_seq: u64,
    durable_seq: u64,
    /// Last zxid accepted by `submit`. Invariant: durable_zxid <= last_zxid.
    last_zxid: Zxid,
    durable_zxid: Zxid,

    /// Segment receiving appends, the offset of the next record in it, and the bytes of the
    /// partly written block that offset falls in (`[align_down(offset), offset)`).
    tail_segment: Option<Zxid>,
    tail_salt: u64,
    tail_offset: usize,
    tail_block: Vec<u8>,
    /// Released segment files kept for reuse (renamed `wal-recycled-*.tmp`), oldest first.
    /// Invariant: at most `config.recycle_segments`.
    pool: VecDeque<PathBuf>,

    segments: Vec<SegmentMeta>,
    file: Option<Rc<DmaFile>>,
    spare: Option<Task<Result<(PathBuf, bool), WalError>>>,
    /// The writer is waiting for the spare: zero-fill it without pacing.
    spare_needed: bool,
    /// The disk had no room for the next segment at the last try (retried every
    /// [`DISK_FULL_RETRY`]); appends still go into what is left of the current one.
    out_of_space: bool,
    spare_waker: Option<Waker>,

    /// Appenders waiting for durability, with the sequence number each waits for: a flush
    /// wakes only those it made durable (the next batch's appenders, already waiting, would
    /// otherwise each be woken for nothing at every flush — half the wakes at high load).
    durable_waiters: Vec<(u64, Waker)>,
    space_waiters: Vec<Waker>,
    writer_waker: Option<Waker>,
    /// A flush completed whose waiters are woken by the notifier (see `run_notifier`).
    progress_pending: bool,
    notifier_waker: Option<Waker>,
    stats: WalStats,
}

impl WalState {
    fn check_invariants(&self) {
        debug_assert!(self.durable_seq <= self.next_seq);
        debug_assert!(self.durable_zxid <= self.last_zxid);
        // The tail block is refreshed when a batch is sealed; while one is open it lags.
        debug_assert!(
            self.open.is_some() || self.tail_segment.is_none() || self.tail_block.len() == self.tail_offset % IO_ALIGN
        );
        debug_assert!(self.queued_bytes <= self.config.queued_bytes_max);
    }

    fn usable(&self) -> Result<(), WalError> {
        if let Some(fatal) = &self.fatal {
            return Err(WalError::Poisoned(fatal.clone()));
        }
        if self.closing {
            return Err(WalError::Closed);
        }
        Ok(())
    }

    fn idle(&self) -> bool {
        self.open.is_none() && self.sealed.is_empty() && self.durable_seq == self.next_seq
    }

    /// Takes the segments wholly at or below `zxid` (never the one being written) out of the
    /// list, oldest first.
    fn detach(&mut self, zxid: Zxid) -> Result<Vec<SegmentMeta>, WalError> {
        self.usable()?;
        let current = self.tail_segment;
        let covered = self
            .segments
            .iter()
            .take_while(|segment| {
                Some(segment.first_zxid) != current && segment.last_zxid.is_some_and(|last| last <= zxid)
            })
            .count();
        Ok(self.segments.drain(..covered).collect())
    }

    /// Moves the open batch to the sealed queue, remembering its partial last block.
    fn seal_open(&mut self) {
        let Some(mut batch) = self.open.take() else { return };
        let aligned_end = align_up(batch.len, IO_ALIGN);
        batch.buf.as_bytes_mut()[batch.len..aligned_end].fill(0);
        let tail_start = align_down(batch.len, IO_ALIGN);
        self.tail_block.clear();
        self.tail_block.extend_from_slice(&batch.buf.as_bytes()[tail_start..batch.len]);
        self.sealed.push_back(batch);
    }

    fn new_batch(&mut self, zxid: Zxid, rec_len: usize) -> Batch {
        let segment_bytes = self.config.segment_bytes as usize;
        let roll = match self.tail_segment {
            None => true,
            Some(_) => self.tail_offset + rec_len > segment_bytes,
        };
        let mut prev = None;
        if roll {
            // Every record submitted so far is in the previous segment; its log ends here.
            prev = self.tail_segment.map(|_| (self.tail_offset as u64, self.last_zxid));
            self.tail_segment = Some(zxid);
            self.tail_salt = new_salt(zxid);
            self.tail_offset = SEGMENT_HEADER_BYTES;
            self.tail_block.clear();
        }
        // The tail-block prefix is at most IO_ALIGN - 1 bytes, so a lone record always fits.
        let capacity = align_up(self.config.batch_bytes_max.max(rec_len + IO_ALIGN), IO_ALIGN);
        // From the executor's registered io_uring pool (WRITE_FIXED, no mmap per batch);
        // glommio falls back to the heap when the pool is exhausted.
        let mut buf = glommio::allocate_dma_buffer(capacity);
        let prefix = self.tail_block.len();
        buf.as_bytes_mut()[..prefix].copy_from_slice(&self.tail_block);
        Batch {
            // Invariant: set just above when None.
            segment: self.tail_segment.unwrap_or(zxid),
            new_segment: roll,
            salt: self.tail_salt,
            prev,
            file_offset: align_down(self.tail_offset, IO_ALIGN) as u64,
            batch_start: self.tail_offset as u64,
            buf,
            len: prefix,
            entries: 0,
            record_bytes: 0,
            end_seq: self.next_seq,
            last_zxid: zxid,
        }
    }

    /// Wakes everyone (the WAL stopped).
    fn wake_all(&mut self) {
        self.wake_progress();
        for (_, waker) in self.durable_waiters.drain(..) {
            waker.wake();
        }
    }

    /// After a flush: wakes the appenders it made durable, the spare's pacer and anyone
    /// waiting for queue room.
    fn wake_progress(&mut self) {
        if let Some(waker) = self.spare_waker.take() {
            waker.wake();
        }
        let durable = self.durable_seq;
        self.durable_waiters.retain(|(seq, waker)| {
            if *seq < durable {
                waker.wake_by_ref();
                false
            } else {
                true
            }
        });
        for waker in self.space_waiters.drain(..) {
            waker.wake();
        }
    }

    fn poison(&mut self, error: WalError) {
        tracing::error!(%error, "WAL poisoned; appends are refused until restart");
        if self.fatal.is_none() {
            self.fatal = Some(Arc::new(error));
        }
        self.wake_all();
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
    }
}

/// The write-ahead log of one node. Lives on one glommio executor (it is `!Send`).
pub struct Wal {
    shared: Rc<RefCell<WalState>>,
    writer: Option<Task<()>>,
    notifier: Option<Task<()>>,
    _lock: DirLock,
}

/// glommio's default task-queue shares.
const DEFAULT_SHARES: usize = 1000;

impl Wal {
    /// Opens (or creates) the WAL in `config.dir`: takes the directory lock, finishes an
    /// interrupted truncation, verifies the log, zeroes a torn tail, and starts the writer.
    /// Returns the verified log for replay alongside the writer.
    ///
    /// Must be called from within a glommio executor.
    pub async fn open(config: WalConfig) -> Result<(Wal, WalReader), WalError> {
        config.validate()?;
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| WalError::io(&dir, e))?;
        let lock = DirLock::acquire(&dir)?;
        files::remove_if_exists(&dir.join(files::SPARE_FILE))?;
        if let Some(zxid) = files::read_truncate_intent(&dir)? {
            tracing::warn!(%zxid, "finishing a truncation interrupted by a crash");
            truncate_files(&dir, zxid)?;
        }
        files::clear_truncate_intent(&dir)?;

        let mut reader = WalReader::open(&dir)?;
        if let Some(tail) = reader.torn_tail().cloned() {
            tracing::warn!(path = %tail.path.display(), offset = tail.offset, dirty_end = tail.dirty_end,
                "cutting a torn WAL tail (an unacknowledged batch interrupted by a crash)");
            files::zero_range(&tail.path, tail.offset, tail.dirty_end)?;
        }
        // A last segment without records (a crash between its creation and its first
        // batch) is removed: the next append may not carry the zxid it was named for.
        if let Some(last) = reader.segments().last() {
            if last.records == 0 {
                let path = last.path.clone();
                files::remove_if_exists(&path)?;
                files::sync_dir(&dir)?;
                reader = WalReader::open(&dir)?;
            }
        }

        let mut shared = WalState::recovered(config, &reader).await?;
        shared.pool = files::list_recycled(&dir, shared.config.recycle_segments)?.into();
        files::remove_released(&dir)?;
        let shared = Rc::new(RefCell::new(shared));
        start_spare(&shared);
        // The writer gets a task queue of its own, with ten times the default shares: glommio
        // runs the queue with the least (share-weighted) runtime first, so when a flush
        // completes the writer issues the next I/O before the appenders (or, in a server, the
        // connections) on this executor run, instead of waiting behind them in one queue.
        // Measured at 1024 appenders (with a writer that also overlapped the next write with the
        // fdatasync, since withdrawn): 0.69-0.85 of the plain loop against 0.67-0.73. (glommio
        // offers no way to remove a queue from outside its executor's internals; each open
        // leaves one empty queue record behind, a few hundred bytes.)
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(10 * DEFAULT_SHARES),
            glommio::Latency::NotImportant,
            "wal-writer",
        );
        let spawn = |task| glommio::spawn_local_into(task, queue).map_err(|e| WalError::glommio(&dir, e));
        let writer = spawn(Box::pin(run_writer(shared.clone())) as Pin<Box<dyn Future<Output = ()>>>)?;
        let notifier = spawn(Box::pin(run_notifier(shared.clone())))?;
        Ok((Wal { shared, writer: Some(writer), notifier: Some(notifier), _lock: lock }, reader))
    }

    /// Appends an entry's bytes with this zxid. Returns at once with a future that resolves
    /// when the entry is durable. Zxids must strictly increase; the caller's submission order
    /// is the log order. Errors leave the WAL unchanged.
    pub fn submit(&self, zxid: Zxid, payload: &[u8]) -> Result<Durable, WalError> {
        let mut s = self.shared.borrow_mut();
        s.usable()?;
        if s.maintenance {
            return Err(WalError::Busy("a truncation is in progress"));
        }
        if payload.is_empty() || payload.len() > s.config.entry_bytes_max {
            return Err(WalError::EntryTooLarge { len: payload.len(), max: s.config.entry_bytes_max });
        }
        if zxid <= s.last_zxid {
            return Err(WalError::ZxidOrder { zxid, last: s.last_zxid });
        }
        let rec_len = record::encoded_len(payload.len());
        if s.queued_bytes + rec_len > s.config.queued_bytes_max {
            return Err(WalError::QueueFull { queued: s.queued_bytes, max: s.config.queued_bytes_max });
        }
        let segment_full = s.tail_offset + rec_len > s.config.segment_bytes as usize;
        let fits = s.open.as_ref().is_some_and(|b| b.fits(rec_len, &s.config)) && !segment_full;
        if !fits {
            s.seal_open();
            let batch = s.new_batch(zxid, rec_len);
            s.open = Some(batch);
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        let offset = s.tail_offset;
        let batch = s.open.as_mut().expect("invariant: a batch was opened above");
        let at = batch.len;
        let used = record::encode(&mut batch.buf.as_bytes_mut()[at..], batch.salt, zxid, batch.batch_start, payload);
        debug_assert_eq!(batch.file_offset as usize + at, offset);
        batch.len += used;
        batch.entries += 1;
        batch.record_bytes += used;
        batch.end_seq = seq + 1;
        batch.last_zxid = zxid;
        s.tail_offset += used;
        s.queued_bytes += used;
        s.last_zxid = zxid;
        s.stats.entries_submitted += 1;
        if let Some(w) = s.writer_waker.take() {
            w.wake();
        }
        s.check_invariants();
        drop(s);
        Ok(Durable { shared: self.shared.clone(), seq })
    }

    /// Submits and waits until durable.
    pub async fn append(&self, zxid: Zxid, payload: &[u8]) -> Result<(), WalError> {
        self.submit(zxid, payload)?.await
    }

    /// Resolves when a maximal entry would fit in the queue (or the WAL has stopped).
    pub fn ready(&self) -> Ready {
        Ready { shared: self.shared.clone() }
    }

    /// Resolves once every entry submitted so far is durable (or the WAL has stopped): what
    /// [`Wal::truncate_after`] needs.
    pub fn idle(&self) -> Idle {
        Idle { shared: self.shared.clone() }
    }

    /// Whether a maximal entry would fit in the queue now (what `ready` waits for).
    pub fn has_room(&self) -> bool {
        let s = self.shared.borrow();
        s.queued_bytes + record::encoded_len(s.config.entry_bytes_max) <= s.config.queued_bytes_max
            || s.queued_bytes == 0
    }

    /// The last zxid accepted.
    pub fn last_zxid(&self) -> Zxid {
        self.shared.borrow().last_zxid
    }

    /// The last zxid known durable.
    pub fn durable_zxid(&self) -> Zxid {
        self.shared.borrow().durable_zxid
    }

    /// Counters.
    pub fn stats(&self) -> WalStats {
        self.shared.borrow().stats
    }

    /// Whether the disk had no room for the next segment at the last try. Not an error:
    /// appends go on into what is left of the current segment and wait at its end until
    /// the retry (every [`DISK_FULL_RETRY`]) finds room. A server refuses new client writes
    /// meanwhile, so that what is left serves session bookkeeping.
    pub fn out_of_space(&self) -> bool {
        self.shared.borrow().out_of_space
    }

    /// The fatal error that stopped the WAL, if any.
    pub fn fatal_error(&self) -> Option<Arc<WalError>> {
        self.shared.borrow().fatal.clone()
    }

    /// Drops every entry with zxid above `zxid` (a follower dropping uncommitted history at
    /// Zab synchronisation, TRUNC). Requires an idle WAL. Crash-safe: an intent file is made
    /// durable first and an interrupted truncation is finished at the next open.
    pub async fn truncate_after(&self, zxid: Zxid) -> Result<(), WalError> {
        let dir = {
            let mut s = self.shared.borrow_mut();
            s.usable()?;
            if !s.idle() || s.maintenance {
                return Err(WalError::Busy("truncation needs an idle WAL"));
            }
            s.maintenance = true;
            s.file = None;
            s.config.dir.clone()
        };
        let result = self.truncate_inner(&dir, zxid).await;
        let mut s = self.shared.borrow_mut();
        s.maintenance = false;
        match result {
            Ok(()) => Ok(()),
            Err(error) => {
                // The files may be half truncated; only a reopen (which finishes the
                // truncation from its intent record) may touch them again.
                s.poison(error);
                Err(s.usable().err().unwrap_or(WalError::Closed))
            }
        }
    }

    async fn truncate_inner(&self, dir: &Path, zxid: Zxid) -> Result<(), WalError> {
        files::write_truncate_intent(dir, zxid)?;
        truncate_files(dir, zxid)?;
        files::clear_truncate_intent(dir)?;
        let reader = WalReader::open(dir)?;
        let config = self.shared.borrow().config.clone();
        let mut fresh = WalState::recovered(config, &reader).await?;
        let mut s = self.shared.borrow_mut();
        // Keep what outlives a truncation: waiters, the spare, counters.
        fresh.spare = s.spare.take();
        fresh.spare_waker = s.spare_waker.take();
        fresh.stats = s.stats;
        fresh.next_seq = s.next_seq;
        fresh.durable_seq = s.durable_seq;
        fresh.writer_waker = s.writer_waker.take();
        fresh.pool = std::mem::take(&mut s.pool);
        fresh.out_of_space = s.out_of_space;
        *s = fresh;
        // The spare task may be waiting for progress on the old tail: let it re-evaluate.
        if let Some(w) = s.spare_waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Deletes the segments wholly at or below `zxid` (never the one being written) and
    /// syncs the directory; returns how many. Blocks on the filesystem: a server should
    /// [`Wal::detach_through`] and delete the files off its I/O thread.
    pub fn purge_through(&self, zxid: Zxid) -> Result<usize, WalError> {
        let paths = self.detach_through(zxid)?;
        for path in &paths {
            files::remove_if_exists(path)?;
        }
        if !paths.is_empty() {
            files::sync_dir(&self.shared.borrow().config.dir)?;
        }
        Ok(paths.len())
    }

    /// Releases the segments wholly at or below `zxid` (never the one being written), as
    /// [`Wal::detach_through`] does, but keeps up to `config.recycle_segments` of the files to
    /// be reused as future segments: their blocks are already allocated and written, so a
    /// recycled segment needs neither zero-filling nor unwritten-extent conversion.
    ///
    /// Every released file leaves the log here, oldest first: the kept ones are renamed
    /// `wal-recycled-*.tmp`, the others `wal-released-*.tmp`, whose paths are returned for the
    /// caller to delete when it likes (a crash leaves them to the next [`Wal::open`], which
    /// deletes them). None may keep its segment name while the caller gets round to it: a
    /// later release could then take a newer segment into the pool while older released ones
    /// were still named as segments, and a crash would leave a log with a hole in it, which
    /// recovery refuses as corruption. A file that cannot be renamed stays in the log, and so
    /// does every later one (the next release tries again).
    ///
    /// Renames only (no directory sync): a file is changed (reused or cut) only after a
    /// directory sync has made its new name durable, and with it every rename before it (see
    /// `spare.rs`, and the server's janitor).
    pub fn recycle_through(&self, zxid: Zxid) -> Result<Vec<PathBuf>, WalError> {
        let mut s = self.shared.borrow_mut();
        let mut released = s.detach(zxid)?;
        let mut doomed = Vec::new();
        let mut index = 0;
        while let Some(segment) = released.get(index) {
            let keep = s.pool.len() < s.config.recycle_segments;
            let to = if keep {
                files::recycled_path(&s.config.dir, &segment.path)
            } else {
                files::released_path(&s.config.dir, &segment.path)
            };
            match std::fs::rename(&segment.path, &to) {
                Ok(()) if keep => s.pool.push_back(to),
                Ok(()) => doomed.push(to),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %segment.path.display(), "a released WAL segment is gone already");
                }
                Err(e) => {
                    tracing::warn!(path = %segment.path.display(), error = %e,
                        "could not release a WAL segment; it and the later ones stay in the log");
                    let back: Vec<SegmentMeta> = released.drain(index..).collect();
                    s.segments.splice(0..0, back);
                    break;
                }
            }
            index += 1;
        }
        Ok(doomed)
    }

    /// Forgets the segments wholly at or below `zxid` (never the one being written) and
    /// returns their paths, oldest first, for the caller to delete in that order. Until they
    /// are deleted, a recovery finds them and skips their records (a snapshot covers them);
    /// deleted in another order, a crash could leave a hole in the log.
    pub fn detach_through(&self, zxid: Zxid) -> Result<Vec<std::path::PathBuf>, WalError> {
        let detached = self.shared.borrow_mut().detach(zxid)?;
        Ok(detached.into_iter().map(|segment| segment.path).collect())
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.shared.borrow().segments.len()
    }

    /// Flushes everything submitted, stops the writer and closes the files. Returns the
    /// fatal error if the WAL had stopped on one.
    pub async fn close(mut self) -> Result<(), WalError> {
        {
            let mut s = self.shared.borrow_mut();
            s.closing = true;
            if let Some(w) = s.writer_waker.take() {
                w.wake();
            }
            if let Some(w) = s.spare_waker.take() {
                w.wake();
            }
        }
        if let Some(writer) = self.writer.take() {
            writer.await;
        }
        // Everything is durable (or the WAL is dead): no progress is left to hand out late.
        drop(self.notifier.take());
        self.shared.borrow_mut().wake_progress();
        let (file, spare, fatal) = {
            let mut s = self.shared.borrow_mut();
            (s.file.take(), s.spare.take(), s.fatal.clone())
        };
        if let Some(spare) = spare {
            let _ = spare.await;
        }
        if let Some(file) = file.and_then(|f| Rc::try_unwrap(f).ok()) {
            let _ = file.close().await;
        }
        match fatal {
            Some(fatal) => Err(WalError::Poisoned(fatal)),
            None => Ok(()),
        }
    }
}

impl WalState {
    async fn recovered(config: WalConfig, reader: &WalReader) -> Result<WalState, WalError> {
        let segments: Vec<SegmentMeta> = reader
            .segments()
            .iter()
            .map(|s| SegmentMeta { first_zxid: s.header.first_zxid, path: s.path.clone(), last_zxid: s.last_zxid })
            .collect();
        let last_zxid = reader.last_zxid();
        let (tail_segment, tail_salt, tail_offset, tail_block, file) = match reader.segments().last() {
            None => (None, 0, 0, Vec::new(), None),
            Some(last) => {
                let block = last.bytes()[align_down(last.end, IO_ALIGN)..last.end].to_vec();
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .dma_open(&last.path)
                    .await
                    .map_err(|e| WalError::glommio(&last.path, e))?;
                (Some(last.header.first_zxid), last.header.salt, last.end, block, Some(Rc::new(file)))
            }
        };
        Ok(WalState {
            config,
            fatal: None,
            closing: false,
            maintenance: false,
            open: None,
            sealed: VecDeque::new(),
            queued_bytes: 0,
            next_seq: 0,
            durable_seq: 0,
            last_zxid,
            durable_zxid: last_zxid,
            tail_segment,
            tail_salt,
            tail_offset,
            tail_block,
            pool: VecDeque::new(),
            segments,
            file,
            spare: None,
            spare_needed: false,
            spare_waker: None,
            out_of_space: false,
            durable_waiters: Vec::new(),
            space_waiters: Vec::new(),
            writer_waker: None,
            progress_pending: false,
            notifier_waker: None,
            stats: WalStats::default(),
        })
    }
}

/// Deletes the segments that start above `zxid` (newest first, so that a crash leaves a
/// prefix), then zeroes everything after `zxid` in the segment that contains it.
fn truncate_files(dir: &Path, zxid: Zxid) -> Result<(), WalError> {
    let segments = super::segment::list_segments(dir)?;
    for (first, path) in segments.iter().rev() {
        if *first > zxid {
            files::remove_if_exists(path)?;
        }
    }
    files::sync_dir(dir)?;
    let Some((_, path)) = segments.iter().rev().find(|(first, _)| *first <= zxid) else {
        return Ok(());
    };
    let bytes = std::fs::read(path).map_err(|e| WalError::io(path, e))?;
    let header = SegmentHeader::decode(&bytes, path)?;
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut cut = None;
    while let record::Decoded::Record(r) = record::decode(&bytes, header.salt, offset) {
        if r.zxid > zxid && cut.is_none() {
            cut = Some(offset);
        }
        offset = r.next;
    }
    let Some(cut) = cut else { return Ok(()) };
    // A fresh segment is zero after its log: clear any torn remains too. In a recycled one
    // the stale bytes after the records never verify and stay.
    let dirty_end = if header.recycled { offset } else { super::reader::last_nonzero(&bytes).map_or(0, |i| i + 1) };
    files::zero_range(path, cut as u64, dirty_end as u64)
}

/// How often preparing the next segment is retried while the disk is full.
pub const DISK_FULL_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

fn start_spare(shared: &Rc<RefCell<WalState>>) {
    let pacer: Rc<dyn Pace> = Rc::new(Pacer(Rc::downgrade(shared)));
    let mut s = shared.borrow_mut();
    s.spare_needed = false;
    let (dir, bytes, zero) = (s.config.dir.clone(), s.config.segment_bytes, s.config.zero_fill_segments);
    let reuse = s.pool.pop_front();
    // glommio runs a spawned task at once, up to its first wait: no borrow may be held.
    drop(s);
    let weak = Rc::downgrade(shared);
    let task = glommio::spawn_local(async move {
        let mut reuse = reuse;
        loop {
            let result = prepare_spare(dir.clone(), bytes, zero, reuse.take(), pacer.clone()).await;
            let Some(shared) = weak.upgrade() else { return result };
            if !retry_when_full(&mut shared.borrow_mut(), &result) {
                return result;
            }
            drop(shared);
            glommio::timer::sleep(DISK_FULL_RETRY).await;
            // A snapshot may have released a whole segment meanwhile: it needs no new space.
            reuse = weak.upgrade().and_then(|shared| shared.borrow_mut().pool.pop_front());
        }
    });
    shared.borrow_mut().spare = Some(task);
}

/// Notes the outcome of preparing a spare; whether to try again. A full disk is not a
/// failed write (nothing durable was touched): it is retried until space is freed, the
/// writer waiting at a roll meanwhile.
fn retry_when_full(s: &mut WalState, result: &Result<(PathBuf, bool), WalError>) -> bool {
    match result {
        Err(WalError::DiskFull { path }) if !s.closing && s.fatal.is_none() => {
            if !std::mem::replace(&mut s.out_of_space, true) {
                tracing::error!(path = %path.display(), "disk full: no room for the next WAL segment; retrying every second");
            }
            true
        }
        result => {
            if std::mem::replace(&mut s.out_of_space, false) && result.is_ok() {
                tracing::warn!("disk space is back: the next WAL segment is ready");
            }
            false
        }
    }
}

/// Lets the spare be zero-filled two chunks ahead of the active segment's fill level, or
/// all at once when the writer needs it (roll), when closing, or before the first segment.
struct Pacer(std::rc::Weak<RefCell<WalState>>);

impl Pace for Pacer {
    fn allowed(&self) -> u64 {
        let Some(shared) = self.0.upgrade() else { return u64::MAX };
        let s = shared.borrow();
        // Unpaced while retrying after a full disk: appends are refused until it is ready.
        if s.spare_needed || s.out_of_space || s.closing || s.fatal.is_some() || s.tail_segment.is_none() {
            return u64::MAX;
        }
        s.tail_offset as u64 + 2 * ZERO_CHUNK_BYTES as u64
    }

    fn changed(&self) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(SpareProgress { shared: self.0.clone(), polled: false })
    }
}

/// Resolves at the next batch completion (or roll, close, poison): one wake per change.
struct SpareProgress {
    shared: std::rc::Weak<RefCell<WalState>>,
    polled: bool,
}

impl Future for SpareProgress {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(shared) = self.shared.upgrade() else { return Poll::Ready(()) };
        if self.polled {
            return Poll::Ready(());
        }
        self.polled = true;
        shared.borrow_mut().spare_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Resolves to the next batch to write, or `None` when closing with nothing left (or dead).
struct NextBatch<'a>(&'a RefCell<WalState>);

impl Future for NextBatch<'_> {
    type Output = Option<Batch>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        let mut s = self.0.borrow_mut();
        if s.fatal.is_some() {
            return Poll::Ready(None);
        }
        if s.sealed.is_empty() && s.open.is_some() {
            s.seal_open();
        }
        if let Some(batch) = s.sealed.pop_front() {
            return Poll::Ready(Some(batch));
        }
        if s.closing {
            return Poll::Ready(None);
        }
        s.writer_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A batch written and fdatasync'ed.
struct Written {
    bytes: usize,
    end_seq: u64,
    last_zxid: Zxid,
    record_bytes: usize,
    entries: u64,
    fdatasync_us: u64,
}

/// Writes and fdatasyncs one batch at a time. The next batch's write is never issued before
/// the previous batch's fdatasync has returned: that is what lets recovery tell a torn tail
/// (only the newest batch can be damaged) from corruption (see SAFETY.md). Overlapping the
/// next write with the fdatasync was measured (about 10% more throughput at 1024 appenders)
/// and not kept: after a power loss the device may keep the later write and lose part of the
/// earlier, unacknowledged batch, which recovery would then have to report as corruption.
async fn run_writer(shared: Rc<RefCell<WalState>>) {
    while let Some(batch) = NextBatch(&shared).await {
        match write_batch(&shared, batch).await {
            Ok(written) => {
                // When another batch is waiting, this task takes it and queues its write
                // before yielding: the appenders this flush made durable are woken only after
                // the reactor has submitted that write, so the disk works while they run.
                let next_waiting = {
                    let s = shared.borrow();
                    !s.sealed.is_empty() || s.open.is_some()
                };
                made_durable(&shared, &written, next_waiting);
            }
            Err(error) => {
                shared.borrow_mut().poison(error);
                return;
            }
        }
    }
}

fn made_durable(shared: &RefCell<WalState>, batch: &Written, defer_wakes: bool) {
    let mut s = shared.borrow_mut();
    s.durable_seq = batch.end_seq;
    s.durable_zxid = batch.last_zxid;
    s.queued_bytes -= batch.record_bytes;
    s.stats.batches += 1;
    s.stats.entries_durable += batch.entries;
    s.stats.bytes_written += batch.bytes as u64;
    s.stats.fdatasync_us.record(&DURATION_BOUNDS_US, batch.fdatasync_us);
    s.stats.batch_entries.record(&COUNT_BOUNDS, batch.entries);
    if let Some(segment) = s.segments.last_mut() {
        segment.last_zxid = Some(batch.last_zxid);
    }
    if defer_wakes {
        s.progress_pending = true;
        if let Some(w) = s.notifier_waker.take() {
            w.wake();
        }
    } else {
        s.wake_progress();
    }
    s.check_invariants();
}

/// Wakes the waiters of flushes whose wakes the writer deferred, one reactor pass later:
/// glommio submits queued I/O only between task-queue runs, so appenders woken in the same
/// run as the writer's next `write` would all run before that write reached the kernel
/// (measured with the io_uring tracepoints: ~120 µs of a ~350 µs cycle with 1024 appenders,
/// the disk idle). A timer resumes this task only from the reactor, after it has submitted.
async fn run_notifier(shared: Rc<RefCell<WalState>>) {
    loop {
        ProgressPending(&shared).await;
        glommio::timer::sleep(std::time::Duration::from_micros(1)).await;
        let mut s = shared.borrow_mut();
        s.progress_pending = false;
        s.wake_progress();
    }
}

/// Resolves when a flush's wakes were deferred to the notifier.
struct ProgressPending<'a>(&'a RefCell<WalState>);

impl Future for ProgressPending<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.0.borrow_mut();
        if s.progress_pending {
            return Poll::Ready(());
        }
        s.notifier_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Writes and fdatasyncs one batch (creating its segment first if needed).
async fn write_batch(shared: &Rc<RefCell<WalState>>, mut batch: Batch) -> Result<Written, WalError> {
    if batch.new_segment {
        roll(shared, batch.segment, batch.salt, batch.prev).await?;
    }
    let (file, path, clock) = {
        let s = shared.borrow();
        let path = segment_path(&s.config.dir, batch.segment);
        (s.file.clone(), path, s.config.clock)
    };
    let Some(file) = file else {
        return Err(WalError::io(path, std::io::Error::other("no open segment for a batch")));
    };
    let size = align_up(batch.len, IO_ALIGN);
    batch.buf.trim_to_size(size);
    faults::io(faults::WAL_WRITE).await.map_err(|e| WalError::io(&path, e))?;
    let written = file.write_at(batch.buf, batch.file_offset).await.map_err(|e| WalError::glommio(&path, e))?;
    if written != size {
        return Err(WalError::io(&path, std::io::Error::other(format!("short write: {written} of {size} bytes"))));
    }
    faults::io(faults::WAL_FDATASYNC).await.map_err(|e| WalError::io(&path, e))?;
    let started_us = clock();
    file.fdatasync().await.map_err(|e| WalError::glommio(&path, e))?;
    let fdatasync_us = clock().saturating_sub(started_us);
    faults::io(faults::WAL_DURABLE).await.map_err(|e| WalError::io(&path, e))?;
    Ok(Written {
        bytes: size,
        end_seq: batch.end_seq,
        last_zxid: batch.last_zxid,
        record_bytes: batch.record_bytes,
        entries: batch.entries,
        fdatasync_us,
    })
}

/// Turns the prepared spare into the segment for `first_zxid`: header written and synced,
/// renamed, directory synced. Then starts preparing the next spare.
async fn roll(
    shared: &Rc<RefCell<WalState>>,
    first_zxid: Zxid,
    salt: u64,
    prev: Option<(u64, Zxid)>,
) -> Result<(), WalError> {
    let (spare, old_file, dir, segment_bytes, zero) = {
        let mut s = shared.borrow_mut();
        let c = &s.config;
        let (dir, bytes, zero) = (c.dir.clone(), c.segment_bytes, c.zero_fill_segments);
        (s.spare.take(), s.file.take(), dir, bytes, zero)
    };
    if let Some(old) = old_file.and_then(|f| Rc::try_unwrap(f).ok()) {
        let _ = old.close().await;
    }
    {
        let mut s = shared.borrow_mut();
        s.spare_needed = true;
        if let Some(w) = s.spare_waker.take() {
            w.wake();
        }
    }
    let pacer: Rc<dyn Pace> = Rc::new(Pacer(Rc::downgrade(shared)));
    let (spare_path, recycled) = match spare {
        Some(task) => task.await?,
        None => prepare_spare(dir.clone(), segment_bytes, zero, None, pacer).await?,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(&spare_path)
        .await
        .map_err(|e| WalError::glommio(&spare_path, e))?;
    let mut block = glommio::allocate_dma_buffer_global(SEGMENT_HEADER_BYTES);
    SegmentHeader { first_zxid, segment_bytes, salt, recycled, prev }.encode(block.as_bytes_mut());
    file.write_at(block, 0).await.map_err(|e| WalError::glommio(&spare_path, e))?;
    file.fdatasync().await.map_err(|e| WalError::glommio(&spare_path, e))?;
    let path = segment_path(&dir, first_zxid);
    file.rename(&path).await.map_err(|e| WalError::glommio(&path, e))?;
    files::sync_dir(&dir)?;
    tracing::debug!(path = %path.display(), %first_zxid, "WAL segment created");
    {
        let mut s = shared.borrow_mut();
        s.file = Some(Rc::new(file));
        s.segments.push(SegmentMeta { first_zxid, path, last_zxid: None });
        s.stats.segments_created += 1;
        s.stats.segments_recycled += u64::from(recycled);
    }
    start_spare(shared);
    Ok(())
}

/// Resolves when the entry it was returned for is durable, or with the error that stopped
/// the WAL first.
#[must_use = "an append is acknowledged only when its Durable future resolves"]
pub struct Durable {
    shared: Rc<RefCell<WalState>>,
    seq: u64,
}

impl Future for Durable {
    type Output = Result<(), WalError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.shared.borrow_mut();
        if s.durable_seq > self.seq {
            return Poll::Ready(Ok(()));
        }
        if let Some(fatal) = &s.fatal {
            return Poll::Ready(Err(WalError::Poisoned(fatal.clone())));
        }
        let seq = self.seq;
        s.durable_waiters.push((seq, cx.waker().clone()));
        Poll::Pending
    }
}

/// See [`Wal::idle`].
pub struct Idle {
    shared: Rc<RefCell<WalState>>,
}

impl Future for Idle {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.shared.borrow_mut();
        if s.durable_seq == s.next_seq || s.fatal.is_some() || s.closing {
            return Poll::Ready(());
        }
        // Woken when the last entry submitted so far is durable; checked again then (more
        // may have been submitted meanwhile).
        let last = s.next_seq.saturating_sub(1);
        s.durable_waiters.push((last, cx.waker().clone()));
        Poll::Pending
    }
}

/// See [`Wal::ready`].
pub struct Ready {
    shared: Rc<RefCell<WalState>>,
}

impl Future for Ready {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.shared.borrow_mut();
        // Room for one more maximal entry, so a submit right after `ready` cannot be refused.
        let room = s.queued_bytes + record::encoded_len(s.config.entry_bytes_max) <= s.config.queued_bytes_max;
        if room || s.queued_bytes == 0 || s.fatal.is_some() || s.closing {
            return Poll::Ready(());
        }
        s.space_waiters.push(cx.waker().clone());
        Poll::Pending
    }
}
