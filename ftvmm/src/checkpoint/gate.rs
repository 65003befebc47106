//! The Output Rule for epochs (design §4b), the Primary's side, as a pure
//! state machine: the guest's outputs go in, [`Action`]s come out, and a
//! thin driver performs them (sends frames, writes and syncs the shared
//! device) and reports back.
//!
//! # The rule
//!
//! - A frame the guest sends in epoch e is queued; it leaves only after the
//!   Secondary acknowledged e **and** every disk write of epochs `<= e` is
//!   durable on the shared device. So no client hears "OK" for data that
//!   lives only in the Primary's memory, or in a state the Secondary cannot
//!   resume from. Frames leave in the order the guest sent them.
//! - A disk write in epoch e completes to the guest at once and waits in
//!   the [`Overlay`] (later reads see it there); it travels to the
//!   Secondary with e and is submitted to the device only after e is
//!   acknowledged, in order: the driver gets one [`Action::Submit`] per
//!   epoch, writes them in order, makes them durable and reports
//!   [`EpochGate::on_durable`]; the next epoch's writes are submitted only
//!   after that. So writes reach the device in epoch order and never
//!   before the Secondary holds them (were the Primary to die, the
//!   Secondary re-writes them; the device never holds a write the
//!   Secondary's state does not contain).
//! - Received frames are not buffered: a frame lost with an epoch is a lost
//!   packet, which TCP repairs.
//! - A torn or never-acknowledged epoch releases nothing.
//! - Losing the Secondary ([`EpochGate::on_secondary_lost`]) holds
//!   everything not yet released or submitted, whatever was acknowledged:
//!   the member now races for the next generation, and the loser must
//!   not emit. Only [`EpochGate::on_generation_won`] (the member owns
//!   generation g+1 and runs alone) releases the outputs of epochs never
//!   acknowledged; from then on an epoch counts as acknowledged when it
//!   closes.
//! - Acks must be fresh (echoing a recent send on `CLOCK_BOOTTIME`, as in
//!   lockstep); the driver passes only fresh ones to [`EpochGate::on_ack`].
//! - Held ([`EpochGate::set_held`]: the host's output grant lapsed or was
//!   withdrawn, or the member holds for a race or a hand-over): nothing is
//!   released or submitted, in any mode; acks and closes are still counted,
//!   and [`EpochGate::release`] catches up once the hold ends.
//!
//! # States
//!
//! ```text
//! Paired{g} --on_secondary_lost--> Lost{g} --on_generation_won(g')--> Solo{g'}
//! Solo{g}   --on_paired(g')-------> Paired{g'}        (a respawned Secondary)
//! Solo{g}   --close_epoch_joining(g)--> Paired{g} --abandon_join(g)--> Solo{g}
//! Solo{g}   --on_generation_rewon(g')--> Solo{g'}    (a lone Primary re-won)
//! ```
//!
//! # Invariants (asserted)
//!
//! `durable <= submitted <= acked <= current - 1`; all four never decrease;
//! at most one epoch's writes are in flight; a frame of epoch e is released
//! only when `e <= durable` (which implies `e <= acked`).

use std::collections::VecDeque;

use super::epoch::{DiskWrite, SECTOR_SIZE};
use super::overlay::Overlay;

/// When an epoch ends early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateConfig {
    /// End the epoch once this many pages are dirty.
    pub max_dirty_pages: u64,
    /// ...or once its pending disk writes hold this many bytes.
    pub max_write_bytes: u64,
}

/// Why the current epoch should end before its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndEarly {
    DirtyPages { pages: u64, limit: u64 },
    WriteBytes { bytes: u64, limit: u64 },
}

/// Whom the gate answers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Releases by the Secondary's acks.
    Paired { generation: u64 },
    /// The Secondary is gone; the member races for the next generation.
    Lost { generation: u64 },
    /// This member owns `generation` and runs alone.
    Solo { generation: u64 },
}

/// What the driver does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these to the shared device in this order, make them durable,
    /// then call [`EpochGate::on_durable`] with `epoch`.
    Submit { epoch: u64, writes: Vec<DiskWrite> },
    /// Send this frame to the world.
    Release { epoch: u64, frame: Vec<u8> },
}

/// A closed epoch as the gate ships it: what goes into the epoch's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub number: u64,
    pub generation: u64,
    pub writes: Vec<DiskWrite>,
    pub durable_through: u64,
}

/// Refusals (operating conditions, not bugs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    #[error("ack for epoch {acked}, but only epochs up to {closed} were closed; ignored")]
    AckBeyondClosed { acked: u64, closed: u64 },
    #[error("ack in mode {mode:?}; ignored")]
    AckNotPaired { mode: Mode },
    #[error("durable report for epoch {epoch}, but {in_flight:?} is in flight")]
    NotInFlight { epoch: u64, in_flight: Option<u64> },
    #[error("cannot {what} in mode {mode:?}")]
    Transition { what: &'static str, mode: Mode },
}

/// The Primary's epoch output gate; see the module doc.
pub struct EpochGate {
    cfg: GateConfig,
    mode: Mode,
    /// The epoch the guest runs in (first is 1).
    current: u64,
    acked: u64,
    submitted: u64,
    durable: u64,
    in_flight: Option<u64>,
    /// Writes of the open epoch, in order.
    open_writes: Vec<DiskWrite>,
    open_write_bytes: u64,
    /// Writes of closed epochs not yet submitted: (epoch, writes), ascending.
    unsubmitted: VecDeque<(u64, Vec<DiskWrite>)>,
    /// Writes in flight, to clear the overlay when they are durable.
    flying: Vec<DiskWrite>,
    /// Frames not yet released: (epoch, frame), in the order sent.
    frames: VecDeque<(u64, Vec<u8>)>,
    overlay: Overlay,
    /// Nothing leaves while set (the grant or the member; module doc).
    held: bool,
    /// A join's full epoch closed and the member has not paired yet.
    joining: bool,
}

impl EpochGate {
    /// A gate paired in `generation`, the guest in epoch 1.
    pub fn new(cfg: GateConfig, generation: u64) -> Self {
        EpochGate {
            cfg,
            mode: Mode::Paired { generation },
            current: 1,
            acked: 0,
            submitted: 0,
            durable: 0,
            in_flight: None,
            open_writes: Vec::new(),
            open_write_bytes: 0,
            unsubmitted: VecDeque::new(),
            flying: Vec::new(),
            frames: VecDeque::new(),
            overlay: Overlay::default(),
            held: false,
            joining: false,
        }
    }

    fn check(&self) {
        assert!(
            self.durable <= self.submitted
                && self.submitted <= self.acked
                && self.acked < self.current,
            "epoch gate: durable {} <= submitted {} <= acked {} < current {} broken",
            self.durable,
            self.submitted,
            self.acked,
            self.current
        );
        assert!(self.in_flight.is_none() || self.in_flight == Some(self.submitted));
    }

    // ---- the guest's outputs (vCPU / device threads) ----

    /// The guest sent a frame (in the current epoch): queued.
    pub fn on_frame(&mut self, frame: Vec<u8>) {
        self.frames.push_back((self.current, frame));
    }

    /// The guest wrote `data` at `sector`: completes at once (later reads
    /// see it); travels with the current epoch.
    pub fn on_write(&mut self, sector: u64, data: Vec<u8>) {
        assert!(
            !data.is_empty() && data.len().is_multiple_of(SECTOR_SIZE),
            "a disk write of {} bytes is not whole sectors",
            data.len()
        );
        self.overlay.write(self.current, sector, &data);
        self.open_write_bytes += data.len() as u64;
        self.open_writes.push(DiskWrite { sector, data });
    }

    /// The guest reads at `sector`: pending writes first, the rest from
    /// `device` (one call per run of sectors not pending).
    pub fn read<E, F>(&self, sector: u64, buf: &mut [u8], mut device: F) -> Result<(), E>
    where
        F: FnMut(u64, &mut [u8]) -> Result<(), E>,
    {
        self.overlay.read(sector, buf, &mut device)
    }

    /// Pending (not yet durable) sectors of `[sector, sector + n)`.
    pub fn pending_in(&self, sector: u64, n: u64) -> Vec<(u64, Vec<u8>)> {
        self.overlay.held(sector, n)
    }

    /// Whether the current epoch should end now, given its dirty page count
    /// (the dirty log is the caller's).
    pub fn end_early(&self, dirty_pages: u64) -> Option<EndEarly> {
        if dirty_pages >= self.cfg.max_dirty_pages {
            return Some(EndEarly::DirtyPages {
                pages: dirty_pages,
                limit: self.cfg.max_dirty_pages,
            });
        }
        if self.open_write_bytes >= self.cfg.max_write_bytes {
            return Some(EndEarly::WriteBytes {
                bytes: self.open_write_bytes,
                limit: self.cfg.max_write_bytes,
            });
        }
        None
    }

    // ---- epochs and acks (the epoch driver) ----

    /// Ends the current epoch (vCPUs paused): returns what its body carries
    /// and the actions that follow (running alone, it counts as
    /// acknowledged at once).
    pub fn close_epoch(&mut self) -> (Closed, Vec<Action>) {
        let number = self.current;
        let writes = std::mem::take(&mut self.open_writes);
        self.open_write_bytes = 0;
        self.unsubmitted.push_back((number, writes.clone()));
        self.current += 1;
        let (generation, solo) = match self.mode {
            Mode::Paired { generation } | Mode::Lost { generation } => (generation, false),
            Mode::Solo { generation } => (generation, true),
        };
        if solo {
            self.acked = number;
        }
        let closed = Closed {
            number,
            generation,
            writes,
            durable_through: self.durable,
        };
        let actions = self.advance();
        (closed, actions)
    }

    /// The Secondary holds every epoch `<= epoch` complete (a fresh ack).
    pub fn on_ack(&mut self, epoch: u64) -> Result<Vec<Action>, GateError> {
        if !matches!(self.mode, Mode::Paired { .. }) {
            return Err(GateError::AckNotPaired { mode: self.mode });
        }
        let closed = self.current - 1;
        if epoch > closed {
            return Err(GateError::AckBeyondClosed {
                acked: epoch,
                closed,
            });
        }
        self.acked = self.acked.max(epoch);
        Ok(self.advance())
    }

    /// Every write of the submitted `epoch` is durable on the device.
    pub fn on_durable(&mut self, epoch: u64) -> Result<Vec<Action>, GateError> {
        if self.in_flight != Some(epoch) {
            return Err(GateError::NotInFlight {
                epoch,
                in_flight: self.in_flight,
            });
        }
        for w in std::mem::take(&mut self.flying) {
            let sectors = (w.data.len() / SECTOR_SIZE) as u64;
            self.overlay.durable(epoch, w.sector, sectors);
        }
        self.in_flight = None;
        self.durable = epoch;
        Ok(self.advance())
    }

    // ---- the member (hooks; the member/fencing wiring comes later) ----

    /// The Secondary is lost: hold everything not yet released or submitted.
    pub fn on_secondary_lost(&mut self) -> Result<(), GateError> {
        match self.mode {
            Mode::Paired { generation } => {
                self.mode = Mode::Lost { generation };
                self.joining = false;
                Ok(())
            }
            mode => Err(GateError::Transition {
                what: "lose the Secondary",
                mode,
            }),
        }
    }

    /// The member owns `generation` and runs alone: every closed epoch counts
    /// as acknowledged; writes go out in order, then the frames.
    pub fn on_generation_won(&mut self, generation: u64) -> Result<Vec<Action>, GateError> {
        match self.mode {
            Mode::Lost { generation: g } if generation > g => {
                self.mode = Mode::Solo { generation };
                self.acked = self.current - 1;
                Ok(self.advance())
            }
            mode => Err(GateError::Transition {
                what: "run alone",
                mode,
            }),
        }
    }

    /// A lone Primary re-won a later generation (its grant came back after
    /// a lapse and it re-checked, `member.rs` `Rechecking`): it still runs
    /// alone, now in `generation`.
    pub fn on_generation_rewon(&mut self, generation: u64) -> Result<Vec<Action>, GateError> {
        match self.mode {
            Mode::Solo { generation: g } if generation > g => {
                self.mode = Mode::Solo { generation };
                Ok(self.advance())
            }
            mode => Err(GateError::Transition {
                what: "run alone in a later generation",
                mode,
            }),
        }
    }

    /// A new Secondary joins the lone Primary in the generation it owns
    /// (respawn, `respawn.rs`): closes the current epoch `J` — the join's
    /// full epoch — in `Paired { generation }`, so `J` and every later
    /// epoch wait for the new Secondary's acks, while the epochs before `J`,
    /// closed alone and counted as acknowledged then, go on releasing as
    /// their writes become durable. The returned `Closed` carries, before
    /// `J`'s own writes, every write of the earlier epochs not yet durable
    /// (in order): the new Secondary never had those epochs, and must be able
    /// to re-write them should it take over before they reach the device.
    /// The gate keeps only `J`'s own writes to submit for `J`.
    pub fn close_epoch_joining(
        &mut self,
        generation: u64,
    ) -> Result<(Closed, Vec<Action>), GateError> {
        match self.mode {
            Mode::Solo { generation: g } if g == generation => {}
            mode => {
                return Err(GateError::Transition {
                    what: "take a joining Secondary",
                    mode,
                })
            }
        }
        let mut earlier: Vec<DiskWrite> = self.flying.clone();
        for (_, w) in &self.unsubmitted {
            earlier.extend(w.iter().cloned());
        }
        self.mode = Mode::Paired { generation };
        self.joining = true;
        let (mut closed, actions) = self.close_epoch();
        earlier.append(&mut closed.writes);
        closed.writes = earlier;
        Ok((closed, actions))
    }

    /// A join in `generation` failed before the member paired: the Primary
    /// runs alone in the generation it never left, so every closed epoch
    /// counts as acknowledged again (the would-be Secondary never races: it
    /// was never told it is paired).
    pub fn abandon_join(&mut self, generation: u64) -> Result<Vec<Action>, GateError> {
        match self.mode {
            Mode::Paired { generation: g } if g == generation && self.joining => {
                self.mode = Mode::Solo { generation };
                self.joining = false;
                self.acked = self.current - 1;
                Ok(self.advance())
            }
            mode => Err(GateError::Transition {
                what: "give a join up",
                mode,
            }),
        }
    }

    /// Whether a join's full epoch closed and the member has not paired
    /// with the new Secondary yet.
    pub fn joining(&self) -> bool {
        self.joining
    }

    /// The member paired with the joining Secondary (or left the join's
    /// generation): the join is over.
    pub fn end_join(&mut self) {
        self.joining = false;
    }

    /// A new Secondary holds the state at the end of the last closed epoch
    /// (respawn) and the pair runs in `generation`: acks rule again.
    pub fn on_paired(&mut self, generation: u64) -> Result<(), GateError> {
        match self.mode {
            Mode::Solo { generation: g } if generation > g => {
                self.mode = Mode::Paired { generation };
                Ok(())
            }
            mode => Err(GateError::Transition { what: "pair", mode }),
        }
    }

    /// Holds (`true`) or lets go (`false`) every output: the host's grant
    /// and the member's gate, as the driver sees them before each call.
    /// Letting go releases nothing by itself: call [`EpochGate::release`].
    pub fn set_held(&mut self, held: bool) {
        self.held = held;
    }

    pub fn is_held(&self) -> bool {
        self.held
    }

    /// What the rule lets go now (after a hold ended).
    pub fn release(&mut self) -> Vec<Action> {
        self.advance()
    }

    /// Submits the next acknowledged epoch's writes if none are in flight
    /// and releases the frames the rule allows; nothing while Lost or held.
    fn advance(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.held || matches!(self.mode, Mode::Lost { .. }) {
            self.check();
            return out;
        }
        while self.in_flight.is_none() && self.submitted < self.acked {
            let (epoch, writes) = self.unsubmitted.pop_front().expect("closed epochs queued");
            assert_eq!(epoch, self.submitted + 1, "epochs submitted in order");
            self.submitted = epoch;
            if writes.is_empty() {
                self.durable = epoch;
                continue;
            }
            self.in_flight = Some(epoch);
            self.flying = writes.clone();
            out.push(Action::Submit { epoch, writes });
        }
        while self.frames.front().is_some_and(|(e, _)| *e <= self.durable) {
            let (epoch, frame) = self.frames.pop_front().expect("front exists");
            out.push(Action::Release { epoch, frame });
        }
        self.check();
        out
    }

    // ---- status ----

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The epoch the guest runs in.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// (acked, submitted, durable).
    pub fn progress(&self) -> (u64, u64, u64) {
        (self.acked, self.submitted, self.durable)
    }

    pub fn frames_held(&self) -> usize {
        self.frames.len()
    }

    /// The epoch of the oldest frame not yet released (frames leave in
    /// epoch order, so no frame of an earlier epoch is held).
    pub fn oldest_held_frame(&self) -> Option<u64> {
        self.frames.front().map(|(e, _)| *e)
    }

    /// Sectors waiting in the overlay.
    pub fn pending_sectors(&self) -> usize {
        self.overlay.len()
    }
}
