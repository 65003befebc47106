//! The disk thread and the late-write rules on real files, with a fake
//! fencing daemon on a real Unix socket.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use config_schema::clock::BootInstant;
use config_schema::ctl::{Request, Response};
use config_schema::ctl_server;

use super::disk::{DiskBackend, DiskSpec, SECTOR};
use super::disk_queue::Released;
use super::late_write::{self, DiskGuard, WriteFence, IO_AGE_LIMIT};
use super::{disk_thread, IoWatch, LiveConfig};
use crate::io::{BlockOp, BlockRequest, BlockStatus, InputEvent, OutputEvent, Outputs};
use crate::kick::Kicker;

const S: usize = SECTOR as usize;

/// A fencing daemon that answers `Ok` to everything and reports what it got.
struct FakeFencing {
    _dir: tempfile::TempDir,
    path: PathBuf,
    got: Receiver<Request>,
}

fn fake_fencing() -> FakeFencing {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fencing.sock");
    let listener = ctl_server::bind(&path).unwrap();
    let (tx, got) = mpsc::channel();
    std::thread::spawn(move || {
        ctl_server::serve(
            listener,
            config_schema::ctl_server::Policy::fencing_for_this_test(),
            move |req| {
                let _ = tx.send(req);
                Response::Ok
            },
        )
    });
    FakeFencing {
        _dir: dir,
        path,
        got,
    }
}

fn reset_reason(f: &FakeFencing, within: Duration) -> String {
    match f.got.recv_timeout(within) {
        Ok(Request::ResetHost { reason }) => reason,
        other => panic!("fencing got {other:?} instead of a ResetHost"),
    }
}

fn disk_file(sectors: u64) -> (tempfile::NamedTempFile, DiskBackend) {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(sectors * SECTOR).unwrap();
    let spec: DiskSpec = file.path().to_str().unwrap().parse().unwrap();
    let disk = DiskBackend::open(&spec, 0).unwrap();
    (file, disk)
}

fn write(id: u64, sector: u64, byte: u8) -> BlockRequest {
    BlockRequest {
        dev: 0,
        id,
        op: BlockOp::Write {
            sector,
            data: vec![byte; S],
        },
    }
}

fn read(id: u64, sector: u64) -> BlockRequest {
    BlockRequest {
        dev: 0,
        id,
        op: BlockOp::Read {
            sector,
            len: S as u32,
        },
    }
}

fn sector_of(file: &tempfile::NamedTempFile, sector: u64) -> Vec<u8> {
    let mut got = vec![0u8; S];
    file.as_file()
        .read_exact_at(&mut got, sector * SECTOR)
        .unwrap();
    got
}

/// The disk thread on `disk`, fed through the returned sender; completions
/// `(id, status, data)` come out of the receiver.
struct Served {
    tx: Sender<Released>,
    done: Receiver<(u64, BlockStatus, Vec<u8>)>,
    thread: JoinHandle<()>,
}

impl Served {
    fn send(&self, req: BlockRequest) {
        self.send_at(BootInstant::now(), req);
    }
    fn send_at(&self, at: BootInstant, req: BlockRequest) {
        self.tx.send(Released { at, req }).unwrap();
    }
    fn next(&self) -> (u64, BlockStatus, Vec<u8>) {
        self.done
            .recv_timeout(Duration::from_secs(30))
            .expect("a completion within 30 s")
    }
    /// Closes the channel, waits for the thread; what else completed.
    fn finish(self) -> Vec<u64> {
        drop(self.tx);
        self.thread.join().unwrap();
        self.done.try_iter().map(|(id, ..)| id).collect()
    }
}

fn serve(disk: DiskBackend, guard: &Arc<DiskGuard>) -> Served {
    let (tx, rx) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let guard = Arc::clone(guard);
    let thread = std::thread::spawn(move || {
        disk_thread::serve(disk, rx, guard, |ev| {
            if let InputEvent::BlockDone {
                id, status, data, ..
            } = ev
            {
                done_tx.send((id, status, data)).unwrap();
            }
        })
    });
    Served { tx, done, thread }
}

/// The hole itself: the deposed Primary's write lands 300 ms late; the new
/// Primary's newer write to the same sector must still be what the disk
/// holds at the end.
#[test]
fn a_late_write_of_the_deposed_primary_does_not_undo_a_newer_one() {
    let (file, mut disk) = disk_file(64);
    let old = write(1, 10, 0x42); // what the old Primary had in flight
    disk.fence_writes(
        WriteFence::with_bound(std::slice::from_ref(&old), Duration::from_secs(3)).unwrap(),
    );
    let late = {
        let f = file.reopen().unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            f.write_all_at(&[0xee; S], 10 * SECTOR).unwrap();
            f.sync_data().unwrap();
        })
    };
    let s = serve(disk, &DiskGuard::new(None, None));
    s.send(old); // re-issued: passes at once
    s.send(write(2, 10, 0x43));
    assert_eq!(s.next().0, 1);
    assert_eq!(s.next().0, 2);
    assert!(s.finish().is_empty());
    late.join().unwrap();
    assert_eq!(
        sector_of(&file, 10),
        [0x43; S],
        "the late write undid the newer one"
    );
}

/// A write held by the fence waits in its own queue: reads and writes to
/// other sectors complete meanwhile; a read overlapping it and a flush after
/// it complete after it, the read with its data.
#[test]
fn reads_and_other_writes_complete_while_an_overlapping_write_is_fenced() {
    let (file, mut disk) = disk_file(64);
    let reissued = write(1, 10, 0x11);
    disk.fence_writes(
        WriteFence::with_bound(std::slice::from_ref(&reissued), Duration::from_secs(3)).unwrap(),
    );
    let s = serve(disk, &DiskGuard::new(None, None));
    s.send(reissued);
    s.send(write(2, 10, 0x22)); // held by the fence
    s.send(read(3, 10)); // overlaps the held write: behind it
    s.send(BlockRequest {
        dev: 0,
        id: 4,
        op: BlockOp::Flush,
    }); // covers the held write: behind it
    s.send(read(5, 20)); // other sector
    s.send(write(6, 30, 0x66)); // other sector
    s.send(read(7, 30)); // overlaps write 6, which went: goes after it
    let order: Vec<_> = (0..7).map(|_| s.next()).collect();
    let ids: Vec<u64> = order.iter().map(|(id, ..)| *id).collect();
    assert_eq!(
        ids,
        vec![1, 5, 6, 7, 2, 3, 4],
        "reads and other sectors must not wait for the fenced write"
    );
    assert!(order.iter().all(|(_, st, _)| *st == BlockStatus::Ok));
    assert_eq!(order[3].2, vec![0x66; S]);
    assert_eq!(order[5].2, vec![0x22; S], "the read after the held write");
    assert!(s.finish().is_empty());
    assert_eq!(sector_of(&file, 10), [0x22; S]);
}

/// The new Primary's own fenced write is not "in flight": the I/O watch
/// does not ask fencing to reset the host that just took over, even though
/// the fence holds it longer than the I/O age limit.
#[test]
fn a_fenced_write_does_not_trigger_the_io_watch() {
    let fencing = fake_fencing();
    let (file, mut disk) = disk_file(64);
    let reissued = write(1, 10, 0x11);
    let hold = IO_AGE_LIMIT + Duration::from_secs(1);
    let t0 = BootInstant::now(); // the fence lifts `hold` after its creation
    disk.fence_writes(WriteFence::with_bound(std::slice::from_ref(&reissued), hold).unwrap());
    let mut live = super::start(
        LiveConfig {
            disk: Some(disk),
            tap: None,
            console: Box::new(std::io::sink()),
            stdin: false,
            io_watch: Some(IoWatch {
                vm: "kv".into(),
                fencing_socket: fencing.path.clone(),
            }),
        },
        Arc::new(Kicker::new()),
    )
    .unwrap();
    live.outputs.emit(0, OutputEvent::Block(reissued));
    live.outputs.emit(0, OutputEvent::Block(write(2, 10, 0x22)));
    let mut done = Vec::new();
    while done.len() < 2 && t0.elapsed() < Duration::from_secs(30) {
        let mut evs = Vec::new();
        live.backends
            .queue
            .wait_take(Duration::from_millis(50), &mut evs);
        done.extend(evs.into_iter().filter_map(|e| match e {
            InputEvent::BlockDone { id, status, .. } => Some((id, status)),
            _ => None,
        }));
    }
    assert_eq!(done, vec![(1, BlockStatus::Ok), (2, BlockStatus::Ok)]);
    assert!(t0.elapsed() >= hold, "the fence held the write");
    assert!(
        fencing.got.try_recv().is_err(),
        "the I/O watch asked to reset the new primary for its own fenced write"
    );
    assert!(!live.backends.guard().is_stopped());
    assert_eq!(sector_of(&file, 10), [0x22; S]);
}

/// A write released long ago (the host was frozen, or the disk thread
/// stalled) is never submitted: the disk thread asks fencing to reset the
/// host at once and nothing more is submitted or completed.
#[test]
fn a_write_released_long_ago_is_never_submitted_and_the_host_is_reset() {
    let fencing = fake_fencing();
    let (file, disk) = disk_file(64);
    let guard = DiskGuard::new(Some("kv"), Some(fencing.path.clone()));
    let s = serve(disk, &guard);
    let now = BootInstant::now();
    let long_ago = BootInstant::from_nanos(now.as_nanos() - 3 * IO_AGE_LIMIT.as_nanos() as u64);
    s.send(read(1, 5)); // reads are not aged
    assert_eq!(s.next().0, 1);
    s.send_at(long_ago, write(2, 5, 0xee));
    s.send(write(3, 6, 0xee)); // fresh, but after the host stopped
    let reason = reset_reason(&fencing, Duration::from_secs(10));
    assert!(
        reason.contains("vm kv: disk write of sectors 5..6 has waited"),
        "{reason}"
    );
    assert!(reason.contains("not submitted"), "{reason}");
    assert!(s.finish().is_empty(), "a request completed after the stop");
    assert!(guard.is_stopped());
    assert_eq!(sector_of(&file, 5), [0; S], "the old write was submitted");
    assert_eq!(sector_of(&file, 6), [0; S], "a write went after the stop");
}

/// Storage refusing a write (a persistent reservation conflict: `EBADE`)
/// means this host is deposed: the write never completes, fencing is asked
/// for a reset, and the Outputs door lets nothing more out.
#[test]
fn a_refused_write_is_never_completed_and_stops_every_output() {
    let fencing = fake_fencing();
    let (_file, mut disk) = disk_file(64);
    disk.fail_next(libc::EBADE);
    let console = Arc::new(Mutex::new(Vec::new()));
    let mut live = super::start(
        LiveConfig {
            disk: Some(disk),
            tap: None,
            console: Box::new(SharedSink(Arc::clone(&console))),
            stdin: false,
            io_watch: Some(IoWatch {
                vm: "kv".into(),
                fencing_socket: fencing.path.clone(),
            }),
        },
        Arc::new(Kicker::new()),
    )
    .unwrap();
    let (stopped_tx, stopped) = mpsc::channel();
    live.backends
        .on_reset_requested(move || stopped_tx.send(()).unwrap());
    live.outputs
        .emit(0, OutputEvent::Console(b"before\n".to_vec()));
    live.outputs.emit(0, OutputEvent::Block(write(1, 10, 0x11)));
    let reason = reset_reason(&fencing, Duration::from_secs(10));
    assert!(
        reason.contains("storage refused the disk write of sectors 10..11"),
        "{reason}"
    );
    stopped.recv_timeout(Duration::from_secs(10)).unwrap();
    live.outputs
        .emit(0, OutputEvent::Console(b"after\n".to_vec()));
    live.outputs.emit(0, OutputEvent::Block(write(2, 20, 0x22)));
    assert_eq!(live.outputs.dropped, 2);
    assert_eq!(console.lock().unwrap().as_slice(), b"before\n");
    let mut evs = Vec::new();
    live.backends.queue.take(&mut evs);
    assert!(evs.is_empty(), "completed after the refusal: {evs:?}");
}

/// A request stuck with the storage past the limit gets the host reset by
/// the I/O watch, and when it comes back at last it is not completed.
#[test]
fn a_stuck_request_gets_the_host_reset_and_never_completes() {
    let fencing = fake_fencing();
    let (_file, mut disk) = disk_file(64);
    disk.stall_next(IO_AGE_LIMIT + Duration::from_millis(1500));
    let guard = DiskGuard::new(Some("kv"), Some(fencing.path.clone()));
    late_write::spawn_io_watch(Arc::clone(&guard)).unwrap();
    let s = serve(disk, &guard);
    s.send(write(1, 10, 0x11));
    let reason = reset_reason(&fencing, Duration::from_secs(10));
    assert!(
        reason.contains("disk write of sectors 10..11 has been in flight"),
        "{reason}"
    );
    s.send(read(2, 20));
    assert!(s.finish().is_empty(), "completed after the reset");
    assert_eq!(guard.in_flight(), 0);
}

struct SharedSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
