//! The outputs' waits (`latency.rs`) as `GatedOutputs` stamps them: each
//! interval counted for the epochs it belongs to, through close → ack →
//! durable → release, with a disk thread for epochs that write, under the
//! member's hold, and running alone. Durations are only compared with each
//! other, never with the wall clock.

use std::sync::{Arc, Mutex};

use super::*;
use crate::checkpoint::gate::GateConfig;
use crate::checkpoint::latency::{Interval, HOLD_BUCKETS_MS};
use crate::linux::tests::wait_until;
use crate::live::DiskSpec;

fn gate() -> EpochGate {
    EpochGate::new(
        GateConfig {
            max_dirty_pages: u64::MAX,
            max_write_bytes: u64::MAX,
        },
        1,
    )
}

type Sent = Arc<Mutex<Vec<Vec<u8>>>>;

/// Outputs whose released frames land in the returned list.
fn outputs() -> (Arc<GatedOutputs>, Sent) {
    let sent: Sent = Arc::default();
    let s2 = Arc::clone(&sent);
    let out: FrameOut = Box::new(move |f: &[u8]| s2.lock().unwrap().push(f.to_vec()));
    (GatedOutputs::new(gate(), Some(out)), sent)
}

fn n(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// (count, total, last, max) of `i`, checked for consistency.
fn figures(i: &Interval) -> (u64, u64, u64, u64) {
    let f = (n(&i.count), n(&i.us_total), n(&i.us_last), n(&i.us_max));
    assert!(f.2 <= f.3 && f.3 <= f.1, "last <= max <= total: {f:?}");
    f
}

fn counts(o: &GatedOutputs) -> [u64; 4] {
    let l = &o.stats.latency;
    [
        figures(&l.ack_wait).0,
        figures(&l.durable_wait).0,
        figures(&l.release_wait).0,
        figures(&l.output_hold).0,
    ]
}

fn followed(o: &GatedOutputs) -> usize {
    lock(&o.stamps).followed()
}

#[test]
fn each_wait_is_counted_for_the_epochs_it_belongs_to() {
    let (o, sent) = outputs();
    o.gate.lock().unwrap().on_frame(b"a".to_vec());
    o.close_epoch(); // 1: a frame
    o.close_epoch(); // 2: nothing
    o.gate.lock().unwrap().on_frame(b"b".to_vec());
    o.close_epoch(); // 3: a frame
    assert_eq!(counts(&o), [0; 4], "nothing before an ack");
    assert_eq!(followed(&o), 3);

    // Epoch 1: acknowledged, durable at once (no writes), its frame leaves.
    o.on_ack(1).unwrap();
    assert_eq!(sent.lock().unwrap().len(), 1);
    assert_eq!(counts(&o), [1, 1, 1, 1]);
    assert_eq!(followed(&o), 2);

    // Epochs 2 and 3 at once: both acknowledged and durable, only 3 held a
    // frame.
    o.on_ack(3).unwrap();
    assert_eq!(sent.lock().unwrap().len(), 2);
    assert_eq!(counts(&o), [3, 3, 2, 2]);
    assert_eq!(followed(&o), 0, "every epoch done with is forgotten");

    // The last figures are epoch 3's: its frame left after its ack.
    let l = &o.stats.latency;
    assert!(figures(&l.output_hold).2 >= figures(&l.ack_wait).2);
    let buckets = l.output_hold_buckets.counts();
    assert_eq!(buckets.len(), HOLD_BUCKETS_MS.len() + 1);
    assert_eq!(buckets.iter().sum::<u64>(), 2, "one bucket per held epoch");

    // A repeated ack counts nothing again.
    o.on_ack(3).unwrap();
    assert_eq!(counts(&o), [3, 3, 2, 2]);
}

#[test]
fn the_member_s_hold_delays_durable_and_release_not_the_ack() {
    let (o, sent) = outputs();
    o.gate.lock().unwrap().on_frame(b"a".to_vec());
    o.close_epoch();
    o.set_member_gate(Gate::Held, 1).unwrap();
    o.on_ack(1).unwrap();
    // The ack is the Secondary's and counts; nothing else moves while held.
    assert_eq!(counts(&o), [1, 0, 0, 0]);
    assert!(sent.lock().unwrap().is_empty());
    assert_eq!(followed(&o), 1);
    o.set_member_gate(Gate::ByAcks, 1).unwrap();
    assert_eq!(sent.lock().unwrap().len(), 1);
    assert_eq!(counts(&o), [1, 1, 1, 1]);
    // The hold counts in its wait for durability (the gate passes no epoch
    // while held), and so in its close-to-release.
    let l = &o.stats.latency;
    let (_, _, hold, _) = figures(&l.output_hold);
    assert!(hold >= figures(&l.ack_wait).2);
    assert!(hold >= figures(&l.durable_wait).2);
    assert_eq!(followed(&o), 0);
}

#[test]
fn epochs_closed_alone_have_no_ack_wait() {
    let (o, sent) = outputs();
    o.gate.lock().unwrap().on_frame(b"a".to_vec());
    o.close_epoch();
    // The Secondary is lost and this member won generation 2: epoch 1
    // counts as acknowledged by the win, not by the Secondary.
    o.set_member_gate(Gate::Open, 2).unwrap();
    assert_eq!(sent.lock().unwrap().len(), 1);
    assert_eq!(counts(&o), [0, 1, 1, 1]);
    // Alone: an epoch is acknowledged as it closes.
    o.gate.lock().unwrap().on_frame(b"b".to_vec());
    o.close_epoch();
    assert_eq!(sent.lock().unwrap().len(), 2);
    assert_eq!(counts(&o), [0, 2, 2, 2]);
    assert_eq!(followed(&o), 0);
}

#[test]
fn an_epoch_s_disk_writes_count_in_its_wait_for_durability() {
    let (o, sent) = outputs();
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(64 * 512).unwrap();
    let spec = DiskSpec {
        path: file.path().into(),
        region: None,
    };
    let disk = DiskBackend::open(&spec, 0).unwrap();
    let mut backend = GatedBackend::new(Arc::clone(&o), Some(disk), None, 0, Box::new(|_| {}));
    backend.start(Arc::new(|_| {})).unwrap();
    backend.submit_block(BlockRequest {
        dev: 0,
        id: 1,
        op: BlockOp::Write {
            sector: 3,
            data: vec![0xa5; 512],
        },
    });
    backend.send_frame(0, b"ok".to_vec());
    o.close_epoch(); // 1: a write and its reply
    backend.send_frame(0, b"next".to_vec());
    o.close_epoch(); // 2: a frame, no write
    o.on_ack(2).unwrap();
    // Epoch 1's writes went to the disk thread; epoch 2 waits behind them.
    wait_until("epoch 1 durable", || o.progress().2 == 2);
    wait_until("both frames out", || sent.lock().unwrap().len() == 2);
    backend.stop();
    assert_eq!(counts(&o), [2, 2, 2, 2]);
    assert_eq!(o.stats.epochs_durable.load(Ordering::Relaxed), 1);
    let l = &o.stats.latency;
    // Epoch 2 (the last) became durable only after epoch 1's writes were:
    // its close-to-release spans its ack and its wait for them.
    let (_, _, hold, _) = figures(&l.output_hold);
    assert!(hold >= figures(&l.ack_wait).2);
    assert!(hold >= figures(&l.durable_wait).2);
    assert_eq!(followed(&o), 0);
}
