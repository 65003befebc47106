//! The virtio API exactly as the vCPU loop uses it (public items only): build
//! the two devices of the boot protocol, drive a virtio-blk read through MMIO
//! writes, a `BlockDone` completion and the interrupt line, and carry a
//! snapshot through serde_json into a fresh transport.

use ftvmm::io::{BlockOp, BlockRequest, BlockStatus, ExitIndex, InputEvent, OutputEvent, Outputs};
use ftvmm::virtio::{new_block, new_net, GuestMemoryMmap, MmioTransport, MmioTransportState};
use vm_memory::{Bytes, GuestAddress};

#[derive(Default)]
struct Sink(Vec<(ExitIndex, OutputEvent)>);

impl Outputs for Sink {
    fn emit(&mut self, n: ExitIndex, event: OutputEvent) {
        self.0.push((n, event));
    }
}

fn w(t: &mut MmioTransport, mem: &GuestMemoryMmap, out: &mut Sink, n: u64, off: u64, v: u32) {
    t.mmio_write(n, mem, off, &v.to_le_bytes(), out);
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.mmio_read(off, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn blk_read_through_the_public_api() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2_0000)]).unwrap();
    let mut out = Sink::default();
    let mut blk = new_block(0, 2048);
    let mut net = new_net(1, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(
        (r(&mut blk, 0), r(&mut blk, 4), r(&mut blk, 8)),
        (0x7472_6976, 2, 2)
    );
    assert_eq!(r(&mut net, 8), 1);

    // Driver init: ACK|DRIVER, features (all offered), FEATURES_OK, queue 0, DRIVER_OK.
    w(&mut blk, &mem, &mut out, 1, 0x70, 3);
    for sel in 0..2 {
        w(&mut blk, &mem, &mut out, 2, 0x14, sel);
        let f = r(&mut blk, 0x10);
        w(&mut blk, &mem, &mut out, 3, 0x24, sel);
        w(&mut blk, &mem, &mut out, 4, 0x20, f);
    }
    w(&mut blk, &mem, &mut out, 5, 0x70, 11);
    assert_eq!(r(&mut blk, 0x70), 11);
    for (off, v) in [
        (0x30, 0),
        (0x38, 8),
        (0x80, 0x1000),
        (0x90, 0x2000),
        (0xa0, 0x3000),
        (0x44, 1),
    ] {
        w(&mut blk, &mem, &mut out, 6, off, v);
    }
    w(&mut blk, &mem, &mut out, 7, 0x70, 15);

    // One read request: header (IN, sector 9), 512-byte buffer, status byte.
    let mut hdr = [0u8; 16];
    hdr[8..].copy_from_slice(&9u64.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(0x8000)).unwrap();
    let descs: [(u64, u32, u16, u16); 3] =
        [(0x8000, 16, 1, 1), (0x9000, 512, 3, 2), (0xa000, 1, 2, 0)];
    for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
        let base = 0x1000 + 16 * i as u64;
        mem.write_obj(*addr, GuestAddress(base)).unwrap();
        mem.write_obj(*len, GuestAddress(base + 8)).unwrap();
        mem.write_obj(*flags, GuestAddress(base + 12)).unwrap();
        mem.write_obj(*next, GuestAddress(base + 14)).unwrap();
    }
    mem.write_obj(0u16, GuestAddress(0x2004)).unwrap(); // ring[0] = head 0
    mem.write_obj(1u16, GuestAddress(0x2002)).unwrap(); // avail idx = 1
    w(&mut blk, &mem, &mut out, 42, 0x50, 0);
    let req = BlockRequest {
        dev: 0,
        id: 0,
        op: BlockOp::Read {
            sector: 9,
            len: 512,
        },
    };
    assert_eq!(
        out.0,
        vec![(42, OutputEvent::Block(req))],
        "output tagged with the exit index"
    );
    assert!(!blk.irq_level());

    // Snapshot mid-flight through JSON; the restored copy finishes the request.
    let json = serde_json::to_vec(&blk.save()).unwrap();
    let state: MmioTransportState = serde_json::from_slice(&json).unwrap();
    let mut restored = new_block(0, 2048);
    restored.restore(state).unwrap();
    assert_eq!(restored.in_flight_requests(&mem).len(), 1);
    let done = InputEvent::BlockDone {
        dev: 0,
        id: 0,
        status: BlockStatus::Ok,
        data: vec![0x5a; 512],
    };
    restored.deliver(50, &mem, done, &mut out);
    assert!(restored.irq_level());
    assert_eq!(
        mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(),
        1,
        "used idx"
    );
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x3008)).unwrap(),
        513,
        "used len"
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0xa000)).unwrap(),
        0,
        "status OK"
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x9000 + 511)).unwrap(),
        0x5a
    );
    assert_eq!(r(&mut restored, 0x60), 1);
    w(&mut restored, &mem, &mut out, 51, 0x64, 1);
    assert!(!restored.irq_level());
}
