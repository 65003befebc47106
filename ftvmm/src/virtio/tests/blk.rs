//! virtio-blk request flow: reads, writes, flushes, GET_ID, errors.

use super::driver::Harness;
use crate::io::{BlockOp, BlockRequest, BlockStatus, InputEvent, OutputEvent};
use crate::virtio::block_id;
use virtio_bindings::virtio_blk::*;
use vm_memory::Bytes;

fn done(id: u64, status: BlockStatus, data: Vec<u8>) -> InputEvent {
    InputEvent::BlockDone {
        dev: 0,
        id,
        status,
        data,
    }
}

#[test]
fn read_is_emitted_then_completed_into_guest_buffers() {
    let mut h = Harness::blk(64);
    let r = h.blk_request(VIRTIO_BLK_T_IN, 3, 1024, None);
    h.notify(0);
    let out = h.take_out();
    assert_eq!(
        out,
        vec![OutputEvent::Block(BlockRequest {
            dev: 0,
            id: 0,
            op: BlockOp::Read {
                sector: 3,
                len: 1024
            }
        })]
    );
    // Nothing completed yet: no used entry, no interrupt.
    assert!(h.take_used(0).is_empty());
    assert!(!h.t.irq_level());
    assert_eq!(h.t.pending_block_ids(), vec![0]);

    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    h.deliver(done(0, BlockStatus::Ok, payload.clone()));
    assert_eq!(h.read_bytes(r.data, 1024), payload);
    assert_eq!(h.status_byte(&r), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.take_used(0), vec![(u32::from(r.head), 1025)]);
    assert!(h.t.irq_level());
    h.ack_irq();
    assert!(!h.t.irq_level());
    assert!(h.t.pending_block_ids().is_empty());
}

#[test]
fn write_gathers_data_and_completes_on_block_done() {
    let mut h = Harness::blk(64);
    let data: Vec<u8> = (0..512u32).map(|i| (i ^ 0x5a) as u8).collect();
    let r = h.blk_request(VIRTIO_BLK_T_OUT, 10, 512, Some(&data));
    h.notify(0);
    assert_eq!(
        h.take_out(),
        vec![OutputEvent::Block(BlockRequest {
            dev: 0,
            id: 0,
            op: BlockOp::Write { sector: 10, data }
        })]
    );
    h.deliver(done(0, BlockStatus::Ok, Vec::new()));
    assert_eq!(h.status_byte(&r), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.take_used(0), vec![(u32::from(r.head), 1)]);
}

#[test]
fn header_and_data_sharing_one_descriptor_are_parsed() {
    // virtio 1.x: no assumptions about framing. Header + data in one buffer.
    let mut h = Harness::blk(64);
    let buf = h.alloc(16 + 512);
    let mut bytes = vec![0u8; 16 + 512];
    bytes[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    bytes[8..16].copy_from_slice(&5u64.to_le_bytes());
    bytes[16..].fill(0xab);
    h.mem
        .write_slice(&bytes, vm_memory::GuestAddress(buf))
        .unwrap();
    let status = h.alloc(1);
    h.add_chain(0, &[(buf, 16 + 512, false), (status, 1, true)]);
    h.notify(0);
    let want = vec![OutputEvent::Block(BlockRequest {
        dev: 0,
        id: 0,
        op: BlockOp::Write {
            sector: 5,
            data: vec![0xab; 512],
        },
    })];
    assert_eq!(h.take_out(), want);
    // Re-issuing it (after restore/go-live) skips the header the same way.
    let again: Vec<OutputEvent> =
        h.t.in_flight_requests(&h.mem)
            .into_iter()
            .map(OutputEvent::Block)
            .collect();
    assert_eq!(again, want);
}

#[test]
fn flush_is_emitted_and_backend_error_reaches_guest() {
    let mut h = Harness::blk(64);
    let r = h.blk_request(VIRTIO_BLK_T_FLUSH, 0, 0, None);
    h.notify(0);
    assert_eq!(
        h.take_out(),
        vec![OutputEvent::Block(BlockRequest {
            dev: 0,
            id: 0,
            op: BlockOp::Flush
        })]
    );
    h.deliver(done(0, BlockStatus::IoError, Vec::new()));
    assert_eq!(h.status_byte(&r), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(h.take_used(0), vec![(u32::from(r.head), 1)]);
}

#[test]
fn get_id_is_answered_immediately() {
    let mut h = Harness::blk(64);
    let r = h.blk_request(VIRTIO_BLK_T_GET_ID, 0, 20, None);
    h.notify(0);
    assert!(h.take_out().is_empty(), "GET_ID must not reach the backend");
    assert_eq!(h.read_bytes(r.data, 20), block_id(0).to_vec());
    assert_eq!(&h.read_bytes(r.data, 10), b"ftvmm-blk0");
    assert_eq!(h.status_byte(&r), VIRTIO_BLK_S_OK as u8);
    assert_eq!(h.take_used(0), vec![(u32::from(r.head), 21)]);
    assert!(h.t.irq_level());
}

#[test]
fn unknown_type_is_unsupp_without_output() {
    let mut h = Harness::blk(64);
    let r = h.blk_request(VIRTIO_BLK_T_DISCARD, 0, 16, Some(&[0; 16]));
    h.notify(0);
    assert!(h.take_out().is_empty());
    assert_eq!(h.status_byte(&r), VIRTIO_BLK_S_UNSUPP as u8);
    assert_eq!(h.take_used(0).len(), 1);
    assert!(!h.needs_reset());
}

#[test]
fn requests_past_capacity_fail_without_output() {
    let mut h = Harness::blk(8);
    let a = h.blk_request(VIRTIO_BLK_T_IN, 7, 1024, None); // sectors 7..9 > 8
    let b = h.blk_request(VIRTIO_BLK_T_OUT, u64::MAX, 512, Some(&[1; 512])); // overflows
    let c = h.blk_request(VIRTIO_BLK_T_IN, 8, 512, None); // starts at the end
    let ok = h.blk_request(VIRTIO_BLK_T_IN, 7, 512, None); // last sector
    h.notify(0);
    for r in [&a, &b, &c] {
        assert_eq!(h.status_byte(r), VIRTIO_BLK_S_IOERR as u8);
    }
    assert_eq!(
        h.take_out(),
        vec![OutputEvent::Block(BlockRequest {
            dev: 0,
            id: 0,
            op: BlockOp::Read {
                sector: 7,
                len: 512
            }
        })]
    );
    let used: Vec<u32> = h.take_used(0).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        used,
        vec![u32::from(a.head), u32::from(b.head), u32::from(c.head)]
    );
    assert_eq!(h.t.stats().rejected, 3);
    let _ = ok;
}

#[test]
fn data_not_a_sector_multiple_is_ioerr() {
    let mut h = Harness::blk(64);
    let r = h.blk_request(VIRTIO_BLK_T_IN, 0, 100, None);
    h.notify(0);
    assert!(h.take_out().is_empty());
    assert_eq!(h.status_byte(&r), VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn short_read_from_backend_is_ioerr() {
    let mut h = Harness::blk(64);
    let r = h.blk_request(VIRTIO_BLK_T_IN, 0, 1024, None);
    h.notify(0);
    h.take_out();
    h.deliver(done(0, BlockStatus::Ok, vec![1; 512]));
    assert_eq!(h.status_byte(&r), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(h.take_used(0), vec![(u32::from(r.head), 1)]);
}

#[test]
fn ids_are_unique_and_completions_may_come_out_of_order() {
    let mut h = Harness::blk(64);
    let r: Vec<_> = (0..4)
        .map(|i| h.blk_request(VIRTIO_BLK_T_IN, i, 512, None))
        .collect();
    h.notify(0);
    let ids: Vec<u64> = h
        .take_out()
        .into_iter()
        .map(|e| match e {
            OutputEvent::Block(b) => b.id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ids, vec![0, 1, 2, 3]);
    for id in [2u64, 0, 3, 1] {
        h.deliver(done(id, BlockStatus::Ok, vec![id as u8; 512]));
    }
    let used: Vec<u32> = h.take_used(0).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        used,
        vec![
            u32::from(r[2].head),
            u32::from(r[0].head),
            u32::from(r[3].head),
            u32::from(r[1].head)
        ]
    );
    for (i, req) in r.iter().enumerate() {
        assert_eq!(h.read_bytes(req.data, 512), vec![i as u8; 512]);
    }
}

#[test]
fn stale_and_duplicate_completions_are_ignored() {
    let mut h = Harness::blk(64);
    h.blk_request(VIRTIO_BLK_T_IN, 0, 512, None);
    h.notify(0);
    h.take_out();
    h.deliver(done(0, BlockStatus::Ok, vec![0; 512]));
    h.deliver(done(0, BlockStatus::Ok, vec![0; 512])); // duplicate
    h.deliver(done(99, BlockStatus::Ok, vec![])); // never issued
    assert_eq!(h.take_used(0).len(), 1);
    assert_eq!(h.t.stats().stale_completions, 2);
}

#[test]
fn reset_drops_pending_and_ids_are_not_reused() {
    let mut h = Harness::blk(64);
    h.blk_request(VIRTIO_BLK_T_IN, 0, 512, None);
    h.notify(0);
    h.take_out();
    h.init(); // status 0 + full re-initialisation
    assert!(h.t.pending_block_ids().is_empty());
    h.deliver(done(0, BlockStatus::Ok, vec![0; 512]));
    assert!(
        h.take_used(0).is_empty(),
        "a completion from before the reset must not reach the new rings"
    );
    h.blk_request(VIRTIO_BLK_T_IN, 1, 512, None);
    h.notify(0);
    match h.take_out().as_slice() {
        [OutputEvent::Block(b)] => assert_eq!(b.id, 1),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn wrong_device_events_are_ignored() {
    let mut h = Harness::blk(64);
    h.blk_request(VIRTIO_BLK_T_IN, 0, 512, None);
    h.notify(0);
    h.take_out();
    h.deliver(InputEvent::BlockDone {
        dev: 3,
        id: 0,
        status: BlockStatus::Ok,
        data: vec![0; 512],
    });
    h.deliver(InputEvent::Frame {
        dev: 0,
        data: vec![1, 2, 3],
    });
    assert!(h.take_used(0).is_empty());
    assert_eq!(h.t.pending_block_ids(), vec![0]);
}

#[test]
fn no_interrupt_flag_suppresses_the_interrupt() {
    let mut h = Harness::blk(64);
    let avail = h.queues[0].avail;
    h.mem
        .write_obj(1u16, vm_memory::GuestAddress(avail))
        .unwrap(); // VRING_AVAIL_F_NO_INTERRUPT
    h.blk_request(VIRTIO_BLK_T_GET_ID, 0, 20, None);
    h.notify(0);
    assert_eq!(h.take_used(0).len(), 1);
    assert!(!h.t.irq_level());
}

#[test]
fn dirty_pages_cover_device_writes() {
    let mut h = Harness::blk(64);
    let r = h.blk_request(VIRTIO_BLK_T_IN, 0, 512, None);
    h.notify(0);
    h.take_out();
    h.t.take_dirty_pages();
    h.deliver(done(0, BlockStatus::Ok, vec![9; 512]));
    let dirty = h.t.take_dirty_pages();
    for addr in [r.data, r.data + 511, r.status, h.queues[0].used] {
        assert!(
            dirty.contains(&(addr / 4096)),
            "page of {addr:#x} not reported: {dirty:?}"
        );
    }
    assert!(h.t.take_dirty_pages().is_empty());
}
