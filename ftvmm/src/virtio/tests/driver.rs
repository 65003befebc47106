//! A minimal guest driver: writes descriptor tables, available rings and MMIO
//! registers by hand, reads used rings back. Deliberately independent of
//! `virtio-queue` so the tests check the device against the ring layout of the
//! spec, not against the library it is built on.

use vm_memory::{Bytes, GuestAddress};

use crate::io::{InputEvent, OutputEvent, Outputs};
use crate::virtio::{new_block, new_net, GuestMemoryMmap, MmioTransport};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;

pub const MEM_SIZE: u64 = 0x10_0000;
pub const DATA_BASE: u64 = 0x4_0000;
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const STATUS_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;

/// Records every output with its exit index.
#[derive(Default)]
pub struct RecOut(pub Vec<(u64, OutputEvent)>);

impl Outputs for RecOut {
    fn emit(&mut self, n: u64, event: OutputEvent) {
        self.0.push((n, event));
    }
}

/// Driver-side view of one split virtqueue.
#[derive(Clone, Copy, Debug)]
pub struct GuestQueue {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    pub avail_idx: u16,
    pub used_seen: u16,
    pub next_desc: u16,
}

pub struct Harness {
    pub mem: GuestMemoryMmap,
    pub t: MmioTransport,
    pub out: RecOut,
    pub n: u64,
    pub queues: Vec<GuestQueue>,
    pub next_data: u64,
    pub mem_size: u64,
}

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

impl Harness {
    pub fn new(t: MmioTransport, nqueues: usize) -> Self {
        let queues = (0..nqueues)
            .map(|i| {
                let base = 0x1000 + (i as u64) * 0x3000;
                GuestQueue {
                    desc: base,
                    avail: base + 0x1000,
                    used: base + 0x2000,
                    size: 16,
                    avail_idx: 0,
                    used_seen: 0,
                    next_desc: 0,
                }
            })
            .collect();
        Harness {
            mem: guest_memory(),
            t,
            out: RecOut::default(),
            n: 0,
            queues,
            next_data: DATA_BASE,
            mem_size: MEM_SIZE,
        }
    }

    /// Block device 0 with `sectors` sectors in `mem_size` bytes of guest
    /// memory (for requests larger than the default memory), initialised.
    pub fn blk_in(sectors: u64, mem_size: u64) -> Self {
        let mut h = Harness::new(new_block(0, sectors), 1);
        h.mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)]).unwrap();
        h.mem_size = mem_size;
        h.init();
        h
    }

    /// Block device 0 with `sectors` sectors, driver initialised.
    pub fn blk(sectors: u64) -> Self {
        let mut h = Harness::new(new_block(0, sectors), 1);
        h.init();
        h
    }

    /// Net device 1, driver initialised.
    pub fn net() -> Self {
        let mut h = Harness::new(new_net(1, [0x52, 0x54, 0, 0x12, 0x34, 0x56]), 2);
        h.init();
        h
    }

    pub fn write_reg(&mut self, off: u32, v: u32) {
        self.n += 1;
        self.t.mmio_write(
            self.n,
            &self.mem,
            u64::from(off),
            &v.to_le_bytes(),
            &mut self.out,
        );
    }

    pub fn read_reg(&mut self, off: u32) -> u32 {
        let mut b = [0u8; 4];
        self.t.mmio_read(u64::from(off), &mut b);
        u32::from_le_bytes(b)
    }

    pub fn status(&mut self) -> u32 {
        self.read_reg(VIRTIO_MMIO_STATUS)
    }

    pub fn needs_reset(&mut self) -> bool {
        self.status() & STATUS_NEEDS_RESET != 0
    }

    /// Negotiate VERSION_1 plus every device feature, up to FEATURES_OK.
    pub fn negotiate(&mut self) {
        self.write_reg(VIRTIO_MMIO_STATUS, 0);
        self.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.write_reg(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        for sel in 0..2 {
            self.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
            let f = self.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
            self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, f);
        }
        self.write_reg(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        assert_ne!(
            self.status() & VIRTIO_CONFIG_S_FEATURES_OK,
            0,
            "features refused"
        );
    }

    /// Program queue `i` with the layout in `self.queues[i]` and enable it.
    pub fn setup_queue(&mut self, i: usize) {
        let q = self.queues[i];
        self.write_reg(VIRTIO_MMIO_QUEUE_SEL, i as u32);
        self.write_reg(VIRTIO_MMIO_QUEUE_NUM, u32::from(q.size));
        self.write_reg(VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc as u32);
        self.write_reg(VIRTIO_MMIO_QUEUE_DESC_HIGH, (q.desc >> 32) as u32);
        self.write_reg(VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail as u32);
        self.write_reg(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (q.avail >> 32) as u32);
        self.write_reg(VIRTIO_MMIO_QUEUE_USED_LOW, q.used as u32);
        self.write_reg(VIRTIO_MMIO_QUEUE_USED_HIGH, (q.used >> 32) as u32);
        self.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
    }

    pub fn driver_ok(&mut self) {
        let s = self.status();
        self.write_reg(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
    }

    /// Full initialisation: reset, features, all queues, DRIVER_OK.
    pub fn init(&mut self) {
        for q in &mut self.queues {
            q.avail_idx = 0;
            q.used_seen = 0;
            q.next_desc = 0;
        }
        // Rings start zeroed.
        for q in self.queues.clone() {
            self.mem
                .write_slice(&[0u8; 4], GuestAddress(q.avail))
                .unwrap();
            self.mem
                .write_slice(&[0u8; 4], GuestAddress(q.used))
                .unwrap();
        }
        self.negotiate();
        for i in 0..self.queues.len() {
            self.setup_queue(i);
        }
        self.driver_ok();
        assert!(!self.needs_reset());
    }

    /// A fresh buffer of `len` bytes in guest memory (zeroed).
    pub fn alloc(&mut self, len: usize) -> u64 {
        let addr = self.next_data;
        self.next_data = (self.next_data + len as u64 + 15) & !15;
        assert!(self.next_data <= self.mem_size, "test data area exhausted");
        self.mem
            .write_slice(&vec![0u8; len], GuestAddress(addr))
            .unwrap();
        addr
    }

    pub fn write_desc(&mut self, q: usize, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let base = self.queues[q].desc;
        self.mem
            .write_slice(&raw, GuestAddress(base + 16 * u64::from(idx)))
            .unwrap();
    }

    /// Put `head` into the available ring and bump its index.
    pub fn publish(&mut self, q: usize, head: u16) {
        let gq = &mut self.queues[q];
        let slot = gq.avail + 4 + 2 * u64::from(gq.avail_idx % gq.size);
        gq.avail_idx = gq.avail_idx.wrapping_add(1);
        let (idx, avail) = (gq.avail_idx, gq.avail);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
    }

    /// Write a chain of (addr, len, device-writable) buffers into the next free
    /// descriptor slots and publish it. Returns the head index.
    pub fn add_chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let size = self.queues[q].size;
        let head = self.queues[q].next_desc % size;
        let end = self.write_chain_at(q, head, bufs);
        self.queues[q].next_desc = end;
        self.publish(q, head);
        head
    }

    /// Write a chain into consecutive descriptors from `head` (not published);
    /// returns the index after the last one.
    pub fn write_chain_at(&mut self, q: usize, head: u16, bufs: &[(u64, u32, bool)]) -> u16 {
        let size = self.queues[q].size;
        let mut idx = head;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let next = (idx + 1) % size;
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(q, idx, addr, len, flags, if last { 0 } else { next });
            idx = next;
        }
        idx
    }

    pub fn notify(&mut self, q: u32) {
        self.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, q);
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.queues[q].used + 2))
            .unwrap()
    }

    /// Used-ring entries (id, len) added since the last call.
    pub fn take_used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let idx = self.used_idx(q);
        let mut v = Vec::new();
        let gq = self.queues[q];
        let mut seen = gq.used_seen;
        while seen != idx {
            let e = gq.used + 4 + 8 * u64::from(seen % gq.size);
            let id: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
            v.push((id, len));
            seen = seen.wrapping_add(1);
        }
        self.queues[q].used_seen = seen;
        v
    }

    pub fn deliver(&mut self, ev: InputEvent) {
        self.n += 1;
        self.t.deliver(self.n, &self.mem, ev, &mut self.out);
    }

    pub fn take_out(&mut self) -> Vec<OutputEvent> {
        self.out.0.drain(..).map(|(_, e)| e).collect()
    }

    pub fn read_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn ack_irq(&mut self) {
        let s = self.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS);
        self.write_reg(VIRTIO_MMIO_INTERRUPT_ACK, s);
    }
}

/// A virtio-blk request laid out in guest memory.
pub struct BlkReq {
    pub head: u16,
    pub data: u64,
    pub status: u64,
}

impl Harness {
    /// Lay out header / data / status in three descriptors and publish them.
    /// `data_len` bytes of data; `write_data` fills them for OUT requests.
    pub fn blk_request(
        &mut self,
        rtype: u32,
        sector: u64,
        data_len: u32,
        write_data: Option<&[u8]>,
    ) -> BlkReq {
        let hdr = self.alloc(16);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&rtype.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        let data = self.alloc(data_len as usize);
        if let Some(d) = write_data {
            self.mem.write_slice(d, GuestAddress(data)).unwrap();
        }
        let status = self.alloc(1);
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let device_writes = write_data.is_none();
        let mut bufs = vec![(hdr, 16, false)];
        if data_len > 0 {
            bufs.push((data, data_len, device_writes));
        }
        bufs.push((status, 1, true));
        let head = self.add_chain(0, &bufs);
        BlkReq { head, data, status }
    }

    pub fn status_byte(&self, r: &BlkReq) -> u8 {
        self.mem.read_obj(GuestAddress(r.status)).unwrap()
    }
}
