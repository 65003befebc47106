//! Property tests: a model of a correct driver against the block device, a
//! model of RX buffering for the net device, and arbitrary (hostile) ring and
//! register contents that must never panic and must behave deterministically.

use std::collections::{BTreeSet, VecDeque};

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};

use super::driver::{Harness, DATA_BASE, MEM_SIZE};
use crate::io::{BlockOp, BlockRequest, BlockStatus, InputEvent, OutputEvent};
use crate::virtio::{RX_QUEUE, TX_QUEUE};
use virtio_bindings::virtio_blk::*;

const CAPACITY: u64 = 64;
const SLOTS: usize = 5; // 3 descriptors each in a 16-entry queue

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Read,
    Write,
    Flush,
    GetId,
    Unknown,
}

#[derive(Debug, Clone)]
enum Op {
    Submit {
        kind: Kind,
        sector: u64,
        sectors: u32,
    },
    Notify,
    Complete {
        pick: usize,
        status: u8,
    },
    Stale {
        pick: usize,
    },
    Reset,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Read),
        4 => Just(Kind::Write),
        1 => Just(Kind::Flush),
        1 => Just(Kind::GetId),
        1 => Just(Kind::Unknown),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (kind(), 0u64..70, 0u32..4)
            .prop_map(|(kind, sector, sectors)| Op::Submit { kind, sector, sectors }),
        3 => Just(Op::Notify),
        4 => (any::<usize>(), 0u8..3).prop_map(|(pick, status)| Op::Complete { pick, status }),
        1 => any::<usize>().prop_map(|pick| Op::Stale { pick }),
        1 => Just(Op::Reset),
    ]
}

#[derive(Debug, Clone)]
struct Req {
    kind: Kind,
    sector: u64,
    sectors: u32,
    id: Option<u64>,
}

fn slot_addrs(slot: usize) -> (u64, u64, u64) {
    let s = slot as u64;
    (
        DATA_BASE + 0x8000 + 16 * s,
        DATA_BASE + 0x1000 * s,
        DATA_BASE + 0x9000 + s,
    )
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed as usize * 31 + i) as u8).collect()
}

fn status_of(code: u8) -> (BlockStatus, u8) {
    match code {
        0 => (BlockStatus::Ok, VIRTIO_BLK_S_OK as u8),
        1 => (BlockStatus::IoError, VIRTIO_BLK_S_IOERR as u8),
        _ => (BlockStatus::Unsupported, VIRTIO_BLK_S_UNSUPP as u8),
    }
}

struct Model {
    h: Harness,
    slots: [Option<Req>; SLOTS],
    published: Vec<usize>,
    next_id: u64,
    issued: BTreeSet<u64>,
    finished_ids: Vec<u64>,
}

impl Model {
    fn head(slot: usize) -> u16 {
        (slot * 3) as u16
    }

    fn submit(&mut self, kind: Kind, sector: u64, sectors: u32) {
        let Some(slot) = self.slots.iter().position(|s| s.is_none()) else {
            return;
        };
        let (hdr, data, status) = slot_addrs(slot);
        let rtype = match kind {
            Kind::Read => VIRTIO_BLK_T_IN,
            Kind::Write => VIRTIO_BLK_T_OUT,
            Kind::Flush => VIRTIO_BLK_T_FLUSH,
            Kind::GetId => VIRTIO_BLK_T_GET_ID,
            Kind::Unknown => 0x7777,
        };
        let mut hb = [0u8; 16];
        hb[0..4].copy_from_slice(&rtype.to_le_bytes());
        hb[8..16].copy_from_slice(&sector.to_le_bytes());
        self.h.mem.write_slice(&hb, GuestAddress(hdr)).unwrap();
        self.h.mem.write_obj(0xeeu8, GuestAddress(status)).unwrap();
        let len = match kind {
            Kind::Read | Kind::Write => sectors * 512,
            Kind::GetId => 20,
            Kind::Flush | Kind::Unknown => 0,
        };
        if kind == Kind::Write {
            self.h
                .mem
                .write_slice(&pattern(sector, len as usize), GuestAddress(data))
                .unwrap();
        }
        let mut bufs = vec![(hdr, 16, false)];
        if len > 0 {
            bufs.push((data, len, kind != Kind::Write));
        }
        bufs.push((status, 1, true));
        self.h.write_chain_at(0, Self::head(slot), &bufs);
        self.h.publish(0, Self::head(slot));
        self.slots[slot] = Some(Req {
            kind,
            sector,
            sectors,
            id: None,
        });
        self.published.push(slot);
    }

    /// Used entries must be exactly `expect` (head, len), each with its status byte.
    fn check_used(&mut self, expect: Vec<(usize, u32, u8)>) -> Result<(), TestCaseError> {
        let used = self.h.take_used(0);
        let want: Vec<(u32, u32)> = expect
            .iter()
            .map(|&(s, l, _)| (u32::from(Self::head(s)), l))
            .collect();
        prop_assert_eq!(&used, &want);
        for &(slot, _, st) in &expect {
            let got: u8 = self
                .h
                .mem
                .read_obj(GuestAddress(slot_addrs(slot).2))
                .unwrap();
            prop_assert_eq!(got, st, "status byte of slot {}", slot);
        }
        prop_assert_eq!(self.h.t.irq_level(), !expect.is_empty());
        self.h.ack_irq();
        Ok(())
    }

    fn notify(&mut self) -> Result<(), TestCaseError> {
        self.h.notify(0);
        let mut want_out = Vec::new();
        let mut want_used = Vec::new();
        for slot in std::mem::take(&mut self.published) {
            let r = self.slots[slot].as_mut().unwrap();
            let bytes = u64::from(r.sectors) * 512;
            let in_range = r.sector + u64::from(r.sectors) <= CAPACITY;
            let emit = match r.kind {
                Kind::Read | Kind::Write if !in_range => None,
                Kind::Read | Kind::Write if bytes == 0 => None,
                Kind::Read => Some(BlockOp::Read {
                    sector: r.sector,
                    len: bytes as u32,
                }),
                Kind::Write => Some(BlockOp::Write {
                    sector: r.sector,
                    data: pattern(r.sector, bytes as usize),
                }),
                Kind::Flush => Some(BlockOp::Flush),
                Kind::GetId | Kind::Unknown => None,
            };
            match emit {
                Some(op) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    r.id = Some(id);
                    want_out.push(OutputEvent::Block(BlockRequest { dev: 0, id, op }));
                }
                None => {
                    let (len, st) = match r.kind {
                        Kind::GetId => (21, VIRTIO_BLK_S_OK),
                        Kind::Unknown => (1, VIRTIO_BLK_S_UNSUPP),
                        _ if in_range => (1, VIRTIO_BLK_S_OK),
                        _ => (1, VIRTIO_BLK_S_IOERR),
                    };
                    want_used.push((slot, len, st as u8));
                    self.slots[slot] = None;
                }
            }
        }
        let out = self.h.take_out();
        for e in &out {
            if let OutputEvent::Block(b) = e {
                prop_assert!(self.issued.insert(b.id), "id {} reused", b.id);
            }
        }
        prop_assert_eq!(out, want_out);
        self.check_used(want_used)
    }

    fn complete(&mut self, pick: usize, code: u8) -> Result<(), TestCaseError> {
        let inflight: Vec<usize> = (0..SLOTS)
            .filter(|&s| self.slots[s].as_ref().is_some_and(|r| r.id.is_some()))
            .collect();
        if inflight.is_empty() {
            return Ok(());
        }
        let slot = inflight[pick % inflight.len()];
        let r = self.slots[slot].take().unwrap();
        let id = r.id.unwrap();
        let (status, st) = status_of(code);
        let len = if r.kind == Kind::Read {
            r.sectors as usize * 512
        } else {
            0
        };
        let data = if r.kind == Kind::Read && status == BlockStatus::Ok {
            pattern(id, len)
        } else {
            Vec::new()
        };
        self.h.deliver(InputEvent::BlockDone {
            dev: 0,
            id,
            status,
            data: data.clone(),
        });
        self.finished_ids.push(id);
        let used_len = if r.kind == Kind::Read && status == BlockStatus::Ok {
            len as u32 + 1
        } else {
            1
        };
        if used_len > 1 {
            prop_assert_eq!(self.h.read_bytes(slot_addrs(slot).1, len), data);
        }
        prop_assert!(self.h.take_out().is_empty());
        self.check_used(vec![(slot, used_len, st)])
    }

    fn stale(&mut self, pick: usize) -> Result<(), TestCaseError> {
        let id = if self.finished_ids.is_empty() {
            self.next_id + 100
        } else {
            self.finished_ids[pick % self.finished_ids.len()]
        };
        self.h.deliver(InputEvent::BlockDone {
            dev: 0,
            id,
            status: BlockStatus::Ok,
            data: vec![0; 512],
        });
        self.check_used(Vec::new())
    }

    fn reset(&mut self) -> Result<(), TestCaseError> {
        self.h.init();
        for s in self.slots.iter_mut() {
            if let Some(id) = s.as_ref().and_then(|r| r.id) {
                self.finished_ids.push(id); // its completion is stale from now on
            }
            *s = None;
        }
        self.published.clear();
        prop_assert!(self.h.t.pending_block_ids().is_empty());
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A correct driver and an arbitrary interleaving of submissions, notifies,
    /// completions (any order, any status), stale completions and resets: every
    /// request is answered exactly once, ids are never reused, outputs are
    /// exactly the ones the model predicts.
    #[test]
    fn block_device_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut m = Model {
            h: Harness::blk(CAPACITY),
            slots: Default::default(),
            published: Vec::new(),
            next_id: 0,
            issued: BTreeSet::new(),
            finished_ids: Vec::new(),
        };
        for op in ops {
            match op {
                Op::Submit { kind, sector, sectors } => m.submit(kind, sector, sectors),
                Op::Notify => m.notify()?,
                Op::Complete { pick, status } => m.complete(pick, status)?,
                Op::Stale { pick } => m.stale(pick)?,
                Op::Reset => m.reset()?,
            }
            prop_assert!(!m.h.needs_reset(), "a correct driver never triggers NEEDS_RESET");
        }
        // Drain: everything submitted gets answered exactly once.
        m.notify()?;
        while m.slots.iter().any(|s| s.is_some()) {
            m.complete(0, 0)?;
        }
        prop_assert!(m.h.t.pending_block_ids().is_empty());
    }
}

#[derive(Debug, Clone)]
enum NetOp {
    Frame(usize),
    Post(u32),
    NotifyRx,
}

fn net_op() -> impl Strategy<Value = NetOp> {
    prop_oneof![
        3 => (1usize..300).prop_map(NetOp::Frame),
        3 => (20u32..320).prop_map(NetOp::Post),
        1 => Just(NetOp::NotifyRx),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// RX: frames and buffers meet in order; a frame that does not fit the
    /// first buffer is dropped and the buffer kept; nothing is lost otherwise.
    #[test]
    fn net_rx_matches_model(ops in proptest::collection::vec(net_op(), 1..80)) {
        let mut h = Harness::net();
        let mut frames: VecDeque<Vec<u8>> = VecDeque::new();
        let mut bufs: VecDeque<(u16, u64, u32)> = VecDeque::new();
        let mut free: Vec<u16> = (0..16).rev().collect();
        let mut dropped = 0u64;
        let mut seq = 0u8;
        for op in ops {
            let mut want = Vec::new();
            match op.clone() {
                NetOp::Frame(len) => {
                    seq = seq.wrapping_add(1);
                    let f: Vec<u8> = (0..len).map(|i| seq.wrapping_add(i as u8)).collect();
                    frames.push_back(f.clone());
                    h.deliver(InputEvent::Frame { dev: 1, data: f });
                }
                NetOp::Post(len) => {
                    let Some(head) = free.pop() else { continue };
                    let addr = DATA_BASE + 0x1000 * u64::from(head);
                    h.write_chain_at(RX_QUEUE, head, &[(addr, len, true)]);
                    h.publish(RX_QUEUE, head);
                    bufs.push_back((head, addr, len));
                }
                NetOp::NotifyRx => h.notify(RX_QUEUE as u32),
            }
            // Model: the device pairs frames and buffers when a frame arrives
            // or the driver notifies the RX queue.
            let kicked = !matches!(op, NetOp::Post(_));
            while kicked && !frames.is_empty() {
                let Some(&(head, addr, len)) = bufs.front() else { break };
                let f = frames.pop_front().unwrap();
                if f.len() + 12 > len as usize {
                    dropped += 1;
                    continue;
                }
                want.push((head, addr, f));
                bufs.pop_front();
            }
            let used = h.take_used(RX_QUEUE);
            prop_assert_eq!(used.len(), want.len());
            for ((id, len), (head, addr, f)) in used.into_iter().zip(want) {
                prop_assert_eq!(id, u32::from(head));
                prop_assert_eq!(len as usize, f.len() + 12);
                prop_assert_eq!(h.read_bytes(addr + 12, f.len()), f);
                free.push(head);
            }
            prop_assert_eq!(h.t.rx_pending_frames(), frames.len());
            prop_assert_eq!(h.t.stats().rx_too_big, dropped);
            prop_assert!(!h.needs_reset());
        }
    }
}

/// Everything a hostile guest controls, from raw bytes.
#[derive(Debug, Clone)]
struct Chaos {
    net: bool,
    tame: bool,
    desc: Vec<u8>,
    avail: Vec<u8>,
    notify: Vec<u32>,
    completions: Vec<(u64, u8, Vec<u8>)>,
    frames: Vec<Vec<u8>>,
}

fn chaos() -> impl Strategy<Value = Chaos> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 256),
        proptest::collection::vec(any::<u8>(), 36),
        proptest::collection::vec(0u32..3, 1..4),
        proptest::collection::vec(
            (
                0u64..6,
                0u8..3,
                proptest::collection::vec(any::<u8>(), 0..1100),
            ),
            0..4,
        ),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4),
    )
        .prop_map(
            |(net, tame, desc, avail, notify, completions, frames)| Chaos {
                net,
                tame,
                desc,
                avail,
                notify,
                completions,
                frames,
            },
        )
}

/// Run a chaos scenario; returns outputs and the final guest memory.
fn run_chaos(c: &Chaos) -> (Vec<OutputEvent>, Vec<u8>, u32) {
    let mut h = if c.net {
        Harness::net()
    } else {
        Harness::blk(CAPACITY)
    };
    let mut desc = c.desc.clone();
    if c.tame {
        // Keep addresses mostly inside memory and next indices mostly in range
        // so that parsing gets past the first checks.
        for d in desc.chunks_mut(16) {
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap()) % (MEM_SIZE + 0x1000);
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap()) % 0x1200;
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[13] = 0;
            d[12] &= 3;
            d[14] %= 20;
            d[15] = 0;
        }
    }
    let q = if c.net { TX_QUEUE } else { 0 };
    let (dt, av) = (h.queues[q].desc, h.queues[q].avail);
    h.mem.write_slice(&desc, GuestAddress(dt)).unwrap();
    let mut avail = c.avail.clone();
    if c.tame {
        avail[2] %= 8;
        avail[3] = 0;
    }
    h.mem.write_slice(&avail, GuestAddress(av)).unwrap();
    if c.net {
        // The RX queue gets the same bytes.
        let (rdt, rav) = (h.queues[RX_QUEUE].desc, h.queues[RX_QUEUE].avail);
        h.mem.write_slice(&desc, GuestAddress(rdt)).unwrap();
        h.mem.write_slice(&avail, GuestAddress(rav)).unwrap();
    }
    for &qn in &c.notify {
        h.notify(qn);
    }
    for (id, st, data) in &c.completions {
        h.deliver(InputEvent::BlockDone {
            dev: 0,
            id: *id,
            status: status_of(*st).0,
            data: data.clone(),
        });
    }
    for f in &c.frames {
        h.deliver(InputEvent::Frame {
            dev: 1,
            data: f.clone(),
        });
    }
    h.notify(q as u32);
    let mut mem = vec![0u8; MEM_SIZE as usize];
    h.mem.read_slice(&mut mem, GuestAddress(0)).unwrap();
    let status = h.status();
    (h.take_out(), mem, status)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Arbitrary descriptor tables and rings never panic, never produce a
    /// request id twice or an oversized transfer, and the same inputs always
    /// produce the same outputs and guest memory (lockstep determinism).
    #[test]
    fn arbitrary_ring_bytes_are_safe_and_deterministic(c in chaos()) {
        let (out, mem, status) = run_chaos(&c);
        let mut ids = BTreeSet::new();
        for e in &out {
            match e {
                OutputEvent::Block(b) => {
                    prop_assert!(ids.insert(b.id));
                    match &b.op {
                        BlockOp::Read { sector, len } => {
                            prop_assert!(sector + u64::from(*len) / 512 <= CAPACITY);
                        }
                        BlockOp::Write { sector, data } => {
                            prop_assert!(sector + data.len() as u64 / 512 <= CAPACITY);
                        }
                        BlockOp::Flush => {}
                    }
                }
                OutputEvent::Frame { data, .. } => prop_assert!(!data.is_empty()),
                OutputEvent::Console(_) => prop_assert!(false, "virtio never writes the console"),
            }
        }
        let again = run_chaos(&c);
        prop_assert_eq!(&out, &again.0);
        prop_assert!(mem == again.1, "guest memory differs between identical runs");
        prop_assert_eq!(status, again.2);
    }

    /// Arbitrary register writes (any offset, size, value) never panic and the
    /// interrupt line always mirrors InterruptStatus.
    #[test]
    fn arbitrary_register_writes_are_safe(
        net in any::<bool>(),
        writes in proptest::collection::vec((0u64..0x140, 1usize..9, any::<u32>(), any::<bool>()), 1..120),
    ) {
        let mut h = if net { Harness::net() } else { Harness::blk(CAPACITY) };
        let mem = h.mem.clone();
        for (off, len, val, aligned) in writes {
            let off = if aligned { off & !3 } else { off };
            let len = if aligned { 4 } else { len };
            let bytes: Vec<u8> = val.to_le_bytes().iter().copied().cycle().take(len).collect();
            h.n += 1;
            h.t.mmio_write(h.n, &mem, off, &bytes, &mut h.out);
            let mut r = vec![0u8; len];
            h.t.mmio_read(off, &mut r);
            let is = h.read_reg(virtio_bindings::virtio_mmio::VIRTIO_MMIO_INTERRUPT_STATUS);
            prop_assert_eq!(h.t.irq_level(), is != 0);
        }
        // Whatever happened, a reset and a clean init bring the device back.
        h.init();
        prop_assert!(!h.needs_reset());
    }
}
