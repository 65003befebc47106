//! Save/restore: a snapshot taken with a request in flight, restored into a
//! fresh transport, completes exactly like the original would have.

use super::driver::Harness;
use crate::io::{BlockRequest, BlockStatus, InputEvent, OutputEvent};
use crate::virtio::{new_block, new_net, MmioTransportState, VirtioError, RX_QUEUE};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vm_memory::{Bytes, GuestAddress};

fn mem_image(h: &Harness) -> Vec<u8> {
    let mut v = vec![0u8; super::driver::MEM_SIZE as usize];
    h.mem.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

/// Copy guest memory of `from` into a brand new harness around `t`.
fn clone_vm(from: &Harness, t: crate::virtio::MmioTransport) -> Harness {
    let mut h = Harness::new(t, from.queues.len());
    h.mem
        .write_slice(&mem_image(from), GuestAddress(0))
        .unwrap();
    h.queues = from.queues.clone();
    h.next_data = from.next_data;
    h.n = from.n;
    h
}

#[test]
fn block_round_trip_with_pending_read() {
    let mut a = Harness::blk(64);
    let r1 = a.blk_request(VIRTIO_BLK_T_IN, 1, 512, None);
    let r2 = a.blk_request(VIRTIO_BLK_T_IN, 2, 512, None);
    a.notify(0);
    assert_eq!(a.take_out().len(), 2);
    a.deliver(InputEvent::BlockDone {
        dev: 0,
        id: 1,
        status: BlockStatus::Ok,
        data: vec![2; 512],
    });

    // Snapshot through JSON like a real save file would go.
    let json = serde_json::to_string(&a.t.save()).unwrap();
    let state: MmioTransportState = serde_json::from_str(&json).unwrap();
    let mut fresh = new_block(0, 64);
    fresh.restore(state).unwrap();
    let mut b = clone_vm(&a, fresh);
    assert_eq!(b.t.pending_block_ids(), vec![0]);
    assert_eq!(b.t.irq_level(), a.t.irq_level());

    let done = InputEvent::BlockDone {
        dev: 0,
        id: 0,
        status: BlockStatus::Ok,
        data: vec![1; 512],
    };
    a.deliver(done.clone());
    b.deliver(done);
    assert_eq!(
        mem_image(&a),
        mem_image(&b),
        "guest memory diverged after restore"
    );
    assert_eq!(a.take_used(0), b.take_used(0));
    assert_eq!(b.read_bytes(r1.data, 512), vec![1; 512]);
    assert_eq!(b.read_bytes(r2.data, 512), vec![2; 512]);
    assert_eq!(a.t.save(), b.t.save());

    // New requests continue with fresh ids on both.
    for h in [&mut a, &mut b] {
        h.blk_request(VIRTIO_BLK_T_IN, 3, 512, None);
        h.notify(0);
    }
    assert_eq!(a.take_out(), b.take_out());
}

#[test]
fn in_flight_requests_are_rebuilt_after_restore() {
    let mut a = Harness::blk(64);
    let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    a.blk_request(VIRTIO_BLK_T_IN, 4, 512, None);
    a.blk_request(VIRTIO_BLK_T_OUT, 6, 1024, Some(&data));
    a.blk_request(VIRTIO_BLK_T_FLUSH, 0, 0, None);
    a.notify(0);
    let emitted: Vec<BlockRequest> = a
        .take_out()
        .into_iter()
        .map(|e| match e {
            OutputEvent::Block(b) => b,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(emitted.len(), 3);
    assert_eq!(a.t.in_flight_requests(&a.mem), emitted);

    let mut fresh = new_block(0, 64);
    fresh.restore(a.t.save()).unwrap();
    let b = clone_vm(&a, fresh);
    assert_eq!(
        b.t.in_flight_requests(&b.mem),
        emitted,
        "a restored VMM re-issues the same requests"
    );

    a.deliver(InputEvent::BlockDone {
        dev: 0,
        id: 1,
        status: BlockStatus::Ok,
        data: vec![],
    });
    let left: Vec<u64> =
        a.t.in_flight_requests(&a.mem)
            .iter()
            .map(|r| r.id)
            .collect();
    assert_eq!(left, vec![0, 2]);
    assert!(new_net(1, [0; 6]).in_flight_requests(&a.mem).is_empty());
}

#[test]
fn net_round_trip_keeps_pending_frames() {
    let mut a = Harness::net();
    a.deliver(InputEvent::Frame {
        dev: 1,
        data: vec![7; 60],
    });
    let state = a.t.save();
    let mut fresh = new_net(1, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    fresh.restore(state).unwrap();
    let mut b = clone_vm(&a, fresh);
    assert_eq!(b.t.rx_pending_frames(), 1);
    let buf = b.alloc(1526);
    let head = b.add_chain(RX_QUEUE, &[(buf, 1526, true)]);
    b.notify(RX_QUEUE as u32);
    assert_eq!(b.take_used(RX_QUEUE), vec![(u32::from(head), 72)]);
    assert_eq!(b.read_bytes(buf + 12, 60), vec![7; 60]);
}

#[test]
fn restore_rejects_mismatched_or_corrupt_snapshots() {
    let mut a = Harness::blk(64);
    a.blk_request(VIRTIO_BLK_T_IN, 1, 512, None);
    a.notify(0);
    let good = a.t.save();

    let mut t = new_net(0, [0; 6]);
    assert!(matches!(
        t.restore(good.clone()),
        Err(VirtioError::KindMismatch { .. }) | Err(VirtioError::QueueCount { .. })
    ));
    let mut t = new_block(1, 64);
    assert!(matches!(
        t.restore(good.clone()),
        Err(VirtioError::DevMismatch { .. })
    ));
    let mut t = new_block(0, 65);
    assert!(matches!(
        t.restore(good.clone()),
        Err(VirtioError::Inconsistent(_))
    ));

    let mut bad = good.clone();
    bad.version = 99;
    assert!(matches!(
        new_block(0, 64).restore(bad),
        Err(VirtioError::SnapshotVersion { .. })
    ));
    let mut bad = good.clone();
    bad.queues[0].size = 12;
    assert!(matches!(
        new_block(0, 64).restore(bad),
        Err(VirtioError::InvalidQueue { .. })
    ));
    let mut bad = good.clone();
    bad.queues[0].max_size = 1024;
    assert!(matches!(
        new_block(0, 64).restore(bad),
        Err(VirtioError::InvalidQueue { .. })
    ));
    let mut bad = good.clone();
    if let crate::virtio::DeviceState::Block(b) = &mut bad.device {
        b.pending[0].head = 200;
    }
    assert!(matches!(
        new_block(0, 64).restore(bad),
        Err(VirtioError::Inconsistent(_))
    ));

    // A failed restore leaves the transport untouched.
    let mut t = new_block(0, 64);
    let before = t.save();
    let mut bad = good;
    bad.queues[0].desc_table = 3;
    assert!(t.restore(bad).is_err());
    assert_eq!(t.save(), before);
}
