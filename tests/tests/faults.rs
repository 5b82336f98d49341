//! Disk faults in real `baton` processes, injected through failpoints
//! (`baton_engine::faults`) or by damaging files between runs:
//!
//! - fdatasync fails (EIO) on the leader, then on a follower: that server stops (its WAL is
//!   poisoned, never retried), the others go on, no acknowledged write is lost, and restarted
//!   it recovers and rejoins;
//! - fdatasync stalls for 2 s on the leader, then on a follower: what the clients see;
//! - corruption found at start: a flipped byte in a sealed WAL segment stops the server with
//!   the file and offset; a damaged newest snapshot is passed over for an older one.

use std::time::{Duration, Instant};

use baton_engine::wal::segment::list_segments;
use baton_tests::cluster::Cluster;
use baton_tests::load::{assert_converged, one_cluster_at_a_time, Load};
use baton_tests::raw::RawClient;
use baton_tests::server::BatonProcess;
use baton_tests::temp_dir;

const LIMIT: Duration = Duration::from_secs(30);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_baton_test_server")
}

fn create_load_parent(cluster: &Cluster, leader: usize) {
    let mut c = RawClient::connect(cluster.nodes[leader - 1].addr, 4000, None).expect("connect to the leader");
    assert_eq!(c.create("/load", b"", 0).expect("reply").err, 0);
}

/// fdatasync starts failing on the leader (or a follower) under load.
fn fdatasync_fails(on_leader: bool, base: u16) {
    let _one = one_cluster_at_a_time();
    let dir = temp_dir();
    let mut cluster = Cluster::start(bin(), dir.path(), 3, base, &[]);
    let all = [1, 2, 3];
    let leader = cluster.wait_for_leader(&all, LIMIT).expect("a leader is elected");
    create_load_parent(&cluster, leader);
    let load = Load::start(cluster.addrs(), 3);
    load.progress(&cluster, 200, LIMIT, "at start");

    let victim = if on_leader { leader } else { all.into_iter().find(|&i| i != leader).expect("a follower") };
    cluster.nodes[victim - 1].set_failpoints("wal-fdatasync=return(eio)");
    let status = cluster.nodes[victim - 1].wait_exit(LIMIT).expect("the server whose fdatasync failed stops");
    assert!(!status.success(), "it stops with a failure status, not {status}");
    let log = cluster.nodes[victim - 1].log_tail(400);
    assert!(
        log.contains("WAL poisoned") && log.contains("Input/output error"),
        "its log says the WAL failed and why:\n{log}"
    );
    let rest: Vec<usize> = all.into_iter().filter(|&i| i != victim).collect();
    cluster.wait_for_leader(&rest, LIMIT).expect("the other two have a leader");
    load.progress(&cluster, 200, LIMIT, "with the failed server stopped");

    // Restarted (its disk healthy again), it recovers what was durable and rejoins.
    cluster.nodes[victim - 1].set_failpoints("");
    cluster.nodes[victim - 1].start_again();
    cluster.wait_for_leader(&all, LIMIT).expect("the restarted server rejoins");
    load.progress(&cluster, 200, LIMIT, "after it rejoined");
    let acked = load.stop();
    assert_converged(&cluster, &all, &acked, LIMIT);
}

#[test]
fn an_fdatasync_error_stops_the_leader_the_others_go_on_and_it_rejoins() {
    fdatasync_fails(true, 28_100);
}

#[test]
fn an_fdatasync_error_stops_a_follower_the_leader_goes_on_and_it_rejoins() {
    fdatasync_fails(false, 28_200);
}

/// What one client writing in a loop saw in a window.
#[derive(Debug, Default)]
struct Seen {
    writes: usize,
    max: Duration,
    over_500ms: usize,
}

/// Writes from one session for `window`, noting latencies; panics if the session is lost.
fn write_for(c: &mut RawClient, window: Duration, next: &mut u64) -> Seen {
    let mut seen = Seen::default();
    let end = Instant::now() + window;
    while Instant::now() < end {
        let path = format!("/load/s-{next:06}");
        *next += 1;
        let started = Instant::now();
        let reply = c.create(&path, b"x", 0).expect("the session survives a stalled disk");
        assert_eq!(reply.err, 0, "create {path}");
        let took = started.elapsed();
        seen.writes += 1;
        seen.max = seen.max.max(took);
        seen.over_500ms += usize::from(took > Duration::from_millis(500));
    }
    seen
}

#[test]
fn a_stalled_disk_delays_writes_but_keeps_sessions_and_leaders() {
    let _one = one_cluster_at_a_time();
    let dir = temp_dir();
    let cluster = Cluster::start(bin(), dir.path(), 3, 28_300, &[]);
    let all = [1, 2, 3];
    let leader = cluster.wait_for_leader(&all, LIMIT).expect("a leader is elected");
    create_load_parent(&cluster, leader);
    let follower = all.into_iter().find(|&i| i != leader).expect("a follower");
    let other = all.into_iter().find(|&i| i != leader && i != follower).expect("another follower");
    // The client sits on the follower that is never stalled, with a 10 s session.
    let mut c = RawClient::connect(cluster.nodes[other - 1].addr, 10_000, None).expect("connect");
    c.stream.set_read_timeout(Some(Duration::from_secs(8))).expect("timeout");
    let mut next = 0;
    let before = write_for(&mut c, Duration::from_secs(1), &mut next);
    let mut report = vec![format!("before: {before:?}")];
    for (who, i) in [("leader", leader), ("follower", follower)] {
        // One fdatasync held back 2 s, as a stalled device would.
        cluster.nodes[i - 1].set_failpoints("wal-fdatasync=1*return(delay:2000)");
        let during = write_for(&mut c, Duration::from_secs(3), &mut next);
        let after = write_for(&mut c, Duration::from_secs(1), &mut next);
        cluster.nodes[i - 1].set_failpoints("");
        let now = cluster.wait_for_leader(&all, LIMIT).expect("one leader");
        report.push(format!("{who} {i} stalled: during {during:?}, after {after:?}, leader now {now}"));
        assert!(after.writes > 0 && after.max < Duration::from_secs(2), "writes recover after the stall: {after:?}");
    }
    // Visible with --nocapture; the figures are quoted in the README.
    eprintln!("stalled disk, as one client on an unstalled follower saw it:\n  {}", report.join("\n  "));
    assert_eq!(c.exists("/load").map(|r| r.err), Some(0), "the session is still valid");
}

/// A standalone server with small WAL segments and the given snapshot settings.
fn standalone(dir: &std::path::Path, snapshot_every: &str) -> BatonProcess {
    let flags = ["--wal-segment-bytes", "65536", "--max-frame-bytes", "16384", "--snapshot-every-entries"];
    let flags = [&flags[..], &[snapshot_every, "--snapshots-to-keep", "3"]].concat();
    BatonProcess::start(bin(), dir, &flags)
}

fn fill(server: &BatonProcess, count: usize) {
    let mut c = RawClient::connect(server.addr, 4000, None).expect("connect");
    assert_eq!(c.create("/load", b"", 0).expect("reply").err, 0);
    let data = vec![b'v'; 100];
    for k in 0..count {
        assert_eq!(c.create(&format!("/load/n{k:05}"), &data, 0).expect("reply").err, 0);
    }
}

/// The files in `dir` named `*.ext`, sorted.
fn files_ending(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .expect("read the directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    found.sort();
    found
}

fn flip_byte(path: &std::path::Path, offset: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset] ^= 0x5a;
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn a_flipped_byte_in_a_sealed_wal_segment_stops_the_server_with_the_file_and_offset() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let mut server = standalone(&data, "0");
    fill(&server, 1500);
    assert!(server.terminate(LIMIT).is_some_and(|s| s.success()), "a clean stop");
    let segments = list_segments(&data.join("wal")).expect("list segments");
    assert!(segments.len() >= 3, "the WAL rolled: {segments:?}");
    let (_, sealed) = &segments[1];
    let offset = 4096 + 3000;
    flip_byte(sealed, offset);
    let why = server.try_start_again().expect_err("a server with a damaged log does not start");
    let name = sealed.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(why.contains(name) && why.contains("offset"), "the error names the file and offset:\n{why}");
    assert!(why.contains("corrupt"), "and says it is corruption:\n{why}");
}

#[test]
fn a_damaged_newest_snapshot_is_passed_over_for_an_older_one() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let mut server = standalone(&data, "300");
    fill(&server, 1500);
    assert!(server.terminate(LIMIT).is_some_and(|s| s.success()), "a clean stop");
    let snapshots = files_ending(&data.join("snapshots"), "snap");
    assert!(snapshots.len() >= 2, "snapshots were taken: {snapshots:?}");
    let newest = snapshots.last().expect("newest").clone();
    flip_byte(&newest, 64 + 500);
    server.start_again();
    let log = server.log_tail(200);
    assert!(log.contains("passing over a damaged snapshot"), "the damaged snapshot is reported:\n{log}");
    let mut c = RawClient::connect(server.addr, 4000, None).expect("connect");
    let children = c.children("/load").expect("children");
    assert_eq!(children.len(), 1500, "every znode is back, from the older snapshot and the log");
}

/// A small ext4 filesystem in a file, loop-mounted (root only); unmounted when dropped.
struct SmallDisk {
    mount: std::path::PathBuf,
}

impl SmallDisk {
    /// `None` (with the reason printed) where this machine cannot mount one.
    fn mount(dir: &std::path::Path, mib: u64) -> Option<SmallDisk> {
        SmallDisk::mount_at(&dir.join("disk.img"), &dir.join("mnt"), mib)
    }

    /// A filesystem of `mib` MiB in the file `image`, mounted at `mount`.
    fn mount_at(image: &std::path::Path, mount: &std::path::Path, mib: u64) -> Option<SmallDisk> {
        let (image, mount) = (image.to_path_buf(), mount.to_path_buf());
        std::fs::create_dir_all(&mount).expect("mount point");
        let file = std::fs::File::create(&image).expect("image");
        file.set_len(mib << 20).expect("size the image");
        let run = |cmd: &str, args: &[&std::ffi::OsStr]| -> Result<(), String> {
            let out = std::process::Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        // No blocks reserved for root: the server runs as root here and would use them.
        let made = run("mkfs.ext4", &["-q".as_ref(), "-F".as_ref(), "-m".as_ref(), "0".as_ref(), image.as_os_str()])
            .and_then(|_| run("mount", &["-o".as_ref(), "loop".as_ref(), image.as_os_str(), mount.as_os_str()]));
        match made {
            Ok(()) => Some(SmallDisk { mount }),
            Err(why) => {
                eprintln!("SKIPPED: cannot loop-mount a small ext4 filesystem here ({why})");
                None
            }
        }
    }

    fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.mount.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: statvfs fills the struct we pass for a NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0, "statvfs");
        st.f_bavail * st.f_frsize
    }

    /// Takes all but `leave` bytes of the free space with a file; returns it.
    fn fill(&self, leave: u64) -> std::path::PathBuf {
        let filler = self.mount.join("filler");
        let size = self.free_bytes().saturating_sub(leave);
        let out = std::process::Command::new("fallocate")
            .args(["-l", &size.to_string()])
            .arg(&filler)
            .output()
            .expect("fallocate");
        assert!(out.status.success(), "fallocate: {}", String::from_utf8_lossy(&out.stderr));
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_sessions_and_writes_resume_once_space_is_freed() {
    let dir = temp_dir();
    let Some(disk) = SmallDisk::mount(dir.path(), 64) else { return };
    let data = disk.mount.join("data");
    // 4 MiB segments: the spare for the next one is preallocated when a segment starts, so a
    // full disk shows a whole segment before the log runs out.
    let flags = ["--wal-segment-bytes", "4194304", "--wal-recycle-segments", "0", "--snapshot-every-entries", "0"];
    let mut server = BatonProcess::start(bin(), &data, &flags);
    let mut c = RawClient::connect(server.addr, 10_000, None).expect("connect");
    assert_eq!(c.create("/load", b"", 0).expect("reply").err, 0);
    // The next segment is prepared in the background; the disk fills after it.
    let spare = data.join("wal").join(baton_engine::wal::SPARE_FILE);
    let end = Instant::now() + LIMIT;
    while std::fs::metadata(&spare).map(|m| m.len()).unwrap_or(0) < 4 << 20 {
        assert!(Instant::now() < end, "the spare segment was never prepared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let filler = disk.fill(64 << 10);

    // Write 100 KiB znodes until the server refuses: the current segment fills, the next
    // one has no room.
    let value = vec![b'd'; 100 << 10];
    let mut acked = Vec::new();
    let refused = (0..400).find_map(|k| {
        let path = format!("/load/big-{k:04}");
        let reply = c.create(&path, &value, 0).expect("an answer, not a dropped connection");
        if reply.err == 0 {
            acked.push(path);
            None
        } else {
            Some(reply.err)
        }
    });
    assert_eq!(refused, Some(-119), "writes are refused with ZooKeeper's NotReadOnly once the disk is full");
    assert!(!acked.is_empty(), "writes went in before the disk filled");
    assert!(server.is_running(), "a full disk does not stop the server");
    let log = server.log_tail(100);
    assert!(log.contains("disk full"), "the log says the disk is full:\n{log}");

    // Reads and sessions go on: the same session reads, a new session opens and reads.
    assert_eq!(c.exists(&acked[0]).map(|r| r.err), Some(0), "the session reads");
    let mut other = RawClient::connect(server.addr, 10_000, None).expect("a new session while the disk is full");
    assert_eq!(other.children("/load").map(|c| c.len()), Some(acked.len()), "a new session reads everything");
    drop(other);

    // Space freed: writes resume by themselves (the segment is retried every second).
    std::fs::remove_file(&filler).expect("free the space");
    let end = Instant::now() + LIMIT;
    let mut k = 0;
    loop {
        let path = format!("/load/after-{k:04}");
        k += 1;
        match c.create(&path, b"small", 0).expect("an answer").err {
            0 => {
                acked.push(path);
                break;
            }
            -119 if Instant::now() < end => std::thread::sleep(Duration::from_millis(100)),
            err => panic!("writes did not resume after space was freed (last error {err})"),
        }
    }
    // Nothing durable was damaged: after a restart every acknowledged write is there.
    drop(c);
    server.restart();
    let mut c = RawClient::connect(server.addr, 10_000, None).expect("connect after the restart");
    let children = c.children("/load").expect("children");
    let missing: Vec<&String> = acked.iter().filter(|p| !children.iter().any(|n| p.ends_with(n.as_str()))).collect();
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    drop(c);
    drop(server);
    drop(disk);
}

/// Writes 100 KiB znodes to server `i` until it refuses or drops the connection (its log
/// then cannot take more); returns how many went in.
fn write_big_until_refused(cluster: &Cluster, i: usize) -> usize {
    let Some(mut c) = RawClient::connect(cluster.nodes[i - 1].addr, 10_000, None) else { return 0 };
    let value = vec![b'd'; 100 << 10];
    for k in 0..400 {
        match c.create(&format!("/load/big-{i}-{k:04}"), &value, 0) {
            Some(reply) if reply.err == 0 => {}
            _ => return k,
        }
    }
    panic!("server {i} took 40 MB on a 64 MiB disk with 64 KiB free");
}

/// The disk of the leader (or a follower) fills: that server takes writes until its log
/// must roll, then leaves the ensemble; the other two go on; freed, it rejoins by itself.
fn full_disk_in_an_ensemble(on_leader: bool, base: u16) {
    let _one = one_cluster_at_a_time();
    let dir = temp_dir();
    // Each server's data directory on its own small filesystem.
    let mut disks = Vec::new();
    for id in 1..=3 {
        let image = dir.path().join(format!("disk{id}.img"));
        let Some(disk) = SmallDisk::mount_at(&image, &dir.path().join(format!("n{id}")), 64) else { return };
        disks.push(disk);
    }
    // 1 MiB segments (entries up to 516 KiB): the log rolls after ten 100 KiB znodes.
    let flags = [
        "--wal-segment-bytes",
        "1048576",
        "--max-frame-bytes",
        "262144",
        "--wal-recycle-segments",
        "0",
        "--snapshot-every-entries",
        "0",
    ];
    let mut cluster = Cluster::start(bin(), dir.path(), 3, base, &flags);
    let all = [1, 2, 3];
    let first_leader = cluster.wait_for_leader(&all, LIMIT).expect("a leader is elected");
    create_load_parent(&cluster, first_leader);
    let load = Load::start(cluster.addrs(), 3);
    load.progress(&cluster, 200, LIMIT, "at start");

    // Its disk fills (after its next segment was prepared).
    let victim =
        if on_leader { first_leader } else { all.into_iter().find(|&i| i != first_leader).expect("a follower") };
    let spare = cluster.nodes[victim - 1].dir.join("wal").join(baton_engine::wal::SPARE_FILE);
    let end = Instant::now() + LIMIT;
    while std::fs::metadata(&spare).map(|m| m.len()).unwrap_or(0) < 1 << 20 {
        assert!(Instant::now() < end, "the spare segment was never prepared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let filler = disks[victim - 1].fill(64 << 10);
    let went_in = write_big_until_refused(&cluster, victim);
    let rest: Vec<usize> = all.into_iter().filter(|&i| i != victim).collect();
    let end = Instant::now() + LIMIT;
    while !cluster.nodes[victim - 1].log_tail(400).contains("leaving the ensemble") {
        assert!(Instant::now() < end, "the full server never left ({went_in} big writes went in)");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cluster.nodes[victim - 1].is_running(), "a full disk does not stop the server");
    cluster.wait_for_leader(&rest, LIMIT).expect("the other two have a leader");
    load.progress(&cluster, 200, LIMIT, "with the full server out");
    assert_ne!(cluster.mode(victim).as_deref(), Some("leader"), "the full server does not lead");

    // Space freed: it rejoins by itself and catches up.
    std::fs::remove_file(&filler).expect("free the space");
    cluster.wait_for_leader(&all, LIMIT).expect("the server rejoins once its disk has room");
    load.progress(&cluster, 200, LIMIT, "after it rejoined");
    let acked = load.stop();
    assert_converged(&cluster, &all, &acked, LIMIT);
    let log = cluster.nodes[victim - 1].log_tail(2000);
    assert!(log.contains("disk full") && log.contains("room again"), "its log tells the story:\n{log}");
    drop(cluster);
    drop(disks);
}

#[test]
fn a_full_disk_takes_the_leader_out_of_the_ensemble_until_space_is_freed() {
    full_disk_in_an_ensemble(true, 28_500);
}

#[test]
fn a_full_disk_takes_a_follower_out_of_the_ensemble_until_space_is_freed() {
    full_disk_in_an_ensemble(false, 28_600);
}

#[test]
fn a_follower_with_a_damaged_log_says_so_and_is_resynchronised_from_the_leader_with_resync() {
    let _one = one_cluster_at_a_time();
    let dir = temp_dir();
    let flags = ["--wal-segment-bytes", "65536", "--max-frame-bytes", "16384", "--snapshot-every-entries", "0"];
    let mut cluster = Cluster::start(bin(), dir.path(), 3, 28_400, &flags);
    let all = [1, 2, 3];
    let leader = cluster.wait_for_leader(&all, LIMIT).expect("a leader is elected");
    create_load_parent(&cluster, leader);
    let load = Load::start(cluster.addrs(), 3);
    load.progress(&cluster, 1500, LIMIT, "at start");

    // A follower stops; a byte of a sealed segment of its log flips.
    let victim = all.into_iter().find(|&i| i != leader).expect("a follower");
    assert!(cluster.nodes[victim - 1].terminate(LIMIT).is_some(), "it stops");
    let data = cluster.nodes[victim - 1].dir.clone();
    let segments = list_segments(&data.join("wal")).expect("list segments");
    assert!(segments.len() >= 3, "the WAL rolled: {segments:?}");
    let (_, sealed) = &segments[1];
    flip_byte(sealed, 4096 + 3000);
    load.progress(&cluster, 200, LIMIT, "with the follower down");

    // It refuses to start, naming the file and the remedy.
    let why = cluster.nodes[victim - 1].try_start_again().expect_err("a damaged log stops the server");
    let name = sealed.file_name().and_then(|n| n.to_str()).expect("name").to_string();
    assert!(why.contains(&name) && why.contains("--resync"), "the error names the file and --resync:\n{why}");

    // With --resync it moves its log aside, is synchronised from the leader and votes again.
    cluster.nodes[victim - 1].try_start_again_with(&["--resync"]).expect("it starts with --resync");
    cluster.wait_for_leader(&all, LIMIT).expect("it rejoins");
    load.progress(&cluster, 200, LIMIT, "after it rejoined");
    let acked = load.stop();
    assert_converged(&cluster, &all, &acked, LIMIT);
    let end = Instant::now() + LIMIT;
    while data.join("resync-pending").exists() {
        assert!(Instant::now() < end, "the marker goes once the leader synchronised it");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kept: Vec<_> = std::fs::read_dir(&data)
        .expect("data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("discarded-")))
        .collect();
    assert!(
        kept.iter().any(|d| d.join("wal").join(&name).exists()),
        "the damaged log is kept aside for inspection: {kept:?}"
    );
    // --resync left in place discards nothing once the log verifies.
    cluster.nodes[victim - 1].kill();
    cluster.nodes[victim - 1].try_start_again_with(&["--resync"]).expect("it starts");
    assert!(cluster.nodes[victim - 1].log_tail(50).contains("nothing is discarded"), "a healthy log is kept");
    assert!(!data.join("resync-pending").exists(), "and it votes at once");
    cluster.wait_for_leader(&all, LIMIT).expect("it rejoins");
}

#[test]
fn a_snapshot_that_cannot_be_written_costs_nothing_and_the_next_one_is_taken() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let server = standalone(&data, "200");
    server.set_failpoints("snapshot-write=return(enospc)");
    fill(&server, 600);
    let log = server.log_tail(200);
    assert!(log.contains("snapshot failed"), "the failed snapshot is reported:\n{log}");
    let snaps = |ext: &str| files_ending(&data.join("snapshots"), ext).len();
    assert_eq!(snaps("snap"), 0, "no snapshot was written");
    // A snapshot may be failing right now: its temporary file goes with it.
    let end = Instant::now() + LIMIT;
    while snaps("tmp") > 0 {
        assert!(Instant::now() < end, "a failed snapshot leaves no temporary file holding space");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The disk has room again: the next snapshot is taken, and writes never stopped.
    server.set_failpoints("");
    let mut c = RawClient::connect(server.addr, 4000, None).expect("connect");
    for k in 0..400 {
        assert_eq!(c.create(&format!("/load/m{k:05}"), b"x", 0).expect("reply").err, 0);
    }
    let end = Instant::now() + LIMIT;
    while snaps("snap") == 0 {
        assert!(Instant::now() < end, "a snapshot is written once the disk has room");
        std::thread::sleep(Duration::from_millis(50));
    }
}
