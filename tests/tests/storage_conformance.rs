//! The replica's stores, production and simulated, against one conformance suite
//! (`baton_tests::storage_suite`): the simulator's stores promise what the WAL, the epochs
//! file and the snapshot directory deliver, so what the simulator proves about the shared
//! driver holds in production.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use baton_engine::replica::{EpochFile, Log, SnapshotDir, Snapshots};
use baton_engine::snapshot::SnapshotStore;
use baton_engine::wal::{Wal, WalConfig};
use baton_engine::zab::{LogEntry, Payload};
use baton_engine::Zxid;
use baton_tests::sim::disk::{finish_job, Disk, Job, SimEpochs, SimLog, SimSnapshots};
use baton_tests::storage_suite::{run_all, Backend};
use baton_tests::temp_dir;

/// The WAL (small segments, so that releases recycle some), the epochs file and a snapshot
/// directory keeping two.
struct Real {
    dir: tempfile::TempDir,
    durable: Rc<Cell<Zxid>>,
}

impl Backend for Real {
    type Log = baton_engine::replica::WalLog;
    type Epochs = EpochFile;
    type Snapshots = SnapshotDir;

    async fn open(&mut self) -> (Self::Log, EpochFile, SnapshotDir, Vec<LogEntry>) {
        let config = WalConfig {
            segment_bytes: 64 << 10,
            entry_bytes_max: 4 << 10,
            // A queue of a few entries: most appends wait in the log's backlog beside it.
            queued_bytes_max: 6 << 10,
            ..WalConfig::new(self.dir.path().join("wal"))
        };
        let (wal, reader) = Wal::open(config).await.expect("WAL opens");
        let recovered =
            reader.records_after(Zxid::ZERO).map(|r| LogEntry::new(r.zxid, Payload::from(r.payload))).collect();
        let durable = self.durable.clone();
        let log = baton_engine::replica::WalLog::new(Rc::new(wal), 1 << 20, move |z| durable.set(durable.get().max(z)));
        let snapshots = SnapshotStore::open(self.dir.path().join("snapshots")).expect("snapshot directory");
        (log, EpochFile::new(self.dir.path()), SnapshotDir::new(snapshots, 2), recovered)
    }

    async fn settle(&mut self, log: &mut Self::Log) -> Zxid {
        log.drained().await;
        // The durability reports come from tasks of their own.
        for _ in 0..1000 {
            if self.durable.get() >= log.wal().last_zxid() {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        self.durable.get()
    }

    async fn finish_snapshot(&mut self, snapshots: &mut SnapshotDir) -> Option<Zxid> {
        for _ in 0..5000 {
            if let Some((_, written)) = snapshots.finished() {
                return written.expect("the snapshot is written");
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        panic!("the background snapshot never finished");
    }

    async fn close(&mut self, log: Self::Log) {
        let wal = log.wal().clone();
        drop(log);
        let wal = Rc::try_unwrap(wal).ok().expect("the log was the WAL's only owner");
        wal.close().await.expect("WAL closes");
    }
}

/// The simulator's disk.
#[derive(Default)]
struct Simulated {
    disk: Rc<RefCell<Disk>>,
    job: Job,
}

impl Backend for Simulated {
    type Log = SimLog;
    type Epochs = SimEpochs;
    type Snapshots = SimSnapshots;

    async fn open(&mut self) -> (SimLog, SimEpochs, SimSnapshots, Vec<LogEntry>) {
        let seen = Rc::new(RefCell::new(Default::default()));
        let applied = Rc::new(RefCell::new(Vec::new()));
        let log = SimLog { disk: self.disk.clone(), applied, seen: seen.clone() };
        let snapshots = SimSnapshots { disk: self.disk.clone(), job: self.job.clone(), seen, releasing: None };
        let recovered = self.disk.borrow().log.clone();
        (log, SimEpochs(self.disk.clone()), snapshots, recovered)
    }

    async fn settle(&mut self, log: &mut SimLog) -> Zxid {
        let mut disk = self.disk.borrow_mut();
        disk.durable = disk.log.len();
        drop(disk);
        log.durable()
    }

    async fn finish_snapshot(&mut self, snapshots: &mut SimSnapshots) -> Option<Zxid> {
        if let Some(job) = self.job.borrow_mut().as_mut() {
            finish_job(&mut self.disk.borrow_mut(), job, 2);
        }
        let (_, written) = snapshots.finished().expect("finished");
        written.expect("the snapshot is written")
    }

    async fn close(&mut self, _log: SimLog) {}
}

#[test]
fn the_production_stores_conform() {
    baton_engine::sys::raise_memlock_limit();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().expect("executor");
    let real = run_all(|| Real { dir: temp_dir(), durable: Rc::new(Cell::new(Zxid::ZERO)) });
    executor.run(baton_engine::sys::with_reactor_ticking(real));
}

#[test]
fn the_simulated_stores_conform() {
    futures_lite::future::block_on(run_all(Simulated::default));
}
