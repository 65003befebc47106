//! A virtio-blk read of the device's largest size (16 MiB) on a Primary and
//! its Secondary: the completion goes through the real recording path (log
//! pieces, batches, the channel's wire, reassembly, replay), and the
//! Secondary's device leaves its guest memory, status byte and used ring
//! exactly as the Primary's (issue 14: log format 1 aborted the VMM here).

use super::driver::Harness;
use crate::io::{BlockOp, BlockRequest, BlockStatus, InputEvent, OutputEvent};
use crate::lockstep::recording_sim::Pair;
use crate::virtio::MAX_REQUEST_BYTES;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};

#[test]
fn a_16_mib_read_completes_identically_on_the_secondary() {
    let len = MAX_REQUEST_BYTES as u32;
    let sectors = 2 * u64::from(len) / 512;
    let mem = u64::from(len) + (2 << 20);
    let (mut prim, mut sec) = (Harness::blk_in(sectors, mem), Harness::blk_in(sectors, mem));
    let rp = prim.blk_request(VIRTIO_BLK_T_IN, 40, len, None);
    let rs = sec.blk_request(VIRTIO_BLK_T_IN, 40, len, None);
    prim.notify(0);
    sec.notify(0);
    let request = OutputEvent::Block(BlockRequest {
        dev: 0,
        id: 0,
        op: BlockOp::Read { sector: 40, len },
    });
    assert_eq!(prim.take_out(), vec![request.clone()]);
    assert_eq!(sec.take_out(), vec![request.clone()]);

    // The Primary emits the request at exit 1 (the Secondary's digest must
    // match), then the disk answers and the completion reaches the vCPU.
    let mut pair = Pair::new();
    pair.emit(1, request);
    assert!(pair.events_at(1).unwrap().is_empty());
    let data: Vec<u8> = (0..len)
        .map(|i| (i / 512) as u8 ^ (i % 251) as u8)
        .collect();
    pair.offer(InputEvent::BlockDone {
        dev: 0,
        id: 0,
        status: BlockStatus::Ok,
        data: data.clone(),
    });
    for ev in pair.events_at(2).unwrap() {
        prim.deliver(ev);
    }
    let mut replayed = Vec::new();
    let report = pair
        .finish_with(3, |_, evs| replayed.extend_from_slice(evs))
        .unwrap();
    assert!(
        report.split_bodies >= 1 && report.batches >= 4,
        "{report:?}"
    );
    for ev in replayed {
        sec.deliver(ev);
    }

    assert_eq!(prim.status_byte(&rp), VIRTIO_BLK_S_OK as u8);
    assert_eq!(sec.status_byte(&rs), VIRTIO_BLK_S_OK as u8);
    let (p, s) = (
        prim.read_bytes(rp.data, len as usize),
        sec.read_bytes(rs.data, len as usize),
    );
    assert!(p == data, "the primary's guest did not get the data");
    assert!(s == p, "the secondary's guest memory differs");
    let used = prim.take_used(0);
    assert_eq!(used, vec![(u32::from(rp.head), len + 1)]);
    assert_eq!(sec.take_used(0), used);
}
