//! The Primary's side of a live state transfer as a pure state machine: it
//! decides which pages go in which round and when to stop the guest; a driver
//! performs its [`Action`]s (reading the dirty log with
//! `Vm::dirty_pages_since_last_call`, reading pages, building and sending
//! messages, pausing vCPUs, snapshotting) and feeds back [`Event`]s. No
//! threads, sockets or clocks: time comes in [`Event::Tick`].
//!
//! ```text
//! Idle --Start--> Offered --PeerAccepted--> PreCopy{0, await DirtyLog}
//! PreCopy{r, await DirtyLog} --DirtyPages--> PreCopy{r, await Ack}          (sends RoundEnd r)
//! PreCopy{r, await Ack} --RoundAcked(r)--> PreCopy{r+1, await DirtyLog}      (sends the dirty set)
//!                                      \-> Paused{r+1, await DirtyLog}      (stop: PauseVcpus)
//! Paused{r, await DirtyLog} --DirtyPages--> Paused{r, await SwitchSent}     (last pages + Switch)
//! Paused --SwitchSent--> Paused{r, await Restored} --PeerRestored--> Done   (ResumeVcpus)
//! any non-final --PeerRefused/PeerAborted/LinkLost/Cancel/timeout--> Failed (ResumeVcpus if paused)
//! ```
//!
//! Policy: round 0 sends every page; round r+1 sends the pages dirtied since
//! round r's pages were read. The guest is stopped when the next round would
//! be at most [`SenderConfig::stop_copy_bytes`], or
//! [`SenderConfig::max_rounds`] pre-copy rounds are done, or it did not
//! shrink (checked in that order; [`StopReason`]). A driver must read
//! the dirty log *before* it reads the pages it was told to send, so a write
//! during the copy is reported again by the next read.
//!
//! Invariants asserted: rounds strictly increase by one; Switch is never sent
//! before every page was sent at least once; dirty gfns are in range; Done and
//! Failed are final. Timeouts count from the first Tick after progress.
//! `Done` comes before `ResumeVcpus`: the driver starts logging at the
//! Switch's exit, then lets the guest run.
//! The integration (a thread owning a `Sender`, the channel,
//! KVM, starting lockstep logging at the Switch's exit) is not here.

pub use super::sender_io::{
    Action, Event, SenderConfig, SenderStats, StopReason, ACK_TIMEOUT_MS,
    ASSUMED_LINK_BYTES_PER_MS, MAX_PRECOPY_ROUNDS, PAUSE_TIMEOUT_MS, STOP_COPY_BYTES,
};

use super::sender_io::SentPages;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Await {
    DirtyLog,
    /// RoundEnd sent; the next round's gfns wait for the ack.
    Ack {
        next: Vec<u64>,
    },
    SwitchSent,
    Restored {
        memory_sha256: [u8; 32],
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    Offered,
    PreCopy { round: u32, phase: Await },
    Paused { round: u32, phase: Await },
    Done,
    Failed(String),
}

/// The sender state machine; see the module doc.
#[derive(Debug)]
pub struct Sender {
    cfg: SenderConfig,
    state: State,
    /// Pages ever sent; Switch requires all of them.
    sent: SentPages,
    /// Pages sent in the last pre-copy round (for "not shrinking").
    last_round_pages: u64,
    /// Start of the current wait (for a round's ack, for `Restored`).
    since_ms: u64,
    /// Progress happened: the next Tick restarts the wait. (The driver does
    /// not tick while it performs actions; a long round 0 is no timeout.)
    clock_restart: bool,
    now_ms: u64,
    /// Pages dirtied during the last pre-copy round, kept for the final one.
    carry: Vec<u64>,
    stats: SenderStats,
}

impl Sender {
    pub fn new(cfg: SenderConfig) -> Self {
        assert!(cfg.max_rounds >= 1, "max_rounds must be at least 1");
        Sender {
            sent: SentPages::new(cfg.total_pages),
            cfg,
            state: State::Idle,
            last_round_pages: 0,
            since_ms: 0,
            clock_restart: false,
            now_ms: 0,
            carry: Vec::new(),
            stats: SenderStats::default(),
        }
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn failure(&self) -> Option<&str> {
        match &self.state {
            State::Failed(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the sender has asked for the vCPUs to be paused and not yet
    /// for them to resume.
    pub fn vcpus_paused(&self) -> bool {
        matches!(self.state, State::Paused { .. })
    }

    /// The only writer of the state.
    pub fn on_event(&mut self, ev: Event) -> Vec<Action> {
        if matches!(self.state, State::Done | State::Failed(_)) {
            return Vec::new(); // final: late events of a finished transfer
        }
        match ev {
            Event::Start { now_ms } => self.on_start(now_ms),
            Event::PeerAccepted => self.on_accepted(),
            Event::DirtyPages(gfns) => self.on_dirty(gfns),
            Event::RoundAcked(r) => self.on_round_acked(r),
            Event::SwitchSent { memory_sha256 } => self.on_switch_sent(memory_sha256),
            Event::PeerRestored { memory_sha256 } => self.on_restored(memory_sha256),
            Event::PeerRefused { reason } => {
                self.fail(format!("receiver refused: {reason}"), false)
            }
            Event::PeerAborted { reason } => {
                self.fail(format!("receiver aborted: {reason}"), false)
            }
            Event::LinkLost { detail } => self.fail(format!("link lost: {detail}"), false),
            Event::Cancel { reason } => self.fail(format!("cancelled: {reason}"), true),
            Event::Tick { now_ms } => self.on_tick(now_ms),
        }
    }

    // Idle ---- Start ----> Offered
    fn on_start(&mut self, now_ms: u64) -> Vec<Action> {
        assert_eq!(self.state, State::Idle, "Start twice");
        self.now_ms = now_ms;
        self.since_ms = now_ms;
        self.state = State::Offered;
        vec![Action::SendOffer]
    }

    // Offered ---- PeerAccepted ----> PreCopy{0, await DirtyLog}
    fn on_accepted(&mut self) -> Vec<Action> {
        if self.state != State::Offered {
            return self.protocol("Accept", "after the offer was answered");
        }
        self.clock_restart = true;
        let all: Vec<u64> = (0..self.cfg.total_pages).collect();
        let mut out = self.begin_round(0, all, false, vec![Action::StartDirtyLog]);
        out.push(Action::ReadDirtyLog);
        out
    }

    /// Records round `round` sending `gfns`; `pre` actions come first.
    fn begin_round(
        &mut self,
        round: u32,
        gfns: Vec<u64>,
        paused: bool,
        mut pre: Vec<Action>,
    ) -> Vec<Action> {
        assert!(
            round == 0 || round == self.stats.rounds,
            "rounds must increase by one: {round} after {}",
            self.stats.rounds
        );
        self.stats.rounds = round + 1;
        for &g in &gfns {
            self.sent.mark(g);
        }
        self.stats.pages_sent += gfns.len() as u64;
        let phase = Await::DirtyLog;
        if paused {
            self.stats.final_round_pages = gfns.len() as u64;
            self.state = State::Paused { round, phase };
        } else {
            self.last_round_pages = gfns.len() as u64;
            self.state = State::PreCopy { round, phase };
        }
        if !gfns.is_empty() {
            pre.push(Action::SendPages { round, gfns });
        }
        pre
    }

    /// Round `r` after its pages: read the dirty log (pages dirtied since
    /// the previous read, i.e. during this round) to learn the next one.
    fn begin_precopy_round(&mut self, round: u32, gfns: Vec<u64>) -> Vec<Action> {
        let mut out = self.begin_round(round, gfns, false, Vec::new());
        out.push(Action::ReadDirtyLog);
        out
    }

    fn on_dirty(&mut self, gfns: Vec<u64>) -> Vec<Action> {
        let gfns = self.checked_gfns(gfns);
        match std::mem::replace(&mut self.state, State::Idle) {
            // PreCopy{r, await DirtyLog} ---- DirtyPages ----> PreCopy{r, await Ack}
            State::PreCopy {
                round,
                phase: Await::DirtyLog,
            } => {
                let next = gfns;
                self.clock_restart = true;
                let pages_sent = self.last_round_pages;
                let dirty_left = next.len() as u64;
                self.state = State::PreCopy {
                    round,
                    phase: Await::Ack { next },
                };
                vec![Action::SendRoundEnd {
                    round,
                    pages_sent,
                    dirty_left,
                }]
            }
            // Paused{r, await DirtyLog} ---- DirtyPages ----> Paused{r, await SwitchSent}
            State::Paused {
                round,
                phase: Await::DirtyLog,
            } => self.final_round(round, gfns),
            other => panic!("DirtyPages without ReadDirtyLog in {other:?}"),
        }
    }

    fn final_round(&mut self, round: u32, gfns: Vec<u64>) -> Vec<Action> {
        let mut all = std::mem::take(&mut self.carry);
        all.extend(gfns);
        all.sort_unstable();
        all.dedup();
        let mut out = self.begin_round(round, all, true, Vec::new());
        assert!(
            self.sent.all_sent(),
            "Switch before every page was sent once ({} of {})",
            self.sent.count(),
            self.cfg.total_pages
        );
        self.state = State::Paused {
            round,
            phase: Await::SwitchSent,
        };
        out.push(Action::SendSwitch { round });
        out
    }

    fn on_round_acked(&mut self, r: u32) -> Vec<Action> {
        let (round, next) = match &mut self.state {
            State::PreCopy {
                round,
                phase: Await::Ack { next },
            } if *round == r => (*round, std::mem::take(next)),
            _ => return self.protocol("RoundAck", &format!("for round {r}")),
        };
        self.clock_restart = true;
        let next_bytes = next.len() as u64 * u64::from(self.cfg.page_size);
        let stop = if next_bytes <= self.cfg.stop_copy_bytes {
            Some(StopReason::SmallEnough)
        } else if round + 1 >= self.cfg.max_rounds {
            Some(StopReason::MaxRounds)
        } else if next.len() as u64 >= self.last_round_pages {
            Some(StopReason::NotShrinking)
        } else {
            None
        };
        match stop {
            // PreCopy{r, await Ack} ---- RoundAcked(r) ----> PreCopy{r+1, await DirtyLog}
            None => self.begin_precopy_round(round + 1, next),
            // PreCopy{r, await Ack} ---- RoundAcked(r) ----> Paused{r+1, await DirtyLog}
            Some(reason) => {
                self.stats.stop_reason = Some(reason);
                self.carry = next;
                self.clock_restart = true;
                self.state = State::Paused {
                    round: round + 1,
                    phase: Await::DirtyLog,
                };
                vec![Action::PauseVcpus { reason }, Action::ReadDirtyLog]
            }
        }
    }

    // Paused{r, await SwitchSent} ---- SwitchSent ----> Paused{r, await Restored}
    fn on_switch_sent(&mut self, memory_sha256: [u8; 32]) -> Vec<Action> {
        match &mut self.state {
            State::Paused { phase, .. } if *phase == Await::SwitchSent => {
                *phase = Await::Restored { memory_sha256 };
                Vec::new()
            }
            other => panic!("SwitchSent without SendSwitch in {other:?}"),
        }
    }

    // Paused{r, await Restored} ---- PeerRestored ----> Done
    fn on_restored(&mut self, got: [u8; 32]) -> Vec<Action> {
        let State::Paused {
            phase: Await::Restored { memory_sha256 },
            ..
        } = self.state
        else {
            return self.protocol("Restored", "before the Switch");
        };
        if got != memory_sha256 {
            return self.fail("receiver restored another memory digest".into(), true);
        }
        self.stats.paused_ms = self.now_ms - self.since_ms;
        self.state = State::Done;
        vec![Action::Done, Action::ResumeVcpus]
    }

    fn on_tick(&mut self, now_ms: u64) -> Vec<Action> {
        self.now_ms = self.now_ms.max(now_ms);
        if self.clock_restart {
            self.clock_restart = false;
            self.since_ms = self.now_ms;
        }
        let waited = self.now_ms - self.since_ms;
        match &self.state {
            State::Paused { .. } if waited > self.cfg.pause_timeout_ms => self.fail(
                format!(
                    "paused {waited} ms, more than {} ms",
                    self.cfg.pause_timeout_ms
                ),
                true,
            ),
            State::Offered | State::PreCopy { .. } if waited > self.cfg.ack_timeout_ms => self
                .fail(
                    format!(
                        "no progress for {waited} ms, more than {}",
                        self.cfg.ack_timeout_ms
                    ),
                    true,
                ),
            _ => Vec::new(),
        }
    }

    fn checked_gfns(&self, mut gfns: Vec<u64>) -> Vec<u64> {
        gfns.sort_unstable();
        gfns.dedup();
        if let Some(&last) = gfns.last() {
            assert!(
                last < self.cfg.total_pages,
                "dirty gfn {last} outside {} pages",
                self.cfg.total_pages
            );
        }
        gfns
    }

    /// A peer message that does not fit the state: fail, telling the peer.
    fn protocol(&mut self, what: &str, detail: &str) -> Vec<Action> {
        let state = self.state_name();
        self.fail(format!("unexpected {what} {detail} in {state}"), true)
    }

    fn state_name(&self) -> String {
        match &self.state {
            State::PreCopy { round, .. } => format!("pre-copy round {round}"),
            State::Paused { round, .. } => format!("final round {round}"),
            s => format!("{s:?}"),
        }
    }

    /// Any non-final state ---- failure ----> Failed.
    fn fail(&mut self, reason: String, tell_peer: bool) -> Vec<Action> {
        let mut out = Vec::new();
        if tell_peer && self.state != State::Idle {
            out.push(Action::SendAbort {
                reason: reason.clone(),
            });
        }
        if self.vcpus_paused() {
            out.push(Action::ResumeVcpus);
        }
        tracing::warn!("transfer: sender failed: {reason}");
        self.state = State::Failed(reason.clone());
        out.push(Action::Failed { reason });
        out
    }
}
