//! Checkpoint epochs between a Primary and a Secondary over real TCP
//! loopback with the real authenticated channel (`remote.rs`): on /dev/kvm
//! with the two-vCPU counter guest of `linux::tests`, epochs flow and the
//! staging copy equals the Primary's memory at the last acknowledged epoch;
//! a connection cut mid-epoch leaves the Secondary on the previous complete
//! epoch; and (no VM) a frame and a disk write wait for their epoch's ack
//! to arrive over the channel; garbage and wrong messages end the link with
//! the error naming them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::epoch::{self, Epoch, EpochError, Page, PageData, PAGE_SIZE};
use super::gate::{EpochGate, GateConfig};
use super::gated::{GatedBackend, GatedOutputs};
use super::primary::{self, EpochSink, LoopConfig};
use super::receiver::{ReceiveError, Receiver, StagingMemory};
use super::remote::{read_acks, serve, ChannelSink, LinkError};
use super::secondary::Staging;
use super::test_support::{channel_pair, TIMEOUT};
use crate::io::{BlockOp, BlockRequest};
use crate::linux::backend::LinuxBackend;
use crate::linux::machine::{LinuxVm, Running};
use crate::linux::tests::{counter, wait_until, Sink, CODE};
use crate::lockstep::channel::{self, Channel, ChannelError, Message};
use crate::virtio::GuestMemoryMmap;

pub(super) const MEM: u64 = 64 << 20;

pub(super) fn gate() -> EpochGate {
    EpochGate::new(
        GateConfig {
            max_dirty_pages: u64::MAX,
            max_write_bytes: u64::MAX,
        },
        1,
    )
}

/// The Secondary on its own thread: serves the link until it ends, then
/// hands back the receiver and why the link ended. `on_applied` runs after
/// each epoch's ack was sent and the epoch applied.
fn spawn_secondary<M: StagingMemory + Send + 'static>(
    ch: Channel,
    mut r: Receiver<M>,
    stop: Arc<AtomicBool>,
    on_applied: impl FnMut(u64) + Send + 'static,
) -> JoinHandle<(Receiver<M>, LinkError)> {
    std::thread::spawn(move || {
        let (tx, mut rx) = ch.split();
        let end = serve(tx, &mut rx, &mut r, &stop, on_applied);
        (r, end)
    })
}

/// The Primary's ack reader on its own thread.
fn spawn_acks(
    mut rx: channel::ChannelReceiver,
    outputs: Arc<GatedOutputs>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<LinkError> {
    std::thread::spawn(move || read_acks(&mut rx, &outputs, &stop))
}

fn mem_copy(m: &GuestMemoryMmap) -> Vec<u8> {
    let mut v = vec![0u8; MEM as usize];
    m.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

/// A 2-vCPU VM of [`MEM`] with the gated backend and no devices, not
/// started (the guest's code is the caller's).
pub(super) fn gated_vm(outputs: &Arc<GatedOutputs>) -> LinuxVm {
    let backend = GatedBackend::new(Arc::clone(outputs), None, None, 0, Box::new(|_| {}));
    LinuxVm::create(2, MEM, vec![], Box::new(Sink::default()), Box::new(backend))
        .expect("a VM with in-kernel irqchip and 2 vCPUs (is /dev/kvm there?)")
}

/// The counter guest on 2 vCPUs with the gated backend.
pub(super) fn counter_vm(outputs: &Arc<GatedOutputs>) -> (Running, GuestMemoryMmap) {
    let vm = gated_vm(outputs);
    vm.memory().write_slice(CODE, GuestAddress(0x1000)).unwrap();
    vm.enter_real_mode(0, 0x1000).unwrap();
    vm.enter_real_mode(1, 0x1000).unwrap();
    let pmem = vm.memory().clone();
    let running = vm.start().unwrap();
    wait_until("vCPU 0 counts", || counter(&pmem) > 10);
    (running, pmem)
}

/// A Primary VM sending epochs over the channel to a Secondary thread.
struct Pair {
    running: Running,
    pmem: GuestMemoryMmap,
    outputs: Arc<GatedOutputs>,
    sink: ChannelSink,
    stop: Arc<AtomicBool>,
    acks: JoinHandle<LinkError>,
    secondary: JoinHandle<(Receiver<Staging>, LinkError)>,
}

impl Pair {
    /// Runs the epoch loop over the channel for `n` epochs, then stops the
    /// guest and ships one last epoch of its final state, acknowledged.
    fn start(n: usize) -> (Pair, u64) {
        let outputs = GatedOutputs::new(gate(), None);
        let (running, pmem) = counter_vm(&outputs);
        let (p, s) = channel_pair();
        let stop = Arc::new(AtomicBool::new(false));
        let secondary = spawn_secondary(
            s,
            Receiver::new(1, Staging::new(MEM).unwrap(), 0),
            Arc::clone(&stop),
            |_| {},
        );
        let (tx, rx) = p.split();
        let acks = spawn_acks(rx, Arc::clone(&outputs), Arc::clone(&stop));
        let mut sink = ChannelSink(tx);
        let loop_stop = AtomicBool::new(false);
        let epochs = Mutex::new(0usize);
        std::thread::scope(|sc| {
            let h = sc.spawn(|| {
                let cfg = LoopConfig {
                    epoch: Duration::from_millis(20),
                    first_full: true,
                    dirty: Default::default(),
                    delta_bytes: crate::checkpoint::delta_base::DEFAULT_BYTES,
                };
                primary::run_epochs(&running, &outputs, &mut sink, cfg, &loop_stop, |_| {
                    *epochs.lock().unwrap() += 1
                })
            });
            wait_until("epochs over the channel", || *epochs.lock().unwrap() >= n);
            wait_until("acks over the channel", || outputs.progress().1 >= 2);
            loop_stop.store(true, Ordering::SeqCst);
            h.join().unwrap().expect("epochs ran without error");
        });
        running.stop();
        let last = primary::one_epoch(
            &running,
            &outputs,
            &mut sink,
            false,
            Default::default(),
            &mut crate::checkpoint::delta_base::DeltaBase::new(0),
        )
        .unwrap();
        wait_until("the last epoch is acknowledged over the channel", || {
            outputs.progress().1 == last.number
        });
        let pair = Pair {
            running,
            pmem,
            outputs,
            sink,
            stop,
            acks,
            secondary,
        };
        (pair, last.number)
    }

    /// Cuts the connection (as a dead link would) and collects both sides.
    fn cut(self) -> (Receiver<Staging>, LinkError, LinkError, Running) {
        self.sink.0.shutdown();
        let (r, end) = self.secondary.join().unwrap();
        self.stop.store(true, Ordering::SeqCst);
        let acks_end = self.acks.join().unwrap();
        (r, end, acks_end, self.running)
    }
}

#[test]
fn epochs_over_the_channel_leave_staging_equal_to_the_primary_at_the_last_ack() {
    let (pair, last) = Pair::start(6);
    let at_last = mem_copy(&pair.pmem);
    let outputs = Arc::clone(&pair.outputs);
    let (r, end, _, running) = pair.cut();
    assert!(
        matches!(end, LinkError::Channel(ChannelError::Closed)),
        "the Secondary saw the link close, not an error: {end}"
    );
    assert_eq!(r.last(), last, "the Secondary applied every epoch");
    assert_eq!(outputs.progress().1, last, "the Primary saw every ack");
    assert!(
        mem_copy(r.memory().memory()) == at_last,
        "the staging copy equals the Primary's memory at the last acked epoch"
    );
    assert_eq!(r.refused, 0);
    running.wait();
}

#[test]
fn a_connection_cut_mid_epoch_leaves_the_secondary_on_the_previous_epoch() {
    let (mut pair, last) = Pair::start(3);
    let at_last = mem_copy(&pair.pmem);
    // The next epoch changes 100 pages; it is cut after 3 of its pieces.
    for gfn in 200..300u64 {
        pair.pmem
            .write_slice(&[0x5a; PAGE_SIZE], GuestAddress(gfn * PAGE_SIZE as u64))
            .unwrap();
    }
    let closed = pair.outputs.close_epoch();
    assert_eq!(closed.number, last + 1);
    let torn = Epoch {
        number: closed.number,
        generation: closed.generation,
        durable_through: closed.durable_through,
        pages: (200..300u64)
            .map(|gfn| Page {
                gfn,
                data: PageData::Raw(vec![0x5a; PAGE_SIZE]),
            })
            .collect(),
        machine: vec![1, 2, 3],
        devices: vec![],
        writes: closed.writes,
    };
    let pieces = epoch::encode_pieces_sized(&torn, 64 << 10).unwrap();
    assert!(pieces.len() > 4, "{} pieces", pieces.len());
    for p in pieces.into_iter().take(3) {
        pair.sink.send(p).unwrap();
    }
    let outputs = Arc::clone(&pair.outputs);
    let pmem = pair.pmem.clone();
    let (r, end, _, running) = pair.cut();
    assert!(
        matches!(end, LinkError::Channel(ChannelError::Closed)),
        "{end}"
    );
    assert_eq!(r.last(), last, "the torn epoch was not applied");
    assert_eq!(outputs.progress().1, last, "nor acknowledged");
    let staging = mem_copy(r.memory().memory());
    assert!(staging == at_last, "staging is the previous complete epoch");
    assert!(
        staging != mem_copy(&pmem),
        "(the torn epoch would have changed it)"
    );
    let t = r.take_over();
    assert_eq!(
        t.epoch, last,
        "the take-over resumes from the previous epoch"
    );
    running.wait();
}

#[test]
fn a_frame_and_a_disk_write_wait_for_their_epochs_ack_over_the_channel() {
    let released = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let r2 = Arc::clone(&released);
    let outputs = GatedOutputs::new(
        gate(),
        Some(Box::new(move |f: &[u8]| {
            r2.lock().unwrap().push(f.to_vec())
        })),
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(64 * 512).unwrap();
    let disk = crate::live::DiskBackend::open(
        &crate::live::DiskSpec {
            path: file.path().into(),
            region: None,
        },
        0,
    )
    .unwrap();
    let mut b = GatedBackend::new(Arc::clone(&outputs), Some(disk), None, 0, Box::new(|_| {}));
    b.start(Arc::new(|_| {})).unwrap();
    b.submit_block(BlockRequest {
        dev: 0,
        id: 1,
        op: BlockOp::Write {
            sector: 4,
            data: vec![0xcd; 512],
        },
    });
    b.send_frame(0, b"reply".to_vec());

    let (p, s) = channel_pair();
    let stop = Arc::new(AtomicBool::new(false));
    // The Secondary acknowledges (then applies) at once; the Primary reads
    // no ack until the test starts its ack reader.
    let (applied_tx, applied_rx) = mpsc::channel::<u64>();
    let secondary = spawn_secondary(
        s,
        Receiver::new(1, vec![0u8; 16 * PAGE_SIZE], 0),
        Arc::clone(&stop),
        move |e| applied_tx.send(e).unwrap(),
    );
    let (tx, rx) = p.split();
    let mut sink = ChannelSink(tx);

    let closed = outputs.close_epoch();
    assert_eq!((closed.number, closed.writes.len()), (1, 1));
    let e = Epoch {
        number: closed.number,
        generation: closed.generation,
        durable_through: closed.durable_through,
        writes: closed.writes,
        ..Epoch::default()
    };
    for piece in epoch::encode_pieces(&e).unwrap() {
        sink.send(piece).unwrap();
    }
    assert_eq!(applied_rx.recv_timeout(TIMEOUT).unwrap(), 1);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        released.lock().unwrap().is_empty(),
        "no frame before the ack is read, though the Secondary applied the epoch"
    );
    assert!(
        std::fs::read(file.path()).unwrap().iter().all(|&x| x == 0),
        "no write on the device before the ack"
    );
    let acks = spawn_acks(rx, Arc::clone(&outputs), Arc::clone(&stop));
    wait_until("the frame leaves after the ack", || {
        !released.lock().unwrap().is_empty()
    });
    assert_eq!(
        &std::fs::read(file.path()).unwrap()[4 * 512..5 * 512],
        &[0xcd; 512][..],
        "the write is durable before its frame leaves"
    );
    assert_eq!(outputs.progress().1, 1);
    sink.0.shutdown();
    let (r, _) = secondary.join().unwrap();
    assert_eq!(
        r.take_over().writes.len(),
        1,
        "the Secondary kept the write"
    );
    stop.store(true, Ordering::SeqCst);
    acks.join().unwrap();
    b.stop();
}

#[test]
fn a_garbage_piece_ends_the_link_with_the_error_naming_it() {
    let (p, s) = channel_pair();
    let stop = Arc::new(AtomicBool::new(false));
    let secondary = spawn_secondary(
        s,
        Receiver::new(1, vec![0u8; 16 * PAGE_SIZE], 0),
        Arc::clone(&stop),
        |_| {},
    );
    let (mut tx, mut rx) = p.split();
    tx.send(&Message::EpochPiece {
        bytes: vec![9, 0, 0],
    })
    .unwrap();
    let (r, end) = secondary.join().unwrap();
    assert!(
        matches!(
            end,
            LinkError::Refused(ReceiveError::Torn(EpochError::Version { got: 9 }))
        ),
        "{end}"
    );
    assert!(end.to_string().contains("refused an epoch piece"), "{end}");
    assert_eq!(r.last(), 0);
    // The Primary hears why.
    let outputs = GatedOutputs::new(gate(), None);
    match read_acks(&mut rx, &outputs, &AtomicBool::new(false)) {
        LinkError::Bye { reason } => assert!(reason.contains("refused"), "{reason}"),
        other => panic!("the Primary should hear a goodbye: {other}"),
    }
}

#[test]
fn a_lockstep_message_on_a_checkpoint_link_is_refused_by_kind() {
    let (p, s) = channel_pair();
    let stop = Arc::new(AtomicBool::new(false));
    let secondary = spawn_secondary(
        s,
        Receiver::new(1, vec![0u8; 16 * PAGE_SIZE], 0),
        Arc::clone(&stop),
        |_| {},
    );
    let (mut tx, rx) = p.split();
    tx.send(&Message::Batch {
        first_seq: 0,
        count: 0,
        bytes: vec![],
        sent_ns: 0,
    })
    .unwrap();
    let (_, end) = secondary.join().unwrap();
    assert!(
        matches!(
            end,
            LinkError::Unexpected {
                kind: "Batch",
                side: "Secondary",
                ..
            }
        ),
        "{end}"
    );
    // And an ack beyond what the Primary closed is refused there.
    let (p, s) = channel_pair();
    let (mut stx, _srx) = s.split();
    let (_ptx, mut prx) = p.split();
    stx.send(&Message::EpochAck { epoch: 5 }).unwrap();
    let outputs = GatedOutputs::new(gate(), None);
    let end = read_acks(&mut prx, &outputs, &AtomicBool::new(false));
    assert!(matches!(end, LinkError::Ack { epoch: 5, .. }), "{end}");
    assert_eq!(outputs.progress().1, 0);
    drop(rx);
}

/// An epoch that takes long to arrive (the first, full one) does not look
/// like a silent Secondary: while its pieces come in, the Secondary
/// acknowledges its last complete epoch again every `KEEPALIVE`; the epoch
/// itself is acknowledged only once whole.
#[test]
fn a_slow_epoch_is_kept_alive_by_repeated_acks_of_the_last_one() {
    let (p, s) = channel_pair();
    let stop = Arc::new(AtomicBool::new(false));
    let secondary = spawn_secondary(
        s,
        Receiver::new(1, vec![0u8; 64 * PAGE_SIZE], 0),
        Arc::clone(&stop),
        |_| {},
    );
    let (mut tx, mut rx) = p.split();
    let e = Epoch {
        number: 1,
        generation: 1,
        pages: (0..40u64)
            .map(|gfn| Page {
                gfn,
                data: PageData::Raw(vec![gfn as u8; PAGE_SIZE]),
            })
            .collect(),
        machine: vec![1],
        ..Epoch::default()
    };
    let pieces = epoch::encode_pieces_sized(&e, 16 << 10).unwrap();
    assert!(pieces.len() >= 8, "{} pieces", pieces.len());
    let n = pieces.len();
    let mut acks = Vec::new();
    for (i, piece) in pieces.into_iter().enumerate() {
        tx.send(&Message::EpochPiece { bytes: piece }).unwrap();
        let deadline = std::time::Instant::now() + super::remote::KEEPALIVE * 2;
        while std::time::Instant::now() < deadline {
            match rx.recv() {
                Ok(Message::EpochAck { epoch }) => acks.push((i, epoch)),
                Ok(m) => panic!("unexpected {}", m.kind()),
                Err(ChannelError::Timeout) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    let early: Vec<_> = acks.iter().filter(|(i, _)| *i + 1 < n).collect();
    assert!(
        early.len() >= 3,
        "no keep-alive while the epoch arrived: {acks:?}"
    );
    assert!(early.iter().all(|(_, e)| *e == 0), "acked early: {acks:?}");
    assert!(
        acks.contains(&(n - 1, 1)),
        "the epoch was not acked: {acks:?}"
    );
    tx.shutdown();
    stop.store(true, Ordering::SeqCst);
    secondary.join().unwrap();
}
