//! Hostile or broken drivers: every case ends in an error status or
//! DEVICE_NEEDS_RESET (with a configuration-change interrupt), never a panic,
//! and never in output reaching a backend.

use super::driver::{Harness, F_NEXT, F_WRITE, MEM_SIZE};
use crate::virtio::{new_block, new_net, RX_QUEUE, TX_QUEUE};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress};

/// The device is in NEEDS_RESET, raised a config interrupt, emitted nothing.
fn assert_needs_reset(h: &mut Harness) {
    assert!(h.needs_reset(), "device should need a reset");
    assert_ne!(
        h.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        0
    );
    assert!(h.t.irq_level());
    assert!(h.take_out().is_empty(), "nothing may reach the backend");
    assert_eq!(h.t.stats().needs_reset, 1);
}

/// A valid block header at a fresh address.
fn header(h: &mut Harness, rtype: u32, sector: u64) -> u64 {
    let a = h.alloc(16);
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&rtype.to_le_bytes());
    b[8..16].copy_from_slice(&sector.to_le_bytes());
    h.mem.write_slice(&b, GuestAddress(a)).unwrap();
    a
}

#[test]
fn descriptor_outside_guest_memory() {
    let mut h = Harness::blk(64);
    let hdr = header(&mut h, VIRTIO_BLK_T_IN, 0);
    let st = h.alloc(1);
    h.add_chain(
        0,
        &[(hdr, 16, false), (MEM_SIZE - 256, 512, true), (st, 1, true)],
    );
    h.notify(0);
    assert_needs_reset(&mut h);
}

#[test]
fn descriptor_length_overflowing_the_address_space() {
    let mut h = Harness::blk(64);
    let hdr = header(&mut h, VIRTIO_BLK_T_IN, 0);
    let st = h.alloc(1);
    h.add_chain(
        0,
        &[
            (hdr, 16, false),
            (u64::MAX - 10, u32::MAX, true),
            (st, 1, true),
        ],
    );
    h.notify(0);
    assert_needs_reset(&mut h);
}

#[test]
fn descriptor_loop_is_bounded_by_queue_size() {
    let mut h = Harness::blk(64);
    let hdr = header(&mut h, VIRTIO_BLK_T_IN, 0);
    let st = h.alloc(1);
    // 0 -> 1 -> 2 -> 1 -> 2 ... never ends without virtio-queue's TTL.
    h.write_desc(0, 0, hdr, 16, F_NEXT, 1);
    h.write_desc(0, 1, st, 1, F_WRITE | F_NEXT, 2);
    h.write_desc(0, 2, st, 1, F_WRITE | F_NEXT, 1);
    h.publish(0, 0);
    h.notify(0);
    assert_needs_reset(&mut h);
}

#[test]
fn self_referencing_descriptor() {
    let mut h = Harness::net();
    let a = h.alloc(64);
    h.write_desc(TX_QUEUE, 0, a, 64, F_NEXT, 0);
    h.publish(TX_QUEUE, 0);
    h.notify(TX_QUEUE as u32);
    assert_needs_reset(&mut h);
}

#[test]
fn next_index_out_of_range() {
    let mut h = Harness::blk(64);
    let hdr = header(&mut h, VIRTIO_BLK_T_FLUSH, 0);
    h.write_desc(0, 0, hdr, 16, F_NEXT, 999);
    h.publish(0, 0);
    h.notify(0);
    assert_needs_reset(&mut h);
}

#[test]
fn head_index_out_of_range() {
    let mut h = Harness::blk(64);
    h.publish(0, 16); // queue size is 16
    h.notify(0);
    assert_needs_reset(&mut h);
}

#[test]
fn available_index_far_ahead() {
    let mut h = Harness::blk(64);
    let avail = h.queues[0].avail;
    h.mem.write_obj(100u16, GuestAddress(avail + 2)).unwrap();
    h.notify(0);
    assert_needs_reset(&mut h);
}

#[test]
fn too_short_header_is_ioerr() {
    let mut h = Harness::blk(64);
    let hdr = header(&mut h, VIRTIO_BLK_T_IN, 0);
    let st = h.alloc(1);
    h.add_chain(0, &[(hdr, 8, false), (st, 1, true)]);
    h.notify(0);
    assert_eq!(
        h.mem.read_obj::<u8>(GuestAddress(st)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    assert_eq!(h.take_used(0).len(), 1);
    assert!(!h.needs_reset());
    assert!(h.take_out().is_empty());
}

#[test]
fn read_into_read_only_descriptor_is_ioerr() {
    let mut h = Harness::blk(64);
    let hdr = header(&mut h, VIRTIO_BLK_T_IN, 0);
    let data = h.alloc(512);
    let st = h.alloc(1);
    h.add_chain(0, &[(hdr, 16, false), (data, 512, false), (st, 1, true)]);
    h.notify(0);
    assert_eq!(
        h.mem.read_obj::<u8>(GuestAddress(st)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    assert!(h.take_out().is_empty());
    assert!(!h.needs_reset());
}

#[test]
fn write_with_device_writable_data_is_ioerr() {
    let mut h = Harness::blk(64);
    let hdr = header(&mut h, VIRTIO_BLK_T_OUT, 0);
    let data = h.alloc(512);
    let st = h.alloc(1);
    h.add_chain(0, &[(hdr, 16, false), (data, 512, true), (st, 1, true)]);
    h.notify(0);
    assert_eq!(
        h.mem.read_obj::<u8>(GuestAddress(st)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    assert!(h.take_out().is_empty());
}

#[test]
fn readable_after_writable_is_ioerr() {
    let mut h = Harness::blk(64);
    let hdr = header(&mut h, VIRTIO_BLK_T_IN, 0);
    let data = h.alloc(512);
    let extra = h.alloc(16);
    let st = h.alloc(1);
    h.add_chain(
        0,
        &[
            (hdr, 16, false),
            (data, 512, true),
            (extra, 16, false),
            (st, 1, true),
        ],
    );
    h.notify(0);
    assert_eq!(
        h.mem.read_obj::<u8>(GuestAddress(st)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    assert!(h.take_out().is_empty());
}

#[test]
fn no_status_byte_needs_reset() {
    let mut h = Harness::blk(64);
    let hdr = header(&mut h, VIRTIO_BLK_T_FLUSH, 0);
    h.add_chain(0, &[(hdr, 16, false)]);
    h.notify(0);
    assert_needs_reset(&mut h);
}

#[test]
fn head_reused_while_in_flight() {
    let mut h = Harness::blk(64);
    let r = h.blk_request(VIRTIO_BLK_T_IN, 0, 512, None);
    h.notify(0);
    assert_eq!(h.take_out().len(), 1);
    h.publish(0, r.head); // same chain again before completion
    h.notify(0);
    assert_needs_reset(&mut h);
}

#[test]
fn rx_chain_with_read_only_buffer() {
    let mut h = Harness::net();
    let a = h.alloc(1526);
    h.add_chain(RX_QUEUE, &[(a, 1526, false)]);
    h.deliver(crate::io::InputEvent::Frame {
        dev: 1,
        data: vec![1; 60],
    });
    assert_needs_reset(&mut h);
}

fn queue_setup_with(h: &mut Harness, f: impl FnOnce(&mut Harness)) {
    h.negotiate();
    h.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
    f(h);
}

#[test]
fn queue_size_not_power_of_two() {
    let mut h = Harness::new(new_block(0, 64), 1);
    queue_setup_with(&mut h, |h| h.write_reg(VIRTIO_MMIO_QUEUE_NUM, 100));
    assert_needs_reset(&mut h);
}

#[test]
fn queue_size_above_max() {
    let mut h = Harness::new(new_block(0, 64), 1);
    queue_setup_with(&mut h, |h| h.write_reg(VIRTIO_MMIO_QUEUE_NUM, 512));
    assert_needs_reset(&mut h);
    let mut h = Harness::new(new_block(0, 64), 1);
    queue_setup_with(&mut h, |h| h.write_reg(VIRTIO_MMIO_QUEUE_NUM, 0x1_0000));
    assert_needs_reset(&mut h);
}

#[test]
fn misaligned_descriptor_table() {
    let mut h = Harness::new(new_block(0, 64), 1);
    queue_setup_with(&mut h, |h| h.write_reg(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1008));
    assert_needs_reset(&mut h);
}

#[test]
fn rings_outside_guest_memory() {
    let mut h = Harness::new(new_block(0, 64), 1);
    h.queues[0].used = MEM_SIZE - 8; // used ring runs past the end
    h.negotiate();
    h.setup_queue(0);
    assert_needs_reset(&mut h);
    h.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(h.read_reg(VIRTIO_MMIO_QUEUE_READY), 0);
    let mut h = Harness::new(new_block(0, 64), 1);
    h.queues[0].desc = 0x10_0000_0000;
    h.negotiate();
    h.setup_queue(0);
    assert_needs_reset(&mut h);
}

#[test]
fn rings_that_were_never_configured() {
    // Enabling a queue without writing its addresses leaves the rings at 0.
    let mut h = Harness::new(new_block(0, 64), 1);
    h.negotiate();
    h.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
    h.write_reg(VIRTIO_MMIO_QUEUE_NUM, 16);
    h.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
    assert_needs_reset(&mut h);
    assert_eq!(h.read_reg(VIRTIO_MMIO_QUEUE_READY), 0);
}

#[test]
fn notify_before_driver_ok() {
    let mut h = Harness::new(new_block(0, 64), 1);
    h.negotiate();
    h.setup_queue(0);
    h.blk_request(VIRTIO_BLK_T_IN, 0, 512, None);
    h.notify(0);
    assert_needs_reset(&mut h);
}

#[test]
fn notify_of_missing_or_disabled_queue() {
    let mut h = Harness::blk(64);
    h.notify(5);
    assert_needs_reset(&mut h);
    let mut h = Harness::net();
    h.write_reg(VIRTIO_MMIO_QUEUE_SEL, TX_QUEUE as u32);
    h.write_reg(VIRTIO_MMIO_QUEUE_READY, 0);
    h.notify(TX_QUEUE as u32);
    assert_needs_reset(&mut h);
}

#[test]
fn driver_ok_without_features_ok() {
    let mut h = Harness::new(new_net(1, [0; 6]), 2);
    h.write_reg(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    h.write_reg(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert_needs_reset(&mut h);
}

#[test]
fn needs_reset_ignores_notifies_until_reset_then_recovers() {
    let mut h = Harness::blk(64);
    h.publish(0, 40); // bad head
    h.notify(0);
    assert_needs_reset(&mut h);
    h.blk_request(VIRTIO_BLK_T_IN, 0, 512, None);
    h.notify(0);
    assert!(h.take_out().is_empty(), "device in NEEDS_RESET does no I/O");
    // A driver may not clear NEEDS_RESET except by resetting.
    let s = h.status();
    h.write_reg(VIRTIO_MMIO_STATUS, s & !VIRTIO_CONFIG_S_NEEDS_RESET);
    assert!(h.needs_reset());
    h.init();
    assert!(!h.t.irq_level());
    h.blk_request(VIRTIO_BLK_T_IN, 0, 512, None);
    h.notify(0);
    assert_eq!(h.take_out().len(), 1);
}

#[test]
fn oversized_request_is_ioerr_without_allocating() {
    // Descriptors may alias the same guest memory, so a guest can describe far
    // more data than it has RAM; the device caps a request at MAX_REQUEST_BYTES.
    let mut h = Harness::new(new_block(0, u64::MAX / 512), 1);
    h.queues[0].size = 32;
    h.init();
    let hdr = header(&mut h, VIRTIO_BLK_T_IN, 0);
    let st = h.alloc(1);
    let mut bufs = vec![(hdr, 16, false)];
    for _ in 0..20 {
        bufs.push((0, MEM_SIZE as u32, true)); // 20 x 1 MiB > 16 MiB
    }
    bufs.push((st, 1, true));
    h.add_chain(0, &bufs);
    h.notify(0);
    assert!(h.take_out().is_empty());
    assert_eq!(
        h.mem.read_obj::<u8>(GuestAddress(st)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    assert!(!h.needs_reset());
}

/// Write an indirect table of `n` descriptors at a fresh address; entry i
/// points to `next(i)` (None = end of chain). Returns (addr, byte length).
fn indirect_table(h: &mut Harness, n: u16, next: impl Fn(u16) -> Option<u16>) -> (u64, u32) {
    let buf = h.alloc(64);
    let table = h.alloc(16 * usize::from(n));
    for i in 0..n {
        let (flags, nx) = match next(i) {
            Some(nx) => (F_NEXT, nx),
            None => (0, 0),
        };
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&buf.to_le_bytes());
        raw[8..12].copy_from_slice(&64u32.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&nx.to_le_bytes());
        h.mem
            .write_slice(&raw, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }
    (table, 16 * u32::from(n))
}

const F_INDIRECT: u16 = 4;

#[test]
fn indirect_table_longer_than_the_queue() {
    // VIRTIO_F_INDIRECT_DESC is never offered; virtio-queue still follows an
    // indirect table, whose length the device bounds by the queue size.
    let mut h = Harness::net();
    let (table, len) = indirect_table(&mut h, 40, |i| (i < 39).then_some(i + 1));
    h.write_desc(TX_QUEUE, 0, table, len, F_INDIRECT, 0);
    h.publish(TX_QUEUE, 0);
    h.notify(TX_QUEUE as u32);
    assert_needs_reset(&mut h);
}

#[test]
fn loop_inside_an_indirect_table() {
    let mut h = Harness::net();
    let (table, len) = indirect_table(&mut h, 4, |i| Some((i + 1) % 4));
    h.write_desc(TX_QUEUE, 0, table, len, F_INDIRECT, 0);
    h.publish(TX_QUEUE, 0);
    h.notify(TX_QUEUE as u32);
    assert_needs_reset(&mut h);
}
