//! The simulation's world (see `sim_tests.rs`): a toy KV machine, a shared
//! device that applies one write per tick, a lossy/duplicating/reordering
//! link, the Primary (toy + [`EpochGate`] + the epoch shipper) and the
//! Secondary ([`Receiver`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::delta_base::DeltaBase;
use super::epoch::{encode_pieces_sized, DiskWrite, Epoch, Page, PAGE_SIZE, SECTOR_SIZE};
use super::gate::{Action, Closed, EpochGate};

pub(super) const PAGES: u64 = 4;
pub(super) const KEYS: u64 = 24;
/// Where the toy keeps its request counter (page 0, at the end).
const COUNTER_AT: usize = PAGE_SIZE - 8;

pub(super) struct Rng(pub(super) u64);
impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `per_mille` / 1000.
    pub(super) fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// A client request; values are the global sequence number of the PUT, so
/// "this value or a later one" is a comparison.
#[derive(Debug, Clone, Copy)]
pub(super) enum Request {
    Put { key: u64, value: u64 },
    Get { key: u64 },
}

/// A reply frame: (key, value) the machine wrote or read.
pub(super) fn reply(key: u64, value: u64) -> Vec<u8> {
    [key.to_le_bytes(), value.to_le_bytes()].concat()
}

pub(super) fn parse_reply(f: &[u8]) -> (u64, u64) {
    let k = u64::from_le_bytes(f[..8].try_into().expect("8 bytes"));
    let v = u64::from_le_bytes(f[8..16].try_into().expect("8 bytes"));
    (k, v)
}

/// The toy machine: a KV store whose values live on disk (sector = key) and
/// in memory (page key % PAGES, slot key / PAGES), and a request counter.
pub(super) struct Toy {
    pub(super) mem: Vec<u8>,
    pub(super) dirty: BTreeSet<u64>,
}

impl Toy {
    pub(super) fn new() -> Self {
        Toy {
            mem: vec![0; PAGES as usize * PAGE_SIZE],
            dirty: BTreeSet::new(),
        }
    }

    pub(super) fn slot(key: u64) -> usize {
        (key % PAGES) as usize * PAGE_SIZE + (key / PAGES) as usize * 8
    }

    pub(super) fn value_in(mem: &[u8], key: u64) -> u64 {
        let at = Self::slot(key);
        u64::from_le_bytes(mem[at..at + 8].try_into().expect("8 bytes"))
    }

    pub(super) fn counter(mem: &[u8]) -> u64 {
        u64::from_le_bytes(mem[COUNTER_AT..COUNTER_AT + 8].try_into().expect("8"))
    }

    fn set(&mut self, at: usize, v: u64) {
        self.mem[at..at + 8].copy_from_slice(&v.to_le_bytes());
        self.dirty.insert((at / PAGE_SIZE) as u64);
    }

    /// Serves one request: a PUT writes memory and disk and replies; a GET
    /// reads the disk (through the gate's overlay) and replies.
    pub(super) fn handle(&mut self, req: Request, gate: &mut EpochGate, dev: &Device) {
        let c = Self::counter(&self.mem) + 1;
        self.set(COUNTER_AT, c);
        match req {
            Request::Put { key, value } => {
                self.set(Self::slot(key), value);
                let mut sector = vec![0u8; SECTOR_SIZE];
                sector[..8].copy_from_slice(&value.to_le_bytes());
                gate.on_write(key, sector);
                gate.on_frame(reply(key, value));
            }
            Request::Get { key } => {
                let mut buf = vec![0u8; SECTOR_SIZE];
                gate.read(key, &mut buf, &mut |s, b: &mut [u8]| {
                    b.copy_from_slice(&dev.sectors[s as usize]);
                    Ok::<(), ()>(())
                })
                .expect("the toy device never fails");
                let v = u64::from_le_bytes(buf[..8].try_into().expect("8"));
                assert_eq!(v, Self::value_in(&self.mem, key), "disk and memory agree");
                gate.on_frame(reply(key, v));
            }
        }
    }

    /// The dirty pages as an epoch carries them, by the Primary's delta
    /// cache (`delta_base.rs`, the real one): zero, delta against the
    /// version the Secondary holds, or raw.
    pub(super) fn take_pages(&mut self, base: &mut DeltaBase) -> Vec<Page> {
        let mut pages = Vec::new();
        for gfn in std::mem::take(&mut self.dirty) {
            let r = gfn as usize * PAGE_SIZE..(gfn as usize + 1) * PAGE_SIZE;
            let data = base.ship(gfn, &self.mem[r]);
            pages.push(Page { gfn, data });
        }
        pages
    }
}

/// The shared device: sectors, one write applied per tick, then a sync.
pub(super) struct Device {
    pub(super) sectors: Vec<Vec<u8>>,
    /// The epoch being written and what is left of it.
    pub(super) busy: Option<(u64, VecDeque<DiskWrite>)>,
    /// Epochs of the writes applied, in order (checked to never decrease).
    pub(super) applied_epochs: Vec<u64>,
    /// Every write of epochs `<= durable` is on the device.
    pub(super) durable: u64,
}

impl Device {
    pub(super) fn new() -> Self {
        Device {
            sectors: vec![vec![0; SECTOR_SIZE]; KEYS as usize],
            busy: None,
            applied_epochs: Vec::new(),
            durable: 0,
        }
    }

    pub(super) fn write(&mut self, w: &DiskWrite) {
        for (i, s) in w.data.chunks(SECTOR_SIZE).enumerate() {
            self.sectors[w.sector as usize + i].copy_from_slice(s);
        }
    }

    pub(super) fn value(&self, key: u64) -> u64 {
        u64::from_le_bytes(self.sectors[key as usize][..8].try_into().expect("8"))
    }

    /// One tick: applies one write; `Some(epoch)` when an epoch's writes
    /// are all applied and synced.
    pub(super) fn tick(&mut self) -> Option<u64> {
        let (epoch, q) = self.busy.as_mut()?;
        let epoch = *epoch;
        match q.pop_front() {
            Some(w) => {
                self.write(&w);
                assert!(
                    self.applied_epochs.last().is_none_or(|&l| l <= epoch),
                    "writes reach the device in epoch order"
                );
                self.applied_epochs.push(epoch);
                None
            }
            None => {
                self.busy = None;
                self.durable = epoch;
                Some(epoch)
            }
        }
    }
}

/// A message on the link.
#[derive(Debug, Clone)]
pub(super) enum Msg {
    Piece(Vec<u8>),
    Ack(u64),
}

/// A link that loses, duplicates and reorders (random delays), or one that
/// only delays, in order ([`Link::tcp`]).
pub(super) struct Link {
    pub(super) queue: Vec<(u64, u64, Msg)>,
    pub(super) loss_per_mille: u64,
    pub(super) dup_per_mille: u64,
    pub(super) max_delay: u64,
    /// Deliver in the order sent (delays never overtake).
    in_order: bool,
    last_at: u64,
    seq: u64,
}

impl Link {
    pub(super) fn new(loss_per_mille: u64, dup_per_mille: u64, max_delay: u64) -> Self {
        Link {
            queue: Vec::new(),
            loss_per_mille,
            dup_per_mille,
            max_delay,
            in_order: false,
            last_at: 0,
            seq: 0,
        }
    }

    /// A fresh TCP connection: random delays, nothing lost, duplicated or
    /// reordered (a cut is the end of the connection, modelled by its user).
    pub(super) fn tcp(max_delay: u64) -> Self {
        Link {
            in_order: true,
            ..Link::new(0, 0, max_delay)
        }
    }

    pub(super) fn send(&mut self, rng: &mut Rng, now: u64, m: Msg) {
        if rng.chance(self.loss_per_mille) {
            return;
        }
        let copies = if rng.chance(self.dup_per_mille) { 2 } else { 1 };
        for _ in 0..copies {
            let mut at = now + 1 + rng.below(self.max_delay + 1);
            if self.in_order {
                at = at.max(self.last_at);
                self.last_at = at;
            }
            self.seq += 1;
            self.queue.push((at, self.seq, m.clone()));
        }
    }

    /// Messages due at `now`, in arrival order.
    pub(super) fn due(&mut self, now: u64) -> Vec<Msg> {
        let mut due: Vec<(u64, u64, Msg)> = Vec::new();
        if self.queue.iter().all(|m| m.0 > now) {
            return Vec::new();
        }
        self.queue.retain(|m| {
            if m.0 <= now {
                due.push(m.clone());
                false
            } else {
                true
            }
        });
        due.sort_by_key(|m| (m.0, m.1));
        due.into_iter().map(|m| m.2).collect()
    }
}

/// The Primary's shipper: encoded pieces of every unacknowledged epoch,
/// resent from the first unacked one when acks stop coming.
pub(super) struct Shipper {
    pub(super) unacked: BTreeMap<u64, Vec<Vec<u8>>>,
    pub(super) last_progress: u64,
}

impl Shipper {
    pub(super) fn ship(
        &mut self,
        closed: Closed,
        pages: Vec<Page>,
        machine: Vec<u8>,
        chunk: usize,
    ) -> Vec<Vec<u8>> {
        let e = Epoch {
            number: closed.number,
            generation: closed.generation,
            durable_through: closed.durable_through,
            pages,
            machine,
            devices: Vec::new(),
            writes: closed.writes,
        };
        let pieces = encode_pieces_sized(&e, chunk).expect("the toy's epochs encode");
        self.unacked.insert(e.number, pieces.clone());
        pieces
    }

    pub(super) fn on_ack(&mut self, epoch: u64, now: u64) {
        let before = self.unacked.len();
        self.unacked.retain(|&n, _| n > epoch);
        if self.unacked.len() < before {
            self.last_progress = now;
        }
    }
}

/// Splits gate actions: submits go to the device, releases are returned.
pub(super) fn perform(actions: Vec<Action>, dev: &mut Device) -> Vec<(u64, Vec<u8>)> {
    let mut released = Vec::new();
    for a in actions {
        match a {
            Action::Submit { epoch, writes } => {
                assert!(dev.busy.is_none(), "one epoch's writes in flight");
                dev.busy = Some((epoch, writes.into()));
            }
            Action::Release { epoch, frame } => released.push((epoch, frame)),
        }
    }
    released
}
