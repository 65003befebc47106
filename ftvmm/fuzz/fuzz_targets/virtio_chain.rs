//! Fuzz the virtio devices' parsing of guest-controlled bytes: descriptor
//! tables, available rings, block request headers, net headers, plus
//! interleaved register writes, completions and received frames.
//!
//! Input layout: byte 0 picks blk/net; the next 256 bytes are the descriptor
//! table of the queue under attack (16 entries), the next 36 its available ring;
//! the rest is a list of actions (see `run`). Oracles: no panic, every emitted
//! block request in range and with a fresh id, and the same input run twice
//! gives identical outputs and guest memory (lockstep determinism).
#![no_main]

use std::collections::BTreeSet;

use ftvmm::io::{BlockOp, BlockStatus, InputEvent, OutputEvent, Outputs};
use ftvmm::virtio::{new_block, new_net, GuestMemoryMmap, MmioTransport};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x4_0000;
const CAPACITY: u64 = 128;
const QSIZE: u32 = 16;

#[derive(Default)]
struct Rec(Vec<OutputEvent>);

impl Outputs for Rec {
    fn emit(&mut self, _n: u64, e: OutputEvent) {
        self.0.push(e);
    }
}

fn wr(t: &mut MmioTransport, mem: &GuestMemoryMmap, out: &mut Rec, off: u64, v: u32) {
    t.mmio_write(0, mem, off, &v.to_le_bytes(), out);
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.mmio_read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Queue `i` lives at 0x1000 + i*0x3000: desc, avail (+0x1000), used (+0x2000).
fn qbase(i: u32) -> u64 {
    0x1000 + u64::from(i) * 0x3000
}

/// A well-behaved driver initialisation up to DRIVER_OK.
fn init(t: &mut MmioTransport, mem: &GuestMemoryMmap, out: &mut Rec, nq: u32) {
    wr(t, mem, out, 0x70, 0);
    wr(t, mem, out, 0x70, 3);
    for sel in 0..2 {
        wr(t, mem, out, 0x14, sel);
        let f = rd(t, 0x10);
        wr(t, mem, out, 0x24, sel);
        wr(t, mem, out, 0x20, f);
    }
    wr(t, mem, out, 0x70, 11);
    for q in 0..nq {
        let b = qbase(q);
        wr(t, mem, out, 0x30, q);
        wr(t, mem, out, 0x38, QSIZE);
        wr(t, mem, out, 0x80, b as u32);
        wr(t, mem, out, 0x90, (b + 0x1000) as u32);
        wr(t, mem, out, 0xa0, (b + 0x2000) as u32);
        wr(t, mem, out, 0x44, 1);
    }
    wr(t, mem, out, 0x70, 15);
}

fn run(data: &[u8]) -> (Vec<OutputEvent>, Vec<u8>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let net = data.first().is_some_and(|b| b & 1 == 1);
    let (mut t, nq) = if net {
        (new_net(0, [2, 0, 0, 0, 0, 1]), 2)
    } else {
        (new_block(0, CAPACITY), 1)
    };
    let mut out = Rec::default();
    init(&mut t, &mem, &mut out, nq);
    let rest = data.get(1..).unwrap_or(&[]);
    let (ring, actions) = rest.split_at(rest.len().min(256 + 36));
    let q = if net { 1 } else { 0 };
    let (table, avail) = ring.split_at(ring.len().min(256));
    mem.write_slice(table, GuestAddress(qbase(q))).unwrap();
    mem.write_slice(avail, GuestAddress(qbase(q) + 0x1000))
        .unwrap();
    // Data area the descriptors may point at: a copy of the whole input.
    let area = data.len().min(MEM - 0x10000);
    mem.write_slice(&data[..area], GuestAddress(0x10000))
        .unwrap();

    let mut n = 1u64;
    let mut it = actions.chunks(6);
    while let Some(a) = it.next() {
        n += 1;
        let arg = |i: usize| a.get(i).copied().unwrap_or(0);
        let word = u32::from_le_bytes([arg(2), arg(3), arg(4), arg(5)]);
        match arg(0) % 6 {
            0 => wr(&mut t, &mem, &mut out, 0x50, u32::from(arg(1) % 3)),
            1 => {
                let ev = InputEvent::BlockDone {
                    dev: 0,
                    id: u64::from(arg(1) % 8),
                    status: match arg(2) % 3 {
                        0 => BlockStatus::Ok,
                        1 => BlockStatus::IoError,
                        _ => BlockStatus::Unsupported,
                    },
                    data: vec![arg(3); usize::from(arg(4)) * 8],
                };
                t.deliver(n, &mem, ev, &mut out);
            }
            2 => {
                let len = usize::from(u16::from_le_bytes([arg(1), arg(2)]) % 2048);
                let ev = InputEvent::Frame {
                    dev: 0,
                    data: vec![arg(3); len],
                };
                t.deliver(n, &mem, ev, &mut out);
            }
            3 => t.mmio_write(
                n,
                &mem,
                u64::from(arg(1)) * 4 % 0x200,
                &word.to_le_bytes(),
                &mut out,
            ),
            4 => {
                // Driver-side ring update: avail idx or one avail ring slot.
                let off = u64::from(arg(1) % 18) * 2;
                mem.write_obj(
                    u16::from_le_bytes([arg(2), arg(3)]),
                    GuestAddress(qbase(q) + 0x1000 + off),
                )
                .unwrap();
            }
            _ => init(&mut t, &mem, &mut out, nq),
        }
        let is = rd(&mut t, 0x60);
        assert_eq!(t.irq_level(), is != 0);
    }
    // The snapshot of whatever state we reached must round-trip.
    let s = t.save();
    let mut fresh = if net {
        new_net(0, [2, 0, 0, 0, 0, 1])
    } else {
        new_block(0, CAPACITY)
    };
    fresh.restore(s.clone()).expect("own snapshot restores");
    assert_eq!(fresh.save(), s);

    let mut image = vec![0u8; MEM];
    mem.read_slice(&mut image, GuestAddress(0)).unwrap();
    (out.0, image)
}

fuzz_target!(|data: &[u8]| {
    let (out, image) = run(data);
    let mut ids = BTreeSet::new();
    for e in &out {
        if let OutputEvent::Block(b) = e {
            assert!(ids.insert(b.id), "block id reused");
            match &b.op {
                BlockOp::Read { sector, len } => {
                    assert!(sector + u64::from(*len) / 512 <= CAPACITY)
                }
                BlockOp::Write { sector, data } => {
                    assert!(sector + data.len() as u64 / 512 <= CAPACITY)
                }
                BlockOp::Flush => {}
            }
        }
    }
    let (out2, image2) = run(data);
    assert!(
        out == out2 && image == image2,
        "non-deterministic device behaviour"
    );
});
