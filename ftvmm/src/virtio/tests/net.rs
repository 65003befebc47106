//! virtio-net TX/RX paths, the pending RX FIFO and its limits.

use super::driver::Harness;
use crate::io::{InputEvent, OutputEvent};
use crate::virtio::{NET_HDR_LEN, RX_FIFO_LIMIT, RX_QUEUE, TX_QUEUE};
use vm_memory::{Bytes, GuestAddress};

fn frame(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
}

fn rx(dev: u8, data: Vec<u8>) -> InputEvent {
    InputEvent::Frame { dev, data }
}

/// Post one RX buffer of `len` bytes; returns (head, addr).
fn post_rx(h: &mut Harness, len: u32) -> (u16, u64) {
    let a = h.alloc(len as usize);
    (h.add_chain(RX_QUEUE, &[(a, len, true)]), a)
}

#[test]
fn tx_strips_the_12_byte_header() {
    let mut h = Harness::net();
    let payload = frame(1, 60);
    let hdr = h.alloc(NET_HDR_LEN);
    let body = h.alloc(payload.len());
    h.mem.write_slice(&payload, GuestAddress(body)).unwrap();
    let head = h.add_chain(
        TX_QUEUE,
        &[(hdr, NET_HDR_LEN as u32, false), (body, 60, false)],
    );
    h.notify(TX_QUEUE as u32);
    assert_eq!(
        h.take_out(),
        vec![OutputEvent::Frame {
            dev: 1,
            data: payload
        }]
    );
    assert_eq!(h.take_used(TX_QUEUE), vec![(u32::from(head), 0)]);
    assert!(h.t.irq_level());
}

#[test]
fn tx_header_and_frame_in_one_buffer() {
    let mut h = Harness::net();
    let mut bytes = vec![0u8; NET_HDR_LEN];
    bytes.extend(frame(7, 42));
    let a = h.alloc(bytes.len());
    h.mem.write_slice(&bytes, GuestAddress(a)).unwrap();
    h.add_chain(TX_QUEUE, &[(a, bytes.len() as u32, false)]);
    h.notify(TX_QUEUE as u32);
    assert_eq!(
        h.take_out(),
        vec![OutputEvent::Frame {
            dev: 1,
            data: frame(7, 42)
        }]
    );
}

#[test]
fn tx_too_short_or_empty_is_dropped_but_returned() {
    let mut h = Harness::net();
    let a = h.alloc(8);
    let b = h.alloc(NET_HDR_LEN);
    let ha = h.add_chain(TX_QUEUE, &[(a, 8, false)]);
    let hb = h.add_chain(TX_QUEUE, &[(b, NET_HDR_LEN as u32, false)]);
    h.notify(TX_QUEUE as u32);
    assert!(h.take_out().is_empty());
    assert_eq!(
        h.take_used(TX_QUEUE),
        vec![(u32::from(ha), 0), (u32::from(hb), 0)]
    );
    assert_eq!(h.t.stats().rejected, 2);
    assert!(!h.needs_reset());
}

#[test]
fn rx_fills_posted_buffer_with_header_and_frame() {
    let mut h = Harness::net();
    let (head, addr) = post_rx(&mut h, 1526);
    h.notify(RX_QUEUE as u32);
    assert!(h.take_used(RX_QUEUE).is_empty());
    let f = frame(3, 100);
    h.deliver(rx(1, f.clone()));
    assert_eq!(
        h.take_used(RX_QUEUE),
        vec![(u32::from(head), (NET_HDR_LEN + 100) as u32)]
    );
    let got = h.read_bytes(addr, NET_HDR_LEN + 100);
    let mut hdr = [0u8; NET_HDR_LEN];
    hdr[10] = 1; // num_buffers = 1
    assert_eq!(&got[..NET_HDR_LEN], &hdr);
    assert_eq!(&got[NET_HDR_LEN..], &f[..]);
    assert!(h.t.irq_level());
}

#[test]
fn rx_scatters_over_several_buffers() {
    let mut h = Harness::net();
    let a = h.alloc(10);
    let b = h.alloc(2000);
    let head = h.add_chain(RX_QUEUE, &[(a, 10, true), (b, 2000, true)]);
    let f = frame(9, 1000);
    h.deliver(rx(1, f.clone()));
    assert_eq!(h.take_used(RX_QUEUE), vec![(u32::from(head), 1012)]);
    let mut all = h.read_bytes(a, 10);
    all.extend(h.read_bytes(b, 1002));
    assert_eq!(&all[NET_HDR_LEN..], &f[..]);
}

#[test]
fn rx_without_buffer_waits_until_notify() {
    let mut h = Harness::net();
    h.deliver(rx(1, frame(1, 64)));
    h.deliver(rx(1, frame(2, 64)));
    assert_eq!(h.t.rx_pending_frames(), 2);
    assert!(!h.t.irq_level());
    let (h1, a1) = post_rx(&mut h, 1526);
    let (h2, a2) = post_rx(&mut h, 1526);
    h.notify(RX_QUEUE as u32);
    assert_eq!(
        h.take_used(RX_QUEUE),
        vec![(u32::from(h1), 76), (u32::from(h2), 76)]
    );
    assert_eq!(h.read_bytes(a1 + 12, 64), frame(1, 64));
    assert_eq!(h.read_bytes(a2 + 12, 64), frame(2, 64));
    assert_eq!(h.t.rx_pending_frames(), 0);
}

#[test]
fn rx_fifo_is_bounded_and_drops_oldest() {
    let mut h = Harness::net();
    for i in 0..=RX_FIFO_LIMIT {
        h.deliver(rx(1, vec![i as u8; 60]));
    }
    assert_eq!(h.t.rx_pending_frames(), RX_FIFO_LIMIT);
    assert_eq!(h.t.stats().rx_overflow, 1);
    let (_, a) = post_rx(&mut h, 1526);
    h.notify(RX_QUEUE as u32);
    // Frame 0 was dropped; frame 1 is the oldest left.
    assert_eq!(h.read_bytes(a + 12, 60), vec![1u8; 60]);
}

#[test]
fn rx_frame_larger_than_buffer_is_dropped_and_buffer_kept() {
    let mut h = Harness::net();
    let (head, a) = post_rx(&mut h, 100);
    h.deliver(rx(1, frame(1, 200)));
    assert!(h.take_used(RX_QUEUE).is_empty());
    assert_eq!(h.t.stats().rx_too_big, 1);
    assert_eq!(h.t.rx_pending_frames(), 0);
    // The same buffer takes the next frame that fits.
    h.deliver(rx(1, frame(2, 80)));
    assert_eq!(h.take_used(RX_QUEUE), vec![(u32::from(head), 92)]);
    assert_eq!(h.read_bytes(a + 12, 80), frame(2, 80));
}

#[test]
fn rx_before_driver_ok_is_dropped() {
    let mut h = Harness::new(crate::virtio::new_net(1, [2; 6]), 2);
    h.deliver(rx(1, frame(1, 64)));
    assert_eq!(h.t.stats().rx_not_ready, 1);
    assert_eq!(h.t.rx_pending_frames(), 0);
}

#[test]
fn config_space_holds_mac_and_link_up() {
    let mut h = Harness::net();
    let mut mac = [0u8; 6];
    h.t.mmio_read(0x100, &mut mac);
    assert_eq!(mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let mut st = [0u8; 2];
    h.t.mmio_read(0x106, &mut st);
    assert_eq!(u16::from_le_bytes(st), 1);
    // Byte-wise reads agree (drivers may split config accesses).
    for (i, m) in mac.iter().enumerate() {
        let mut b = [0u8; 1];
        h.t.mmio_read(0x100 + i as u64, &mut b);
        assert_eq!(b[0], *m);
    }
}
