//! The Secondary's side of checkpoint replication as a pure state machine:
//! it reassembles each epoch from its pieces (`assemble.rs`), checks it
//! follows the last complete one, applies it to a staging copy (memory
//! pages, machine state, device state, pending disk writes) and
//! acknowledges it. On failover, [`Receiver::take_over`] hands back the last
//! complete epoch's state and the disk writes to (re)write before the guest
//! resumes.
//!
//! Rules:
//! - Only a complete epoch is applied, and only whole: everything that can
//!   refuse it (reassembly, digest, decoding, generation, order, page range,
//!   delta form) is checked before the first byte of staging changes, and
//!   what follows cannot fail. So the staging copy always equals the
//!   Primary's state at the end of `last`, the last complete epoch.
//! - Epochs apply in order: `last + 1` only (dirty pages and deltas are
//!   relative to the previous epoch). An older one is a resend (the ack got
//!   lost): re-acknowledged, not applied. A newer one means one in between
//!   was torn: refused; the Primary resends from its first unacked epoch.
//! - Acks are cumulative: "every epoch `<= last` is complete here". An
//!   epoch is acknowledged once it is whole and checked, before its apply
//!   ([`Receiver::take_piece`], [`Receiver::apply_ready`]): the apply cannot
//!   fail and comes before the next piece or a take-over (asserted), so the
//!   Secondary holds the epoch from the check on, and the Primary's held
//!   outputs do not wait for the copy into staging.
//! - Disk writes are kept for every epoch after the newest `durable_through`
//!   the Primary reported; on take-over they are to be written, in epoch
//!   order, before the guest resumes (rewriting a write that did reach the
//!   device is harmless: every later write follows it in the list).
//!
//! Invariant (asserted): the kept writes are of epochs in
//! `durable_through + 1 ..= last`, ascending.

use std::collections::VecDeque;

use super::assemble::Assembler;
use super::delta;
use super::epoch::{DiskWrite, Epoch, EpochError, PageData, PAGE_SIZE};

/// The staging copy of guest memory.
pub trait StagingMemory {
    /// Pages of guest memory.
    fn pages(&self) -> u64;
    /// Page `gfn` (< [`StagingMemory::pages`]), [`PAGE_SIZE`] bytes.
    fn page_mut(&mut self, gfn: u64) -> &mut [u8];
}

/// Guest memory in a `Vec` (tests, the simulation).
impl StagingMemory for Vec<u8> {
    fn pages(&self) -> u64 {
        (self.len() / PAGE_SIZE) as u64
    }
    fn page_mut(&mut self, gfn: u64) -> &mut [u8] {
        let at = gfn as usize * PAGE_SIZE;
        &mut self[at..at + PAGE_SIZE]
    }
}

/// Why an epoch was not applied (none of these change the staging copy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Torn(#[from] EpochError),
    #[error("epoch {epoch} is of generation {got}, the pair runs in {expected}")]
    Generation { epoch: u64, got: u64, expected: u64 },
    #[error("epoch {got} arrived, epoch {expected} is next (one in between was torn)")]
    Gap { got: u64, expected: u64 },
    #[error("epoch {epoch}: page {gfn} is outside guest memory ({pages} pages)")]
    GfnOutOfRange { epoch: u64, gfn: u64, pages: u64 },
    #[error("epoch {epoch}: durable_through {durable} is beyond the epoch itself")]
    Durable { epoch: u64, durable: u64 },
}

/// What a piece completed ([`Receiver::take_piece`]).
pub enum Piece {
    /// More pieces are due.
    More,
    /// An epoch already applied came again (a resend): acknowledge this,
    /// the last complete epoch, again.
    Again(u64),
    /// A complete epoch, checked: acknowledge it, then apply it.
    Ready(Ready),
}

/// A complete, checked epoch whose apply cannot fail.
pub struct Ready(Epoch);

impl Ready {
    pub fn number(&self) -> u64 {
        self.0.number
    }
}

/// What the Secondary resumes from on failover.
pub struct TakeOver<M> {
    /// The last complete epoch (0: the initial state only).
    pub epoch: u64,
    pub generation: u64,
    pub memory: M,
    pub machine: Vec<u8>,
    pub devices: Vec<u8>,
    /// Write these to the shared device in this order before the guest
    /// resumes (under the late-write fence).
    pub writes: Vec<DiskWrite>,
}

/// The Secondary's receiver; see the module doc.
pub struct Receiver<M> {
    generation: u64,
    memory: M,
    assembler: Assembler,
    last: u64,
    machine: Vec<u8>,
    devices: Vec<u8>,
    durable_through: u64,
    /// (epoch, its writes), ascending, epochs `> durable_through`.
    writes: VecDeque<(u64, Vec<DiskWrite>)>,
    /// Epochs refused (torn, out of order), for status.
    pub refused: u64,
    /// A [`Ready`] epoch is out, not applied yet.
    ready_out: bool,
    /// What delta encoding would save on the raw pages received
    /// ([`DeltaProbe`]).
    pub probe: DeltaProbe,
}

/// A measurement for issue 11's "delta-encode pages if it pays": for up to
/// [`DeltaProbe::PER_EPOCH`] raw pages of each epoch, the size the delta
/// against the page as the Secondary held it (`delta.rs`) would have had,
/// next to the raw size. Only the Secondary holds the previous version of
/// every page, so it measures what the Primary still ships raw (pages its
/// bounded delta cache, `delta_base.rs`, did not hold). Bounded per
/// epoch so a full epoch's apply is not slowed by a scan of every page.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeltaProbe {
    /// Raw pages measured.
    pub pages: u64,
    /// Their bytes on the wire (page and kind byte).
    pub raw_bytes: u64,
    /// Their bytes had each gone as a delta (or raw, where the delta is
    /// not smaller).
    pub delta_bytes: u64,
}

impl DeltaProbe {
    /// Raw pages measured per epoch at most.
    pub const PER_EPOCH: usize = 256;

    fn page(&mut self, old: &[u8], new: &[u8]) {
        let raw = 1 + PAGE_SIZE as u64;
        // Kind byte, u16 length, the delta (epoch.rs's page encoding).
        let delta = delta::encode(old, new, PAGE_SIZE).map_or(raw, |d| 3 + d.len() as u64);
        self.pages += 1;
        self.raw_bytes += raw;
        self.delta_bytes += delta.min(raw);
    }
}

impl<M: StagingMemory> Receiver<M> {
    /// A receiver for the pair in `generation` whose staging `memory`
    /// already holds the Primary's memory at the end of epoch `last` (0 at
    /// the start; a respawn's first full checkpoint otherwise).
    pub fn new(generation: u64, memory: M, last: u64) -> Self {
        Receiver {
            generation,
            memory,
            assembler: Assembler::new(),
            last,
            machine: Vec::new(),
            devices: Vec::new(),
            durable_through: last,
            writes: VecDeque::new(),
            refused: 0,
            ready_out: false,
            probe: DeltaProbe::default(),
        }
    }

    /// The last complete epoch.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The staging memory (tests compare it).
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// One piece from the channel. `Ok(Some(e))`: acknowledge "every epoch
    /// `<= e` complete" (sent again for a resent old epoch); `Ok(None)`:
    /// more pieces are due; an error: the epoch (or piece) was refused and
    /// nothing changed.
    pub fn on_piece(&mut self, bytes: &[u8]) -> Result<Option<u64>, ReceiveError> {
        self.on_piece_acking(bytes, |_| {})
    }

    /// [`Receiver::on_piece`], calling `ack(e)` for what it returns before
    /// a complete epoch is applied (a resend's re-ack too): the order of
    /// `remote::serve_heard`, for a Secondary whose ack is a call.
    pub fn on_piece_acking(
        &mut self,
        bytes: &[u8],
        mut ack: impl FnMut(u64),
    ) -> Result<Option<u64>, ReceiveError> {
        Ok(match self.take_piece(bytes)? {
            Piece::More => None,
            Piece::Again(e) => {
                ack(e);
                Some(e)
            }
            Piece::Ready(r) => {
                ack(r.number());
                Some(self.apply_ready(r))
            }
        })
    }

    /// [`Receiver::on_piece`] up to the apply: a complete epoch comes back
    /// checked ([`Piece::Ready`]), to acknowledge before it is applied
    /// with [`Receiver::apply_ready`] — everything that can refuse it was
    /// checked (module doc), so the Secondary holds it from here on, and
    /// the Primary's outputs need not wait for the copy into staging (nor
    /// for the delta probe). The caller applies it before it takes the
    /// next piece or hands the receiver over (asserted).
    pub fn take_piece(&mut self, bytes: &[u8]) -> Result<Piece, ReceiveError> {
        assert!(!self.ready_out, "a checked epoch was never applied");
        let e = match self.assembler.on_piece(bytes) {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(Piece::More),
            Err(err) => {
                self.refused += 1;
                return Err(err.into());
            }
        };
        if e.number <= self.last && e.generation == self.generation {
            return Ok(Piece::Again(self.last));
        }
        if let Err(err) = self.check(&e) {
            self.refused += 1;
            return Err(err);
        }
        self.ready_out = true;
        Ok(Piece::Ready(Ready(e)))
    }

    /// Applies the epoch [`Receiver::take_piece`] checked; its number (the
    /// new last complete epoch).
    pub fn apply_ready(&mut self, r: Ready) -> u64 {
        assert!(
            self.ready_out && r.0.number == self.last + 1,
            "epoch {} applied after {}, not as checked",
            r.0.number,
            self.last
        );
        self.ready_out = false;
        self.apply(r.0);
        self.last
    }

    fn check(&self, e: &Epoch) -> Result<(), ReceiveError> {
        if e.generation != self.generation {
            return Err(ReceiveError::Generation {
                epoch: e.number,
                got: e.generation,
                expected: self.generation,
            });
        }
        if e.number != self.last + 1 {
            return Err(ReceiveError::Gap {
                got: e.number,
                expected: self.last + 1,
            });
        }
        if e.durable_through >= e.number {
            return Err(ReceiveError::Durable {
                epoch: e.number,
                durable: e.durable_through,
            });
        }
        let pages = self.memory.pages();
        // Pages are in ascending gfn order (the codec checks it): the last
        // one is the largest.
        if let Some(p) = e.pages.last().filter(|p| p.gfn >= pages) {
            return Err(ReceiveError::GfnOutOfRange {
                epoch: e.number,
                gfn: p.gfn,
                pages,
            });
        }
        Ok(())
    }

    /// Applies a checked epoch; cannot fail (module doc).
    fn apply(&mut self, e: Epoch) {
        let mut probed = 0;
        for p in e.pages {
            let page = self.memory.page_mut(p.gfn);
            match p.data {
                PageData::Zero => page.fill(0),
                PageData::Raw(b) => {
                    if probed < DeltaProbe::PER_EPOCH {
                        probed += 1;
                        self.probe.page(page, &b);
                    }
                    page.copy_from_slice(&b)
                }
                PageData::Delta(d) => {
                    delta::apply(page, &d).expect("the codec checked the delta's form")
                }
            }
        }
        self.machine = e.machine;
        self.devices = e.devices;
        self.last = e.number;
        self.durable_through = self.durable_through.max(e.durable_through);
        while self
            .writes
            .front()
            .is_some_and(|(n, _)| *n <= self.durable_through)
        {
            self.writes.pop_front();
        }
        if !e.writes.is_empty() {
            self.writes.push_back((e.number, e.writes));
        }
        assert!(self
            .writes
            .iter()
            .all(|(n, _)| *n > self.durable_through && *n <= self.last));
    }

    /// Failover: the state of the last complete epoch and the writes to
    /// finish first. An epoch half-assembled is dropped (it was never
    /// acknowledged, so nothing of it reached the world).
    pub fn take_over(self) -> TakeOver<M> {
        assert!(
            !self.ready_out,
            "taking over with an acknowledged epoch not applied"
        );
        TakeOver {
            epoch: self.last,
            generation: self.generation,
            memory: self.memory,
            machine: self.machine,
            devices: self.devices,
            writes: self.writes.into_iter().flat_map(|(_, w)| w).collect(),
        }
    }
}
