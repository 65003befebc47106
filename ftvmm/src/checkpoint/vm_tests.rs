//! Checkpoint epochs on real KVM (this machine's /dev/kvm runs no stock
//! Linux, so the guest is the two-vCPU real-mode counter of
//! `linux::tests`): the Secondary's staging copy equals the Primary's memory
//! at an epoch, and a VM restored from the last epoch runs on from there;
//! and the gated backend's Output Rule with a real file as the disk.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::delta_base::DeltaBase;
use super::dirty_log::DirtyLog;
use super::gate::{EpochGate, GateConfig};
use super::gated::{GatedBackend, GatedOutputs};
use super::primary::{self, EpochSink, LoopConfig};
use super::receiver::Receiver;
use super::secondary::{self, Rebuild, Staging};
use crate::io::{BlockOp, BlockRequest, BlockStatus, InputEvent};
use crate::linux::backend::LinuxBackend;
use crate::linux::machine::LinuxVm;
use crate::linux::tests::{counter, wait_until, wait_until_within, NoBackend, Sink, CODE};
use crate::live::{DiskBackend, DiskSpec};

const MEM: u64 = 64 << 20;

fn gate() -> EpochGate {
    EpochGate::new(
        GateConfig {
            max_dirty_pages: u64::MAX,
            max_write_bytes: u64::MAX,
        },
        1,
    )
}

pub(super) struct ChanSink(mpsc::Sender<Vec<u8>>);

impl EpochSink for ChanSink {
    fn send(&mut self, piece: Vec<u8>) -> Result<(), String> {
        self.0.send(piece).map_err(|e| e.to_string())
    }
}

/// The Secondary in a thread of this process: applies the pieces sent to
/// the returned sink and acknowledges each complete epoch through
/// `outputs`' gate; its receiver comes back when the sink is dropped.
pub(super) fn in_process_secondary(
    outputs: &Arc<GatedOutputs>,
) -> (ChanSink, std::thread::JoinHandle<Receiver<Staging>>) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let acks = Arc::clone(outputs);
    let secondary = std::thread::spawn(move || {
        let mut r = Receiver::new(1, Staging::new(MEM).unwrap(), 0);
        for piece in rx {
            if let Some(e) = r
                .on_piece(&piece)
                .expect("every epoch is whole and in order")
            {
                acks.on_ack(e).expect("acks of closed epochs");
            }
        }
        r
    });
    (ChanSink(tx), secondary)
}

fn mem_equal(a: &crate::virtio::GuestMemoryMmap, b: &crate::virtio::GuestMemoryMmap) -> bool {
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    (0..MEM >> 20).all(|i| {
        a.read_slice(&mut x, GuestAddress(i << 20)).unwrap();
        b.read_slice(&mut y, GuestAddress(i << 20)).unwrap();
        x == y
    })
}

#[test]
fn a_vm_restored_from_the_last_epoch_equals_the_primary_there_and_runs_on() {
    restored_from_the_last_epoch(DirtyLog::Get);
}

/// The same with `KVM_CLEAR_DIRTY_LOG` as the harvest: no page is lost
/// between the get and the clear.
#[test]
fn the_same_with_manual_dirty_log_protection() {
    restored_from_the_last_epoch(DirtyLog::GetClear);
}

fn restored_from_the_last_epoch(dirty: DirtyLog) {
    let outputs = GatedOutputs::new(gate(), None);
    let backend = GatedBackend::new(Arc::clone(&outputs), None, None, 0, Box::new(|_| {}));
    let sink = Sink::default();
    let vm = LinuxVm::create(2, MEM, vec![], Box::new(sink.clone()), Box::new(backend))
        .expect("a VM with in-kernel irqchip and 2 vCPUs (is /dev/kvm there?)");
    vm.memory().write_slice(CODE, GuestAddress(0x1000)).unwrap();
    vm.enter_real_mode(0, 0x1000).unwrap();
    vm.enter_real_mode(1, 0x1000).unwrap();
    let pmem = vm.memory().clone();
    let running = vm.start().unwrap();
    wait_until("vCPU 0 counts", || counter(&pmem) > 10);

    let (mut link, secondary) = in_process_secondary(&outputs);
    // The loop's steps by hand (`run_epochs` is the same with a clock), so
    // that the last epoch below shares their delta cache: the staging copy
    // compared with the Primary's memory is then built from deltas too.
    if dirty == DirtyLog::GetClear {
        running
            .with_paused(|p| crate::checkpoint::dirty_log::enable_manual_protect(p.vm))
            .unwrap();
    }
    let mut base = DeltaBase::new(crate::checkpoint::delta_base::DEFAULT_BYTES);
    let mut epochs = Vec::new();
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(20));
        let e = primary::one_epoch(&running, &outputs, &mut link, i == 0, dirty, &mut base);
        epochs.push(e.expect("an epoch"));
    }
    // The first epoch carries every page ever touched (code, counter,
    // tables), not the untouched rest of memory (zero on both sides); the
    // memory comparison below checks that this is enough.
    assert!(
        epochs[0].pages >= 2 && (epochs[0].pages as u64) < MEM / 4096 / 2,
        "first epoch: {} pages",
        epochs[0].pages
    );
    assert!(
        epochs[1..].iter().all(|e| e.pages < 64),
        "later epochs carry the dirty pages only: {:?}",
        epochs.iter().map(|e| e.pages).collect::<Vec<_>>()
    );
    // From the third epoch on, the counter's page (shipped raw once, by the
    // second) goes as a delta: the staging copy compared below is built
    // from deltas too.
    assert!(
        epochs[2..].iter().all(|e| e.deltas > 0),
        "pages shipped as deltas: {:?}",
        epochs.iter().map(|e| e.deltas).collect::<Vec<_>>()
    );

    // Stop the Primary and take one last epoch of its final state.
    running.stop();
    let last = primary::one_epoch(&running, &outputs, &mut link, false, dirty, &mut base).unwrap();
    drop(link);
    let r = secondary.join().unwrap();
    assert_eq!(r.last(), last.number);
    let (_, acked, _) = outputs.progress();
    assert_eq!(acked, last.number, "every epoch acknowledged");
    assert!(
        mem_equal(&pmem, r.memory().memory()),
        "the staging copy equals the Primary's memory at the epoch"
    );
    let at_epoch = counter(&pmem);
    running.wait();

    // Take over: the counter goes on from the epoch's value.
    let sink2 = Sink::default();
    let (running2, epoch) = secondary::take_over(
        r.take_over(),
        Rebuild {
            vcpus: 2,
            virtio: vec![],
            console: Box::new(sink2.clone()),
            backend: Box::new(NoBackend),
            advance_ns: 0,
        },
        |w| {
            assert!(w.is_empty(), "the counter writes no disk");
            Ok(())
        },
    )
    .expect("take over");
    assert_eq!(epoch, last.number);
    // (The restored memory is the staging copy compared above; the word
    // wraps in microseconds, so "counts on" is "changes".)
    let mem2 = running2.memory();
    wait_until("the restored vCPU 0 counts on", || {
        counter(&mem2) != at_epoch
    });
    assert!(
        sink2.0.lock().unwrap().is_empty(),
        "nothing restarted from the top (the APIC ids were printed before)"
    );
    running2.stop();
    assert_eq!(running2.wait().end, crate::linux::End::Stopped);
}

/// Block completions and frames as the gated backend delivers them.
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Vec<InputEvent>>>);

fn disk_file(sectors: u64) -> (tempfile::NamedTempFile, DiskBackend) {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(sectors * 512).unwrap();
    let d = DiskBackend::open(
        &DiskSpec {
            path: f.path().into(),
            region: None,
        },
        0,
    )
    .unwrap();
    (f, d)
}

fn read_done(seen: &Seen, id: u64) -> Option<Vec<u8>> {
    seen.0.lock().unwrap().iter().find_map(|e| match e {
        InputEvent::BlockDone {
            id: i,
            status: BlockStatus::Ok,
            data,
            ..
        } if *i == id => Some(data.clone()),
        _ => None,
    })
}

/// A gate whose released frames are captured, and a started backend on it
/// writing a 64-sector temporary file, its completions seen.
struct Gated {
    released: Arc<Mutex<Vec<Vec<u8>>>>,
    outputs: Arc<GatedOutputs>,
    file: tempfile::NamedTempFile,
    b: GatedBackend,
    seen: Seen,
}

fn gated() -> Gated {
    let released = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let r2 = Arc::clone(&released);
    let outputs = GatedOutputs::new(
        gate(),
        Some(Box::new(move |f: &[u8]| {
            r2.lock().unwrap().push(f.to_vec())
        })),
    );
    let (file, disk) = disk_file(64);
    let mut b = GatedBackend::new(Arc::clone(&outputs), Some(disk), None, 0, Box::new(|_| {}));
    let seen = Seen::default();
    let s2 = seen.clone();
    b.start(Arc::new(move |ev| s2.0.lock().unwrap().push(ev)))
        .unwrap();
    Gated {
        released,
        outputs,
        file,
        b,
        seen,
    }
}

#[test]
fn writes_complete_at_once_reads_see_them_and_frames_wait_for_ack_and_durable() {
    let Gated {
        released,
        outputs,
        file,
        mut b,
        seen,
    } = gated();

    let data = vec![0xabu8; 1024];
    b.submit_block(BlockRequest {
        dev: 0,
        id: 1,
        op: BlockOp::Write {
            sector: 8,
            data: data.clone(),
        },
    });
    b.send_frame(0, b"reply".to_vec());
    b.submit_block(BlockRequest {
        dev: 0,
        id: 2,
        op: BlockOp::Read {
            sector: 7,
            len: 2048,
        },
    });
    wait_until("the write and the read complete", || {
        read_done(&seen, 1).is_some() && read_done(&seen, 2).is_some()
    });
    let got = read_done(&seen, 2).unwrap();
    assert_eq!(&got[..512], &[0u8; 512][..], "sector 7 from the device");
    assert_eq!(
        &got[512..1536],
        &data[..],
        "sectors 8-9 from the pending write"
    );
    let on_disk = std::fs::read(file.path()).unwrap();
    assert!(
        on_disk.iter().all(|&x| x == 0),
        "nothing on the device before the ack"
    );

    let closed = outputs.close_epoch();
    assert_eq!((closed.number, closed.writes.len()), (1, 1));
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        released.lock().unwrap().is_empty(),
        "no frame before the ack"
    );

    outputs.on_ack(1).unwrap();
    wait_until("the frame leaves once the write is durable", || {
        !released.lock().unwrap().is_empty()
    });
    let on_disk = std::fs::read(file.path()).unwrap();
    assert_eq!(
        &on_disk[8 * 512..10 * 512],
        &data[..],
        "durable before the frame"
    );
    assert_eq!(released.lock().unwrap().as_slice(), &[b"reply".to_vec()]);
    b.stop();
}

#[test]
fn a_refused_epoch_write_releases_nothing_and_reports_once() {
    let released = Arc::new(Mutex::new(0usize));
    let r2 = Arc::clone(&released);
    let outputs = GatedOutputs::new(
        gate(),
        Some(Box::new(move |_: &[u8]| *r2.lock().unwrap() += 1)),
    );
    let (_file, mut disk) = disk_file(64);
    disk.fail_next(libc::EIO);
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let f2 = Arc::clone(&failures);
    let mut b = GatedBackend::new(
        Arc::clone(&outputs),
        Some(disk),
        None,
        0,
        Box::new(move |why| f2.lock().unwrap().push(why)),
    );
    b.start(Arc::new(|_| {})).unwrap();
    b.submit_block(BlockRequest {
        dev: 0,
        id: 1,
        op: BlockOp::Write {
            sector: 0,
            data: vec![1; 512],
        },
    });
    b.send_frame(0, b"ok".to_vec());
    outputs.close_epoch();
    outputs.on_ack(1).unwrap();
    wait_until("the failure is reported", || outputs.failed());
    wait_until("the owner hears of it", || {
        !failures.lock().unwrap().is_empty()
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        *released.lock().unwrap(),
        0,
        "the epoch's frame never leaves"
    );
    assert!(failures.lock().unwrap()[0].contains("epoch 1"));
    b.stop();
}

#[test]
fn staging_pages_are_the_memory_the_take_over_vm_gets() {
    use super::receiver::StagingMemory;
    let mut s = Staging::new(MEM).unwrap();
    s.page_mut(3).fill(7);
    let mem = s.into_memory();
    let mut b = [0u8; 4];
    mem.read_slice(&mut b, GuestAddress(3 * 4096 + 100))
        .unwrap();
    assert_eq!(b, [7; 4]);
    assert_eq!(mem.num_regions(), 1);
}

/// A guest that ends itself (here a reset; `poweroff` and a crash are the
/// same to the loop) with a disk write and a frame still in its open
/// epoch: the loop ships that epoch, and ends only once the Secondary holds
/// it and its write is durable — the guest saw the write complete, so it
/// must survive the VM. The epoch is 60 s long so that nothing but the end
/// closes it: before the fix the loop returned at once and the write and
/// the frame were dropped with the member.
#[test]
fn a_guest_that_ends_itself_has_its_last_epoch_shipped_and_durable_first() {
    // The write goes in through a backend of its own on the same gate (the
    // real-mode guest drives no virtio device).
    let Gated {
        released,
        outputs,
        file,
        mut b,
        seen,
    } = gated();
    // Spin until the byte at 0x3000 is set, mark 0x3008, reset.
    let mut code = vec![0xa0, 0x00, 0x30, 0x84, 0xc0, 0x74, 0xf9];
    code.extend_from_slice(&[0xc6, 0x06, 0x08, 0x30, 0x5a]);
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]);
    let vm = LinuxVm::create(
        1,
        MEM,
        vec![],
        Box::new(Sink::default()),
        Box::new(super::super::linux::tests::NoBackend),
    )
    .expect("a VM (is /dev/kvm there?)");
    vm.memory()
        .write_slice(&code, GuestAddress(0x1000))
        .unwrap();
    vm.enter_real_mode(0, 0x1000).unwrap();
    let running = vm.start().unwrap();

    let (mut link, secondary) = in_process_secondary(&outputs);

    let data = vec![0xcdu8; 512];
    b.submit_block(BlockRequest {
        dev: 0,
        id: 1,
        op: BlockOp::Write {
            sector: 8,
            data: data.clone(),
        },
    });
    b.send_frame(0, b"done".to_vec());
    wait_until("the write completes to the guest", || {
        seen.0.lock().unwrap().iter().any(|e| {
            matches!(
                e,
                InputEvent::BlockDone {
                    id: 1,
                    status: BlockStatus::Ok,
                    ..
                }
            )
        })
    });

    let stop = AtomicBool::new(false);
    let end = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let cfg = LoopConfig {
                epoch: Duration::from_secs(60),
                first_full: true,
                dirty: DirtyLog::Get,
                delta_bytes: crate::checkpoint::delta_base::DEFAULT_BYTES,
            };
            primary::run_epochs(&running, &outputs, &mut link, cfg, &stop, |_| {})
        });
        // The guest ends itself.
        running.with_paused(|p| p.mem.write_obj(1u8, GuestAddress(0x3000)).unwrap());
        wait_until("the loop ends by itself", || h.is_finished());
        h.join().unwrap()
    });
    assert!(
        matches!(end, Err(primary::EpochLoopError::VmEnded)),
        "{end:?}"
    );
    assert_eq!(running.ended(), Some(crate::linux::End::Reset));
    let (_, acked, durable) = outputs.progress();
    assert_eq!((acked, durable), (1, 1), "the last epoch acked and durable");
    let on_disk = std::fs::read(file.path()).unwrap();
    assert_eq!(
        &on_disk[8 * 512..9 * 512],
        &data[..],
        "the write is on the device"
    );
    assert_eq!(released.lock().unwrap().as_slice(), &[b"done".to_vec()]);
    drop(link);
    let r = secondary.join().unwrap();
    assert_eq!(r.last(), 1);
    let marker: u8 = r.memory().memory().read_obj(GuestAddress(0x3008)).unwrap();
    assert_eq!(marker, 0x5a, "the epoch holds what the guest did last");
    running.wait();
    b.stop();
}

/// `make bench`: the pause an epoch costs on this machine's KVM (no
/// nesting), the fixed part of it: the two-vCPU counter guest (a page or
/// two dirty per epoch), 20 ms epochs to a Secondary in this process, 500
/// epochs (all vCPUs parked, then each captures on its own thread).
/// The CPU-bound ratio of issue 11 is about 1 - pause / epoch on a guest
/// that dirties little, so this says what it can be on real hardware.
#[test]
#[ignore = "a benchmark (make bench): run with --ignored --nocapture"]
fn checkpoint_pause_bench() {
    let outputs = GatedOutputs::new(gate(), None);
    let (running, _) = super::remote_tests::counter_vm(&outputs);
    let (mut link, secondary) = in_process_secondary(&outputs);
    let stop = AtomicBool::new(false);
    let epochs = Mutex::new(Vec::new());
    let n = 500;
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let cfg = LoopConfig {
                epoch: Duration::from_millis(20),
                first_full: true,
                dirty: DirtyLog::GetClear,
                delta_bytes: crate::checkpoint::delta_base::DEFAULT_BYTES,
            };
            primary::run_epochs(&running, &outputs, &mut link, cfg, &stop, |e| {
                epochs.lock().unwrap().push((e.pause, e.pages, e.bytes))
            })
        });
        wait_until_within("the epochs", Duration::from_secs(60), || {
            epochs.lock().unwrap().len() > n
        });
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        h.join().unwrap().expect("epochs ran without error");
    });
    running.stop();
    running.wait();
    drop(link);
    secondary.join().unwrap();
    let e = epochs.into_inner().unwrap();
    // Not the first (full) epoch.
    let mut us: Vec<u64> = e[1..].iter().map(|x| x.0.as_micros() as u64).collect();
    us.sort_unstable();
    let pages: f64 = e[1..].iter().map(|x| x.1 as f64).sum::<f64>() / (e.len() - 1) as f64;
    let q = |p: f64| us[((us.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!("\ncheckpoint pause on this machine's /dev/kvm (2 vCPUs, 64 MiB, 20 ms epochs, {} epochs, {pages:.1} dirty pages each):", us.len());
    println!(
        "  pause p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; as a share of the epoch (p50): {:.1} %",
        q(0.5),
        q(0.99),
        q(1.0),
        q(0.5) / 20.0 * 100.0
    );
}
